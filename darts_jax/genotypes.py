"""Genotypes: the discrete cells that a search derives and the evaluation networks build.

``Genotype`` mirrors the original's namedtuple (``normal``, ``normal_concat``, ``reduce``,
``reduce_concat``) but is immutable all the way down, parses the original's string form without
``eval`` and round-trips through JSON.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

PRIMITIVES: tuple[str, ...] = (
    'none',
    'max_pool_3x3',
    'avg_pool_3x3',
    'skip_connect',
    'sep_conv_3x3',
    'sep_conv_5x5',
    'dil_conv_3x3',
    'dil_conv_5x5',
)
# the ops without parameters of their own: a collapsed search fills its cells with them
# (RobustDARTS), the count the health report watches
PARAMETER_FREE: tuple[str, ...] = ('none', 'max_pool_3x3', 'avg_pool_3x3', 'skip_connect')

_FIELDS = ('normal', 'normal_concat', 'reduce', 'reduce_concat')


def _as_pairs(pairs: Any, field: str) -> tuple[tuple[str, int], ...]:
  if not isinstance(pairs, (list, tuple)):
    raise ValueError(f'genotype {field}: expected a list of (op_name, input_index) pairs, got '
                     f'{pairs!r}')
  out = []
  for pair in pairs:
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2 or not isinstance(pair[0], str)
        or not isinstance(pair[1], (int, np.integer)) or isinstance(pair[1], bool)):
      raise ValueError(f'genotype {field}: each entry must be (op_name, input_index), got {pair!r}')
    out.append((pair[0], int(pair[1])))
  return tuple(out)


def _as_concat(concat: Any, field: str) -> tuple[int, ...]:
  try:
    values = tuple(concat)
  except TypeError:
    raise ValueError(f'genotype {field}: expected a list of node indices, got {concat!r}') from None
  if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
    raise ValueError(f'genotype {field}: expected a list of node indices, got {concat!r}')
  return tuple(int(v) for v in values)


@dataclasses.dataclass(frozen=True)
class Genotype:
  """A cell pair: per intermediate node two (op, input) pairs; inputs 0 and 1 are the cell
  inputs."""
  normal: tuple[tuple[str, int], ...]
  normal_concat: tuple[int, ...]
  reduce: tuple[tuple[str, int], ...]
  reduce_concat: tuple[int, ...]

  def __post_init__(self):
    for kind in ('normal', 'reduce'):
      pairs = _as_pairs(getattr(self, kind), kind)
      concat = _as_concat(getattr(self, kind + '_concat'), kind + '_concat')
      if len(pairs) % 2:
        raise ValueError(f'genotype {kind}: needs two (op, input) pairs per node, got {len(pairs)}')
      for i, (op, j) in enumerate(pairs):
        node = i // 2
        if not 0 <= j < node + 2:
          raise ValueError(f'genotype {kind}: node {node} takes input {j} ({op!r}); allowed '
                           f'inputs are 0..{node + 1}')
      nodes = len(pairs) // 2
      if not concat:
        raise ValueError(f'genotype {kind}_concat is empty: list the states to concatenate')
      for c in concat:
        if not 0 <= c < nodes + 2:
          raise ValueError(f'genotype {kind}_concat: {c} is not a state index 0..{nodes + 1}')
        if kind == 'reduce' and c < 2:
          raise ValueError(f'genotype reduce_concat: {c} is a cell input, whose size differs from '
                           f'the reduced nodes; allowed: 2..{nodes + 1}')
      object.__setattr__(self, kind, pairs)
      object.__setattr__(self, kind + '_concat', concat)

  @property
  def ops(self) -> set[str]:
    return {op for op, _ in self.normal + self.reduce}

  def to_string(self) -> str:
    """The original's ``str(Genotype(...))`` form."""
    def pairs(p):
      return '[' + ', '.join(f'({op!r}, {j})' for op, j in p) + ']'
    return (f'Genotype(normal={pairs(self.normal)}, normal_concat={list(self.normal_concat)}, '
            f'reduce={pairs(self.reduce)}, reduce_concat={list(self.reduce_concat)})')

  __str__ = to_string

  def to_dict(self) -> dict[str, list]:
    return {'normal': [list(p) for p in self.normal], 'normal_concat': list(self.normal_concat),
            'reduce': [list(p) for p in self.reduce], 'reduce_concat': list(self.reduce_concat)}

  def to_json(self) -> str:
    return json.dumps(self.to_dict())

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'Genotype':
    if not isinstance(d, Mapping):
      raise ValueError(f'a genotype dict is needed, got {type(d).__name__}')
    missing = [f for f in _FIELDS if f not in d]
    extra = [k for k in d if k not in _FIELDS]
    if missing or extra:
      raise ValueError(f'genotype fields must be exactly {list(_FIELDS)}; missing {missing}, '
                       f'unexpected {extra}')
    return cls(**{f: d[f] for f in _FIELDS})

  @classmethod
  def from_json(cls, text: str) -> 'Genotype':
    try:
      d = json.loads(text)
    except json.JSONDecodeError as e:
      raise ValueError(f'genotype JSON is malformed: {e}') from None
    return cls.from_dict(d)

  @classmethod
  def from_string(cls, text: str) -> 'Genotype':
    """Parses the original's string form (``range(a, b)`` allowed for the concats) without eval."""
    return cls.from_dict(_parse_genotype_call(text))

  def validate_ops(self, allowed: Sequence[str]) -> None:
    for op in sorted(self.ops):
      if op not in allowed:
        raise ValueError(f'genotype uses unknown op {op!r}; allowed: {", ".join(allowed)}')


