"""DARTS candidate operations, written for *stacks of edges*.

Every op here works on an activation of layout ``(B, H, W, E * C)``: the inputs of ``E`` edges
placed side by side on the channel axis (edge ``e`` owns channels ``e*C .. e*C+C-1``). An op's
weights are stacked the same way, one slice per edge, so one traced op serves ``E`` edges of the
search cell at once (the supernet batches all edges that leave the same node). With ``E = 1`` the
same modules are the ops of the evaluation networks.

Semantics follow the original DARTS code (quark0/darts ``cnn/operations.py``): symmetric padding,
average pooling that does not count padded cells, convolutions without bias, BatchNorm in
PyTorch's convention (eps 1e-5, momentum 0.1, running variance updated with the unbiased batch
variance). Layouts: NHWC activations, depthwise kernels ``(k, k, E*C)``, pointwise kernels
``(E, C_in, C_out)``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

BN_EPS = 1e-5
BN_MOMENTUM = 0.1  # PyTorch convention: new = (1 - m) * running + m * batch
DEPTHWISE_IMPLS = ('auto', 'taps', 'xla')

# ----------------------------------------------------------------------------------------------
# Pure kernels
# ----------------------------------------------------------------------------------------------


def _out_size(size: int, k: int, stride: int, dilation: int, pad: int) -> int:
  return (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1


def _resolve_depthwise_impl(impl: str) -> str:
  if impl not in DEPTHWISE_IMPLS:
    raise ValueError(f'depthwise_impl={impl!r} is not one of {DEPTHWISE_IMPLS}')
  if impl == 'auto':
    # XLA:CPU expands a grouped convolution into a dense one (C times the FLOPs): 30-70x slower
    # than the tap sums below. GPUs and TPUs have native depthwise kernels.
    return 'taps' if jax.default_backend() == 'cpu' else 'xla'
  return impl


# Depthwise convolution as sums of k*k shifted slices ("taps"), with hand-written derivatives.
# The three functions are the convolution and its two transposes; each one's VJP is written with
# the others, so derivatives of any order stay tap sums (autodiff of the slices would instead
# give k*k pad-and-add passes and k*k separate reductions, 3-10x slower on CPU).
#   _dw_conv(x, w)[b, o, q, c] = sum_ij xpad[b, o*s + i*d, q*s + j*d, c] w[i, j, c]
#   _dw_conv_t(dy, w)          = d<dy, _dw_conv(x, w)>/dx      (linear in dy and in w)
#   _dw_kernel_grad(x, dy)     = d<dy, _dw_conv(x, w)>/dw      (linear in x and in dy)


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
    term = tap * w[t // k, t % k]
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
  return _dw_conv(lax.pad(dy, jnp.zeros((), dy.dtype), config), w[::-1, ::-1], 1, dilation, 0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _dw_kernel_grad(x, dy, k, stride, dilation, pad):
  # one variadic reduce: a single pass over x and dy fills all k*k accumulators (k*k separate
  # reductions were 3x slower); the W axis is summed afterwards, which vectorises better
  products = tuple(tap * dy for tap in _taps(x, k, stride, dilation, pad))
  zeros = tuple(jnp.zeros((), dy.dtype) for _ in products)
  sums = lax.reduce(products, zeros, lambda a, b: tuple(u + v for u, v in zip(a, b)), (0, 1))
  return jnp.stack([jnp.sum(s, axis=0) for s in sums]).reshape(k, k, x.shape[-1])


def _dw_conv_fwd(x, w, stride, dilation, pad):
  x = materialize(x)
  return _dw_conv_sum(x, w, stride, dilation, pad), (x, w)


def _dw_conv_bwd(stride, dilation, pad, residuals, dy):
  x, w = residuals
  dy = materialize(dy)  # read k*k times by each of the two products below
  return (_dw_conv_t(dy, w, stride, dilation, pad, x.shape[1:3]),
          _dw_kernel_grad(x, dy, w.shape[0], stride, dilation, pad))


def _dw_kernel_grad_fwd(x, dy, k, stride, dilation, pad):
  return _dw_kernel_grad(x, dy, k, stride, dilation, pad), (x, dy)


def _dw_kernel_grad_bwd(k, stride, dilation, pad, residuals, dw):
  x, dy = residuals
  return (_dw_conv_t(dy, dw, stride, dilation, pad, x.shape[1:3]),
          _dw_conv(x, dw, stride, dilation, pad))


_dw_conv.defvjp(_dw_conv_fwd, _dw_conv_bwd)
_dw_kernel_grad.defvjp(_dw_kernel_grad_fwd, _dw_kernel_grad_bwd)


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int = 1, dilation: int = 1,
                   impl: str = 'auto') -> jax.Array:
  """Depthwise convolution with symmetric 'same' padding ``dilation * (k - 1) / 2``.

  Args:
    x: ``(B, H, W, C)``.
    kernel: ``(k, k, C)``, one filter per channel.
    stride, dilation: as in ``torch.nn.Conv2d``.
    impl: ``'taps'`` (sums of k*k shifted slices with hand-written derivatives; reverse mode
      only, to any order), ``'xla'`` (grouped convolution) or ``'auto'`` (``'taps'`` on CPU).
  Returns:
    ``(B, H', W', C)``.
  """
  k = kernel.shape[0]
  pad = dilation * (k - 1) // 2
  if _resolve_depthwise_impl(impl) == 'xla':
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
  """Average pool that divides by the number of real (unpadded) cells: ``count_include_pad=False``."""
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
    batch_var = jnp.mean(jnp.square(xs - batch_mean), axis=(0, 1, 2))
    n = x.shape[0] * x.shape[1] * x.shape[2]
    unbiased = batch_var * (n / max(n - 1, 1))
    new_stats = ((1 - momentum) * mean + momentum * lax.stop_gradient(batch_mean),
                 (1 - momentum) * var + momentum * lax.stop_gradient(unbiased))
    use_mean, use_var = batch_mean, batch_var
  else:
    new_stats = (mean, var)
    use_mean, use_var = mean, var
  y = ((xs - use_mean) * lax.rsqrt(use_var + eps)).astype(x.dtype)
  if scale is not None:
    y = y * scale + bias
  return y, new_stats


def drop_path(x: jax.Array, drop_prob: jax.Array | float, key: jax.Array) -> jax.Array:
  """Per-sample drop path: keep each sample with probability ``1 - p`` and rescale by ``1/(1-p)``."""
  keep = 1.0 - jnp.asarray(drop_prob, jnp.promote_types(x.dtype, jnp.float32))
  mask = jax.random.bernoulli(key, keep, (x.shape[0], 1, 1, 1))
  return jnp.where(mask, (x / keep).astype(x.dtype), jnp.zeros((), x.dtype))


# ----------------------------------------------------------------------------------------------
# Initialisers: PyTorch's defaults (kaiming_uniform with a=sqrt(5)), i.e. U(-1/sqrt(fan_in), +)
# ----------------------------------------------------------------------------------------------


def torch_uniform(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


# ----------------------------------------------------------------------------------------------
# Modules (Linen). Each takes (x, train) with x of layout (B, H, W, n_edges * C_in).
# ----------------------------------------------------------------------------------------------


class BatchNorm(nn.Module):
  """PyTorch-convention BatchNorm; ``affine=False`` is the search network's choice inside cells."""
  features: int
  affine: bool = True

  @nn.compact
  def __call__(self, x, train: bool):
    stats_dtype = jnp.promote_types(x.dtype, jnp.float32)  # float32 under bf16 compute
    mean = self.variable('batch_stats', 'mean', jnp.zeros, (self.features,), stats_dtype)
    var = self.variable('batch_stats', 'var', jnp.ones, (self.features,), stats_dtype)
    scale = bias = None
    if self.affine:
      scale = self.param('scale', nn.initializers.ones, (self.features,), x.dtype)
      bias = self.param('bias', nn.initializers.zeros, (self.features,), x.dtype)
    y, (new_mean, new_var) = batch_norm(x, mean.value, var.value, train, scale, bias)
    if train and not self.is_initializing():
      mean.value, var.value = new_mean, new_var
    return y


