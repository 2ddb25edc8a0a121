"""The pure kernels against direct definitions, hand-computed values and XLA's own lowerings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from darts_jax.ops import kernels


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
          tap = xp[:, i * stride + a * dilation, j * stride + bb * dilation, :]
          out[:, i, j, :] += tap * k[a, bb]
  return out


@pytest.mark.parametrize('impl', ['taps', 'xla'])
@pytest.mark.parametrize('ksz,stride,dilation', [(3, 1, 1), (5, 1, 1), (3, 2, 1), (3, 1, 2),
                                                 (5, 2, 2)])
def test_depthwise_matches_direct_definition(x64, impl, ksz, stride, dilation):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 8, 8, 3))
  k = rng.normal(size=(ksz, ksz, 3))
  got = kernels.depthwise_conv(jnp.asarray(x), jnp.asarray(k), stride, dilation, impl)
  np.testing.assert_allclose(got, _numpy_depthwise(x, k, stride, dilation), rtol=1e-12,
                             atol=1e-12)


def test_resolve_depthwise_impl():
  assert kernels.DEPTHWISE_IMPLS == ('auto', 'taps', 'xla')
  assert kernels.resolve_depthwise_impl('xla') == 'xla'
  assert kernels.resolve_depthwise_impl('taps') == 'taps'
  # the tests run on XLA:CPU, whose grouped convolution is dense: 'auto' takes the tap sums
  assert kernels.resolve_depthwise_impl('auto') == 'taps'
  with pytest.raises(ValueError, match=r"depthwise_impl='cudnn' is not one of \('auto', 'taps'"):
    kernels.resolve_depthwise_impl('cudnn')


def test_conv2d_matches_direct_definition(x64):
  rng = np.random.default_rng(4)
  x, k = rng.normal(size=(2, 5, 5, 3)), rng.normal(size=(3, 3, 3, 4))
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  want = sum(np.einsum('bhwc,cd->bhwd', xp[:, i:i + 5:2, j:j + 5:2], k[i, j])
             for i in range(3) for j in range(3))
  np.testing.assert_allclose(kernels.conv2d(jnp.asarray(x), jnp.asarray(k), 2, 1), want,
                             rtol=1e-12)


def test_materialize_is_the_identity_in_value_and_gradient(x64):
  x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 3, 3, 4)))
  np.testing.assert_array_equal(kernels.materialize(x), x)
  # the other branch, taken when the first element is NaN, adds zero: the same values
  v = jnp.array([jnp.nan, 1.5, -2.0])
  np.testing.assert_array_equal(kernels.materialize(v), v)
  g = jax.grad(lambda v: jnp.sum(jnp.sin(kernels.materialize(v))))(x)
  np.testing.assert_allclose(g, np.cos(x), rtol=1e-15)


def test_max_pool_hand_values(x64):
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  got = kernels.max_pool_3x3(x, 1)[0, :, :, 0]
  want = np.array([[5, 6, 7, 7], [9, 10, 11, 11], [13, 14, 15, 15], [13, 14, 15, 15]])
  np.testing.assert_array_equal(got, want)
  # stride 2 on 4x4 -> 2x2; windows centred on (0,0) and (2,2)
  np.testing.assert_array_equal(kernels.max_pool_3x3(x, 2)[0, :, :, 0], [[5, 7], [13, 15]])
  # padding never wins, even when every value is negative
  assert float(kernels.max_pool_3x3(-1.0 - x, 1).max()) == -1.0


def test_avg_pool_does_not_count_padding(x64):
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  got = np.asarray(kernels.avg_pool_3x3(x, 1)[0, :, :, 0])
  assert got[0, 0] == pytest.approx((0 + 1 + 4 + 5) / 4)  # corner: 4 real cells
  assert got[0, 1] == pytest.approx((0 + 1 + 2 + 4 + 5 + 6) / 6)  # edge: 6 real cells
  assert got[1, 1] == pytest.approx(np.mean([0, 1, 2, 4, 5, 6, 8, 9, 10]))
  # stride 2: windows over rows/cols {0,1} and {1,2,3}
  np.testing.assert_allclose(kernels.avg_pool_3x3(x, 2)[0, :, :, 0], [[2.5, 4.0], [8.5, 10.0]])
  # a constant stays constant everywhere, borders included (padding would pull it down)
  np.testing.assert_allclose(kernels.avg_pool_3x3(jnp.full((1, 5, 5, 2), 3.0), 2), 3.0)
  # the auxiliary head's 5x5 pool without padding: plain means of the windows
  y = jnp.arange(64.0).reshape(1, 8, 8, 1)
  np.testing.assert_allclose(kernels.avg_pool(y, 5, 3, 0)[0, :, :, 0],
                             [[np.mean(np.arange(64.0).reshape(8, 8)[i:i + 5, j:j + 5])
                               for j in (0, 3)] for i in (0, 3)])


def test_batch_norm_pytorch_convention(x64):
  rng = np.random.default_rng(1)
  x = rng.normal(2.0, 3.0, size=(4, 3, 3, 2))
  mean0, var0 = np.array([0.5, -1.0]), np.array([2.0, 0.5])
  y, (m, v) = kernels.batch_norm(jnp.asarray(x), mean0, var0, True)
  bm, bv = x.mean((0, 1, 2)), x.var((0, 1, 2))
  np.testing.assert_allclose(y, (x - bm) / np.sqrt(bv + 1e-5), rtol=1e-12)
  n = 4 * 3 * 3
  np.testing.assert_allclose(m, 0.9 * mean0 + 0.1 * bm, rtol=1e-12)
  np.testing.assert_allclose(v, 0.9 * var0 + 0.1 * bv * n / (n - 1), rtol=1e-12)
  y_eval, stats = kernels.batch_norm(jnp.asarray(x), mean0, var0, False, np.array([2., 3.]),
                                     np.array([1., 0.]))
  np.testing.assert_allclose(y_eval, (x - mean0) / np.sqrt(var0 + 1e-5) * [2, 3] + [1, 0],
                             rtol=1e-12)
  np.testing.assert_array_equal(stats[0], mean0)
  assert (kernels.BN_EPS, kernels.BN_MOMENTUM) == (1e-5, 0.1)


def test_drop_path_statistics_and_scaling():
  x = jnp.ones((20000, 1, 1, 1))
  y = np.asarray(kernels.drop_path(x, 0.3, jax.random.PRNGKey(0)))
  kept = y != 0
  assert abs(kept.mean() - 0.7) < 0.02  # 4 sigma of a Bernoulli(0.7) mean over 20k
  np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
  # a whole sample is kept or dropped together
  z = np.asarray(kernels.drop_path(jnp.ones((64, 2, 2, 3)), 0.5, jax.random.PRNGKey(1)))
  assert all(len(np.unique(s)) == 1 for s in z) and 0 < (z[:, 0, 0, 0] == 0).sum() < 64


@pytest.mark.parametrize('ksz,stride,dilation,size', [
    (3, 1, 1, 8), (3, 2, 1, 7),
    # the 5x5 kernels: the same code path with more taps, 2x the compile (extended tier)
    pytest.param(5, 2, 2, 8, marks=(pytest.mark.slow, pytest.mark.extended)),
    pytest.param(5, 1, 2, 6, marks=(pytest.mark.slow, pytest.mark.extended))])
def test_depthwise_taps_derivatives_match_xla_to_third_order(x64, ksz, stride, dilation, size):
  """The 'taps' lowering has a hand-written VJP whose own derivatives are JAX's; up to third
  order, and forward over reverse, it must equal autodiff of XLA's grouped convolution, odd
  sizes and strides included."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, size, size, 3)))
  w = jnp.asarray(rng.normal(size=(ksz, ksz, 3)))

  def orders(impl):
    def f(x, w):
      return jnp.sum(jnp.tanh(kernels.depthwise_conv(x, w, stride, dilation, impl))**2)

    def f2(x, w):  # a second-order quantity, as in the exact hypergradient
      gx, gw = jax.grad(f, (0, 1))(x, w)
      return jnp.sum(gx**3) + jnp.sum(jnp.sin(gw))

    def f3(x, w):
      return jnp.sum(jax.grad(f2, 1)(x, w)**2)

    # forward over reverse, as hypergradient.mixed_hvp: the backward pass's JVP along (tx, tw),
    # and the same one order up
    def forward_over_reverse(fn):
      return jax.jvp(lambda x, w: jax.grad(fn, (0, 1))(x, w), (x, w), (tx, tw))[1]

    return ([jax.grad(fn, (0, 1))(x, w) for fn in (f, f2, f3)]
            + [forward_over_reverse(fn) for fn in (f, f2)])

  tx = jnp.asarray(rng.normal(size=x.shape))
  tw = jnp.asarray(rng.normal(size=w.shape))
  for got, want in zip(orders('taps'), orders('xla')):
    for g, r in zip(got, want):
      np.testing.assert_allclose(g, r, rtol=1e-9, atol=1e-9 * float(jnp.max(jnp.abs(r))))


