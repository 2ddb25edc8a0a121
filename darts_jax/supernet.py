"""The DARTS search network (supernet) and its pure loss function.

Three pytrees stay apart: ``weights`` (the network weights, Linen ``params``), ``alphas``
(``{'normal': (E, K), 'reduce': (E, K)}``, an argument of the forward, never a Flax variable) and
``batch_stats`` (BatchNorm running statistics). The mixing weights ``softmax(alpha)`` of eq. 2 are
called ``mixing``, never weights. Everything downstream, the hypergradient code included, uses
only :func:`make_loss`'s contract ``loss(weights, alphas, batch_stats, batch) -> (loss, aux)``.

Graph size is designed in: a cell's 14 edges are grouped by the node they leave, and each group
runs every candidate op once over a channel stack of its edges (``darts_jax.ops``). A normal
cell therefore traces 4 mixed-op groups instead of 14 mixed ops (the first group holds the 8
edges leaving the two cell inputs).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from darts_jax import losses
from darts_jax.genotypes import PRIMITIVES, num_edges
from darts_jax.ops import init, kernels, modules, registry


def reduction_layers(layers: int) -> tuple[int, ...]:
  """The cells that reduce, in a stack of ``layers``: at 1/3 and 2/3 of the depth (the original's
  rule; one cell when the two coincide)."""
  return tuple(sorted({layers // 3, 2 * layers // 3}))


@dataclasses.dataclass(frozen=True)
class SupernetConfig:
  """The search network's shape. Defaults are the paper's CIFAR-10 search (8 cells, C=16)."""
  C: int = 16
  num_classes: int = 10
  layers: int = 8
  nodes: int = 4  # intermediate nodes per cell
  multiplier: int = 4
  stem_multiplier: int = 3
  in_channels: int = 3
  primitives: tuple[str, ...] = PRIMITIVES
  ops: registry.OpRegistry = registry.OPS
  depthwise_impl: str = 'auto'
  # recompute each cell's forward in the backward pass (kernels.recompute_in_backward): a
  # gradient then holds the cells' inputs and one cell's activations instead of every cell's,
  # for one more forward
  remat_cells: bool = False
  # PC-DARTS (Xu et al., 2020): 1/K of each edge's channels go through the mixed op, the rest
  # bypass it, then a channel shuffle (eq. 2 of PC-DARTS); 1 is DARTS
  partial_channels: int = 1
  # PC-DARTS's edge normalisation (its eq. 4): node i sums its edges weighted by a softmax of
  # per-edge betas over its own 2 + i edges; the betas join the architecture pytree
  edge_normalization: bool = False
  # DARTS- (Chu et al., 2021): every mixed op adds beta * skip(x) outside the softmax, an
  # identity (a FactorizedReduce of its own on strided edges); beta comes with the mixing
  auxiliary_skip: bool = False

  def __post_init__(self):
    object.__setattr__(self, 'primitives', tuple(self.primitives))
    for name in ('C', 'num_classes', 'layers', 'nodes', 'multiplier', 'stem_multiplier',
                 'in_channels'):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f'SupernetConfig.{name}={value!r}: must be a positive integer')
    if self.multiplier > self.nodes:
      raise ValueError(f'SupernetConfig.multiplier={self.multiplier} exceeds nodes={self.nodes}: '
                       'the cell output concatenates the last `multiplier` intermediate nodes')
    if not self.primitives:
      raise ValueError('SupernetConfig.primitives is empty: give at least one op name')
    if len(set(self.primitives)) != len(self.primitives):
      raise ValueError(f'SupernetConfig.primitives has duplicates: {self.primitives}')
    if not isinstance(self.ops, registry.OpRegistry):
      object.__setattr__(self, 'ops', registry.OpRegistry(self.ops))
    registry.check_op_names(self.primitives, self.ops)
    # the name only: resolving 'auto' asks for the backend, which a multi-host run must not
    # start before jax.distributed joins the processes (configs build this class early)
    if self.depthwise_impl not in kernels.DEPTHWISE_IMPLS:
      raise ValueError(f'depthwise_impl={self.depthwise_impl!r} is not one of '
                       f'{kernels.DEPTHWISE_IMPLS}')
    for name in ('remat_cells', 'edge_normalization', 'auxiliary_skip'):
      if not isinstance(getattr(self, name), (bool, np.bool_)):
        raise ValueError(f'SupernetConfig.{name}={getattr(self, name)!r}: must be True or False')
    k = self.partial_channels
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
      raise ValueError(f'SupernetConfig.partial_channels={k!r}: must be a positive integer')
    for spec in cell_specs(self):
      if spec['c'] % k:
        raise ValueError(f'SupernetConfig.partial_channels={k}: a cell of {spec["c"]} channels '
                         f'cannot be split into {k} parts (C={self.C} must be a multiple of {k})')
      if spec['reduction'] and k > 1 and (spec['c'] // k) % 2 and 'skip_connect' in self.primitives:
        # the strided skip_connect is a FactorizedReduce of two convolutions of c/(2K) outputs
        raise ValueError(f'SupernetConfig.partial_channels={k}: a reduction cell of {spec["c"]} '
                         f'channels gives its ops an odd {spec["c"] // k}, which skip_connect\'s '
                         f'FactorizedReduce cannot halve: a reduction cell needs a multiple of '
                         f'{2 * k} channels')

  @property
  def alpha_shape(self) -> tuple[int, int]:
    return (num_edges(self.nodes), len(self.primitives))

  @property
  def reduction_layers(self) -> tuple[int, ...]:
    return reduction_layers(self.layers)

  @property
  def architecture_shapes(self) -> dict[str, tuple[int, ...]]:
    """The architecture pytree's entries: the alphas of each cell kind and, with edge
    normalisation, PC-DARTS's betas (one per edge)."""
    shapes = {'normal': self.alpha_shape, 'reduce': self.alpha_shape}
    if self.edge_normalization:
      shapes.update(betas_normal=(self.alpha_shape[0],), betas_reduce=(self.alpha_shape[0],))
    return shapes


