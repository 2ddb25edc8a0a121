"""Evaluation networks built from a genotype: the original's NetworkCIFAR and NetworkImageNet.

``__call__(images, train, drop_path_prob=0.0) -> (logits, logits_aux)``; ``logits_aux`` is None
unless the auxiliary head is on and ``train`` is True. Drop path draws from the ``'drop_path'``
PRNG stream (``rngs={'drop_path': key}``); it acts in training only and never on identity ops.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from darts_jax.genotypes import Genotype, parse_genotype
from darts_jax.ops import kernels, modules, registry
from darts_jax.supernet import check_image_size, reduction_layers


def _uses_drop_path(train: bool, drop_path_prob) -> bool:
  """A concrete 0 needs no PRNG key; a traced probability (e.g. a schedule) always goes through."""
  if isinstance(drop_path_prob, jax.core.Tracer):
    return train
  p = float(np.asarray(drop_path_prob))
  if not 0 <= p < 1:
    raise ValueError(f'drop_path_prob={p}: must be in [0, 1)')
  return train and p > 0


def _check_sizes(**sizes):
  for name, value in sizes.items():
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f'{name}={value!r}: must be a positive integer')


class EvalCell(nn.Module):
  genotype: Genotype
  c_prev_prev: int
  c_prev: int
  c: int
  reduction: bool
  reduction_prev: bool
  ops: registry.OpRegistry = registry.OPS
  impl: str = 'auto'

  @nn.compact
  def __call__(self, s0, s1, train: bool, drop_path_prob=0.0):
    c = self.c
    if self.reduction_prev:
      s0 = modules.FactorizedReduce(self.c_prev_prev, c, True, name='preprocess0')(s0, train)
    else:
      s0 = modules.ReLUConvBN(self.c_prev_prev, c, True, name='preprocess0')(s0, train)
    s1 = modules.ReLUConvBN(self.c_prev, c, True, name='preprocess1')(s1, train)
    pairs = self.genotype.reduce if self.reduction else self.genotype.normal
    concat = self.genotype.reduce_concat if self.reduction else self.genotype.normal_concat
    states = [s0, s1]
    for node in range(len(pairs) // 2):
      total = None
      for n in (2 * node, 2 * node + 1):
        name, j = pairs[n]
        stride = 2 if self.reduction and j < 2 else 1
        op = registry.make_op(name, c, stride, True, impl=self.impl, ops=self.ops,
                              module_name=f'op{n}')
        h = op(states[j], train)
        if _uses_drop_path(train, drop_path_prob) and not isinstance(op, modules.Identity):
          if not self.has_rng('drop_path'):
            raise ValueError("drop path in training needs a PRNG key: pass rngs={'drop_path': "
                             'key} to apply, or drop_path_prob=0')
          h = kernels.drop_path(h, drop_path_prob, self.make_rng('drop_path'))
        total = h if total is None else total + h
      states.append(total)
    return jnp.concatenate([states[i] for i in concat], axis=-1)


class AuxiliaryHead(nn.Module):
  """ReLU, 5x5 average pool, 1x1 conv 128, BN, ReLU, 2x2 conv 768, [BN], ReLU, linear."""
  c: int
  num_classes: int
  pool_stride: int  # 3 for CIFAR (8x8 -> 2x2), 2 for ImageNet (7x7 -> 2x2)
  final_bn: bool  # the original's ImageNet head omits the second BN

  @nn.compact
  def __call__(self, x, train: bool):
    h, w = x.shape[1:3]
    pooled = [(n - 5) // self.pool_stride + 1 if n >= 5 else 0 for n in (h, w)]
    if pooled != [2, 2]:
      raise ValueError(f'the auxiliary head needs a map that pools to 2x2, got a {h}x{w} map: '
                       'use 32x32 inputs for NetworkCIFAR (224x224 for NetworkImageNet) or '
                       'auxiliary=False')
    x = kernels.avg_pool(nn.relu(x), 5, self.pool_stride, 0)
    x = modules.Conv(self.c, 128, 1, name='conv1')(x)
    x = nn.relu(modules.BatchNorm(128, name='bn1')(x, train))
    x = modules.Conv(128, 768, 2, name='conv2')(x)
    if self.final_bn:
      x = modules.BatchNorm(768, name='bn2')(x, train)
    x = nn.relu(x).reshape(x.shape[0], -1)
    return modules.Linear(768, self.num_classes, name='classifier')(x)


class _EvalNetwork(nn.Module):
  """Shared cell stack of the CIFAR and ImageNet networks."""

  def cells(self, s0, s1, c_prev_prev, c_prev, c, reduction_prev, train, drop_path_prob,
            aux_head):
    genotype = parse_genotype(self.genotype)
    genotype.validate_ops(list(self.ops))
    reductions = reduction_layers(self.layers)
    # the auxiliary head reads the output of the last reduction cell (at 2/3 of the depth)
    aux_after = reductions[-1]
    logits_aux = None
    for i in range(self.layers):
      reduction = i in reductions
      if reduction:
        c *= 2
      cell = EvalCell(genotype, c_prev_prev, c_prev, c, reduction, reduction_prev, self.ops,
                      self.depthwise_impl, name=f'cell{i}')
      s0, s1 = s1, cell(s0, s1, train, drop_path_prob)
      reduction_prev = reduction
      concat = genotype.reduce_concat if reduction else genotype.normal_concat
      c_prev_prev, c_prev = c_prev, len(concat) * c
      if i == aux_after and self.auxiliary and (train or self.is_initializing()):
        # built at init in either mode, so that a later training apply finds its weights
        out = aux_head(c_prev)(s1, train)
        if train:
          logits_aux = out
          # The original's head starts with ReLU(inplace=True), which rewrites s1 itself. Every
          # later consumer starts with a ReLU too, except the final pooling when this is the
          # last cell: replicate that.
          s1 = nn.relu(s1)
    return s1, c_prev, logits_aux


class NetworkCIFAR(_EvalNetwork):
  C: int
  num_classes: int
  layers: int
  auxiliary: bool
  genotype: Genotype | str
  stem_multiplier: int = 3
  in_channels: int = 3
  ops: registry.OpRegistry = registry.OPS
  depthwise_impl: str = 'auto'

  @nn.compact
  def __call__(self, images, train: bool = False, drop_path_prob=0.0):
    _check_sizes(C=self.C, num_classes=self.num_classes, layers=self.layers)
    check_image_size(images, len(reduction_layers(self.layers)), self.in_channels,
                     what='NetworkCIFAR')
    c_stem = self.stem_multiplier * self.C
    x = modules.Conv(self.in_channels, c_stem, 3, padding=1, name='stem_conv')(images)
    s = modules.BatchNorm(c_stem, name='stem_bn')(x, train)
    head = lambda c_aux: AuxiliaryHead(c_aux, self.num_classes, 3, True, name='aux')
    s1, c_prev, logits_aux = self.cells(s, s, c_stem, c_stem, self.C, False, train,
                                        drop_path_prob, head)
    logits = modules.Linear(c_prev, self.num_classes, name='classifier')(jnp.mean(s1, (1, 2)))
    return logits, logits_aux


class NetworkImageNet(_EvalNetwork):
  C: int
  num_classes: int
  layers: int
  auxiliary: bool
  genotype: Genotype | str
  in_channels: int = 3
  ops: registry.OpRegistry = registry.OPS
  depthwise_impl: str = 'auto'

  @nn.compact
  def __call__(self, images, train: bool = False, drop_path_prob=0.0):
    _check_sizes(C=self.C, num_classes=self.num_classes, layers=self.layers)
    # three stride-2 stem convolutions, then the cells' reductions
    check_image_size(images, 3 + len(reduction_layers(self.layers)), self.in_channels,
                     what='NetworkImageNet')
    c = self.C
    if c % 2:
      raise ValueError(f'NetworkImageNet needs an even C (its stem halves it and its first cell '
                       f'reduces with FactorizedReduce), got C={c}')
    x = modules.Conv(self.in_channels, c // 2, 3, 2, 1, name='stem0_conv1')(images)
    x = nn.relu(modules.BatchNorm(c // 2, name='stem0_bn1')(x, train))
    x = modules.Conv(c // 2, c, 3, 2, 1, name='stem0_conv2')(x)
    s0 = modules.BatchNorm(c, name='stem0_bn2')(x, train)
    x = modules.Conv(c, c, 3, 2, 1, name='stem1_conv')(nn.relu(s0))
    s1 = modules.BatchNorm(c, name='stem1_bn')(x, train)
    head = lambda c_aux: AuxiliaryHead(c_aux, self.num_classes, 2, False, name='aux')
    s1, c_prev, logits_aux = self.cells(s0, s1, c, c, c, True, train, drop_path_prob, head)
    # equals the original's AvgPool2d(7) at 224x224 inputs
    logits = modules.Linear(c_prev, self.num_classes, name='classifier')(jnp.mean(s1, (1, 2)))
    return logits, logits_aux
