"""The candidate operations as Linen modules, each over a stack of ``n_edges`` edges.

Each takes ``(x, train)`` with ``x`` of layout ``(B, H, W, n_edges * C_in)`` (the building blocks
``Pointwise``, ``Depthwise``, ``RectConv``, ``Conv`` and ``Linear`` take ``x`` alone), and names its
parameters and submodules as the checkpoints and :mod:`darts_jax.interop` know them.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from darts_jax.ops import init, kernels

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
    y, (new_mean, new_var) = kernels.batch_norm(x, mean.value, var.value, train, scale, bias)
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
    kernel = self.param('kernel', init.torch_uniform(self.c_in),
                        (self.n_edges, self.c_in, self.c_out), x.dtype)
    return kernels.pointwise_conv(x, kernel, self.stride)


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
    kernel = self.param('kernel', init.torch_uniform(k * k), (k, k, self.channels), x.dtype)
    return kernels.depthwise_conv(x, kernel, self.stride, self.dilation, self.impl)


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
    pool = kernels.max_pool_3x3 if self.kind == 'max' else kernels.avg_pool_3x3
    x = pool(x, self.stride)
    if self.bn:
      x = BatchNorm(self.n_edges * self.c, affine=False, name='bn')(x, train)
    return x


class Identity(nn.Module):
  """The 'skip_connect' op at stride 1."""

  def __call__(self, x, train: bool):
    return x


class Zero(nn.Module):
  """The 'none' op: zeros shaped as the op's output would be."""
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
    w = self.param('kernel', init.torch_uniform(kh * kw * self.c_in),
                   (kh, kw, self.c_in, self.c_out), x.dtype)
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


class Conv(nn.Module):
  """Dense kxk convolution (stems and auxiliary heads; NAS-Bench-201's ops), without bias unless
  ``use_bias``."""
  c_in: int
  c_out: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  use_bias: bool = False

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    uniform = init.torch_uniform(k * k * self.c_in)  # the bias too, as in PyTorch
    kernel = self.param('kernel', uniform, (k, k, self.c_in, self.c_out), x.dtype)
    y = kernels.conv2d(x, kernel, self.stride, self.padding)
    if self.use_bias:
      y = y + self.param('bias', uniform, (self.c_out,), x.dtype)[None, None, None, :]
    return y


class Linear(nn.Module):
  """``torch.nn.Linear`` on ``(B, features_in)`` with PyTorch's default initialisation; kernel
  stored (in, out)."""
  features_in: int
  features_out: int

  @nn.compact
  def __call__(self, x):
    uniform = init.torch_uniform(self.features_in)  # the bias too, as in PyTorch
    kernel = self.param('kernel', uniform, (self.features_in, self.features_out), x.dtype)
    bias = self.param('bias', uniform, (self.features_out,), x.dtype)
    return x @ kernel + bias[None, :]