def _literal(node: ast.AST, text: str) -> Any:
  """A list/tuple/int/str literal, or ``range(a, b)`` / ``range(b)`` of int literals."""
  if isinstance(node, ast.Constant) and isinstance(node.value, (int, str)):
    return node.value
  if isinstance(node, (ast.List, ast.Tuple)):
    return [_literal(e, text) for e in node.elts]
  if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == 'range'
      and not node.keywords and 1 <= len(node.args) <= 3):
    bounds = [_literal(a, text) for a in node.args]
    if all(isinstance(b, int) for b in bounds):
      return list(range(*bounds))
  raise ValueError(f'malformed genotype string: unexpected {ast.get_source_segment(text, node)!r}')


_CNN_FORM = ("Genotype(normal=[('op', input), ...], normal_concat=[...], reduce=[...], "
             'reduce_concat=[...])')


def _parse_genotype_call(text: str, what: str = 'genotype', form: str = _CNN_FORM
                         ) -> dict[str, Any]:
  """The keyword arguments of the original's ``Genotype(...)`` string, parsed without eval;
  ``what`` and ``form`` name the kind of genotype in the errors."""
  if not isinstance(text, str):
    raise ValueError(f'a {what} string is needed, got {type(text).__name__}')
  text = text.strip()
  try:
    tree = ast.parse(text, mode='eval')
  except SyntaxError:
    raise ValueError(f'malformed {what} string: {text[:80]!r} is not {form}') from None
  call = tree.body
  if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
          and call.func.id == 'Genotype' and not call.args):
    first_field = form.split('=')[0]  # e.g. 'Genotype(normal'
    raise ValueError(f'malformed {what} string: expected {first_field}=..., ...) with keyword '
                     f'arguments, got {text[:80]!r}')
  names = [kw.arg for kw in call.keywords]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise ValueError(f'malformed {what} string: keyword {repeated[0]!r} given twice')
  return {kw.arg: _literal(kw.value, text) for kw in call.keywords}


def parse_genotype(spec: 'str | Mapping | Genotype', named: Mapping[str, Genotype] | None = None
                   ) -> Genotype:
  """A genotype from a published name, the original's string form, JSON text or a dict."""
  return parse_spec(spec, Genotype, GENOTYPES if named is None else named, 'genotype',
                    'Genotype(normal=[...], ...)')


def parse_spec(spec, cls, named: Mapping[str, Any], what: str, form: str):
  """``spec`` as a ``cls`` (a genotype class with from_dict, from_string and from_json): itself,
  a dict, a name in ``named``, the original's string form (``form``, for the error) or JSON."""
  if isinstance(spec, cls):
    return spec
  if isinstance(spec, Mapping):
    return cls.from_dict(spec)
  if not isinstance(spec, str):
    raise ValueError(f'cannot make a {what} from {type(spec).__name__}')
  s = spec.strip()
  if s in named:
    return named[s]
  if s.startswith('Genotype('):
    return cls.from_string(s)
  if s.startswith('{'):
    return cls.from_json(s)
  raise ValueError(f'unknown {what} {spec[:80]!r}: give one of {", ".join(named)}, the '
                   f"original's string form {form} or its JSON form")


def load_genotype(spec: 'str | Mapping | Genotype', named: Mapping[str, Genotype] | None = None
                  ) -> Genotype:
  """:func:`parse_genotype`, and also a path: a search workdir (its ``genotype.json``) or a file
  holding a genotype's JSON or string form (``genotype.json``, ``genotype.txt``)."""
  named = GENOTYPES if named is None else named
  if not isinstance(spec, str) or spec.strip() in named or spec.strip().startswith(
      ('Genotype(', '{')):
    return parse_genotype(spec, named)
  path = pathlib.Path(spec.strip()).expanduser()
  if path.is_dir():
    if not (path / 'genotype.json').is_file():
      raise ValueError(f'genotype={spec!r}: the directory has no genotype.json (a search '
                       'workdir has one after its first epoch)')
    path = path / 'genotype.json'
  if not path.is_file():
    raise ValueError(f'genotype={spec!r} is neither a published name ({", ".join(named)}), '
                     "the original's string form Genotype(normal=[...], ...), JSON, nor an "
                     'existing search workdir or genotype file')
  text = path.read_text().strip()
  try:
    return parse_genotype(text, {})
  except ValueError as e:
    raise ValueError(f'{path}: {e}') from None