class EdgeGroup(NamedTuple):
  """Edges that leave the same source states; ``edges[e] = (edge_index, node, source)``."""
  name: str
  edges: tuple[tuple[int, int, int], ...]


def edge_groups(nodes: int) -> tuple[EdgeGroup, ...]:
  """Edges grouped by source, in the order their sources become available.

  Edge ``offset(i) + j`` (the original's numbering) runs from state ``j`` to node ``i``.
  The two cell inputs form one group; then each intermediate node's outgoing edges.
  """
  offsets = np.cumsum([0] + [i + 2 for i in range(nodes)])

  def edges_from(sources):
    return tuple((int(offsets[i] + j), i, j) for i in range(nodes) for j in sources if j < i + 2)

  groups = [EdgeGroup('edges_01', edges_from((0, 1)))]
  groups += [EdgeGroup(f'edges_{j}', edges_from((j,))) for j in range(2, nodes + 1)]
  return tuple(groups)


class MixedEdges(nn.Module):
  """The mixed op of eq. (2), ``sum_k softmax(alpha)_k op_k(x)``, on a channel stack of edges."""
  c: int
  n_edges: int
  stride: int
  primitives: tuple[str, ...]
  ops: registry.OpRegistry
  impl: str
  auxiliary_skip: bool = False

  @nn.compact
  def __call__(self, x, mixing, train: bool, skip_beta=None):
    """x: (B, H, W, n_edges*C); mixing: (n_edges, K), softmax(alpha) of these edges; skip_beta:
    DARTS-'s coefficient of the auxiliary skip (with ``auxiliary_skip``).
    Returns (B, H', W', n_edges, C)."""
    out = None
    if self.auxiliary_skip:  # DARTS-: beta * skip(x) beside eq. 2's sum, outside the softmax
      aux = registry.make_op('skip_connect', self.c, self.stride, affine=False,
                             n_edges=self.n_edges, search=True, impl=self.impl,
                             module_name='auxiliary_skip')(x, train)
      b, h, w, _ = aux.shape
      out = aux.reshape(b, h, w, self.n_edges, self.c).astype(mixing.dtype) * skip_beta
    for k, name in enumerate(self.primitives):
      op = registry.make_op(name, self.c, self.stride, affine=False, n_edges=self.n_edges,
                            search=True, impl=self.impl, ops=self.ops, module_name=name)
      if isinstance(op, modules.Zero):
        continue  # m * 0 adds nothing to the value or to any gradient
      y = op(x, train)
      b, h, w, _ = y.shape
      # in the mixing weights' precision: under bf16 compute, mixing weights that differ by
      # 1e-3 would round to one value, and d loss / d alpha would sum bf16 products
      term = (y.reshape(b, h, w, self.n_edges, self.c).astype(mixing.dtype)
              * mixing[None, None, None, :, k, None])
      out = term if out is None else out + term
    if out is None:  # a space of only 'none' ops
      b, h, w, _ = x[:, ::self.stride, ::self.stride].shape
      out = jnp.zeros((b, h, w, self.n_edges, self.c), x.dtype)
    return out.astype(x.dtype)


