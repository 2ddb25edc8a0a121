"""The paper's recurrent cell (section 2.1, Penn Treebank): search and evaluation networks as
pure functions over pytrees, and the recurrent genotypes.

One time step, from the previous hidden state h and the embedded token x (the original's
``DARTSCell``; weights multiply from the right, columns ``[c | g]``):

    [c0 | g0] = [x, h] @ W0,            s0 = h + sigmoid(c0) * (tanh(g0) - h)
    [c | g]   = s_j @ Ws_i,             edge (j -> node i) with op f: s_j + sigmoid(c) * (f(g) - s_j)
    h_next    = mean(s_1 .. s_S)

Node i has ONE matrix ``Ws[i]``, shared by its incoming edges. The search cell (``DARTSCellSearch``)
mixes every edge j <= i into node i by softmax(alpha) (eq. 2; 'none' adds nothing but holds
probability), and passes s0 and every node through one affine-free BatchNorm: 1 + S calls per
time step, each updating the running statistics in call order. The evaluation cell takes one
(op, predecessor) per node from the genotype and has no BatchNorm.

The network: tied embedding and decoder (``logits = H @ E^T + b``), log-softmax outputs, the
time loop a ``lax.scan`` (compile time does not grow with the sequence length). Shapes are
time-major: tokens (T, B), hidden (B, nhid), log-probs (T, B, ntoken).

Weights are ``{'encoder': (ntoken, ninp), 'W0': (ninp + nhid, 2 nhid), 'Ws': (S, nhid, 2 nhid),
'decoder_bias': (ntoken,)}``; the search architecture is ``{'recurrent': (S (S + 1) / 2, K)}``,
rows edge by edge (node i owns rows i (i + 1) / 2 .. i (i + 1) / 2 + i, row i (i + 1) / 2 + j the
edge from s_j), columns the primitives.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from darts_jax.genotypes import _as_concat, _as_pairs, _parse_genotype_call, parse_spec

PRIMITIVES: tuple[str, ...] = ('none', 'tanh', 'relu', 'sigmoid', 'identity')
STEPS = 8
NODE_LOOPS = ('unrolled', 'scan')
ACTIVATIONS = {'tanh': jnp.tanh, 'relu': jax.nn.relu, 'sigmoid': jax.nn.sigmoid,
               'identity': lambda g: g}
BN_EPS = 1e-5
BN_MOMENTUM = 0.1  # PyTorch's: running = 0.9 running + 0.1 batch
_FORM = "Genotype(recurrent=[('op', state), ...], concat=range(1, 9))"
INIT_RANGE = 0.04  # the original's U(-0.04, 0.04) for every weight, zero decoder bias


def num_edges(steps: int) -> int:
  return steps * (steps + 1) // 2


def steps_of(num_rows: int) -> int:
  """S from the number of alpha rows S (S + 1) / 2; a one-line error for any other count."""
  steps = int(round((np.sqrt(8 * num_rows + 1) - 1) / 2))
  if steps < 1 or num_edges(steps) != num_rows:
    raise ValueError(f'recurrent alphas have {num_rows} rows: not S (S + 1) / 2 for any number '
                     'of nodes S (8 nodes: 36 rows)')
  return steps


# ----------------------------------------------------------------------------------------------
# genotypes
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RecurrentGenotype:
  """Per node i (1..S) one (op, predecessor j) pair, j in 0..i-1 (s_0 is the cell's first
  state); ``concat``: the states averaged into the next hidden."""
  recurrent: tuple[tuple[str, int], ...]
  concat: tuple[int, ...]

  def __post_init__(self):
    pairs = _as_pairs(self.recurrent, 'recurrent')
    concat = _as_concat(self.concat, 'concat')
    if not pairs:
      raise ValueError('genotype recurrent is empty: give one (op, predecessor) pair per node')
    for i, (op, j) in enumerate(pairs):
      if not 0 <= j <= i:
        raise ValueError(f'genotype recurrent: node {i + 1} takes state {j} ({op!r}); allowed '
                         f'states are 0..{i}')
    if not concat:
      raise ValueError('genotype concat is empty: list the states to average')
    for c in concat:
      if not 0 <= c <= len(pairs):
        raise ValueError(f'genotype concat: {c} is not a state index 0..{len(pairs)}')
    object.__setattr__(self, 'recurrent', pairs)
    object.__setattr__(self, 'concat', concat)

  def to_string(self) -> str:
    """The original's ``str(Genotype(recurrent=..., concat=range(1, 9)))`` form: a run of
    consecutive states prints as Python prints a range."""
    c = self.concat
    consecutive = list(c) == list(range(c[0], c[0] + len(c)))
    concat = f'range({c[0]}, {c[-1] + 1})' if consecutive else str(list(c))
    pairs = ', '.join(f'({op!r}, {j})' for op, j in self.recurrent)
    return f'Genotype(recurrent=[{pairs}], concat={concat})'

  __str__ = to_string

  def to_dict(self) -> dict[str, list]:
    return {'recurrent': [list(p) for p in self.recurrent], 'concat': list(self.concat)}

  def to_json(self) -> str:
    return json.dumps(self.to_dict())

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'RecurrentGenotype':
    if not isinstance(d, Mapping):
      raise ValueError(f'a recurrent genotype dict is needed, got {type(d).__name__}')
    missing = [f for f in ('recurrent', 'concat') if f not in d]
    if missing:
      raise ValueError(f'recurrent genotype fields are recurrent and concat; missing {missing}')
    return cls(d['recurrent'], d['concat'])

  @classmethod
  def from_json(cls, text: str) -> 'RecurrentGenotype':
    try:
      return cls.from_dict(json.loads(text))
    except json.JSONDecodeError as e:
      raise ValueError(f'recurrent genotype JSON is malformed: {e}') from None

  @classmethod
  def from_string(cls, text: str) -> 'RecurrentGenotype':
    """The original's string form, parsed without eval."""
    return cls.from_dict(_parse_genotype_call(text, 'recurrent genotype', _FORM))

  def validate_ops(self, allowed: Sequence[str] = PRIMITIVES) -> None:
    for op, _ in self.recurrent:
      if op not in allowed or op == 'none':
        raise ValueError(f'genotype uses op {op!r}; allowed: '
                         f'{", ".join(a for a in allowed if a != "none")}')


