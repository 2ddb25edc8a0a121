"""NAS-Bench-201's search space (Dong & Yang, ICLR 2020): its cell, its fixed macro skeleton, the
supernet over it and the networks of its 15,625 architectures.

The cell is a complete DAG of 4 nodes: node 0 is the cell input, node ``i`` sums one op on each
earlier node, and node 3 is the output (not a concat). Its 6 edges ``(i, j)`` ("i<-j" in the
benchmark's code) are ordered by ``(i, j)``, which is the benchmark's own sorted order of the
edge names. The candidates are ``none``, ``skip_connect``, ``nor_conv_1x1``, ``nor_conv_3x3``
(ReLU, convolution, BN) and ``avg_pool_3x3``.

The skeleton: a 3x3 convolution of C=16 channels and BN; three stages of N=5 cells with C, 2C
and 4C channels, separated by ResNet basic blocks of stride 2; BN, ReLU, global average pooling
and a linear classifier. The search network mixes every edge by eq. 2 of DARTS; all its cells
share one architecture ``{'cell': (6, 5)}``.

An architecture is written in the benchmark's string form,
``|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|``
(node 1's inputs, then node 2's, then node 3's; ``op~j`` is op on node ``j``), which is the key
of the benchmark's table. Parameter counts equal the benchmark code's (``tests``).

Graph size: the edges leaving a node all read that node, so each candidate op runs once per
source node with its outputs for all those edges stacked on channels (one convolution of C
inputs and ``n_edges * C`` outputs), not once per edge.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from darts_jax import losses
from darts_jax.ops import init, kernels, modules
from darts_jax.supernet import (CellMixing, channel_shuffle, classification_loss, segment_softmax,
                                widen)

# the benchmark's candidates, in its order (the columns of the alphas)
PRIMITIVES: tuple[str, ...] = ('none', 'skip_connect', 'nor_conv_1x1', 'nor_conv_3x3',
                               'avg_pool_3x3')
PARAMETER_FREE: tuple[str, ...] = ('none', 'skip_connect', 'avg_pool_3x3')
_CONV_KERNEL = {'nor_conv_1x1': 1, 'nor_conv_3x3': 3}
MAX_NODES = 4  # the benchmark's cell: the input node and 3 computed nodes


def cell_edges(max_nodes: int = MAX_NODES) -> tuple[tuple[int, int], ...]:
  """The edges ``(i, j)``, node ``i`` from node ``j < i``, in the alphas' row order."""
  return tuple((i, j) for i in range(1, max_nodes) for j in range(i))


def edge_index(i: int, j: int) -> int:
  """The row of edge ``(i, j)``: the ``i (i - 1) / 2`` edges of nodes 1..i-1 come first."""
  return i * (i - 1) // 2 + j


# ----------------------------------------------------------------------------------------------
# architectures in the benchmark's string form
# ----------------------------------------------------------------------------------------------

_PAIR = re.compile(r'^([A-Za-z0-9_]+)~([0-9]+)$')


