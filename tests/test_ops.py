"""Candidate operations against hand-computed values and an independent numpy reference."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import ops


def _numpy_depthwise(x, k, stride, dilation):
  """Direct loop definition of a depthwise convolution with symmetric padding."""
  ksz = k.shape[0]
  pad = dilation * (ksz - 1) // 2
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  b, h, w, c = x.shape
  ho = (h + 2 * pad - dilation * (ksz - 1) - 1) // stride + 1
  wo = (w + 2 * pad - dilation * (ksz - 1) - 1) // stride + 1
  out = np.zeros((b, ho, wo, c))
  for i in range(ho):
    for j in range(wo):
      for a in range(ksz):
        for bb in range(ksz):
          out[:, i, j, :] += xp[:, i * stride + a * dilation, j * stride + bb * dilation, :] * k[a, bb]
  return out


@pytest.mark.parametrize('impl', ['taps', 'xla'])
@pytest.mark.parametrize('ksz,stride,dilation', [(3, 1, 1), (5, 1, 1), (3, 2, 1), (3, 1, 2),
                                                 (5, 2, 2)])
def test_depthwise_matches_direct_definition(x64, impl, ksz, stride, dilation):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 8, 8, 3))
  k = rng.normal(size=(ksz, ksz, 3))
  got = ops.depthwise_conv(jnp.asarray(x), jnp.asarray(k), stride, dilation, impl)
  np.testing.assert_allclose(got, _numpy_depthwise(x, k, stride, dilation), rtol=1e-12,
                             atol=1e-12)


def test_max_pool_hand_values(x64):
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  got = ops.max_pool_3x3(x, 1)[0, :, :, 0]
  want = np.array([[5, 6, 7, 7], [9, 10, 11, 11], [13, 14, 15, 15], [13, 14, 15, 15]])
  np.testing.assert_array_equal(got, want)
  # stride 2 on 4x4 -> 2x2; windows centred on (0,0) and (2,2)
  np.testing.assert_array_equal(ops.max_pool_3x3(x, 2)[0, :, :, 0], [[5, 7], [13, 15]])
  # padding never wins, even when every value is negative
  assert float(ops.max_pool_3x3(-1.0 - x, 1).max()) == -1.0


def test_avg_pool_does_not_count_padding(x64):
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  got = np.asarray(ops.avg_pool_3x3(x, 1)[0, :, :, 0])
  assert got[0, 0] == pytest.approx((0 + 1 + 4 + 5) / 4)  # corner: 4 real cells
  assert got[0, 1] == pytest.approx((0 + 1 + 2 + 4 + 5 + 6) / 6)  # edge: 6 real cells
  assert got[1, 1] == pytest.approx(np.mean([0, 1, 2, 4, 5, 6, 8, 9, 10]))
  # stride 2: windows over rows/cols {0,1} and {1,2,3}
  np.testing.assert_allclose(ops.avg_pool_3x3(x, 2)[0, :, :, 0], [[2.5, 4.0], [8.5, 10.0]])
  # a constant stays constant everywhere, borders included (padding would pull it down)
  np.testing.assert_allclose(ops.avg_pool_3x3(jnp.full((1, 5, 5, 2), 3.0), 2), 3.0)


def test_zero_and_identity():
  x = jnp.ones((2, 6, 6, 4))
  zero = ops.Zero(2)
  y = zero.apply({}, x, True)
  assert y.shape == (2, 3, 3, 4) and not np.any(np.asarray(y))
  assert ops.Zero(1).apply({}, x, True).shape == x.shape
  np.testing.assert_array_equal(ops.Identity().apply({}, x + 2.5, True), x + 2.5)


def test_batch_norm_pytorch_convention(x64):
  rng = np.random.default_rng(1)
  x = rng.normal(2.0, 3.0, size=(4, 3, 3, 2))
  mean0, var0 = np.array([0.5, -1.0]), np.array([2.0, 0.5])
  y, (m, v) = ops.batch_norm(jnp.asarray(x), mean0, var0, True)
  bm, bv = x.mean((0, 1, 2)), x.var((0, 1, 2))
  np.testing.assert_allclose(y, (x - bm) / np.sqrt(bv + 1e-5), rtol=1e-12)
  n = 4 * 3 * 3
  np.testing.assert_allclose(m, 0.9 * mean0 + 0.1 * bm, rtol=1e-12)
  np.testing.assert_allclose(v, 0.9 * var0 + 0.1 * bv * n / (n - 1), rtol=1e-12)
  y_eval, stats = ops.batch_norm(jnp.asarray(x), mean0, var0, False, np.array([2., 3.]),
                                 np.array([1., 0.]))
  np.testing.assert_allclose(y_eval, (x - mean0) / np.sqrt(var0 + 1e-5) * [2, 3] + [1, 0],
                             rtol=1e-12)
  np.testing.assert_array_equal(stats[0], mean0)


def test_factorized_reduce_matches_definition(x64):
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 4, 4, 3))
  fr = ops.FactorizedReduce(3, 4, affine=False)
  variables = fr.init(jax.random.PRNGKey(0), jnp.asarray(x), False)
  k1 = np.asarray(variables['params']['conv_1']['kernel'][0])
  k2 = np.asarray(variables['params']['conv_2']['kernel'][0])
  y, _ = fr.apply(variables, jnp.asarray(x), True, mutable=['batch_stats'])
  r = np.maximum(x, 0)
  cat = np.concatenate([r[:, ::2, ::2] @ k1, r[:, 1::2, 1::2] @ k2], axis=-1)
  want = (cat - cat.mean((0, 1, 2))) / np.sqrt(cat.var((0, 1, 2)) + 1e-5)
  np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-12)


def test_factorized_reduce_errors():
  with pytest.raises(ValueError, match='even number of output channels, got c_out=5'):
    ops.FactorizedReduce(4, 5).init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 4)), False)
  with pytest.raises(ValueError, match='even spatial size, got 5x5'):
    ops.FactorizedReduce(4, 4).init(jax.random.PRNGKey(0), jnp.zeros((1, 5, 5, 4)), False)


def test_registry_unknown_op_and_user_op():
  with pytest.raises(ValueError, match="unknown op 'conv_7x7'; allowed: none, max_pool_3x3"):
    ops.make_op('conv_7x7', 4, 1, True)

  class Double(nn.Module):
    def __call__(self, x, train):
      return 2 * x

  registry = ops.make_op_registry(
      {'double': ops.single_edge_op(lambda c, stride, affine, name: Double(name=name))})
  assert 'double' in registry and 'sep_conv_3x3' in registry and 'double' not in ops.OPS
  op = ops.make_op('double', 2, 1, False, n_edges=3, search=True, ops=registry)
  x = jnp.arange(24.0).reshape(1, 2, 2, 6)
  np.testing.assert_array_equal(op.apply({}, x, True), 2 * x)
  with pytest.raises(ValueError, match='factory must be callable'):
    ops.make_op_registry({'bad': 3})


def test_drop_path_statistics_and_scaling():
  x = jnp.ones((20000, 1, 1, 1))
  y = np.asarray(ops.drop_path(x, 0.3, jax.random.PRNGKey(0)))
  kept = y != 0
  assert abs(kept.mean() - 0.7) < 0.02  # 4 sigma of a Bernoulli(0.7) mean over 20k
  np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
  # a whole sample is kept or dropped together
  z = np.asarray(ops.drop_path(jnp.ones((64, 2, 2, 3)), 0.5, jax.random.PRNGKey(1)))
  assert all(len(np.unique(s)) == 1 for s in z) and 0 < (z[:, 0, 0, 0] == 0).sum() < 64


def test_torch_default_init_bounds():
  shapes = {'dw1': {'kernel': jax.ShapeDtypeStruct((3, 3, 64), jnp.float32)},
            'pw1': {'kernel': jax.ShapeDtypeStruct((8, 16, 16), jnp.float32)},
            'classifier': {'kernel': jax.ShapeDtypeStruct((100, 10), jnp.float32),
                           'bias': jax.ShapeDtypeStruct((10,), jnp.float32)},
            'bn': {'scale': jax.ShapeDtypeStruct((4,), jnp.float32),
                   'bias': jax.ShapeDtypeStruct((4,), jnp.float32)}}
  v = ops.torch_default_init(jax.random.PRNGKey(0), shapes)
  for path, bound in [(('dw1', 'kernel'), 1 / 3), (('pw1', 'kernel'), 1 / 4),
                      (('classifier', 'kernel'), 0.1), (('classifier', 'bias'), 0.1)]:
    a = np.abs(np.asarray(v[path[0]][path[1]]))
    assert a.max() <= bound and a.max() > 0.5 * bound
  np.testing.assert_array_equal(v['bn']['scale'], 1.0)
  np.testing.assert_array_equal(v['bn']['bias'], 0.0)


@pytest.mark.parametrize('ksz,stride,dilation,size', [(3, 1, 1, 8), (5, 2, 2, 8), (3, 2, 1, 7),
                                                      (5, 1, 2, 6)])
def test_depthwise_taps_derivatives_match_xla_to_third_order(x64, ksz, stride, dilation, size):
  """The 'taps' lowering has hand-written VJPs (each written with the others); up to third order
  they must equal autodiff of XLA's grouped convolution, odd sizes and strides included."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, size, size, 3)))
  w = jnp.asarray(rng.normal(size=(ksz, ksz, 3)))

  def orders(impl):
    def f(x, w):
      return jnp.sum(jnp.tanh(ops.depthwise_conv(x, w, stride, dilation, impl))**2)

    def f2(x, w):  # a second-order quantity, as in the exact hypergradient
      gx, gw = jax.grad(f, (0, 1))(x, w)
      return jnp.sum(gx**3) + jnp.sum(jnp.sin(gw))

    def f3(x, w):
      return jnp.sum(jax.grad(f2, 1)(x, w)**2)

    return [jax.grad(fn, (0, 1))(x, w) for fn in (f, f2, f3)]

  for got, want in zip(orders('taps'), orders('xla')):
    for g, r in zip(got, want):
      np.testing.assert_allclose(g, r, rtol=1e-9, atol=1e-9 * float(jnp.max(jnp.abs(r))))