def channel_shuffle(y: jax.Array, groups: int) -> jax.Array:
  """PC-DARTS's shuffle of the last axis: ``out[..., m * groups + g] = y[..., g * q + m]`` for
  ``q = C / groups``, so that the next edge's first 1/K of the channels mixes op outputs with
  bypassed ones."""
  *lead, c = y.shape
  return y.reshape(*lead, groups, c // groups).swapaxes(-1, -2).reshape(*lead, c)


def _max_pool_2x2(x: jax.Array) -> jax.Array:
  """Max over 2x2 blocks (stride 2, no padding) of (B, H, W, ...) with H and W even."""
  b, h, w, *rest = x.shape
  return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, *rest), axis=(2, 4))


class SearchCell(nn.Module):
  c_prev_prev: int
  c_prev: int
  c: int
  reduction: bool
  reduction_prev: bool
  config: SupernetConfig

  @nn.compact
  def __call__(self, s0, s1, mixing, edge_weights, skip_beta, train: bool):
    """s0, s1: the outputs of the two previous cells; mixing: (E, K), softmax(alpha) of this
    cell type; edge_weights: (E,) PC-DARTS's normalised betas, or None (DARTS: every edge
    weighs 1); skip_beta: DARTS-'s auxiliary skip coefficient or None. Returns the last
    ``multiplier`` nodes concatenated on channels."""
    cfg, c = self.config, self.c
    if self.reduction_prev:
      s0 = modules.FactorizedReduce(self.c_prev_prev, c, False, name='preprocess0')(s0, train)
    else:
      s0 = modules.ReLUConvBN(self.c_prev_prev, c, False, name='preprocess0')(s0, train)
    s1 = modules.ReLUConvBN(self.c_prev, c, False, name='preprocess1')(s1, train)
    states = [s0, s1]
    sums = [None] * cfg.nodes  # running sums of each node's incoming edges
    k = cfg.partial_channels
    q = c // k  # channels through the mixed op (PC-DARTS: 1/K of them; DARTS: all)
    for group in edge_groups(cfg.nodes):
      sources = [states[src] for _, _, src in group.edges]
      x = jnp.concatenate([s[..., :q] for s in sources], axis=-1)
      stride = 2 if self.reduction and group.name == 'edges_01' else 1
      idx = np.array([e for e, _, _ in group.edges])
      y = MixedEdges(q, len(group.edges), stride, cfg.primitives, cfg.ops, cfg.depthwise_impl,
                     cfg.auxiliary_skip, name=group.name)(x, mixing[idx], train, skip_beta)
      if k > 1:  # PC-DARTS eq. 2: the other channels bypass the op (max-pooled when it strides)
        bypass = jnp.stack([s[..., q:] for s in sources], axis=-2)
        bypass = _max_pool_2x2(bypass) if stride == 2 else bypass
        y = channel_shuffle(jnp.concatenate([y, bypass], axis=-1), k)
      if edge_weights is not None:  # PC-DARTS eq. 4, in the betas' precision as eq. 2's mixing
        y = (y.astype(edge_weights.dtype)
             * edge_weights[idx][None, None, None, :, None]).astype(y.dtype)
      for slot, (_, node, _) in enumerate(group.edges):
        sums[node] = y[..., slot, :] if sums[node] is None else sums[node] + y[..., slot, :]
      states.append(sums[len(states) - 2])  # that node has now received all its edges
    return jnp.concatenate(states[-cfg.multiplier:], axis=-1)