DARTS_V1 = RecurrentGenotype(
    recurrent=(('relu', 0), ('relu', 1), ('tanh', 2), ('relu', 3), ('relu', 4), ('identity', 1),
               ('relu', 5), ('relu', 1)), concat=tuple(range(1, 9)))
DARTS_V2 = RecurrentGenotype(
    recurrent=(('sigmoid', 0), ('relu', 1), ('relu', 1), ('identity', 1), ('tanh', 2),
               ('sigmoid', 5), ('tanh', 3), ('relu', 5)), concat=tuple(range(1, 9)))
GENOTYPES = {'DARTS_V1': DARTS_V1, 'DARTS_V2': DARTS_V2, 'DARTS': DARTS_V2}


def parse_genotype(spec: 'str | Mapping | RecurrentGenotype') -> RecurrentGenotype:
  """A recurrent genotype from a published name, the original's string form, JSON or a dict."""
  return parse_spec(spec, RecurrentGenotype, GENOTYPES, 'recurrent genotype', _FORM)


def derive_genotype(alphas: Mapping[str, Any], primitives: Sequence[str] = PRIMITIVES
                    ) -> RecurrentGenotype:
  """The original's rule (``RNNModelSearch.genotype``): P = softmax(alpha) over every column,
  'none' included, in the alphas' own precision; node i keeps the predecessor whose best
  non-'none' probability is largest and that row's best non-'none' op, the first among equals
  in both choices; every node is averaged into the hidden."""
  a = np.asarray(alphas['recurrent'])
  a = a if a.dtype == np.float32 else a.astype(np.float64)  # the alphas' own precision
  p = np.exp(a - a.max(-1, keepdims=True))
  p = p / p.sum(-1, keepdims=True)
  ops = [k for k, name in enumerate(primitives) if name != 'none']
  steps, gene = steps_of(a.shape[0]), []
  for i in range(steps):
    rows = p[num_edges(i):num_edges(i + 1)][:, ops]
    j = int(np.argmax(rows.max(-1)))  # argmax: the first of equal maxima, as the stable sort
    gene.append((primitives[ops[int(np.argmax(rows[j]))]], j))
  return RecurrentGenotype(tuple(gene), tuple(range(1, steps + 1)))