@pytest.mark.parametrize('stride,size', [(1, 8), (2, 8), (2, 7)])
def test_max_pool_gradients_match_reduce_window(x64, stride, size):
  """The CPU lowering (tap maxima, hand-written VJP) against XLA's reduce_window: first-order
  gradients with ties (both send the gradient to the first maximum, as PyTorch does) and
  second-order gradients without ties (where the derivative is defined)."""
  from jax import lax

  def reference(x, s):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, s, s, 1),
                             ((0, 0), (1, 1), (1, 1), (0, 0)))

  def first(pool):
    return lambda x: jnp.sum(jnp.sin(pool(x, stride))**2)

  def second(pool):
    return lambda x: jnp.sum(jax.grad(first(pool))(x)**2 * x)

  rng = np.random.default_rng(2)
  tied = jnp.asarray(np.round(rng.normal(size=(2, size, size, 3)) * 2) / 2)
  assert len(np.unique(tied)) < tied.size / 4  # many ties inside windows
  np.testing.assert_array_equal(ops.max_pool_3x3(tied, stride), reference(tied, stride))
  np.testing.assert_allclose(jax.grad(first(ops.max_pool_3x3))(tied),
                             jax.grad(first(reference))(tied), rtol=1e-12, atol=1e-12)
  x = jnp.asarray(rng.normal(size=(2, size, size, 3)))
  np.testing.assert_allclose(jax.grad(second(ops.max_pool_3x3))(x),
                             jax.grad(second(reference))(x), rtol=1e-10, atol=1e-10)


def test_pointwise_block_diagonal_equals_per_edge_matmul(x64):
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 4, 4, 3 * 5)))
  kernel = jnp.asarray(rng.normal(size=(3, 5, 7)))
  want = np.concatenate([np.asarray(x[..., 5 * e:5 * e + 5]) @ np.asarray(kernel[e])
                         for e in range(3)], axis=-1)
  np.testing.assert_allclose(ops.pointwise_conv(x, kernel), want, rtol=1e-12)
  np.testing.assert_allclose(ops.pointwise_conv(x, kernel, stride=2), want[:, ::2, ::2],
                             rtol=1e-12)