def check_alphas(alphas: Any, config: SupernetConfig) -> None:
  """Raises a one-line ValueError unless alphas is ``{'normal': (E, K), 'reduce': (E, K)}``, plus
  ``'betas_normal', 'betas_reduce'`` of shape (E,) with edge normalisation."""
  shapes = config.architecture_shapes
  if not isinstance(alphas, Mapping) or set(alphas) != set(shapes):
    keys = sorted(alphas) if isinstance(alphas, Mapping) else type(alphas).__name__
    names = [repr(k) for k in shapes]
    expected = ', '.join(names[:-1]) + ' and ' + names[-1]
    raise ValueError(f'alphas must be a dict with keys {expected}, got {keys}')
  for kind, expected in shapes.items():
    shape = tuple(np.shape(alphas[kind]))
    if shape != expected:
      raise ValueError(f'alphas[{kind!r}] has shape {shape}; expected {expected} '
                       f'({config.nodes} nodes, ops {", ".join(config.primitives)})')


def check_image_size(shape: 'Sequence[int] | jax.Array', n_reductions: int, in_channels: int, *,
                     what: str = 'network') -> None:
  """Each reduction halves H and W with a FactorizedReduce, which needs even sizes.

  ``shape`` is an NHWC shape or an array (whose dtype is checked too); ``what`` names the
  network in the messages (keyword-only: a positional dtype once landed there).
  """
  shape, dtype = getattr(shape, 'shape', shape), getattr(shape, 'dtype', None)
  if len(shape) != 4:
    raise ValueError(f'images must be (batch, height, width, channels); got shape {tuple(shape)}')
  if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f'images must be floating point (normalised), got dtype {dtype}')
  _, h, w, c = shape
  if c != in_channels:
    raise ValueError(f'images have {c} channels; the {what} was built for in_channels='
                     f'{in_channels} (NHWC layout expected)')
  m = 2**n_reductions
  if h < m or w < m or h % m or w % m:
    raise ValueError(f'input image {h}x{w} is too small or not divisible for the {what}\'s '
                     f'{n_reductions} reductions: height and width must be multiples of {m}')


def cell_specs(config: SupernetConfig) -> tuple[dict, ...]:
  """Each cell's channels and kind, in order: the original's wiring of the stack."""
  c_stem = config.stem_multiplier * config.C
  c_prev_prev, c_prev, c = c_stem, c_stem, config.C
  reduction_prev, specs = False, []
  for i in range(config.layers):
    reduction = i in config.reduction_layers
    c = 2 * c if reduction else c
    specs.append(dict(c_prev_prev=c_prev_prev, c_prev=c_prev, c=c, reduction=reduction,
                      reduction_prev=reduction_prev))
    reduction_prev = reduction
    c_prev_prev, c_prev = c_prev, config.multiplier * c
  return tuple(specs)


def node_softmax(betas: jax.Array, nodes: int) -> jax.Array:
  """PC-DARTS's edge weights (its eq. 4): a softmax of the betas over each node's own 2 + i
  incoming edges, in the edges' order (E,)."""
  return segment_softmax(betas, tuple(i + 2 for i in range(nodes)))


def segment_softmax(x: jax.Array, sizes: Sequence[int]) -> jax.Array:
  """A softmax over each of the consecutive segments of ``x`` of the given ``sizes``."""
  starts = np.cumsum([0, *sizes])
  return jnp.concatenate([jax.nn.softmax(x[starts[i]:starts[i + 1]])
                          for i in range(len(sizes))])


class CellMixing(NamedTuple):
  """What the cells of one kind mix their edges with."""
  ops: jax.Array  # (E, K): eq. 2's softmax(alpha), or a method's own (GDAS's one-hot sample)
  edges: jax.Array | None = None  # (E,): PC-DARTS's normalised betas (eq. 4 there); None: 1
  skip_beta: jax.Array | None = None  # DARTS-'s auxiliary skip coefficient (auxiliary_skip)