# ----------------------------------------------------------------------------------------------
# networks
# ----------------------------------------------------------------------------------------------

class RecurrentConfig(NamedTuple):
  """Sizes of the recurrent network (the original's ``RNNModel(ntoken, ninp, nhid, nhidlast)``;
  it requires ninp == nhid == nhidlast, as weight tying does)."""
  ntoken: int
  nhid: int
  steps: int = STEPS
  primitives: tuple[str, ...] = PRIMITIVES


def init_weights(key: jax.Array, config: RecurrentConfig, dtype=jnp.float32,
                 init_range: float = INIT_RANGE) -> dict[str, jax.Array]:
  """The original's initialisation: U(-0.04, 0.04) everywhere, zero decoder bias."""
  n, s = config.nhid, config.steps
  k_e, k_0, k_s = jax.random.split(key, 3)
  u = lambda k, shape: jax.random.uniform(k, shape, dtype, -init_range, init_range)  # noqa: E731
  return {'encoder': u(k_e, (config.ntoken, n)), 'W0': u(k_0, (2 * n, 2 * n)),
          'Ws': u(k_s, (s, n, 2 * n)), 'decoder_bias': jnp.zeros((config.ntoken,), dtype)}


def init_alphas(key: jax.Array, config: RecurrentConfig, dtype=jnp.float32,
                scale: float = 1e-3) -> dict[str, jax.Array]:
  """alpha = 1e-3 * N(0, 1), as the original initialises them."""
  shape = (num_edges(config.steps), len(config.primitives))
  return {'recurrent': scale * jax.random.normal(key, shape, dtype)}


def init_batch_stats(config: RecurrentConfig, dtype=jnp.float32) -> dict[str, jax.Array]:
  return {'mean': jnp.zeros((config.nhid,), dtype), 'var': jnp.ones((config.nhid,), dtype)}


def _gate(cg):
  """[c | g] -> (sigmoid(c), g): the gate and the pre-activation of s + sigmoid(c) (f(g) - s)."""
  c, g = jnp.split(cg, 2, axis=-1)
  return jax.nn.sigmoid(c), g


def _masked(v, mask):
  return v if mask is None else v * mask


def _first_state(w, x, h, x_mask=None, h_mask=None):
  # the masks drop the matmul's inputs only; the highway mixes the unmasked h
  c0, g0 = _gate(jnp.concatenate([_masked(x, x_mask), _masked(h, h_mask)], -1) @ w['W0'])
  return h + c0 * (jnp.tanh(g0) - h)


def _batch_norm(s, stats, train: bool):
  """One call of the search cell's BatchNorm1d(affine=False): batch statistics in training
  (biased variance normalises, the unbiased one updates the running estimate), running ones
  in evaluation. Returns (normalised s, statistics after the call)."""
  if not train:
    return (s - stats['mean'][None]) * jax.lax.rsqrt(stats['var'][None] + BN_EPS), stats
  mean = jnp.mean(s, 0)
  var = jnp.mean(jnp.square(s - mean[None]), 0)
  b = s.shape[0]
  new = {'mean': (1 - BN_MOMENTUM) * stats['mean'] + BN_MOMENTUM * mean,
         'var': (1 - BN_MOMENTUM) * stats['var'] + BN_MOMENTUM * var * b / (b - 1)}
  return (s - mean[None]) * jax.lax.rsqrt(var[None] + BN_EPS), new


def _mixed_activation(g, probs, primitives):
  """sum_k p_k f_k(g) over the non-'none' ops, and sum_k p_k: an edge's mixed op is then
  P s + c (F - P s) (eq. 2, the highway step being linear in f)."""
  total, weight = 0.0, 0.0
  for k, name in enumerate(primitives):
    if name == 'none':
      continue
    p = probs[..., k][..., None, None]  # (edges, 1, 1) against (edges, B, nhid)
    total = total + p * ACTIVATIONS[name](g)
    weight = weight + p
  return total, weight


def edge_probabilities(probs: jax.Array, steps: int) -> jax.Array:
  """The alpha rows (E, K) as (S, S + 1, K): row [i, j] holds the edge s_j -> node i for j <= i,
  zeros after (node i reads rows [i, :i + 1])."""
  index = np.zeros((steps, steps + 1), np.int32)
  mask = np.zeros((steps, steps + 1, 1), bool)
  for i in range(steps):
    index[i, :i + 1] = np.arange(num_edges(i), num_edges(i + 1))
    mask[i, :i + 1] = True
  return jnp.where(mask, probs[index], 0)