@pytest.mark.parametrize('stride,size', [(1, 8), (2, 8), (2, 7)])
def test_max_pool_gradients_match_reduce_window(x64, stride, size):
  """The CPU lowering (tap maxima, hand-written VJP) against XLA's reduce_window: first-order
  gradients with ties (both send the gradient to the first maximum, as PyTorch does) and
  second-order gradients without ties (where the derivative is defined)."""

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
  np.testing.assert_array_equal(kernels.max_pool_3x3(tied, stride), reference(tied, stride))
  np.testing.assert_allclose(jax.grad(first(kernels.max_pool_3x3))(tied),
                             jax.grad(first(reference))(tied), rtol=1e-12, atol=1e-12)
  x = jnp.asarray(rng.normal(size=(2, size, size, 3)))
  np.testing.assert_allclose(jax.grad(second(kernels.max_pool_3x3))(x),
                             jax.grad(second(reference))(x), rtol=1e-10, atol=1e-10)
  # forward over reverse (exact second order's mixed term): the JVP of the backward pass
  t = jnp.asarray(rng.normal(size=x.shape))
  np.testing.assert_allclose(jax.jvp(jax.grad(first(kernels.max_pool_3x3)), (x,), (t,))[1],
                             jax.jvp(jax.grad(first(reference)), (x,), (t,))[1],
                             rtol=1e-10, atol=1e-10)


