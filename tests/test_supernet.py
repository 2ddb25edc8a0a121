"""The search network's contract: loss(weights, alphas, batch_stats, batch) -> (loss, aux)."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax.ops import registry
from darts_jax.ops.init import num_params
from darts_jax.supernet import (MixedEdges, SupernetConfig, check_image_size, edge_groups,
                                init_alphas, init_supernet, make_apply, make_loss,
                                reduction_layers, supernet_shapes)


def _batch(n=4, size=8, seed=0):
  x = jax.random.normal(jax.random.PRNGKey(seed), (n, size, size, 3))
  return x, jnp.arange(n) % 10


def test_edge_groups_cover_every_edge_once():
  groups = edge_groups(4)
  assert [g.name for g in groups] == ['edges_01', 'edges_2', 'edges_3', 'edges_4']
  edges = sorted(e for g in groups for e in g.edges)
  # the original's numbering: node i's edges start at sum_{n<i}(n+2), input j at offset + j
  assert edges == [(o + j, i, j) for i, o in enumerate((0, 2, 5, 9)) for j in range(i + 2)]


def test_reduction_layers_are_the_originals():
  # at 1/3 and 2/3 of the depth: the paper's 8-cell search, 20-cell and 14-cell evaluations
  assert reduction_layers(8) == (2, 5) and reduction_layers(20) == (6, 13)
  assert reduction_layers(14) == (4, 9) and reduction_layers(5) == (1, 3)
  assert reduction_layers(2) == (0, 1) and reduction_layers(1) == (0,)  # coinciding: one cell
  assert SupernetConfig(layers=5).reduction_layers == (1, 3)


@pytest.mark.parametrize('layers,C,count', [(8, 16, 1_930_618), (5, 16, 1_275_834),
                                            (5, 8, 394_210)])
def test_search_network_has_the_originals_parameter_count(layers, C, count):
  """The original's counts (shared/REFERENCE.md), 2 x 14 x 8 = 224 alpha numbers."""
  config = SupernetConfig(C=C, layers=layers)
  assert num_params(supernet_shapes(config).weights) == count
  assert config.alpha_shape == (14, 8)


def test_mixed_edges_is_eq_2_on_each_edge(x64):
  """sum_k softmax(alpha)_k op_k(x), edge by edge, with a parameter-free op space."""

  class Double(nn.Module):
    def __call__(self, x, train):
      return 2 * x

  ops = registry.make_op_registry(
      {'double': registry.single_edge_op(lambda c, stride, affine, name: Double(name=name))})
  rng = np.random.default_rng(0)
  c, e = 2, 3
  x = rng.normal(size=(2, 4, 4, e * c))
  mixing = rng.dirichlet(np.ones(3), size=e)  # (edges, ops)
  module = MixedEdges(c, e, 1, ('none', 'skip_connect', 'double'), ops, 'auto')
  y = np.asarray(module.apply({}, jnp.asarray(x), jnp.asarray(mixing), True))
  for edge in range(e):
    x_e = x[..., edge * c:(edge + 1) * c]
    np.testing.assert_allclose(y[..., edge, :],
                               mixing[edge, 1] * x_e + mixing[edge, 2] * 2 * x_e, rtol=1e-12)


def test_check_image_size_names_the_network_by_keyword_only():
  with pytest.raises(TypeError):
    check_image_size((1, 8, 8, 3), 1, 3, 'NetworkCIFAR')  # a dtype once landed there
  with pytest.raises(ValueError, match="input image 6x6 .* for the NetworkCIFAR's 2 reductions"):
    check_image_size((1, 6, 6, 3), 2, 3, what='NetworkCIFAR')
  check_image_size((1, 8, 8, 3), 2, 3, what='NetworkCIFAR')