def architecture_mixing(alphas, dtype, nodes: int, skip_beta=None) -> dict[str, CellMixing]:
  """DARTS's mixing rule: per cell kind, softmax(alpha) of eq. 2 and PC-DARTS's edge weights
  (None without betas), once per forward: all cells of a kind share them. They and the mixed
  sums stay in the architecture's precision (float32 under bf16 compute ``dtype``). A search
  method may replace this rule (``darts_jax.methods``: GDAS samples a one-hot, DrNAS a
  Dirichlet; DARTS- adds its ``skip_beta``)."""
  out = {}
  for kind in ('normal', 'reduce'):
    betas = alphas.get(f'betas_{kind}')
    out[kind] = CellMixing(jax.nn.softmax(widen(alphas[kind], dtype), axis=-1),
                           None if betas is None else node_softmax(widen(betas, dtype), nodes),
                           skip_beta)
  return out


def widen(a, dtype) -> jax.Array:
  """``a`` in the wider of its own precision and ``dtype``: architecture quantities stay float32
  under bf16 compute."""
  return jnp.asarray(a, jnp.promote_types(jnp.result_type(a), dtype))


def check_mixing(mixing: Any, config: SupernetConfig) -> None:
  """A one-line ValueError unless ``mixing`` is ``{'normal': CellMixing, 'reduce': CellMixing}``
  with ops of shape (E, K), edges None or (E,), and skip_beta given exactly when the supernet
  has DARTS-'s auxiliary skip."""
  e, k = config.alpha_shape
  if not isinstance(mixing, Mapping) or set(mixing) != {'normal', 'reduce'}:
    raise ValueError(f'mixing must be a dict with keys \'normal\' and \'reduce\', got '
                     f'{sorted(mixing) if isinstance(mixing, Mapping) else type(mixing).__name__}')
  for kind, m in mixing.items():
    if (not isinstance(m, CellMixing) or np.shape(m.ops) != (e, k)
        or (m.edges is not None and np.shape(m.edges) != (e,))):
      raise ValueError(f'mixing[{kind!r}] must be a CellMixing with ops of shape {(e, k)} and '
                       f'edges of shape {(e,)} or None')
    if (m.skip_beta is None) == config.auxiliary_skip:
      raise ValueError(f'mixing[{kind!r}].skip_beta is {m.skip_beta!r}: give it exactly when the '
                       f'supernet has the auxiliary skip (auxiliary_skip={config.auxiliary_skip})')


def _check_inputs(images, mixing, cfg):
  check_mixing(mixing, cfg)
  check_image_size(images, len(cfg.reduction_layers), cfg.in_channels, what='search network')


class SearchNetwork(nn.Module):
  """The original's ``model_search.Network``: stem, cells, global pooling, linear classifier."""
  config: SupernetConfig

  @nn.compact
  def __call__(self, images, mixing, train: bool = True):
    """``mixing``: a :class:`CellMixing` per cell kind, e.g. :func:`architecture_mixing` of the
    alphas."""
    cfg = self.config
    _check_inputs(images, mixing, cfg)
    c_stem = cfg.stem_multiplier * cfg.C
    x = modules.Conv(cfg.in_channels, c_stem, 3, padding=1, name='stem_conv')(images)
    s0 = s1 = modules.BatchNorm(c_stem, affine=True, name='stem_bn')(x, train)
    specs = cell_specs(cfg)
    for i, spec in enumerate(specs):
      cell = SearchCell(**spec, config=cfg, name=f'cell{i}')
      s0, s1 = s1, cell(s0, s1, *mixing['reduce' if spec['reduction'] else 'normal'], train)
    c_out = cfg.multiplier * specs[-1]['c']
    return modules.Linear(c_out, cfg.num_classes, name='classifier')(jnp.mean(s1, axis=(1, 2)))


def _pure(module: nn.Module, train: bool):
  """``(params, batch_stats, *inputs) -> (output, new batch_stats)``: a part of the network (a
  cell, the stem's BatchNorm) as a pure function of its variables."""
  def f(params, stats, *inputs):
    variables = {'params': params, 'batch_stats': stats}
    if not train:
      return module.apply(variables, *inputs, False), stats
    out, updates = module.apply(variables, *inputs, True, mutable=['batch_stats'])
    return out, updates.get('batch_stats', {})
  return f