@dataclasses.dataclass(frozen=True)
class Structure:
  """One architecture of the space: ``nodes[i - 1]`` lists node ``i``'s ``(op, input)`` pairs,
  one per earlier node in order (the benchmark's complete DAG)."""
  nodes: tuple[tuple[tuple[str, int], ...], ...]

  def __post_init__(self):
    nodes = tuple(tuple((str(op), int(j)) for op, j in node) for node in self.nodes)
    if not nodes:
      raise ValueError('a NAS-Bench-201 architecture needs at least one node')
    for i, node in enumerate(nodes, start=1):
      if [j for _, j in node] != list(range(i)):
        raise ValueError(f'node {i} of a NAS-Bench-201 architecture must take nodes '
                         f'{list(range(i))} in order (one op each), got inputs '
                         f'{[j for _, j in node]}')
    object.__setattr__(self, 'nodes', nodes)

  @property
  def edges(self) -> tuple[tuple[str, int], ...]:
    """Every ``(op, input)`` pair in the alphas' row order."""
    return tuple(pair for node in self.nodes for pair in node)

  @property
  def ops(self) -> set[str]:
    return {op for op, _ in self.edges}

  def validate_ops(self, allowed) -> None:
    unknown = sorted(self.ops - set(allowed))
    if unknown:
      raise ValueError(f'architecture {self.to_string()} uses {unknown[0]!r}; allowed: '
                       f'{", ".join(allowed)}')

  def to_string(self) -> str:
    """The benchmark's string form, ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``."""
    return '+'.join('|' + '|'.join(f'{op}~{j}' for op, j in node) + '|' for node in self.nodes)

  __str__ = to_string

  def to_dict(self) -> dict[str, Any]:
    # 'cell': the (op, input) pairs, as the health report reads every space's genotypes
    return {'cell': [list(p) for p in self.edges], 'string': self.to_string()}

  def to_json(self) -> str:
    return json.dumps(self.to_dict())

  @classmethod
  def from_edges(cls, ops) -> 'Structure':
    """From one op per edge in the alphas' row order."""
    ops = list(ops)
    nodes, start, i = [], 0, 1
    while start < len(ops):
      nodes.append(tuple((op, j) for j, op in enumerate(ops[start:start + i])))
      start, i = start + i, i + 1
    if start != len(ops):
      raise ValueError(f'{len(ops)} edges is no NAS-Bench-201 cell: node i has i inputs, so a '
                       'cell has 1, 3, 6, 10, ... edges')
    return cls(tuple(nodes))

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'Structure':
    if not isinstance(d, Mapping) or 'cell' not in d:
      raise ValueError(f'a NAS-Bench-201 genotype dict has a \'cell\' list of [op, input] '
                       f'pairs, got {d!r:.80}')
    return cls.from_edges(op for op, _ in d['cell'])

  @classmethod
  def from_string(cls, text: str) -> 'Structure':
    """Parses ``|op~j|...|+|...|`` with a one-line error naming the part it cannot read."""
    s = text.strip()
    nodes = []
    for part in s.split('+'):
      if not (part.startswith('|') and part.endswith('|') and len(part) > 2):
        raise ValueError(f'{s!r:.120} is not a NAS-Bench-201 string: {part!r} should read '
                         '|op~input|...|')
      pairs = []
      for item in part[1:-1].split('|'):
        m = _PAIR.match(item)
        if m is None:
          raise ValueError(f'{s!r:.120} is not a NAS-Bench-201 string: {item!r} should read '
                           'op~input, e.g. nor_conv_3x3~0')
        pairs.append((m.group(1), int(m.group(2))))
      nodes.append(tuple(pairs))
    return cls(tuple(nodes))


def load_structure(spec: 'str | Mapping | Structure') -> Structure:
  """An architecture from its string form, a genotype dict, or a path: a search workdir (its
  ``genotype.json``) or a ``genotype.json`` / ``genotype.txt`` file."""
  if isinstance(spec, Structure):
    return spec
  if isinstance(spec, Mapping):
    return Structure.from_dict(spec)
  if not isinstance(spec, str):
    raise ValueError(f'cannot make a NAS-Bench-201 architecture from {type(spec).__name__}')
  s = spec.strip()
  if s.startswith('|'):
    return Structure.from_string(s)
  path = pathlib.Path(s).expanduser()
  if path.is_dir():
    path = path / 'genotype.json'
  if not path.is_file():
    raise ValueError(f'genotype={spec!r} is neither a NAS-Bench-201 string '
                     '(|nor_conv_3x3~0|+|...|) nor a search workdir or genotype file')
  text = path.read_text().strip()
  try:
    return Structure.from_dict(json.loads(text)) if text.startswith('{') else (
        Structure.from_string(text))
  except (ValueError, json.JSONDecodeError) as e:
    raise ValueError(f'{path}: {e}') from None


def derive_structure(alphas: Mapping[str, Any], primitives=PRIMITIVES,
                     max_nodes: int = MAX_NODES) -> Structure:
  """The benchmark's discretisation of a DARTS search: each edge keeps its strongest op (the
  argmax of its alphas, ``none`` included; the first on ties)."""
  a = np.asarray(alphas['cell'])
  expected = (len(cell_edges(max_nodes)), len(primitives))
  if a.shape != expected:
    raise ValueError(f"alphas['cell'] has shape {a.shape}; expected {expected} (edges x ops)")
  return Structure.from_edges(primitives[k] for k in np.argmax(a, axis=-1))


