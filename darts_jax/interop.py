"""Weights of the original PyTorch code in and out of our pytrees.

The original names parameters by module path (``cells.0._ops.3._ops.4.op.1.weight``: cell 0,
edge 3, op 4 of PRIMITIVES, module 1 of that op's sequence); we name them by meaning
(``cell0/edges_01/sep_conv_3x3/dw1/kernel``, edge 3 being one slot of that stacked kernel). The
map between the two is derived from our own variable tree, so it follows any size or genotype.

Layouts: the original's OIHW convolutions and (out, in) linear weights become HWIO, ``(k, k, C)``
depthwise, ``(E, C_in, C_out)`` pointwise and (in, out) kernels.
"""

from __future__ import annotations

import re
from typing import Any, Iterator, Mapping, Sequence

import jax
import numpy as np

from darts_jax.genotypes import PRIMITIVES
from darts_jax.supernet import edge_groups

# our module name -> the original's, by parent module kind (told apart by its children's names)
_CHILDREN = {
    frozenset({'conv', 'bn'}): {'conv': 'op.1', 'bn': 'op.2'},  # ReLUConvBN
    frozenset({'conv_1', 'conv_2', 'bn'}): {'conv_1': 'conv_1', 'conv_2': 'conv_2', 'bn': 'bn'},
    frozenset({'dw1', 'pw1', 'bn1', 'dw2', 'pw2', 'bn2'}): {  # SepConv
        'dw1': 'op.1', 'pw1': 'op.2', 'bn1': 'op.3', 'dw2': 'op.5', 'pw2': 'op.6', 'bn2': 'op.7'},
    frozenset({'dw', 'pw', 'bn'}): {'dw': 'op.1', 'pw': 'op.2', 'bn': 'op.3'},  # DilConv
    frozenset({'bn'}): {'bn': '1'},  # pooling + BN in the search network
    frozenset({'conv_1x7', 'conv_7x1', 'bn'}): {'conv_1x7': 'op.1', 'conv_7x1': 'op.2',
                                               'bn': 'op.3'},
}
# search-network BN without affine parameters: the kind is known from params and stats together
_CHILDREN.update({k - {'bn', 'bn1', 'bn2'}: v for k, v in list(_CHILDREN.items())
                  if k - {'bn', 'bn1', 'bn2'}})
_TOP = {
    'stem_conv': 'stem.0', 'stem_bn': 'stem.1', 'classifier': 'classifier',
    'stem0_conv1': 'stem0.0', 'stem0_bn1': 'stem0.1', 'stem0_conv2': 'stem0.3',
    'stem0_bn2': 'stem0.4', 'stem1_conv': 'stem1.1', 'stem1_bn': 'stem1.2',
    'aux': 'auxiliary_head',
}
_AUX = {'conv1': 'features.2', 'bn1': 'features.3', 'conv2': 'features.5',
        'bn2': 'features.6', 'classifier': 'classifier'}
_LEAF = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
         'var': 'running_var'}
_DENSE = {'stem_conv', 'stem0_conv1', 'stem0_conv2', 'stem1_conv', 'conv1', 'conv2'}
_LINEAR = {'classifier'}
_IGNORED = re.compile(r'.*num_batches_tracked$')


def _flatten(tree, prefix=()) -> dict[tuple[str, ...], Any]:
  if isinstance(tree, Mapping):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, prefix + (k,)))
    return out
  return {prefix: tree}


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
  out: dict = {}
  for path, v in flat.items():
    d = out
    for k in path[:-1]:
      d = d.setdefault(k, {})
    d[path[-1]] = v
  return out


def _slots(path: tuple[str, ...], children: Mapping[tuple[str, ...], set], nodes: int,
           primitives: Sequence[str]) -> list[str]:
  """The original names of the leaf at ``path``, one per stacked edge slot."""
  groups = {g.name: g.edges for g in edge_groups(nodes)}
  head, rest = path[0], list(path[1:])
  if head.startswith('cell'):
    prefixes = ['cells.' + head[4:]]
  elif head in _TOP:
    prefixes = [_TOP[head]]
  else:
    raise KeyError(path)
  parent = (head,)
  while len(rest) > 1:
    seg = rest.pop(0)
    if seg in groups:  # a stack of edges; the next segment names the op
      op = rest.pop(0)
      if op not in primitives:
        raise KeyError(path)
      k = list(primitives).index(op)
      prefixes = [f'{p}._ops.{e}._ops.{k}' for p in prefixes for e, _, _ in groups[seg]]
      parent = parent + (seg, op)
      continue
    if head == 'aux' and parent == ('aux',):
      orig = _AUX[seg]
    elif parent[0].startswith('cell') and len(parent) == 1:
      if seg in ('preprocess0', 'preprocess1'):
        orig = seg
      elif re.fullmatch(r'op\d+', seg):
        orig = f'_ops.{seg[2:]}'
      else:
        raise KeyError(path)
    else:
      kind = frozenset(children[parent])
      if kind not in _CHILDREN:
        raise KeyError(path)
      orig = _CHILDREN[kind][seg]
    prefixes = [f'{p}.{orig}' for p in prefixes]
    parent = parent + (seg,)
  return [f'{p}.{_LEAF[rest[0]]}' for p in prefixes]


