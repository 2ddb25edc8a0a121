"""The pure functions under the ops: convolutions, pooling, BatchNorm and drop path on NHWC arrays.

Each is written for what XLA:CPU does well and checked against a direct definition: depthwise
convolution as sums of k*k shifted slices ("taps") with a hand-written backward pass,
edge-wise 1x1 convolution as one block-diagonal matmul, 3x3 max pooling as tap maxima. On GPU and
TPU the native lowerings are used instead (``resolve_depthwise_impl``, ``max_pool_3x3``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

BN_EPS = 1e-5
BN_MOMENTUM = 0.1  # PyTorch convention: new = (1 - m) * running + m * batch
DEPTHWISE_IMPLS = ('auto', 'taps', 'xla')


def _out_size(size: int, k: int, stride: int, dilation: int, pad: int) -> int:
  return (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1


def _per_channel(v: jax.Array) -> jax.Array:
  """A per-channel vector ``(C,)`` as ``(1, 1, 1, C)``: broadcasts over NHWC explicitly."""
  return v.reshape(1, 1, 1, -1)


def resolve_depthwise_impl(impl: str) -> str:
  """The lowering that ``impl`` (one of DEPTHWISE_IMPLS) stands for on this backend: 'taps' or
  'xla'. Raises a one-line ValueError for any other name."""
  if impl not in DEPTHWISE_IMPLS:
    raise ValueError(f'depthwise_impl={impl!r} is not one of {DEPTHWISE_IMPLS}')
  if impl == 'auto':
    # XLA:CPU expands a grouped convolution into a dense one (C times the FLOPs): 30-70x slower
    # than the tap sums below. GPUs and TPUs have native depthwise kernels.
    return 'taps' if jax.default_backend() == 'cpu' else 'xla'
  return impl


# Depthwise convolution as sums of k*k shifted slices ("taps"), with a hand-written VJP:
#   _dw_conv(x, w)[b, o, q, c] = sum_ij xpad[b, o*s + i*d, q*s + j*d, c] w[i, j, c]
#   _dw_conv_t(dy, w)          = d<dy, _dw_conv(x, w)>/dx      (linear in dy and in w)
#   _dw_kernel_grad(x, dy)     = d<dy, _dw_conv(x, w)>/dw      (linear in x and in dy)
# The VJP is what a first-order step runs: autodiff of the slices would give k*k pad-and-add
# passes and k*k separate reductions, 3-10x slower on CPU. The rules' own bodies are plain code
# (tap sums again, and _dw_kernel_grad's custom JVP), so that a derivative *of* the backward pass
# works in both modes: forward over reverse (exact second order, ``hypergradient.mixed_hvp``)
# needs a JVP of every function the backward pass calls, and a custom_vjp function has none.


def materialize(x: jax.Array) -> jax.Array:
  """``x``, computed once into memory before the ops that read it at k*k shifted offsets.

  XLA:CPU fuses an elementwise producer into every consumer that reads it, and a tap sum reads
  its input k*k times: the producer (a BatchNorm backward, a sum of edge outputs) is then
  recomputed k*k times per element. It drops ``lax.optimization_barrier`` before fusion (jax
  0.10), but never fuses across a conditional: hence a conditional whose predicate is unknown
  at compile time and whose branches agree (``v + 0.0`` only turns -0.0 into +0.0). Its
  derivative is a conditional too, so cotangents are materialised the same way.
  """
  flat = x.reshape(-1)
  return lax.cond(jnp.isnan(flat[0]), lambda v: v + jnp.zeros((), v.dtype), lambda v: v, x)


def after(x, token: jax.Array):
  """``x`` (a pytree), passed on only once ``token`` exists: whatever reads the result runs
  after ``token`` is computed, and XLA cannot merge it with the same computation on ``x``
  elsewhere. On GPU and TPU an optimisation barrier over both says so; XLA:CPU drops those
  before fusion (see :func:`materialize`), so there a conditional on ``token``'s first value
  whose two branches both return ``x`` does it (CSE does not look through a conditional)."""
  if jax.default_backend() != 'cpu':
    return lax.optimization_barrier((x, token))[0]
  flag = jnp.isnan(token.reshape(-1)[0])
  return lax.cond(flag, lambda v: jax.tree_util.tree_map(lambda a: a + jnp.zeros((), a.dtype), v),
                  lambda v: v, x)


def recompute_in_backward(f):
  """``f`` (arrays in, a pytree of float arrays out) whose derivative keeps only its inputs
  and recomputes ``f``'s intermediate values when the cotangent arrives.

  ``jax.checkpoint`` means the same, but on XLA:CPU it saves nothing (measured: 0.96 GB of
  temporaries against 0.94 GB without it, 5 cells, C=8, batch 16): the recomputation does not
  depend on the cotangent, so XLA schedules it early or merges it with the forward pass. Here
  the recomputation reads its inputs through :func:`after` the cotangent. Both rules are plain
  code, so a forward-mode derivative of the backward pass (exact second order) recomputes too;
  a reverse-mode one (``unrolled``) keeps the recomputation's values instead.
  """
  @jax.custom_vjp
  def g(*args):
    return f(*args)

  def fwd(*args):
    # f's value by jax.vjp, which is f(*args): under a forward-mode derivative of the whole
    # backward pass (exact second order) f's own custom_vjp ops then meet a reverse pass,
    # whose rules have JVPs, and never the forward mode directly, which they lack
    return jax.vjp(f, *args)[0], args

  def bwd(args, cotangent):
    token = jax.tree_util.tree_leaves(cotangent)[0]
    return jax.vjp(f, *after(args, token))[1](cotangent)

  g.defvjp(fwd, bwd)
  return g


def _taps(x: jax.Array, k: int, stride: int, dilation: int, pad: int):
  """The k*k strided windows of the zero-padded input, row-major over (i, j)."""
  b, h, w, c = x.shape
  ho, wo = _out_size(h, k, stride, dilation, pad), _out_size(w, k, stride, dilation, pad)
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else x
  return [lax.slice(xp, (0, i * dilation, j * dilation, 0),
                    (b, i * dilation + (ho - 1) * stride + 1, j * dilation + (wo - 1) * stride + 1,
                     c), (1, stride, stride, 1))
          for i in range(k) for j in range(k)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _dw_conv(x, w, stride, dilation, pad):
  return _dw_conv_sum(materialize(x), w, stride, dilation, pad)


def _dw_conv_sum(x, w, stride, dilation, pad):
  k = w.shape[0]
  out = None
  for t, tap in enumerate(_taps(x, k, stride, dilation, pad)):
    term = tap * _per_channel(w[t // k, t % k])
    out = term if out is None else out + term  # one fused loop over the output
  return out


def _dw_conv_t(dy, w, stride, dilation, pad, in_hw):
  """Transpose of ``_dw_conv`` in x: dilate dy by the stride, pad, correlate with the flipped w."""
  k = w.shape[0]
  reach = dilation * (k - 1)
  config = [(0, 0, 0)]
  for axis, size in enumerate(in_hw):
    span = (dy.shape[1 + axis] - 1) * stride + 1
    config.append((reach - pad, size + pad - span, stride - 1))
  config.append((0, 0, 0))
  padded = materialize(lax.pad(dy, jnp.zeros((), dy.dtype), config))
  return _dw_conv_sum(padded, w[::-1, ::-1], 1, dilation, 0)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5))
def _dw_kernel_grad(x, dy, k, stride, dilation, pad):
  # one variadic reduce: a single pass over x and dy fills all k*k accumulators (k*k separate
  # reductions were 3x slower); the W axis is summed afterwards, which vectorises better
  products = tuple(tap * dy for tap in _taps(x, k, stride, dilation, pad))
  zeros = tuple(jnp.zeros((), dy.dtype) for _ in products)
  sums = lax.reduce(products, zeros, lambda a, b: tuple(u + v for u, v in zip(a, b)), (0, 1))
  return jnp.stack([jnp.sum(s, axis=0) for s in sums]).reshape(k, k, x.shape[-1])


def _dw_kernel_grad_sums(x, dy, k, stride, dilation, pad):
  """``_dw_kernel_grad`` as k*k separate sums: slower, but its derivatives in either mode are
  JAX's own (a variadic reduce has no transpose rule)."""
  return jnp.stack([jnp.sum(tap * dy, axis=(0, 1, 2))
                    for tap in _taps(x, k, stride, dilation, pad)]).reshape(k, k, x.shape[-1])