# ----------------------------------------------------------------------------------------------
# networks
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class NB201Config:
  """The search network's shape; the defaults are the benchmark's (C=16, N=5, 4 nodes)."""
  C: int = 16
  cells_per_stage: int = 5  # N
  num_classes: int = 10
  in_channels: int = 3
  primitives: tuple[str, ...] = PRIMITIVES
  max_nodes: int = MAX_NODES
  # the DARTS family's changes to the supernet (supernet.SupernetConfig has their meaning):
  # PC-DARTS's K and edge betas, DARTS-'s auxiliary skip
  partial_channels: int = 1
  edge_normalization: bool = False
  auxiliary_skip: bool = False

  def __post_init__(self):
    object.__setattr__(self, 'primitives', tuple(self.primitives))
    for name in ('C', 'cells_per_stage', 'num_classes', 'in_channels', 'partial_channels'):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f'NB201Config.{name}={value!r}: must be a positive integer')
    if not isinstance(self.max_nodes, (int, np.integer)) or self.max_nodes < 2:
      raise ValueError(f'NB201Config.max_nodes={self.max_nodes!r}: must be an integer >= 2')
    unknown = [p for p in self.primitives if p not in PRIMITIVES]
    if unknown or not self.primitives or len(set(self.primitives)) != len(self.primitives):
      raise ValueError(f'primitives={self.primitives}: NAS-Bench-201 searches distinct ops '
                       f'among {", ".join(PRIMITIVES)}')
    if self.C % self.partial_channels:
      raise ValueError(f'partial_channels={self.partial_channels}: C={self.C} must be a multiple '
                       'of it')

  @property
  def architecture_shapes(self) -> dict[str, tuple[int, ...]]:
    e = len(cell_edges(self.max_nodes))
    shapes = {'cell': (e, len(self.primitives))}
    if self.edge_normalization:
      shapes['betas_cell'] = (e,)
    return shapes


def stage_layout(C: int, n: int) -> tuple[tuple[int, bool], ...]:
  """(channels, is a residual reduction block) of each layer after the stem."""
  return tuple([(C, False)] * n + [(2 * C, True)] + [(2 * C, False)] * n + [(4 * C, True)]
               + [(4 * C, False)] * n)


class NorConv(nn.Module):
  """The benchmark's ReLUConvBN: ReLU, kxk convolution (padding k // 2, a bias exactly when the
  BN is not affine, as its code has it), BN. ``n_out`` stacks the outputs of that many such ops
  on one input (the edges leaving one node)."""
  c_in: int
  c_out: int
  kernel_size: int
  stride: int = 1
  affine: bool = True
  n_out: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    k, c = self.kernel_size, self.n_out * self.c_out
    y = modules.Conv(self.c_in, c, k, self.stride, k // 2, use_bias=not self.affine,
                     name='conv')(nn.relu(x))
    return modules.BatchNorm(c, self.affine, name='bn')(y, train)