def _slot_view(leaf: np.ndarray, slot: int, n_slots: int, parent: str) -> np.ndarray:
  """The part of our (possibly edge-stacked) leaf that belongs to edge ``slot``."""
  if leaf.ndim == 3 and not parent.startswith('dw'):  # pointwise (E, C_in, C_out)
    return leaf[slot]
  if leaf.ndim in (2, 4):  # linear or dense convolution: never stacked
    return leaf
  c = leaf.shape[-1] // n_slots  # depthwise (k, k, E*C) or BN (E*C,): stacked on channels
  return leaf[..., slot * c:(slot + 1) * c]


def _to_ours(w: np.ndarray, parent: str) -> np.ndarray:
  if w.ndim == 4 and parent.startswith('dw'):  # depthwise (C, 1, k, k) -> (k, k, C)
    return w[:, 0].transpose(1, 2, 0)
  if w.ndim == 4 and w.shape[2:] == (1, 1) and parent not in _DENSE:  # pointwise -> (C_in, C_out)
    return w[:, :, 0, 0].T
  if w.ndim == 4:  # dense OIHW -> HWIO
    return w.transpose(2, 3, 1, 0)
  if w.ndim == 2:  # linear (out, in) -> (in, out)
    return w.T
  return w


def _to_original(v: np.ndarray, parent: str) -> np.ndarray:
  if v.ndim == 3:  # depthwise (k, k, C) -> (C, 1, k, k)
    return v.transpose(2, 0, 1)[:, None]
  if v.ndim == 2 and parent not in _LINEAR:  # pointwise (C_in, C_out) -> (C_out, C_in, 1, 1)
    return v.T[:, :, None, None]
  if v.ndim == 4:  # HWIO -> OIHW
    return v.transpose(3, 2, 0, 1)
  if v.ndim == 2:
    return v.T
  return v


def _leaf_names(shapes: Mapping[str, Any], nodes: int, primitives: Sequence[str]
                ) -> Iterator[tuple[str, tuple, list[str]]]:
  flats = {col: _flatten(tree) for col, tree in shapes.items()}
  children: dict[tuple[str, ...], set] = {}
  for flat in flats.values():
    for path in flat:
      for i in range(1, len(path) - 1):
        children.setdefault(path[:i], set()).add(path[i])
  for col, flat in flats.items():
    for path in flat:
      try:
        yield col, path, _slots(path, children, nodes, primitives)
      except KeyError:
        raise ValueError(f'{"/".join(path)} has no counterpart in the original code') from None


def from_original(named: Mapping[str, np.ndarray], shapes: Mapping[str, Any], nodes: int = 4,
                  require: tuple[str, ...] = ('params', 'batch_stats'),
                  primitives: Sequence[str] = PRIMITIVES) -> dict[str, Any]:
  """Our variables from the original's ``{name: array}``.

  Args:
    named: the original's ``state_dict()``/``named_parameters()`` names -> numpy arrays.
    shapes: our variable tree(s) as ``{'params': ..., 'batch_stats': ...}`` of arrays or shape
      structs (e.g. from :func:`darts_jax.supernet.supernet_shapes` or ``jax.eval_shape``).
    nodes: intermediate nodes per cell (edge numbering of the search network).
    primitives: the search network's op list (the original numbers ops by their position).
    require: collections that ``named`` must fill completely; others keep their defaults
      (BN running statistics start at 0 / 1 when the file holds parameters only).
  Returns:
    ``{collection: tree}`` of numpy arrays. Raises ValueError naming any original name that
    has no place in our network and any of our leaves that ``named`` leaves unfilled.
  """
  named = {k: np.asarray(v) for k, v in named.items() if not _IGNORED.match(k)}
  used, missing, out = set(), [], {}
  for col, path, names in _leaf_names(shapes, nodes, primitives):
    shape_struct = _flatten(shapes[col])[path]
    leaf = np.zeros(shape_struct.shape, np.dtype(shape_struct.dtype))
    if col == 'batch_stats' and path[-1] == 'var':
      leaf[...] = 1.0
    for slot, name in enumerate(names):
      if name not in named:
        if col in require:
          missing.append(name)
        continue
      value = _to_ours(named[name], path[-2])
      target = _slot_view(leaf, slot, len(names), path[-2])
      if target.shape != value.shape:
        raise ValueError(f'{name} has shape {named[name].shape}, which does not fit '
                         f'{"/".join(path)} of shape {leaf.shape} (network size differs?)')
      target[...] = value
      used.add(name)
    out.setdefault(col, {})[path] = leaf
  unused = sorted(set(named) - used)
  if missing or unused:
    raise ValueError(f'original weights do not match this network: {len(missing)} missing '
                     f'(e.g. {missing[:3]}), {len(unused)} unexpected (e.g. {unused[:3]})')
  return {col: _unflatten(flat) for col, flat in out.items()}


def to_original(variables: Mapping[str, Any], nodes: int = 4,
                primitives: Sequence[str] = PRIMITIVES) -> dict[str, np.ndarray]:
  """The inverse of :func:`from_original`: ``{original name: array}`` in the original layouts."""
  out = {}
  for col, path, names in _leaf_names(variables, nodes, primitives):
    leaf = np.asarray(jax.device_get(_flatten(variables[col])[path]))
    for slot, name in enumerate(names):
      out[name] = _to_original(_slot_view(leaf, slot, len(names), path[-2]), path[-2])
  return out


def load_npz_weights(path: str, prefix: str = '') -> dict[str, np.ndarray]:
  """``{name: array}`` from an ``.npz``, keeping keys under ``prefix`` (which is stripped)."""
  with np.load(path, allow_pickle=False) as f:
    return {k[len(prefix):]: f[k] for k in f.files if k.startswith(prefix)}