@_dw_kernel_grad.defjvp
def _dw_kernel_grad_jvp(k, stride, dilation, pad, primals, tangents):
  (x, dy), (tx, tdy) = primals, tangents  # bilinear: d(x dy) = dx dy + x ddy
  return (_dw_kernel_grad(x, dy, k, stride, dilation, pad),
          _dw_kernel_grad_sums(tx, dy, k, stride, dilation, pad)
          + _dw_kernel_grad_sums(x, tdy, k, stride, dilation, pad))


def _dw_conv_fwd(x, w, stride, dilation, pad):
  x = materialize(x)
  return _dw_conv_sum(x, w, stride, dilation, pad), (x, w)


def _dw_conv_bwd(stride, dilation, pad, residuals, dy):
  x, w = residuals
  dy = materialize(dy)  # read k*k times by each of the two products below
  return (_dw_conv_t(dy, w, stride, dilation, pad, x.shape[1:3]),
          _dw_kernel_grad(x, dy, w.shape[0], stride, dilation, pad))


_dw_conv.defvjp(_dw_conv_fwd, _dw_conv_bwd)


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int = 1, dilation: int = 1,
                   impl: str = 'auto') -> jax.Array:
  """Depthwise convolution with symmetric 'same' padding ``dilation * (k - 1) / 2``.

  Args:
    x: ``(B, H, W, C)``.
    kernel: ``(k, k, C)``, one filter per channel.
    stride, dilation: as in ``torch.nn.Conv2d``.
    impl: ``'taps'`` (sums of k*k shifted slices with a hand-written VJP; derivatives of any
      order, reverse or forward over reverse), ``'xla'`` (grouped convolution) or ``'auto'``
      (``'taps'`` on CPU).
  Returns:
    ``(B, H', W', C)``.
  """
  k = kernel.shape[0]
  pad = dilation * (k - 1) // 2
  if resolve_depthwise_impl(impl) == 'xla':
    return lax.conv_general_dilated(
        x, kernel[:, :, None, :], (stride, stride), [(pad, pad), (pad, pad)],
        rhs_dilation=(dilation, dilation), dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        feature_group_count=x.shape[-1])
  return _dw_conv(x, kernel, stride, dilation, pad)