def _avg_pool_2x2(x: jax.Array) -> jax.Array:
  b, h, w, c = x.shape
  return jnp.mean(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


class ResidualBlock(nn.Module):
  """The skeleton's reduction: a ResNet basic block, two 3x3 NorConvs (the first of stride 2)
  plus a shortcut of 2x2 average pooling and a 1x1 convolution."""
  c_in: int
  c_out: int

  @nn.compact
  def __call__(self, x, train: bool):
    y = NorConv(self.c_in, self.c_out, 3, 2, name='conv_a')(x, train)
    y = NorConv(self.c_out, self.c_out, 3, 1, name='conv_b')(y, train)
    shortcut = modules.Conv(self.c_in, self.c_out, 1, name='downsample')(_avg_pool_2x2(x))
    return shortcut + y


class MixedEdges(nn.Module):
  """Eq. 2 of DARTS on the ``n_edges`` edges leaving one node: ``sum_k mixing[e, k] op_k(x)``
  for each edge e. Returns (B, H, W, n_edges, c)."""
  c: int
  n_edges: int
  primitives: tuple[str, ...]
  auxiliary_skip: bool = False

  @nn.compact
  def __call__(self, x, mixing, train: bool, skip_beta=None):
    b, h, w, _ = x.shape
    n = self.n_edges
    weight = lambda k: mixing[None, None, None, :, k, None]  # noqa: E731  (B, H, W, n, 1)
    shared = lambda y: y[..., None, :].astype(mixing.dtype)  # noqa: E731  one output, every edge
    out = jnp.zeros((b, h, w, n, self.c), mixing.dtype)
    if self.auxiliary_skip:  # DARTS-: beta * x beside eq. 2's sum, outside the softmax
      out = out + shared(x) * skip_beta
    for k, name in enumerate(self.primitives):
      if name == 'none':
        continue  # m * 0 adds nothing to the value or to any gradient
      if name == 'skip_connect':
        y = shared(x)
      elif name == 'avg_pool_3x3':
        y = shared(kernels.avg_pool_3x3(x, 1))
      else:
        y = NorConv(self.c, self.c, _CONV_KERNEL[name], 1, affine=False, n_out=n, name=name)(
            x, train).reshape(b, h, w, n, self.c).astype(mixing.dtype)
      out = out + y * weight(k)
    return out.astype(x.dtype)


class SearchCell(nn.Module):
  """The benchmark's search cell: node ``i`` sums its mixed edges from every node ``j < i``."""
  c: int
  config: NB201Config

  @nn.compact
  def __call__(self, x, mixing, edge_weights, skip_beta, train: bool):
    cfg = self.config
    k = cfg.partial_channels
    q = self.c // k  # channels through the ops (PC-DARTS: 1/K of them; DARTS: all)
    nodes, sums = [x], {}
    for j in range(cfg.max_nodes - 1):
      source = nodes[j]
      targets = range(j + 1, cfg.max_nodes)
      idx = np.array([edge_index(i, j) for i in targets])
      y = MixedEdges(q, len(idx), cfg.primitives, cfg.auxiliary_skip, name=f'edges_{j}')(
          source[..., :q], mixing[idx], train, skip_beta)
      if k > 1:  # PC-DARTS eq. 2: the other channels bypass the ops, then the shuffle
        bypass = jnp.broadcast_to(source[..., None, q:], (*y.shape[:-1], self.c - q))
        y = channel_shuffle(jnp.concatenate([y, bypass], axis=-1), k)
      if edge_weights is not None:  # PC-DARTS eq. 4, in the betas' precision
        y = (y.astype(edge_weights.dtype)
             * edge_weights[idx][None, None, None, :, None]).astype(y.dtype)
      for slot, i in enumerate(targets):
        sums[i] = y[..., slot, :] if i not in sums else sums[i] + y[..., slot, :]
      nodes.append(sums[j + 1])  # node j + 1 has now received all its edges
    return nodes[-1]


class _Skeleton(nn.Module):
  """Stem, the three stages, BN-ReLU, global average pooling, classifier; ``cell(c, name)``
  builds a stage's cell."""

  def features(self, images, train, C, n, in_channels, cell):
    x = modules.Conv(in_channels, C, 3, padding=1, name='stem_conv')(images)
    x = modules.BatchNorm(C, name='stem_bn')(x, train)
    c_prev = C
    for i, (c, reduction) in enumerate(stage_layout(C, n)):
      x = (ResidualBlock(c_prev, c, name=f'cell{i}')(x, train) if reduction
           else cell(c, f'cell{i}')(x))
      c_prev = c
    return jnp.mean(nn.relu(modules.BatchNorm(c_prev, name='lastact_bn')(x, train)), axis=(1, 2))


def check_images(images, in_channels: int, what: str) -> None:
  """A one-line ValueError unless ``images`` is NHWC floating point with ``in_channels`` and a
  size the two stride-2 blocks halve evenly."""
  shape = np.shape(images)
  if len(shape) != 4 or shape[-1] != in_channels:
    raise ValueError(f'images must be (batch, height, width, {in_channels}) for the {what}; got '
                     f'shape {tuple(shape)}')
  if not jnp.issubdtype(jnp.result_type(images), jnp.floating):
    raise ValueError(f'images must be floating point (normalised), got {jnp.result_type(images)}')
  if shape[1] % 4 or shape[2] % 4:
    raise ValueError(f'input image {shape[1]}x{shape[2]}: the {what}\'s two reductions need '
                     'height and width divisible by 4')


class SearchNetwork(_Skeleton):
  """The benchmark's DARTS supernet (its ``TinyNetworkDarts``): every cell mixes by
  ``mixing['cell']``, a :class:`~darts_jax.supernet.CellMixing`."""
  config: NB201Config

  @nn.compact
  def __call__(self, images, mixing, train: bool = True):
    cfg = self.config
    check_images(images, cfg.in_channels, 'NAS-Bench-201 search network')
    feats = self.features(
        images, train, cfg.C, cfg.cells_per_stage, cfg.in_channels,
        lambda c, name: lambda x: SearchCell(c, cfg, name=name)(x, *mixing['cell'], train))
    return modules.Linear(4 * cfg.C, cfg.num_classes, name='classifier')(feats)


class InferCell(nn.Module):
  """One architecture's cell: node ``i`` sums its chosen ops on the earlier nodes."""
  c: int
  structure: Structure

  @nn.compact
  def __call__(self, x, train: bool):
    nodes = [x]
    for i, node in enumerate(self.structure.nodes, start=1):
      total = None
      for op, j in node:
        if op == 'none':
          y = jnp.zeros_like(nodes[j])
        elif op == 'skip_connect':
          y = nodes[j]
        elif op == 'avg_pool_3x3':
          y = kernels.avg_pool_3x3(nodes[j], 1)
        else:
          y = NorConv(self.c, self.c, _CONV_KERNEL[op], name=f'edge_{i}_{j}')(nodes[j], train)
        total = y if total is None else total + y
      nodes.append(total)
    return nodes[-1]


class TinyNetwork(_Skeleton):
  """A benchmark architecture's network (its code's ``TinyNetwork``), trained from scratch as
  the benchmark trained it. Called as the DARTS evaluation networks are, ``(images, train,
  drop_path_prob)``; it returns ``(logits, None)``: no drop path, no auxiliary head."""
  structure: Structure
  C: int = 16
  cells_per_stage: int = 5
  num_classes: int = 10
  in_channels: int = 3

  @nn.compact
  def __call__(self, images, train: bool = False, drop_path_prob=0.0):
    del drop_path_prob  # the benchmark trains without it
    check_images(images, self.in_channels, 'NAS-Bench-201 network')
    feats = self.features(images, train, self.C, self.cells_per_stage, self.in_channels,
                          lambda c, name: lambda x: InferCell(c, self.structure, name=name)(
                              x, train))
    return modules.Linear(4 * self.C, self.num_classes, name='classifier')(feats), None


# ----------------------------------------------------------------------------------------------
# the search network's pure functions
# ----------------------------------------------------------------------------------------------

def architecture_mixing(alphas, dtype, config: NB201Config, skip_beta=None
                        ) -> dict[str, CellMixing]:
  """DARTS's rule on the cell: softmax(alpha) (eq. 2) and, with PC-DARTS's betas, a softmax over
  each node's incoming edges (PC-DARTS eq. 4), in the architecture's precision."""
  betas = alphas.get('betas_cell')
  sizes = tuple(range(1, config.max_nodes))  # node i has i incoming edges
  return {'cell': CellMixing(jax.nn.softmax(widen(alphas['cell'], dtype), axis=-1),
                             None if betas is None else segment_softmax(widen(betas, dtype), sizes),
                             skip_beta)}


def check_architecture(alphas, config: NB201Config) -> None:
  shapes = config.architecture_shapes
  if not isinstance(alphas, Mapping) or set(alphas) != set(shapes):
    got = sorted(alphas) if isinstance(alphas, Mapping) else type(alphas).__name__
    raise ValueError(f'the NAS-Bench-201 architecture must be a dict with keys {sorted(shapes)}, '
                     f'got {got}')
  for key, shape in shapes.items():
    if tuple(np.shape(alphas[key])) != shape:
      raise ValueError(f'architecture[{key!r}] has shape {tuple(np.shape(alphas[key]))}; '
                       f'expected {shape}')


def init_architecture(key, config: NB201Config, dtype=jnp.float32, scale: float = 1e-3):
  """``1e-3 * N(0, 1)``, as the benchmark's DARTS code draws its arch parameters (and the
  betas the same way, from a key of their own)."""
  shapes = config.architecture_shapes
  out = {'cell': scale * jax.random.normal(key, shapes['cell'], dtype)}
  if 'betas_cell' in shapes:
    out['betas_cell'] = scale * jax.random.normal(jax.random.fold_in(key, 1),
                                                  shapes['betas_cell'], dtype)
  return out


def _init_mixing(config: NB201Config, dtype):
  return architecture_mixing(init_architecture(jax.random.PRNGKey(0), config, dtype), dtype,
                             config, 1.0 if config.auxiliary_skip else None)


def network_shapes(model: nn.Module, image_size, in_channels: int, dtype, *args):
  """``{'params', 'batch_stats'}`` shapes of ``model`` at an input size, computing nothing."""
  images = jnp.zeros((2, *image_size, in_channels), dtype)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images, *args))