def search_cell(w, edge_probs, x, h, stats, train: bool, primitives=PRIMITIVES, x_mask=None,
                h_mask=None):
  """One time step of the search cell: (h_next, statistics after its 1 + S BatchNorm calls).

  Node i multiplies its i + 1 predecessor states by its one matrix at once and mixes them with
  ``edge_probs[i, :i + 1]`` (the nodes are unrolled: S copies of one small computation inside
  the time loop's scan)."""
  s0, stats = _batch_norm(_first_state(w, x, h, x_mask, h_mask), stats, train)
  state_mask = None if h_mask is None else h_mask[None]
  states = [s0]
  for i in range(w['Ws'].shape[0]):
    prev = jnp.stack(states)  # (i + 1, B, nhid): every state node i reads
    # node i's one matrix, every edge; dropouth masks the states it multiplies
    c, g = _gate(jnp.einsum('jbh,hk->jbk', _masked(prev, state_mask), w['Ws'][i]))
    f, weight = _mixed_activation(g, edge_probs[i, :i + 1], primitives)
    s, stats = _batch_norm(jnp.sum(weight * prev + c * (f - weight * prev), 0), stats, train)
    states.append(s)
  return jnp.mean(jnp.stack(states[1:]), 0), stats


def _search_cell_scan(w, edge_probs, x, h, stats, train: bool, primitives=PRIMITIVES, x_mask=None,
                h_mask=None):
  """:func:`search_cell` with the nodes as a scan over S steps of one shape: the states live in
  S + 1 slots, and node i mixes every slot with ``edge_probs[i]`` (zero after slot i). It
  multiplies about twice the state rows the unrolled cell does and runs 3x slower on CPU, but
  compiles in a fraction of the time: the float64 reference checks use it."""
  s0, stats = _batch_norm(_first_state(w, x, h, x_mask, h_mask), stats, train)
  steps = w['Ws'].shape[0]
  state_mask = None if h_mask is None else h_mask[None]
  states = jnp.zeros((steps + 1,) + s0.shape, s0.dtype).at[0].set(s0)

  def node(carry, inputs):
    states, stats = carry
    i, ws, p = inputs
    # node i's one matrix, every edge; dropouth masks the states it multiplies
    c, g = _gate(jnp.einsum('jbh,hk->jbk', _masked(states, state_mask), ws))
    f, weight = _mixed_activation(g, p, primitives)
    s, stats = _batch_norm(jnp.sum(weight * states + c * (f - weight * states), 0), stats, train)
    return (states.at[i + 1].set(s), stats), None

  (states, stats), _ = jax.lax.scan(node, (states, stats),
                                    (jnp.arange(steps), w['Ws'], edge_probs))
  return jnp.mean(states[1:], 0), stats


def eval_cell(w, genotype: RecurrentGenotype, x, h, x_mask=None, h_mask=None):
  """One time step of the evaluation cell (no BatchNorm, one edge per node)."""
  states = [_first_state(w, x, h, x_mask, h_mask)]
  for i, (op, j) in enumerate(genotype.recurrent):
    c, g = _gate(_masked(states[j], h_mask) @ w['Ws'][i])
    states.append(states[j] + c * (ACTIVATIONS[op](g) - states[j]))
  return jnp.mean(jnp.stack([states[k] for k in genotype.concat]), 0)


def _decode(w, hiddens):
  """Tied decoder: log_softmax(H @ E^T + b), (T, B, ntoken)."""
  logits = jnp.einsum('tbh,vh->tbv', hiddens, w['encoder']) + w['decoder_bias'][None, None]
  return jax.nn.log_softmax(logits, axis=-1)


class RecurrentOutput(NamedTuple):
  log_probs: jax.Array  # (T, B, ntoken)
  hidden: jax.Array  # (B, nhid): the last step's, carried to the next batch
  hiddens: jax.Array  # (T, B, nhid): every step's output (TAR reads them)
  batch_stats: Any  # the search cell's running statistics after the forward; {} for evaluation