def test_pointwise_block_diagonal_equals_per_edge_matmul(x64):
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 4, 4, 3 * 5)))
  kernel = jnp.asarray(rng.normal(size=(3, 5, 7)))
  want = np.concatenate([np.asarray(x[..., 5 * e:5 * e + 5]) @ np.asarray(kernel[e])
                         for e in range(3)], axis=-1)
  np.testing.assert_allclose(kernels.pointwise_conv(x, kernel), want, rtol=1e-12)
  np.testing.assert_allclose(kernels.pointwise_conv(x, kernel, stride=2), want[:, ::2, ::2],
                             rtol=1e-12)


def test_recompute_in_backward_has_the_plain_derivatives_of_every_order(x64):
  """f(x, w) = sum(sin(w x)^2): first derivatives sin(2wx) * (w, x) and the mixed second
  derivative d/dw d/dx = sin(2wx) + 2wx cos(2wx), by hand, through the recomputing wrapper."""
  x = jnp.array([0.3, -1.2, 2.0])
  w = jnp.array([0.7, 1.5, -0.4])
  f = lambda x, w: (jnp.sum(jnp.sin(w * x) ** 2), x * w)  # a pytree out, as a cell's
  g = kernels.recompute_in_backward(f)
  loss = lambda x, w: g(x, w)[0]
  dx, dw = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)
  np.testing.assert_allclose(dx, np.sin(2 * w * x) * w, rtol=1e-14)
  np.testing.assert_allclose(dw, np.sin(2 * w * x) * x, rtol=1e-14)
  mixed = jax.jit(jax.grad(lambda w: jnp.vdot(jax.grad(loss)(x, w), jnp.ones(3))))(w)
  np.testing.assert_allclose(mixed, np.sin(2 * w * x) + 2 * w * x * np.cos(2 * w * x),
                             rtol=1e-13)
  # the same mixed derivative forward over reverse: grad_x's JVP in w along ones
  mixed_fwd = jax.jit(lambda w: jax.jvp(lambda w_: jax.grad(loss)(x, w_), (w,),
                                        (jnp.ones(3),))[1])(w)
  np.testing.assert_allclose(mixed_fwd, np.sin(2 * w * x) + 2 * w * x * np.cos(2 * w * x),
                             rtol=1e-13)
  # the second output's cotangent flows too
  dx2 = jax.grad(lambda x: jnp.sum(g(x, w)[1] ** 2))(x)
  np.testing.assert_allclose(dx2, 2 * x * w**2, rtol=1e-14)