def init_search_network(key, config: NB201Config, image_size=(32, 32), dtype=jnp.float32):
  """(weights, batch_stats) of the search network, PyTorch's default initialisation."""
  shapes = network_shapes(SearchNetwork(config), tuple(image_size), config.in_channels, dtype,
                          _init_mixing(config, dtype), False)
  values = init.torch_default_init(key, dict(shapes))
  return values['params'], values.get('batch_stats', {})


def make_mixing_loss(config: NB201Config, train: bool = True, compute_dtype=None):
  """``loss(weights, mixing, batch_stats, batch) -> (loss, LossAux)``: the search network at
  given mixing weights (the seam where a search method puts its own rule)."""
  model = SearchNetwork(config)

  def apply(weights, mixing, batch_stats, images, train):
    variables = {'params': weights, 'batch_stats': batch_stats}
    if train:
      logits, updates = model.apply(variables, images, mixing, True, mutable=['batch_stats'])
      return logits, updates['batch_stats']
    return model.apply(variables, images, mixing, False), batch_stats

  return classification_loss(apply, train, compute_dtype)


def make_loss(config: NB201Config, train: bool = True, compute_dtype=None):
  """``loss(weights, alphas, batch_stats, batch) -> (loss, LossAux(batch_stats, logits))``."""
  mixing_loss = make_mixing_loss(config, train, compute_dtype)

  def loss(weights, alphas, batch_stats, batch):
    check_architecture(alphas, config)
    return mixing_loss(weights, architecture_mixing(
        alphas, losses.computed_in(compute_dtype, batch[0]), config), batch_stats, batch)

  return loss