def _valid_steps(tokens, length):
  """Which of the T time steps are real: the first ``length`` (all when ``length`` is None).
  Batches of different lengths are padded to one T, so that one compiled program runs them."""
  t = tokens.shape[0]
  return jnp.ones((t,), bool) if length is None else jnp.arange(t) < length


def search_forward(w, alphas, batch_stats, tokens, hidden, train: bool = True,
                   primitives: Sequence[str] = PRIMITIVES, masks: 'Masks | None' = None,
                   length=None, remat: bool = True, nodes: str = 'unrolled') -> RecurrentOutput:
  """The search network on time-major ``tokens`` (T, B) from ``hidden`` (B, nhid); ``masks``
  (:func:`dropout_masks`, training only) are its dropouts, None for none. ``length``: only the
  first ``length`` steps are real; a padded step leaves the hidden state and the running
  statistics as they were (its outputs are ignored by :func:`nll` and the regularisers).
  ``remat``: a derivative keeps each time step's carry only and recomputes the cell's inside
  (one more cell forward per backward pass; without it the exact hypergradient at the paper's
  size asks for 39 GB). ``nodes``: 'unrolled' (:func:`search_cell`, the fast step) or 'scan'
  (the same numbers, a fraction of the compile time)."""
  if nodes not in NODE_LOOPS:
    raise ValueError(f'nodes={nodes!r}: allowed: {", ".join(NODE_LOOPS)}')
  cell = search_cell if nodes == 'unrolled' else _search_cell_scan
  probs = edge_probabilities(jax.nn.softmax(alphas['recurrent'], axis=-1), w['Ws'].shape[0])
  m = masks or Masks()

  def step(carry, inputs):
    x, real = inputs
    h, stats = cell(w, probs, x, *carry, train, tuple(primitives), m.x, m.h)
    carry = jax.tree_util.tree_map(lambda new, old: jnp.where(real, new, old), (h, stats), carry)
    return carry, carry[0]

  body = jax.checkpoint(step, prevent_cse=False) if remat else step
  (h, stats), hiddens = jax.lax.scan(body, (hidden, batch_stats),
                                     (_embed(w, tokens, m), _valid_steps(tokens, length)))
  return RecurrentOutput(_decode(w, _masked(hiddens, _locked(m.output))), h, hiddens, stats)


def eval_forward(w, genotype: RecurrentGenotype, tokens, hidden, masks: 'Masks | None' = None,
                 length=None) -> RecurrentOutput:
  """The evaluation network of ``genotype``; ``masks`` and ``length`` as in
  :func:`search_forward`."""
  m = masks or Masks()

  def step(h, inputs):
    x, real = inputs
    h = jnp.where(real, eval_cell(w, genotype, x, h, m.x, m.h), h)
    return h, h

  h, hiddens = jax.lax.scan(step, hidden, (_embed(w, tokens, m), _valid_steps(tokens, length)))
  return RecurrentOutput(_decode(w, _masked(hiddens, _locked(m.output))), h, hiddens, {})


class TokenBatch(NamedTuple):
  """One batch of a word-level corpus, time-major: inputs and next-word targets (T, B); only
  the first ``length`` steps are real (None: all), and ``masks`` are the forward's dropouts
  (None: none)."""
  tokens: jax.Array
  targets: jax.Array
  length: jax.Array | None = None
  masks: 'Masks | None' = None


# ----------------------------------------------------------------------------------------------
# dropouts (AWD-LSTM's, as the original applies them; drawn once per forward)
# ----------------------------------------------------------------------------------------------

class DropoutRates(NamedTuple):
  """The original's five rates, by its names (search defaults of ``rnn/train_search.py``)."""
  dropout: float = 0.75  # LockedDropout on the cell's outputs, before the decoder
  dropouth: float = 0.25  # the states (and h) entering each matrix product of the cell
  dropoutx: float = 0.75  # the embedded input entering W0
  dropouti: float = 0.2  # LockedDropout on the embedded input
  dropoute: float = 0.0  # whole rows of the embedding (a dropped word is dropped everywhere)

  def check(self) -> None:
    for name, rate in self._asdict().items():
      if not 0 <= rate < 1:
        raise ValueError(f'{name}={rate!r}: a dropout rate must be in [0, 1)')