def _apply_cellwise(cfg: SupernetConfig, weights, mixing, batch_stats, images, train: bool):
  """:class:`SearchNetwork`'s forward with each cell a pure function of its variables and
  inputs, recomputed in the backward pass (``remat_cells``). Returns (logits, new statistics)."""
  _check_inputs(images, mixing, cfg)
  new_stats = {}

  def keep(name, stats):
    if name in batch_stats:  # the statistics' pytree keeps its structure
      new_stats[name] = stats

  c_stem = cfg.stem_multiplier * cfg.C
  x = modules.Conv(cfg.in_channels, c_stem, 3, padding=1).apply(
      {'params': weights['stem_conv']}, images)
  s1, stats = _pure(modules.BatchNorm(c_stem, affine=True), train)(
      weights.get('stem_bn', {}), batch_stats.get('stem_bn', {}), x)
  keep('stem_bn', stats)
  s0 = s1
  specs = cell_specs(cfg)
  for i, spec in enumerate(specs):
    name = f'cell{i}'
    cell = _pure(SearchCell(**spec, config=cfg), train)
    out, stats = kernels.recompute_in_backward(cell)(
        weights[name], batch_stats.get(name, {}), s0, s1,
        *mixing['reduce' if spec['reduction'] else 'normal'])
    keep(name, stats)
    s0, s1 = s1, out
  logits = modules.Linear(cfg.multiplier * specs[-1]['c'], cfg.num_classes).apply(
      {'params': weights['classifier']}, jnp.mean(s1, axis=(1, 2)))
  return logits, new_stats


class SupernetVariables(NamedTuple):
  weights: Any
  batch_stats: Any


class LossAux(NamedTuple):
  batch_stats: Any
  logits: jax.Array


def _dummy_images(config: SupernetConfig, image_size: tuple[int, int], dtype):
  return jnp.zeros((2, *image_size, config.in_channels), dtype)


def _init_variables(key, config, image_size, dtype) -> SupernetVariables:
  model = SearchNetwork(config)
  mixing = architecture_mixing(init_alphas(jax.random.PRNGKey(0), config, dtype), dtype,
                               config.nodes, 1.0 if config.auxiliary_skip else None)
  variables = model.init(key, _dummy_images(config, image_size, dtype), mixing, False)
  return SupernetVariables(variables['params'], variables.get('batch_stats', {}))


def init_supernet(key: jax.Array, config: SupernetConfig, image_size=(32, 32),
                  dtype=jnp.float32) -> SupernetVariables:
  """Weights (PyTorch's default initialisation) and BN statistics (zeros / ones)."""
  if not isinstance(image_size, (tuple, list)) or len(image_size) != 2:
    raise ValueError(f'image_size={image_size!r}: give (height, width)')
  if config.ops != registry.OPS:  # user ops draw their own initial values
    return jax.jit(lambda k: _init_variables(k, config, tuple(image_size), dtype))(key)
  values = init.torch_default_init(key, supernet_shapes(config, image_size, dtype)._asdict())
  return SupernetVariables(values['weights'], values['batch_stats'])


def supernet_shapes(config: SupernetConfig, image_size=(32, 32),
                    dtype=jnp.float32) -> SupernetVariables:
  """Shapes of (weights, batch_stats), computing nothing (``jax.eval_shape``)."""
  return jax.eval_shape(lambda k: _init_variables(k, config, tuple(image_size), dtype),
                        jax.random.PRNGKey(0))


def init_alphas(key: jax.Array, config: SupernetConfig, dtype=jnp.float32,
                scale: float = 1e-3) -> dict[str, jax.Array]:
  """``scale * N(0, 1)`` as in the original code (the paper says zeros: pass scale=0); PC-DARTS's
  betas (edge normalisation) the same way."""
  k_normal, k_reduce = jax.random.split(key)
  alphas = {'normal': scale * jax.random.normal(k_normal, config.alpha_shape, dtype),
            'reduce': scale * jax.random.normal(k_reduce, config.alpha_shape, dtype)}
  if config.edge_normalization:  # from a key of their own: the alphas stay those of DARTS
    k_normal, k_reduce = jax.random.split(jax.random.fold_in(key, 1))
    e = config.alpha_shape[:1]
    alphas.update(betas_normal=scale * jax.random.normal(k_normal, e, dtype),
                  betas_reduce=scale * jax.random.normal(k_reduce, e, dtype))
  return alphas