# ----------------------------------------------------------------------------------------------
# the benchmark code's weights
# ----------------------------------------------------------------------------------------------

_BN_NAMES = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}


def _original_names(modules_path: tuple[str, ...], leaf: str, primitives,
                    max_nodes: int) -> list[str]:
  """The benchmark code's ``state_dict`` names of one of our leaves (several for a stacked op:
  its edges' in order)."""
  top = modules_path[0]
  if top == 'stem_conv':
    return ['stem.0.weight']
  if top in ('stem_bn', 'lastact_bn'):
    return [f'{"stem.1" if top == "stem_bn" else "lastact.0"}.{_BN_NAMES[leaf]}']
  if top == 'classifier':
    return [f'classifier.{"weight" if leaf == "kernel" else "bias"}']
  cell, part = f'cells.{top[len("cell"):]}', modules_path[1]
  if part == 'downsample':
    return [f'{cell}.downsample.1.weight']
  if part.startswith('edges_'):  # a search cell's op on the edges leaving node j
    j, k = int(part[len('edges_'):]), primitives.index(modules_path[2])
    # one entry per edge leaving node j, targets j + 1, ... in order
    ops = [f'{cell}.edges.{t}<-{j}.{k}.op' for t in range(j + 1, max_nodes)]
  elif part.startswith('edge_'):  # an architecture's op on edge (i, j)
    i, j = map(int, part[len('edge_'):].split('_'))
    ops = [f'{cell}.layers.{edge_index(i, j)}.op']
  else:  # conv_a / conv_b of a residual block
    ops = [f'{cell}.{part}.op']
  suffix = (('.1.weight' if leaf == 'kernel' else '.1.bias') if modules_path[-1] == 'conv'
            else f'.2.{_BN_NAMES[leaf]}')
  return [o + suffix for o in ops]


def from_original(named: Mapping[str, np.ndarray], shapes: Mapping[str, Any],
                  primitives=PRIMITIVES, max_nodes: int = MAX_NODES) -> dict[str, Any]:
  """``{'params', 'batch_stats'}`` of a network of ours (``shapes``: its variables' shapes) from
  the benchmark code's ``state_dict`` (``TinyNetworkDarts`` for :class:`SearchNetwork`,
  ``TinyNetwork`` for :class:`TinyNetwork`; PyTorch's OIHW kernels become HWIO, the search
  cell's per-edge ops are stacked on output channels). A KeyError names a missing entry."""
  def value(path, shape):
    names = tuple(getattr(p, 'key', str(p)) for p in path)
    keys = _original_names(names[1:-1], names[-1], tuple(primitives), max_nodes)
    parts = []
    for key in keys:
      if key not in named:
        raise KeyError(f'{key} (for {"/".join(names)})')
      a = np.asarray(named[key])
      parts.append(a.transpose(2, 3, 1, 0) if a.ndim == 4 else a.T if a.ndim == 2 else a)
    out = np.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
    if out.shape != tuple(shape.shape):
      raise ValueError(f'{"/".join(names)}: the original\'s {keys[0]} gives shape {out.shape}, '
                       f'expected {tuple(shape.shape)}')
    return jnp.asarray(out, shape.dtype)

  return jax.tree_util.tree_map_with_path(value, dict(shapes))