class Pointwise(nn.Module):
  """Edge-wise 1x1 convolution (no bias)."""
  n_edges: int
  c_in: int
  c_out: int
  stride: int = 1

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', torch_uniform(self.c_in), (self.n_edges, self.c_in, self.c_out),
                        x.dtype)
    return pointwise_conv(x, kernel, self.stride)


class Depthwise(nn.Module):
  """Edge-wise depthwise kxk convolution (no bias)."""
  channels: int  # n_edges * C
  kernel_size: int
  stride: int = 1
  dilation: int = 1
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param('kernel', torch_uniform(k * k), (k, k, self.channels), x.dtype)
    return depthwise_conv(x, kernel, self.stride, self.dilation, self.impl)


class ReLUConvBN(nn.Module):
  """ReLU, 1x1 convolution, BN: the cells' input preprocessing."""
  c_in: int
  c_out: int
  affine: bool = True
  n_edges: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    x = Pointwise(self.n_edges, self.c_in, self.c_out, name='conv')(nn.relu(x))
    return BatchNorm(self.n_edges * self.c_out, self.affine, name='bn')(x, train)


class FactorizedReduce(nn.Module):
  """ReLU, then two stride-2 1x1 convolutions, the second on the input shifted by one pixel."""
  c_in: int
  c_out: int
  affine: bool = True
  n_edges: int = 1

  def setup(self):
    if self.c_out % 2:
      raise ValueError(f'FactorizedReduce needs an even number of output channels, got '
                       f'c_out={self.c_out}')
    half = self.c_out // 2
    self.conv_1 = Pointwise(self.n_edges, self.c_in, half, stride=2)
    self.conv_2 = Pointwise(self.n_edges, self.c_in, half, stride=2)
    self.bn = BatchNorm(self.n_edges * self.c_out, self.affine)

  def __call__(self, x, train: bool):
    b, h, w, _ = x.shape
    if h % 2 or w % 2:
      raise ValueError(f'FactorizedReduce needs an even spatial size, got {h}x{w}: choose an '
                       'input size divisible by 2 at every reduction')
    x = nn.relu(x)
    e, half = self.n_edges, self.c_out // 2
    a = self.conv_1(x).reshape(b, h // 2, w // 2, e, half)
    s = self.conv_2(x[:, 1:, 1:, :]).reshape(b, h // 2, w // 2, e, half)
    y = jnp.concatenate([a, s], axis=-1).reshape(b, h // 2, w // 2, e * self.c_out)
    return self.bn(y, train)


class SepConv(nn.Module):
  """[ReLU, depthwise kxk (stride), 1x1, BN] then the same with stride 1."""
  c: int
  kernel_size: int
  stride: int
  affine: bool = True
  n_edges: int = 1
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x, train: bool):
    e, c, k = self.n_edges, self.c, self.kernel_size
    for i, stride in ((1, self.stride), (2, 1)):
      x = Depthwise(e * c, k, stride, 1, self.impl, name=f'dw{i}')(nn.relu(x))
      x = Pointwise(e, c, c, name=f'pw{i}')(x)
      x = BatchNorm(e * c, self.affine, name=f'bn{i}')(x, train)
    return x


class DilConv(nn.Module):
  """ReLU, depthwise kxk dilation 2 (stride), 1x1, BN."""
  c: int
  kernel_size: int
  stride: int
  affine: bool = True
  n_edges: int = 1
  impl: str = 'auto'
  dilation: int = 2

  @nn.compact
  def __call__(self, x, train: bool):
    e, c = self.n_edges, self.c
    x = Depthwise(e * c, self.kernel_size, self.stride, self.dilation, self.impl,
                  name='dw')(nn.relu(x))
    x = Pointwise(e, c, c, name='pw')(x)
    return BatchNorm(e * c, self.affine, name='bn')(x, train)


class Pool(nn.Module):
  """3x3 max or average pool. In the search network it is followed by BN(affine=False)."""
  kind: str  # 'max' | 'avg'
  c: int
  stride: int
  bn: bool
  n_edges: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    x = max_pool_3x3(x, self.stride) if self.kind == 'max' else avg_pool_3x3(x, self.stride)
    if self.bn:
      x = BatchNorm(self.n_edges * self.c, affine=False, name='bn')(x, train)
    return x


class Identity(nn.Module):

  def __call__(self, x, train: bool):
    return x


class Zero(nn.Module):
  stride: int

  def __call__(self, x, train: bool):
    return jnp.zeros_like(x[:, ::self.stride, ::self.stride, :])


class RectConv(nn.Module):
  """Dense convolution with a rectangular kernel, per-axis stride and padding, no bias."""
  c_in: int
  c_out: int
  kernel: tuple[int, int]
  stride: tuple[int, int]
  padding: tuple[int, int]

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel
    w = self.param('kernel', torch_uniform(kh * kw * self.c_in), (kh, kw, self.c_in, self.c_out),
                   x.dtype)
    (ph, pw) = self.padding
    return lax.conv_general_dilated(x, w, self.stride, [(ph, ph), (pw, pw)],
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


class Conv7x1_1x7(nn.Module):
  """The original's conv_7x1_1x7: ReLU, (1, 7) conv (stride (1, s)), (7, 1) conv (stride (s, 1)),
  BN. Only the published NASNet/AmoebaNet cells use it; it is not in PRIMITIVES."""
  c: int
  stride: int
  affine: bool = True

  @nn.compact
  def __call__(self, x, train: bool):
    c, s = self.c, self.stride
    x = RectConv(c, c, (1, 7), (1, s), (0, 3), name='conv_1x7')(nn.relu(x))
    x = RectConv(c, c, (7, 1), (s, 1), (3, 0), name='conv_7x1')(x)
    return BatchNorm(c, self.affine, name='bn')(x, train)


class PerEdge(nn.Module):
  """Runs a single-edge op once per edge: how a user-defined op joins the batched search cell."""
  make: Callable[[int], nn.Module]  # n_edges=1 -> module
  c: int
  n_edges: int

  @nn.compact
  def __call__(self, x, train: bool):
    outs = [self.make(1, name=f'edge{e}')(x[..., e * self.c:(e + 1) * self.c], train)
            for e in range(self.n_edges)]
    return jnp.concatenate(outs, axis=-1)


# ----------------------------------------------------------------------------------------------
# The op registry
# ----------------------------------------------------------------------------------------------

# An op factory: (C, stride, affine, n_edges, search, impl, name) -> module taking
# (x: (B, H, W, n_edges*C), train). ``search`` is True inside the search network (the original
# adds BN after pooling there).
OpFactory = Callable[..., nn.Module]


class OpRegistry(Mapping):
  """A read-only, hashable ``{op name: factory}`` (hashable so configs and modules can hold it)."""

  def __init__(self, items: Mapping[str, OpFactory]):
    self._items = tuple(items.items())
    self._dict = dict(self._items)

  def __getitem__(self, name):
    return self._dict[name]

  def __iter__(self):
    return iter(self._dict)

  def __len__(self):
    return len(self._dict)

  def __hash__(self):
    return hash(self._items)

  def __eq__(self, other):
    return isinstance(other, OpRegistry) and self._items == other._items

  def __repr__(self):
    return f'OpRegistry({", ".join(self._dict)})'


def _skip(c, stride, affine, n_edges, search, impl, name):
  if stride == 1:
    return Identity(name=name)
  return FactorizedReduce(c, c, affine, n_edges, name=name)


def single_edge_op(make: Callable[..., nn.Module]) -> OpFactory:
  """Turns ``make(c, stride, affine, name=...)`` (an op for one edge, NHWC in and out) into an
  op factory that also serves a stack of edges."""

  def factory(c, stride, affine, n_edges, search, impl, name):
    if n_edges == 1:
      return make(c, stride, affine, name=name)
    return PerEdge(lambda _, name: make(c, stride, affine, name=name), c, n_edges, name=name)

  return factory


OPS = OpRegistry({
    'none': lambda c, stride, affine, n_edges, search, impl, name: Zero(stride, name=name),
    'max_pool_3x3': lambda c, stride, affine, n_edges, search, impl, name: Pool(
        'max', c, stride, search, n_edges, name=name),
    'avg_pool_3x3': lambda c, stride, affine, n_edges, search, impl, name: Pool(
        'avg', c, stride, search, n_edges, name=name),
    'skip_connect': _skip,
    'sep_conv_3x3': lambda c, stride, affine, n_edges, search, impl, name: SepConv(
        c, 3, stride, affine, n_edges, impl, name=name),
    'sep_conv_5x5': lambda c, stride, affine, n_edges, search, impl, name: SepConv(
        c, 5, stride, affine, n_edges, impl, name=name),
    'dil_conv_3x3': lambda c, stride, affine, n_edges, search, impl, name: DilConv(
        c, 3, stride, affine, n_edges, impl, name=name),
    'dil_conv_5x5': lambda c, stride, affine, n_edges, search, impl, name: DilConv(
        c, 5, stride, affine, n_edges, impl, name=name),
    # used by the published NASNet and AmoebaNet cells, not searched over by default
    'sep_conv_7x7': lambda c, stride, affine, n_edges, search, impl, name: SepConv(
        c, 7, stride, affine, n_edges, impl, name=name),
    'conv_7x1_1x7': single_edge_op(
        lambda c, stride, affine, name: Conv7x1_1x7(c, stride, affine, name=name)),
})


def make_op_registry(extra: Mapping[str, OpFactory] | None = None,
                     base: Mapping[str, OpFactory] = OPS) -> OpRegistry:
  """A new read-only registry: ``base`` plus ``extra`` ops (new names or replacements).

  A user op is written for one edge and wrapped with :func:`single_edge_op`, e.g.::

      ops = make_op_registry({'conv_3x3': single_edge_op(lambda c, stride, affine, name:
                                                        MyConv(c, stride, affine, name=name))})
  """
  merged = dict(base)
  for name, factory in (extra or {}).items():
    if not isinstance(name, str) or not name:
      raise ValueError(f'op names must be non-empty strings, got {name!r}')
    if not callable(factory):
      raise ValueError(f'op {name!r}: the factory must be callable, got {type(factory).__name__}')
    merged[name] = factory
  return OpRegistry(merged)


def check_op_names(names: Sequence[str], ops: Mapping[str, OpFactory] = OPS) -> None:
  unknown = [n for n in names if n not in ops]
  if unknown:
    raise ValueError(f'unknown op {unknown[0]!r}; allowed: {", ".join(ops)}')


def make_op(name: str, c: int, stride: int, affine: bool, *, n_edges: int = 1,
            search: bool = False, impl: str = 'auto', ops: Mapping[str, OpFactory] = OPS,
            module_name: str | None = None) -> nn.Module:
  """Builds op ``name`` from ``ops`` for ``n_edges`` stacked edges of ``c`` channels each."""
  check_op_names([name], ops)
  return ops[name](c, stride, affine, n_edges, search, impl, module_name)


class Conv(nn.Module):
  """Dense kxk convolution without bias (stems and auxiliary heads)."""
  c_in: int
  c_out: int
  kernel_size: int
  stride: int = 1
  padding: int = 0

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param('kernel', torch_uniform(k * k * self.c_in), (k, k, self.c_in, self.c_out),
                        x.dtype)
    return conv2d(x, kernel, self.stride, self.padding)


class Linear(nn.Module):
  """``torch.nn.Linear`` with PyTorch's default initialisation; kernel stored (in, out)."""
  features_in: int
  features_out: int

  @nn.compact
  def __call__(self, x):
    init = torch_uniform(self.features_in)
    kernel = self.param('kernel', init, (self.features_in, self.features_out), x.dtype)
    bias = self.param('bias', init, (self.features_out,), x.dtype)
    return x @ kernel + bias


def torch_default_init(key: jax.Array, shapes: Mapping[str, Any], dtype=None) -> dict[str, Any]:
  """Values for ``{'params': ..., 'batch_stats': ...}`` shapes, drawn as the modules' own
  initialisers draw them (PyTorch defaults; BN scale 1, bias 0, mean 0, var 1), from ONE random
  draw. Tracing ``module.init`` costs a threefry hash per parameter and path fold-in, which
  took XLA:CPU 30-60 s to compile for a search network; this takes a second.

  Raises KeyError for a parameter whose role it does not know (e.g. a user op's).
  """
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  sizes = [int(np.prod(s.shape)) for _, s in flat]
  u = np.asarray(jax.random.uniform(key, (max(sum(sizes), 1),), jnp.float32, -1.0, 1.0))
  leaves, offset = [], 0
  siblings: dict[tuple, dict] = {}
  for path, s in flat:
    names = tuple(getattr(p, 'key', str(p)) for p in path)
    siblings.setdefault(names[:-1], {})[names[-1]] = s
  for (path, s), n in zip(flat, sizes):
    names = tuple(getattr(p, 'key', str(p)) for p in path)
    leaf, parent, shape = names[-1], names[-2] if len(names) > 1 else '', s.shape
    sib = siblings[names[:-1]]
    if leaf in ('scale', 'var'):
      value = np.ones(shape)
    elif leaf == 'mean' or (leaf == 'bias' and 'scale' in sib):
      value = np.zeros(shape)
    else:
      if leaf == 'bias' and 'kernel' in sib:
        fan_in = sib['kernel'].shape[0]
      elif leaf != 'kernel':
        raise KeyError(f'no default initialiser known for {"/".join(names)}')
      elif parent.startswith('dw'):
        fan_in = shape[0] * shape[1]
      elif len(shape) == 3:
        fan_in = shape[1]
      else:
        fan_in = int(np.prod(shape[:-1]))
      value = u[offset:offset + n].reshape(shape) / math.sqrt(fan_in)
    leaves.append(jnp.asarray(value, dtype or s.dtype))
    offset += n
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shapes), leaves)
