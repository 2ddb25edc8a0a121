"""The search network's contract: loss(weights, alphas, batch_stats, batch) -> (loss, aux)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import ops
from darts_jax.supernet import (SupernetConfig, edge_groups, init_alphas, init_supernet,
                                make_apply, make_loss, num_params, supernet_shapes)


def _batch(n=4, size=8, seed=0):
  x = jax.random.normal(jax.random.PRNGKey(seed), (n, size, size, 3))
  return x, jnp.arange(n) % 10


def test_edge_groups_cover_every_edge_once():
  groups = edge_groups(4)
  assert [g.name for g in groups] == ['edges_01', 'edges_2', 'edges_3', 'edges_4']
  edges = sorted(e for g in groups for e in g.edges)
  # the original's numbering: node i's edges start at sum_{n<i}(n+2), input j at offset + j
  assert edges == [(o + j, i, j) for i, o in enumerate((0, 2, 5, 9)) for j in range(i + 2)]


def test_bad_alphas_and_images_have_clear_errors():
  config = SupernetConfig(C=2, layers=3)
  shapes = supernet_shapes(config, (8, 8))
  loss = make_loss(config)
  good = init_alphas(jax.random.PRNGKey(0), config)
  with pytest.raises(ValueError, match=r"alphas\['reduce'\] has shape \(14, 7\); expected "
                                       r'\(14, 8\) \(4 steps, ops none, max_pool_3x3'):
    jax.eval_shape(loss, shapes.weights, {**good, 'reduce': jnp.zeros((14, 7))},
                   shapes.batch_stats, _batch())
  with pytest.raises(ValueError, match="keys 'normal' and 'reduce', got \\['normal'\\]"):
    jax.eval_shape(loss, shapes.weights, {'normal': good['normal']}, shapes.batch_stats,
                   _batch())
  with pytest.raises(ValueError, match='input image 6x6 is too small or not divisible .* '
                                       'multiples of 4'):
    jax.eval_shape(loss, shapes.weights, good, shapes.batch_stats, _batch(size=6))
  with pytest.raises(ValueError, match='images have 1 channels; .* in_channels=3'):
    jax.eval_shape(loss, shapes.weights, good, shapes.batch_stats,
                   (jnp.zeros((2, 8, 8, 1)), jnp.zeros(2, jnp.int32)))
  with pytest.raises(ValueError, match="unknown op 'sep_conv_9x9'"):
    SupernetConfig(primitives=('none', 'sep_conv_9x9'))
  with pytest.raises(ValueError, match='SupernetConfig.C=0: must be a positive integer'):
    SupernetConfig(C=0)


def test_op_subset_parameter_count_closed_form():
  """Dropping ops removes exactly their weights: sep_conv_kxk 2(k^2 C + C^2), dil_conv_kxk
  k^2 C + C^2 per edge, 14 edges per cell, C doubling at the two reductions."""
  full = SupernetConfig(C=8, layers=5)
  subset = SupernetConfig(C=8, layers=5, primitives=('none', 'skip_connect', 'sep_conv_3x3',
                                                     'max_pool_3x3'))
  assert subset.alpha_shape == (14, 4)
  removed = 0
  for c in (8, 16, 16, 32, 32):  # per-cell C of a 5-cell network
    removed += 14 * (2 * (25 * c + c * c) + (9 * c + c * c) + (25 * c + c * c))
  assert (num_params(supernet_shapes(full).weights) - num_params(supernet_shapes(subset).weights)
          == removed)


def _numpy_conv3x3(x, k):
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = x.shape[1:3]
  return sum(np.einsum('bhwc,cd->bhwd', xp[:, i:i + h, j:j + w], k[i, j])
             for i in range(3) for j in range(3))


def test_loss_contract_batch_stats_and_no_recompile(x64):
  config = SupernetConfig(C=2, layers=3)
  variables = init_supernet(jax.random.PRNGKey(0), config, (8, 8), jnp.float64)
  alphas = init_alphas(jax.random.PRNGKey(1), config, jnp.float64)
  x, y = _batch()
  x = x.astype(jnp.float64)
  loss_fn = jax.jit(make_loss(config))
  loss, aux = loss_fn(variables.weights, alphas, variables.batch_stats, (x, y))
  logits = np.asarray(aux.logits)
  log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  assert float(loss) == pytest.approx(-log_softmax[np.arange(4), np.asarray(y)].mean(), rel=1e-12)
  # running statistics: PyTorch momentum 0.1 from (0, 1), of the stem convolution's output
  stem = _numpy_conv3x3(np.asarray(x), np.asarray(variables.weights['stem_conv']['kernel']))
  np.testing.assert_allclose(aux.batch_stats['stem_bn']['mean'], 0.1 * stem.mean((0, 1, 2)),
                             rtol=1e-10)
  n = stem.shape[0] * stem.shape[1] * stem.shape[2]
  np.testing.assert_allclose(aux.batch_stats['stem_bn']['var'],
                             0.9 + 0.1 * stem.var((0, 1, 2)) * n / (n - 1), rtol=1e-10)
  # a second call with new values reuses the compiled step
  loss_fn(variables.weights, jax.tree_util.tree_map(lambda a: a + 1, alphas), aux.batch_stats,
          (x + 1, y))
  assert loss_fn._cache_size() == 1
  # evaluation mode uses the running statistics and leaves them unchanged
  logits_eval, stats = make_apply(config)(variables.weights, alphas, aux.batch_stats, x, False)
  assert stats is aux.batch_stats
  with pytest.raises(ValueError, match=r'labels must be integer class indices of shape \(4,\)'):
    loss_fn(variables.weights, alphas, variables.batch_stats, (x, y.astype(jnp.float64)))


def test_user_op_joins_the_search():
  class Scale(nn.Module):
    """A user op with weights, written for one edge: a learned scale per channel."""
    c: int
    stride: int

    @nn.compact
    def __call__(self, x, train):
      return x[:, ::self.stride, ::self.stride] * self.param('a', nn.initializers.ones, (self.c,))

  registry = ops.make_op_registry(
      {'scale': ops.single_edge_op(lambda c, stride, affine, name: Scale(c, stride, name=name))})
  config = SupernetConfig(C=2, layers=3, primitives=('none', 'skip_connect', 'scale'),
                          ops=registry)
  variables = init_supernet(jax.random.PRNGKey(0), config, (8, 8))
  scale_leaves = [x for path, x in jax.tree_util.tree_flatten_with_path(variables.weights)[0]
                  if path[-1].key == 'a']
  # one (C,) vector per edge: 14 edges per cell, C = 2, 4, 8 (cells 1 and 2 reduce)
  assert sum(x.size for x in scale_leaves) == 14 * (2 + 4 + 8)
  np.testing.assert_array_equal(np.concatenate([np.ravel(x) for x in scale_leaves]), 1.0)
  alphas = init_alphas(jax.random.PRNGKey(1), config)
  grads = jax.jit(jax.grad(lambda w: make_loss(config)(w, alphas, variables.batch_stats,
                                                       _batch())[0]))(
      variables.weights)
  g = [x for path, x in jax.tree_util.tree_flatten_with_path(grads)[0] if path[-1].key == 'a']
  assert len(g) == len(scale_leaves) and all(np.any(np.asarray(x) != 0) for x in g)