def pointwise_conv(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
  """1x1 convolution applied edge by edge: ``(B, H, W, E*C_in) x (E, C_in, C_out)``.

  Computed as one matmul with the block-diagonal ``(E*C_in, E*C_out)`` kernel: E times the
  multiply-adds of a batched matmul, but the batched form makes XLA:CPU transpose the activation
  to edge-major and back, which cost more than the matmul (5 cells, C=8: 2.3x slower).
  """
  if stride > 1:
    x = x[:, ::stride, ::stride, :]
  e, c_in, c_out = kernel.shape
  if e == 1:
    return x @ kernel[0]
  eye = jnp.eye(e, dtype=kernel.dtype)
  block_diagonal = (eye[:, None, :, None] * kernel[:, :, None, :]).reshape(e * c_in, e * c_out)
  return x @ block_diagonal


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0) -> jax.Array:
  """Dense convolution, HWIO kernel, symmetric padding (PyTorch's ``Conv2d(bias=False)``)."""
  return lax.conv_general_dilated(x, kernel, (stride, stride),
                                  [(padding, padding), (padding, padding)],
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def max_pool_3x3(x: jax.Array, stride: int) -> jax.Array:
  """3x3 max pool, padding 1; padded cells are -inf so they never win. The gradient goes to the
  first maximum of each window in row-major order, as in PyTorch."""
  if jax.default_backend() == 'cpu':
    # XLA:CPU's reduce_window / select_and_scatter pair is ~10x slower than tap maxima
    return _max_pool_taps(x, stride)
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, stride, stride, 1),
                           ((0, 0), (1, 1), (1, 1), (0, 0)))


