"""The Linen ops against their definitions: each module's output from its own parameters."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax.ops import modules


def _init_apply(module, x, train=True):
  variables = module.init(jax.random.PRNGKey(0), x, False)
  y, _ = module.apply(variables, x, train, mutable=['batch_stats'])
  return variables, np.asarray(y)


def _normalised(y):
  """BatchNorm in training, without affine parameters: over (B, H, W), biased variance."""
  return (y - y.mean((0, 1, 2))) / np.sqrt(y.var((0, 1, 2)) + 1e-5)


def test_zero_and_identity():
  x = jnp.ones((2, 6, 6, 4))
  y = modules.Zero(2).apply({}, x, True)
  assert y.shape == (2, 3, 3, 4) and not np.any(np.asarray(y))
  assert modules.Zero(1).apply({}, x, True).shape == x.shape
  np.testing.assert_array_equal(modules.Identity().apply({}, x + 2.5, True), x + 2.5)


def test_batch_norm_module_updates_running_statistics(x64):
  x = jnp.asarray(np.random.default_rng(0).normal(1.0, 2.0, size=(4, 2, 2, 3)))
  bn = modules.BatchNorm(3)
  variables = bn.init(jax.random.PRNGKey(0), x, False)
  assert set(variables['params']) == {'scale', 'bias'}
  assert set(variables['batch_stats']) == {'mean', 'var'}
  y, updates = bn.apply(variables, x, True, mutable=['batch_stats'])
  np.testing.assert_allclose(y, _normalised(np.asarray(x)), rtol=1e-10)
  np.testing.assert_allclose(updates['batch_stats']['mean'], 0.1 * np.asarray(x).mean((0, 1, 2)),
                             rtol=1e-12)
  # evaluation mode: the running statistics, unchanged (mean 0, variance 1 at initialisation)
  np.testing.assert_allclose(bn.apply(variables, x, False), x / np.sqrt(1 + 1e-5), rtol=1e-12)
  assert 'params' not in modules.BatchNorm(3, affine=False).init(jax.random.PRNGKey(0), x, False)


def test_factorized_reduce_matches_definition(x64):
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 4, 4, 3))
  fr = modules.FactorizedReduce(3, 4, affine=False)
  variables, y = _init_apply(fr, jnp.asarray(x))
  k1 = np.asarray(variables['params']['conv_1']['kernel'][0])
  k2 = np.asarray(variables['params']['conv_2']['kernel'][0])
  r = np.maximum(x, 0)
  cat = np.concatenate([r[:, ::2, ::2] @ k1, r[:, 1::2, 1::2] @ k2], axis=-1)
  np.testing.assert_allclose(y, _normalised(cat), rtol=1e-10, atol=1e-12)


def test_factorized_reduce_errors():
  with pytest.raises(ValueError, match='even number of output channels, got c_out=5'):
    modules.FactorizedReduce(4, 5).init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 4)), False)
  with pytest.raises(ValueError, match='even spatial size, got 5x5'):
    modules.FactorizedReduce(4, 4).init(jax.random.PRNGKey(0), jnp.zeros((1, 5, 5, 4)), False)


def test_dil_conv_on_a_stack_of_edges_matches_per_edge_definition(x64):
  """ReLU, depthwise 3x3 dilation 2, 1x1, BN: each of 2 stacked edges through its own slice of
  the stacked weights, with BN statistics per channel of the stack."""
  rng = np.random.default_rng(3)
  c, e = 2, 2
  x = rng.normal(size=(2, 6, 6, e * c))
  variables, y = _init_apply(modules.DilConv(c, 3, 1, affine=False, n_edges=e), jnp.asarray(x))
  dw = np.asarray(variables['params']['dw']['kernel'])  # (3, 3, e*c)
  pw = np.asarray(variables['params']['pw']['kernel'])  # (e, c, c)
  rp = np.pad(np.maximum(x, 0), ((0, 0), (2, 2), (2, 2), (0, 0)))
  depthwise = sum(rp[:, 2 * i:2 * i + 6, 2 * j:2 * j + 6] * dw[i, j]
                  for i in range(3) for j in range(3))
  pointwise = np.concatenate([depthwise[..., s * c:(s + 1) * c] @ pw[s] for s in range(e)], -1)
  np.testing.assert_allclose(y, _normalised(pointwise), rtol=1e-9, atol=1e-12)


def test_linear_and_conv_are_torch_layers(x64):
  x = jnp.asarray(np.random.default_rng(4).normal(size=(3, 5)))
  variables = modules.Linear(5, 2).init(jax.random.PRNGKey(0), x)
  kernel, bias = variables['params']['kernel'], variables['params']['bias']
  assert kernel.shape == (5, 2) and bias.shape == (2,)
  np.testing.assert_allclose(modules.Linear(5, 2).apply(variables, x),
                             np.asarray(x) @ np.asarray(kernel) + np.asarray(bias), rtol=1e-12)
  images = jnp.ones((1, 4, 4, 3))
  conv = modules.Conv(3, 6, 3, stride=2, padding=1)
  kernel = conv.init(jax.random.PRNGKey(0), images)['params']['kernel']
  y = conv.apply({'params': {'kernel': kernel}}, images)
  assert kernel.shape == (3, 3, 3, 6) and y.shape == (1, 2, 2, 6)
  # output (1, 1) reads a full 3x3 window of ones: the sum of the kernel over (H, W, C_in)
  np.testing.assert_allclose(y[0, 1, 1], np.asarray(kernel).sum((0, 1, 2)), rtol=1e-12)


def test_conv_7x1_1x7_reduces_each_axis_once():
  x = jnp.ones((2, 8, 8, 4))
  module = modules.Conv7x1_1x7(4, 2, affine=True)
  variables = module.init(jax.random.PRNGKey(0), x, False)
  params = variables['params']
  assert params['conv_1x7']['kernel'].shape == (1, 7, 4, 4)
  assert params['conv_7x1']['kernel'].shape == (7, 1, 4, 4)
  assert module.apply(variables, x, False).shape == (2, 4, 4, 4)


def test_per_edge_runs_the_op_on_each_edge_slice():
  class Offset(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      return x + self.param('b', lambda k, s: jnp.arange(2.0), (2,))[None, None, None, :]

  per_edge = modules.PerEdge(lambda _, name: Offset(name=name), c=2, n_edges=3)
  x = jnp.zeros((1, 1, 1, 6))
  variables = per_edge.init(jax.random.PRNGKey(0), x, False)
  assert set(variables['params']) == {'edge0', 'edge1', 'edge2'}
  np.testing.assert_array_equal(per_edge.apply(variables, x, False)[0, 0, 0],
                                [0, 1, 0, 1, 0, 1])
