"""The op registry: op names (the original's ``OPS`` keys) to factories of Linen modules.

A factory builds one op for a stack of edges; :func:`make_op` is how the search and evaluation
cells build theirs, and :func:`make_op_registry` adds user ops (written for one edge and wrapped
with :func:`single_edge_op`).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import flax.linen as nn

from darts_jax.ops import modules

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
  """The original's skip_connect: identity, or FactorizedReduce where the edge reduces."""
  if stride == 1:
    return modules.Identity(name=name)
  return modules.FactorizedReduce(c, c, affine, n_edges, name=name)


def single_edge_op(make: Callable[..., nn.Module]) -> OpFactory:
  """Turns ``make(c, stride, affine, name=...)`` (an op for one edge, NHWC in and out) into an
  op factory that also serves a stack of edges."""

  def factory(c, stride, affine, n_edges, search, impl, name):
    if n_edges == 1:
      return make(c, stride, affine, name=name)
    return modules.PerEdge(lambda _, name: make(c, stride, affine, name=name), c, n_edges,
                           name=name)

  return factory


OPS = OpRegistry({
    'none': lambda c, stride, affine, n_edges, search, impl, name: modules.Zero(stride, name=name),
    'max_pool_3x3': lambda c, stride, affine, n_edges, search, impl, name: modules.Pool(
        'max', c, stride, search, n_edges, name=name),
    'avg_pool_3x3': lambda c, stride, affine, n_edges, search, impl, name: modules.Pool(
        'avg', c, stride, search, n_edges, name=name),
    'skip_connect': _skip,
    'sep_conv_3x3': lambda c, stride, affine, n_edges, search, impl, name: modules.SepConv(
        c, 3, stride, affine, n_edges, impl, name=name),
    'sep_conv_5x5': lambda c, stride, affine, n_edges, search, impl, name: modules.SepConv(
        c, 5, stride, affine, n_edges, impl, name=name),
    'dil_conv_3x3': lambda c, stride, affine, n_edges, search, impl, name: modules.DilConv(
        c, 3, stride, affine, n_edges, impl, name=name),
    'dil_conv_5x5': lambda c, stride, affine, n_edges, search, impl, name: modules.DilConv(
        c, 5, stride, affine, n_edges, impl, name=name),
    # used by the published NASNet and AmoebaNet cells, not searched over by default
    'sep_conv_7x7': lambda c, stride, affine, n_edges, search, impl, name: modules.SepConv(
        c, 7, stride, affine, n_edges, impl, name=name),
    'conv_7x1_1x7': single_edge_op(
        lambda c, stride, affine, name: modules.Conv7x1_1x7(c, stride, affine, name=name)),
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
  """Raises a one-line ValueError naming the first of ``names`` that ``ops`` lacks."""
  unknown = [n for n in names if n not in ops]
  if unknown:
    raise ValueError(f'unknown op {unknown[0]!r}; allowed: {", ".join(ops)}')


def make_op(name: str, c: int, stride: int, affine: bool, *, n_edges: int = 1,
            search: bool = False, impl: str = 'auto', ops: Mapping[str, OpFactory] = OPS,
            module_name: str | None = None) -> nn.Module:
  """Builds op ``name`` from ``ops`` for ``n_edges`` stacked edges of ``c`` channels each."""
  check_op_names([name], ops)
  return ops[name](c, stride, affine, n_edges, search, impl, module_name)