def _first_argmax_taps(x, stride):
  padded = jnp.pad(materialize(x), ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  taps = _taps(padded, 3, stride, 1, 0)
  stacked = lax.stop_gradient(jnp.stack(taps))
  index = lax.broadcasted_iota(jnp.int32, stacked.shape, 0)

  def pick(a, b):  # the larger value; on a tie the earlier tap
    take_b = (b[0] > a[0]) | ((b[0] == a[0]) & (b[1] < a[1]))
    return jnp.where(take_b, b[0], a[0]), jnp.where(take_b, b[1], a[1])

  # The winner comes from a reduction, which XLA:CPU materialises; as an elementwise chain it
  # would be fused into, and recomputed by, each of the backward's 9 shifted reads of it
  # (XLA:CPU drops optimisation barriers before fusion). The value is then selected by it, which
  # keeps it differentiable for higher-order derivatives.
  _, arg = lax.reduce((stacked, index), (jnp.array(-jnp.inf, x.dtype), jnp.array(0, jnp.int32)),
                      pick, (0,))
  best = taps[0]
  for t, tap in enumerate(taps[1:], 1):
    best = jnp.where(arg == t, tap, best)
  return best, arg.astype(jnp.int8)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool_taps(x, stride):
  return _first_argmax_taps(x, stride)[0]


def _max_pool_taps_fwd(x, stride):
  y, arg = _first_argmax_taps(x, stride)
  return y, (arg, x.shape)


def _max_pool_taps_bwd(stride, residuals, dy):
  arg, shape = residuals
  dy = materialize(dy)
  dx = None
  for t in range(9):  # route dy back to each window's winner: a sum of shifted, dilated copies
    config = [(0, 0, 0)]
    for axis, offset in ((1, t // 3), (2, t % 3)):
      low = offset - 1
      config.append((low, shape[axis] - low - ((dy.shape[axis] - 1) * stride + 1), stride - 1))
    config.append((0, 0, 0))
    part = lax.pad(jnp.where(arg == t, dy, jnp.zeros((), dy.dtype)), jnp.zeros((), dy.dtype),
                   config)
    dx = part if dx is None else dx + part
  return (dx,)


_max_pool_taps.defvjp(_max_pool_taps_fwd, _max_pool_taps_bwd)


def _window_counts(size: int, k: int, stride: int, pad: int) -> np.ndarray:
  """How many unpadded cells each pooling window covers along one axis."""
  starts = np.arange(_out_size(size, k, stride, 1, pad)) * stride - pad
  return np.minimum(starts + k, size) - np.maximum(starts, 0)


def avg_pool(x: jax.Array, k: int, stride: int, pad: int) -> jax.Array:
  """Average pool that divides by the number of real (unpadded) cells, as PyTorch's
  ``count_include_pad=False``."""
  total = lax.reduce_window(x, 0.0, lax.add, (1, k, k, 1),
                            (1, stride, stride, 1), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  counts = np.outer(_window_counts(x.shape[1], k, stride, pad),
                    _window_counts(x.shape[2], k, stride, pad))
  return total / jnp.asarray(counts[None, :, :, None], x.dtype)


def avg_pool_3x3(x: jax.Array, stride: int) -> jax.Array:
  return avg_pool(x, 3, stride, 1)


def batch_norm(x: jax.Array, mean: jax.Array, var: jax.Array, train: bool,
               scale: jax.Array | None = None, bias: jax.Array | None = None,
               eps: float = BN_EPS, momentum: float = BN_MOMENTUM):
  """BatchNorm over (B, H, W) in PyTorch's convention.

  Returns ``(y, (new_mean, new_var))``: in training the batch's biased variance normalises and
  the running variance is updated with the unbiased one, exactly as ``torch.nn.BatchNorm2d``.
  Statistics and the normalisation are computed in the running statistics' precision (float32
  under bf16 mixed precision: a bf16 variance of a bf16 batch loses most of its digits); ``y``
  has ``x``'s dtype.
  """
  xs = x.astype(jnp.promote_types(x.dtype, mean.dtype))
  if train:
    batch_mean = jnp.mean(xs, axis=(0, 1, 2))
    batch_var = jnp.mean(jnp.square(xs - _per_channel(batch_mean)), axis=(0, 1, 2))
    n = x.shape[0] * x.shape[1] * x.shape[2]
    unbiased = batch_var * (n / max(n - 1, 1))
    new_stats = ((1 - momentum) * mean + momentum * lax.stop_gradient(batch_mean),
                 (1 - momentum) * var + momentum * lax.stop_gradient(unbiased))
    use_mean, use_var = batch_mean, batch_var
  else:
    new_stats = (mean, var)
    use_mean, use_var = mean, var
  y = ((xs - _per_channel(use_mean)) * _per_channel(lax.rsqrt(use_var + eps))).astype(x.dtype)
  if scale is not None:
    y = y * _per_channel(scale) + _per_channel(bias)
  return y, new_stats


def drop_path(x: jax.Array, drop_prob: jax.Array | float, key: jax.Array) -> jax.Array:
  """Per-sample drop path: keep each sample with probability ``1 - p``, rescaled by ``1/(1-p)``."""
  keep = 1.0 - jnp.asarray(drop_prob, jnp.promote_types(x.dtype, jnp.float32))
  mask = jax.random.bernoulli(key, keep, (x.shape[0], 1, 1, 1))
  return jnp.where(mask, (x / keep).astype(x.dtype), jnp.zeros((), x.dtype))