class Masks(NamedTuple):
  """Inverted-dropout masks (kept entries are 1 / (1 - rate)); None where a rate is 0."""
  embedding_rows: jax.Array | None = None  # (ntoken, 1)
  embedding: jax.Array | None = None  # (B, ninp), the same at every time step
  x: jax.Array | None = None  # (B, ninp)
  h: jax.Array | None = None  # (B, nhid)
  output: jax.Array | None = None  # (B, nhid), the same at every time step


def dropout_masks(key: jax.Array, rates: DropoutRates, ntoken: int, batch: int, nhid: int,
                  dtype=jnp.float32) -> Masks:
  """One forward's masks (ninp = nhid, as weight tying needs)."""
  rates.check()
  keys = jax.random.split(key, 5)

  def mask(k, rate, shape):
    if rate == 0:
      return None
    return jax.random.bernoulli(k, 1 - rate, shape).astype(dtype) / (1 - rate)

  return Masks(mask(keys[0], rates.dropoute, (ntoken, 1)),
               mask(keys[1], rates.dropouti, (batch, nhid)),
               mask(keys[2], rates.dropoutx, (batch, nhid)),
               mask(keys[3], rates.dropouth, (batch, nhid)),
               mask(keys[4], rates.dropout, (batch, nhid)))


def _locked(mask):
  """A (B, D) mask for every time step of a (T, B, D) sequence."""
  return None if mask is None else mask[None]


def _embed(w, tokens, m: Masks):
  # embedding dropout masks the table, so the tied decoder still reads the unmasked one
  return _masked(_masked(w['encoder'], m.embedding_rows)[tokens], _locked(m.embedding))


def nll(log_probs, targets, length=None) -> jax.Array:
  """Mean negative log-likelihood over the T * B tokens (the first ``length`` * B)."""
  picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  if length is None:
    return -jnp.mean(picked)
  real = _valid_steps(targets, length)[:, None]
  return -jnp.sum(jnp.where(real, picked, 0)) / (length * targets.shape[1])


def activation_regularization(dropped, length=None) -> jax.Array:
  """AR (Merity et al. 2018): mean(h^2) over the dropped per-step outputs (the first
  ``length`` steps)."""
  squares = jnp.square(dropped)
  if length is None:
    return jnp.mean(squares)
  real = _valid_steps(dropped, length)[:, None, None]
  return jnp.sum(jnp.where(real, squares, 0)) / (length * squares[0].size)


def temporal_activation_regularization(hiddens, length=None) -> jax.Array:
  """TAR (Merity et al. 2018): mean((h_t - h_{t-1})^2) over the per-step outputs (the first
  ``length`` of them)."""
  squares = jnp.square(hiddens[1:] - hiddens[:-1])
  if length is None:
    return jnp.mean(squares)
  real = _valid_steps(hiddens, length)[1:, None, None]
  # a one-step batch has no pair: 0, not the 0 / 0 of an empty mean
  pairs = jnp.maximum(length - 1, 1)
  return jnp.sum(jnp.where(real, squares, 0)) / (pairs * squares[0].size)


# ----------------------------------------------------------------------------------------------
# the original's parameter names
# ----------------------------------------------------------------------------------------------

def from_original(named: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Our weights from the original's ``named_parameters()`` names (``rnns.0._Ws.<i>`` stacked)."""
  steps = sum(1 for k in named if k.startswith('rnns.0._Ws.'))
  expected = {'encoder.weight', 'rnns.0._W0', 'decoder.bias',
              *(f'rnns.0._Ws.{i}' for i in range(steps))}
  if set(named) != expected:
    raise ValueError(f'recurrent parameter names differ from the original\'s: missing '
                     f'{sorted(expected - set(named))}, unexpected {sorted(set(named) - expected)}')
  return {'encoder': named['encoder.weight'], 'W0': named['rnns.0._W0'],
          'Ws': np.stack([named[f'rnns.0._Ws.{i}'] for i in range(steps)]),
          'decoder_bias': named['decoder.bias']}


def to_original(w: Mapping[str, Any]) -> dict[str, np.ndarray]:
  out = {'encoder.weight': np.asarray(w['encoder']), 'rnns.0._W0': np.asarray(w['W0']),
         'decoder.bias': np.asarray(w['decoder_bias'])}
  out.update({f'rnns.0._Ws.{i}': np.asarray(ws) for i, ws in enumerate(w['Ws'])})
  return out