def make_apply(config: SupernetConfig):
  """``apply(weights, alphas, batch_stats, images, train) -> (logits, new_batch_stats)``."""
  apply = make_mixing_apply(config)

  def apply_alphas(weights, alphas, batch_stats, images, train: bool = True):
    check_alphas(alphas, config)
    return apply(weights, architecture_mixing(alphas, images.dtype, config.nodes), batch_stats,
                 images, train)

  return apply_alphas


def make_mixing_apply(config: SupernetConfig):
  """``apply(weights, mixing, batch_stats, images, train) -> (logits, new_batch_stats)``: the
  supernet at given mixing weights (see :class:`SearchNetwork`)."""
  model = SearchNetwork(config)

  def apply(weights, mixing, batch_stats, images, train: bool = True):
    if config.remat_cells:
      return _apply_cellwise(config, weights, mixing, batch_stats, images, train)
    variables = {'params': weights, 'batch_stats': batch_stats}
    if train:
      logits, updates = model.apply(variables, images, mixing, True, mutable=['batch_stats'])
      return logits, updates['batch_stats']
    return model.apply(variables, images, mixing, False), batch_stats

  return apply


def make_loss(config: SupernetConfig, train: bool = True, compute_dtype=None):
  """The supernet's loss as one pure function.

  Returns ``loss(weights, alphas, batch_stats, batch) -> (loss, LossAux(batch_stats, logits))``
  with ``batch = (images NHWC, integer labels)``. ``train=True`` (the original's and the
  paper's choice for both L_train and L_val) normalises with batch statistics and returns
  updated running statistics.

  ``compute_dtype='bfloat16'`` is mixed precision: the weights and images are cast to bf16 for
  the convolutions, while the weights given (the master copy), the alphas and their softmax, the
  BN statistics and the loss stay in their own precision (float32).
  """
  mixing_loss = make_mixing_loss(config, train, compute_dtype)

  def loss(weights, alphas, batch_stats, batch):
    check_alphas(alphas, config)
    return mixing_loss(weights, architecture_mixing(
        alphas, losses.computed_in(compute_dtype, batch[0]), config.nodes), batch_stats, batch)

  return loss


def make_mixing_loss(config: SupernetConfig, train: bool = True, compute_dtype=None):
  """:func:`make_loss` as a function of the mixing weights instead of the alphas:
  ``loss(weights, mixing, batch_stats, batch)``, ``mixing`` as :func:`architecture_mixing` makes
  it. The seam where a search method puts its own mixing rule."""
  return classification_loss(make_mixing_apply(config), train, compute_dtype)


def classification_loss(apply, train: bool = True, compute_dtype=None):
  """``loss(weights, mixing, batch_stats, batch) -> (loss, LossAux(batch_stats, logits))``, the
  mean cross-entropy of a network ``apply(weights, mixing, batch_stats, images, train) ->
  (logits, new batch_stats)``, under the mixed precision of :func:`make_loss`."""
  losses.cast_floating(None, compute_dtype)  # a bad dtype fails here, not inside a trace

  def loss(weights, mixing, batch_stats, batch):
    images, labels = batch
    if (np.ndim(labels) != 1 or np.shape(labels)[0] != np.shape(images)[0]
        or not jnp.issubdtype(jnp.result_type(labels), jnp.integer)):
      raise ValueError(f'labels must be integer class indices of shape ({np.shape(images)[0]},), '
                       f'got shape {np.shape(labels)} and dtype {jnp.result_type(labels)}')
    logits, new_stats = apply(losses.cast_floating(weights, compute_dtype), mixing, batch_stats,
                              losses.cast_floating(images, compute_dtype), train)
    return losses.cross_entropy(logits, labels), LossAux(new_stats, logits)

  return loss