def test_bad_alphas_and_images_have_clear_errors():
  config = SupernetConfig(C=2, layers=3)
  shapes = supernet_shapes(config, (8, 8))
  loss = make_loss(config)
  good = init_alphas(jax.random.PRNGKey(0), config)
  with pytest.raises(ValueError, match=r"alphas\['reduce'\] has shape \(14, 7\); expected "
                                       r'\(14, 8\) \(4 nodes, ops none, max_pool_3x3'):
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
  with pytest.raises(ValueError, match='SupernetConfig.multiplier=5 exceeds nodes=4'):
    SupernetConfig(multiplier=5)


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


@pytest.mark.slow
def test_loss_contract_batch_stats_and_no_recompile(x64):
  # the contract does not depend on the ops: three of them keep the float64 compile short
  config = SupernetConfig(C=2, layers=2, primitives=('none', 'skip_connect', 'sep_conv_3x3'))
  variables = init_supernet(jax.random.PRNGKey(0), config, (8, 8), jnp.float64)
  alphas = init_alphas(jax.random.PRNGKey(1), config, jnp.float64)
  x, y = _batch()
  x = x.astype(jnp.float64)
  chex.clear_trace_counter()
  loss_fn = jax.jit(chex.assert_max_traces(make_loss(config), n=1))
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
  # a second call with new values reuses the compiled step (a second trace would raise)
  loss_fn(variables.weights, jax.tree_util.tree_map(lambda a: a + 1, alphas), aux.batch_stats,
          (x + 1, y))
  # evaluation mode uses the running statistics and leaves them unchanged
  logits_eval, stats = make_apply(config)(variables.weights, alphas, aux.batch_stats, x, False)
  assert stats is aux.batch_stats
  with pytest.raises(ValueError, match=r'labels must be integer class indices of shape \(4,\)'):
    jax.eval_shape(make_loss(config), variables.weights, alphas, variables.batch_stats,
                   (x, y.astype(jnp.float64)))


def test_user_op_joins_the_search():
  class Scale(nn.Module):
    """A user op with weights, written for one edge: a learned scale per channel."""
    c: int
    stride: int

    @nn.compact
    def __call__(self, x, train):
      a = self.param('a', nn.initializers.ones, (self.c,))
      return x[:, ::self.stride, ::self.stride] * a[None, None, None, :]

  scale = registry.single_edge_op(lambda c, stride, affine, name: Scale(c, stride, name=name))
  ops = registry.make_op_registry({'scale': scale})
  config = SupernetConfig(C=2, layers=3, primitives=('none', 'skip_connect', 'scale'), ops=ops)
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


@pytest.mark.slow
@pytest.mark.extended
def test_remat_changes_memory_not_numbers(x64):
  """Per-cell rematerialisation recomputes the same forward: loss, gradients and BN statistics
  equal the plain network's to round-off (float64)."""
  plain = SupernetConfig(C=2, layers=3, primitives=('max_pool_3x3', 'skip_connect',
                                                    'sep_conv_3x3'))
  remat = SupernetConfig(C=2, layers=3, primitives=plain.primitives, remat_cells=True)
  v = init_supernet(jax.random.PRNGKey(0), plain, (8, 8), jnp.float64)
  alphas = init_alphas(jax.random.PRNGKey(1), plain, jnp.float64, scale=0.5)
  batch = (jax.random.normal(jax.random.PRNGKey(2), (4, 8, 8, 3), jnp.float64),
           jnp.array([0, 1, 2, 3]))
  outs = [jax.jit(jax.value_and_grad(make_loss(c), argnums=(0, 1), has_aux=True))(
      v.weights, alphas, v.batch_stats, batch) for c in (plain, remat)]
  (l0, aux0), g0 = outs[0]
  (l1, aux1), g1 = outs[1]
  assert abs(float(l0) - float(l1)) <= 1e-14 * abs(float(l0))
  for a, b in zip(jax.tree_util.tree_leaves((g0, aux0.batch_stats)),
                  jax.tree_util.tree_leaves((g1, aux1.batch_stats))):
    assert float(jnp.max(jnp.abs(a - b))) <= 1e-12 * max(float(jnp.max(jnp.abs(a))), 1e-30)
  with pytest.raises(ValueError, match='remat_cells=1: must be True or False'):
    SupernetConfig(remat_cells=1)