DARTS_V1 = Genotype(
    normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1),
            ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0),
            ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)],
    reduce_concat=[2, 3, 4, 5])

DARTS_V2 = Genotype(
    normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
            ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1),
            ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)],
    reduce_concat=[2, 3, 4, 5])

DARTS = DARTS_V2

# the original's reference cells (5 nodes; they use sep_conv_7x7 and conv_7x1_1x7)
NASNet = Genotype(
    normal=[('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('sep_conv_5x5', 0), ('sep_conv_3x3', 0),
            ('avg_pool_3x3', 1), ('skip_connect', 0), ('avg_pool_3x3', 0), ('avg_pool_3x3', 0),
            ('sep_conv_3x3', 1), ('skip_connect', 1)],
    normal_concat=[2, 3, 4, 5, 6],
    reduce=[('sep_conv_5x5', 1), ('sep_conv_7x7', 0), ('max_pool_3x3', 1), ('sep_conv_7x7', 0),
            ('avg_pool_3x3', 1), ('sep_conv_5x5', 0), ('skip_connect', 3), ('avg_pool_3x3', 2),
            ('sep_conv_3x3', 2), ('max_pool_3x3', 1)],
    reduce_concat=[4, 5, 6])

AmoebaNet = Genotype(
    normal=[('avg_pool_3x3', 0), ('max_pool_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_5x5', 2),
            ('sep_conv_3x3', 0), ('avg_pool_3x3', 3), ('sep_conv_3x3', 1), ('skip_connect', 1),
            ('skip_connect', 0), ('avg_pool_3x3', 1)],
    normal_concat=[4, 5, 6],
    reduce=[('avg_pool_3x3', 0), ('sep_conv_3x3', 1), ('max_pool_3x3', 0), ('sep_conv_7x7', 2),
            ('sep_conv_7x7', 0), ('avg_pool_3x3', 1), ('max_pool_3x3', 0), ('max_pool_3x3', 1),
            ('conv_7x1_1x7', 0), ('sep_conv_3x3', 5)],
    reduce_concat=[3, 4, 6])

GENOTYPES: Mapping[str, Genotype] = {'DARTS_V1': DARTS_V1, 'DARTS_V2': DARTS_V2, 'DARTS': DARTS,
                                     'NASNet': NASNet, 'AmoebaNet': AmoebaNet}


def num_edges(nodes: int) -> int:
  """Edges of a cell with ``nodes`` intermediate nodes: node i has i + 2 inputs."""
  return sum(i + 2 for i in range(nodes))


def mixing_weights(alphas: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The mixing weights ``softmax(alpha)`` of eq. 2, over the ops of each edge (the last axis).

  numpy, in the alphas' own floating precision as the original computes them (near-ties can rank
  differently in float32 and float64); any other dtype (integers, bfloat16) in float64. The
  softmax behind the genotype rule; the logs show the supernet's own float32 mixing instead
  (``spaces.cnn``), as they always have.
  """
  return {kind: _softmax_np(a) for kind, a in alphas.items()}


def _softmax_np(a: Any) -> np.ndarray:
  """softmax over the last axis in numpy, in ``a``'s own floating precision (other dtypes:
  float64), as the original's genotype rules compute it."""
  a = np.asarray(a)
  a = a.astype(a.dtype if np.issubdtype(a.dtype, np.floating) else np.float64)
  e = np.exp(a - a.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def _parse_cell(mixing: np.ndarray, primitives: Sequence[str], nodes: int):
  """The original's rule: per node keep the 2 incoming edges whose strongest non-none op is
  strongest; on each, that op. Ties resolve as in the original (stable sort, first maximum)."""
  skip = [k for k, p in enumerate(primitives) if p == 'none']
  candidates = [k for k in range(len(primitives)) if k not in skip]
  gene, start = [], 0
  for i in range(nodes):
    rows = mixing[start:start + i + 2]
    edges = sorted(range(i + 2), key=lambda j: -max(rows[j][k] for k in candidates))[:2]
    for j in edges:
      best = candidates[0]
      for k in candidates[1:]:
        if rows[j][k] > rows[j][best]:
          best = k
      gene.append((primitives[best], j))
    start += i + 2
  return gene


def _parse_cell_by_pairs(mixing: np.ndarray, primitives: Sequence[str], nodes: int):
  """GDAS's rule: per node keep the 2 strongest (op, input) pairs over all its incoming edges'
  non-none ops, strongest first; both may come from one input. Ties keep the order (input,
  op), as GDAS's stable sort does."""
  gene, start = [], 0
  for i in range(nodes):
    pairs = [(mixing[start + j][k], j, k) for j in range(i + 2)
             for k, p in enumerate(primitives) if p != 'none']
    gene.extend((primitives[k], j) for _, j, k in sorted(pairs, key=lambda x: -x[0])[:2])
    start += i + 2
  return gene


def derive_genotype_by_pairs(alphas: Mapping[str, Any], primitives: Sequence[str] = PRIMITIVES,
                             nodes: int = 4, multiplier: int = 4) -> Genotype:
  """GDAS's genotype of ``alphas`` (not softmaxed): per node the 2 strongest (op, input) pairs of
  ``softmax(alpha)`` (:func:`_parse_cell_by_pairs`), instead of the original's 2 strongest
  edges."""
  _check_rule_input(alphas, primitives, nodes)
  mixing = mixing_weights({kind: alphas[kind] for kind in ('normal', 'reduce')})
  cells = {kind: _parse_cell_by_pairs(m, primitives, nodes) for kind, m in mixing.items()}
  concat = list(range(2 + nodes - multiplier, nodes + 2))
  return Genotype(normal=cells['normal'], normal_concat=concat, reduce=cells['reduce'],
                  reduce_concat=concat)


def node_softmax_np(betas: Any, nodes: int) -> np.ndarray:
  """PC-DARTS's edge weights in numpy, in the betas' own floating precision as the original
  computes them: a softmax over each node's own 2 + i edges."""
  starts = np.cumsum([0] + [i + 2 for i in range(nodes)])
  return np.concatenate([_softmax_np(np.asarray(betas)[starts[i]:starts[i + 1]])
                         for i in range(nodes)])


def _check_rule_input(alphas: Any, primitives: Sequence[str], nodes: int) -> None:
  """One-line ValueErrors for what a genotype rule cannot read: not a mapping, a missing cell
  kind, wrong shapes, ops that are all none."""
  shape = (num_edges(nodes), len(primitives))
  if not isinstance(alphas, Mapping):
    raise ValueError(f"alphas must be a dict with keys 'normal' and 'reduce', got "
                     f'{type(alphas).__name__}')
  if all(p == 'none' for p in primitives):
    raise ValueError(f'cannot derive a genotype from ops {tuple(primitives)}: every op is none')
  for kind in ('normal', 'reduce'):
    if kind not in alphas:
      raise ValueError(f"alphas need keys 'normal' and 'reduce', got {sorted(alphas)}")
    if np.shape(alphas[kind]) != shape:
      raise ValueError(f'alphas[{kind!r}] has shape {np.shape(alphas[kind])}; expected {shape} '
                       f'({nodes} nodes, {len(primitives)} ops)')
    betas = alphas.get(f'betas_{kind}')
    if betas is not None and np.shape(betas) != shape[:1]:
      raise ValueError(f'alphas[\'betas_{kind}\'] has shape {np.shape(betas)}; expected '
                       f'{shape[:1]} (one per edge)')


def derive_genotype(alphas: Mapping[str, Any], primitives: Sequence[str] = PRIMITIVES,
                    nodes: int = 4, multiplier: int = 4) -> Genotype:
  """The discrete genotype of ``alphas = {'normal': (E, K), 'reduce': (E, K)}`` (not softmaxed):
  the original's rule on :func:`mixing_weights` of them. With PC-DARTS's betas in the mapping
  (``'betas_normal', 'betas_reduce'``, (E,)), the rule ranks ``softmax(alpha)[e, k] *
  node_softmax(beta)[e]`` instead, as PC-DARTS's ``genotype()`` does: the betas choose the edges
  (a positive factor per edge never changes which op wins on it)."""
  _check_rule_input(alphas, primitives, nodes)
  mixing = mixing_weights({kind: alphas[kind] for kind in ('normal', 'reduce')})
  for kind in ('normal', 'reduce'):
    if f'betas_{kind}' in alphas:
      mixing[kind] = mixing[kind] * node_softmax_np(alphas[f'betas_{kind}'], nodes)[:, None]
  cells = {kind: _parse_cell(m, primitives, nodes) for kind, m in mixing.items()}
  concat = list(range(2 + nodes - multiplier, nodes + 2))
  return Genotype(normal=cells['normal'], normal_concat=concat, reduce=cells['reduce'],
                  reduce_concat=concat)
