"""The recurrent DARTS search on a word-level corpus (Penn Treebank) as a resumable run.

``run_recurrent_search(config, workdir)`` is what ``python -m experiments.ptb_search`` calls. It
follows the original's ``rnn/train_search.py``:

- the weights train on the training split, batch 256, in BPTT windows of 35 steps (17 with
  probability 0.05), the learning rate scaled by the window's length over 35;
- the alphas train on the validation split laid out at the same batch size (the "search data"),
  one window of 35 from the same position (modulo its length) per step;
- the two hidden-state streams start from zero each epoch and are carried between steps;
- after each epoch the supernet is evaluated on the validation split at batch 10 (evaluation mode:
  running BatchNorm statistics, no dropout), and the genotype is derived and written.

Windows of different lengths are padded to 35 steps and masked (``recurrent.TokenBatch``), so one
compiled program runs every step. Each epoch's windows are drawn from (seed, epoch) and each step's
dropout masks from (seed, step), so a resumed run continues bit for bit; the epochs differ in
length, as the original's do.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from darts_jax import checkpoint as ckpt_lib
from darts_jax import data as data_lib
from darts_jax import recurrent as rc
from darts_jax import recurrent_search as rs
from darts_jax import run_config
from darts_jax import run_loop
from darts_jax.data import corpus as corpus_lib
from darts_jax.hypergradient import tree_norm
from darts_jax.optim import keep_if_finite
from darts_jax.search_loop import write_genotype_files

# config keys that may change between a run and its resumption (they do not change results)
MAY_DIFFER = ('log_every', 'checkpoint_every', 'keep_checkpoints', 'plots', 'tensorboard',
              'progress', 'data_dir', 'download')
SCALARS = ('train_loss', 'train_ppl', 'search_val_loss', 'val_loss', 'val_ppl', 'hypergrad_norm')
FULL_WINDOW_PROBABILITY = 0.95  # else half a window (train_search.py)


class EpochSums(NamedTuple):
  """Sums over the current epoch's steps (reset by the epoch's first step)."""
  steps: jax.Array
  train_loss: jax.Array  # NLL of the weight step's forward
  val_loss: jax.Array  # L_val where the alpha gradient was taken
  hypergrad_norm: jax.Array


class PTBSearchState(NamedTuple):
  step: jax.Array  # completed steps
  search: rs.RecurrentSearchState
  rng: jax.Array  # base key; step t draws its dropout masks from fold_in(rng, t)
  metrics: EpochSums
  nonfinite_step: jax.Array  # -1, or the first step whose loss or gradient was not finite


class EpochPlan(NamedTuple):
  """One epoch's steps: where each training window starts, its drawn length (which scales the
  learning rate) and its length in the data (shorter at the split's end), and the same for the
  search window on the validation split."""
  train_start: np.ndarray
  seq_len: np.ndarray
  train_len: np.ndarray
  val_start: np.ndarray
  val_len: np.ndarray


def epoch_plan(train_rows: int, val_rows: int, bptt: int, seed: int, epoch: int) -> EpochPlan:
  """The original's loop ``while i < rows - 2``: a window of ``bptt`` steps with probability
  0.95, else ``int(bptt / 2)``; the search window starts at ``i mod (val_rows - 1)``. Drawn from
  (seed, epoch)."""
  rng = np.random.default_rng([seed, epoch])
  rows = []
  i = 0
  while i < train_rows - 2:
    seq = bptt if rng.random() < FULL_WINDOW_PROBABILITY else int(bptt / 2)
    v = i % (val_rows - 1)
    rows.append((i, seq, min(seq, train_rows - 1 - i), v, min(bptt, val_rows - 1 - v)))
    i += seq
  return EpochPlan(*(np.asarray(c, np.int32) for c in zip(*rows)))


# ----------------------------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------------------------

def hparams_from_config(cfg: Mapping) -> rs.RecurrentSearchHParams:
  architect = rs.ArchitectHParams(
      eta=cfg['lr'], weight_decay=cfg['wdecay'], clip=cfg['clip'], r=cfg['fd_r'],
      virtual_clip=cfg['virtual_clip'], clip_v=cfg['clip_v'], eta_c_always=cfg['eta_c_always'],
      freeze_tied_embedding=cfg['freeze_tied_embedding'])
  hp = rs.RecurrentSearchHParams(
      architect=architect, estimator=cfg['estimator'], alpha_lr=cfg['arch_lr'],
      alpha_b1=cfg['arch_b1'], alpha_b2=cfg['arch_b2'], alpha_weight_decay=cfg['arch_wdecay'],
      tar_beta=cfg['beta'], unrolled_steps=cfg['unrolled_steps'],
      implicit_maxiter=cfg['implicit_maxiter'])
  hp.check()
  return hp


def dropout_rates(cfg: Mapping) -> rc.DropoutRates:
  """The config's five dropout rates, checked."""
  rates = rc.DropoutRates(*(cfg[name] for name in rc.DropoutRates._fields))
  rates.check()
  return rates


def check_config(cfg: Mapping) -> None:
  for name in ('nhid', 'steps', 'epochs', 'batch_size', 'eval_batch_size'):
    run_config.check_int(cfg, name, 1)
  run_config.check_int(cfg, 'bptt', 2)
  for name in ('log_every', 'checkpoint_every', 'max_tokens'):
    run_config.check_int(cfg, name, 0, 'all' if name == 'max_tokens' else 'off')
  dropout_rates(cfg)
  primitives = tuple(cfg['primitives']) or rc.PRIMITIVES
  unknown = [p for p in primitives if p not in rc.PRIMITIVES]
  if unknown:
    raise ValueError(f'primitives: {unknown[0]!r} is not a recurrent op; allowed: '
                     f'{", ".join(rc.PRIMITIVES)}')
  if not cfg['lr'] > 0:
    raise ValueError(f"lr={cfg['lr']!r}: must be > 0")
  hparams_from_config(cfg)


# ----------------------------------------------------------------------------------------------
# the step and the evaluation
# ----------------------------------------------------------------------------------------------

def ptb_search_step(hp: rs.RecurrentSearchHParams, forward: Callable, rates: rc.DropoutRates,
                    bptt: int, state: PTBSearchState, train: rc.TokenBatch, val: rc.TokenBatch,
                    seq_len: jax.Array, first: jax.Array) -> tuple[PTBSearchState, Any]:
  """One step of ``train_search.py``'s loop: fresh hidden streams and sums on an epoch's
  ``first`` step, this step's dropout masks, then the recurrent search step at the learning rate
  scaled by ``seq_len / bptt``. A non-finite loss or gradient keeps the state (``optim``)."""
  s = state.search
  zeros = jnp.zeros_like(s.hidden_train)
  s = s._replace(hidden_train=jnp.where(first, zeros, s.hidden_train),
                 hidden_val=jnp.where(first, zeros, s.hidden_val))
  ntoken, nhid = s.weights['encoder'].shape
  dtype = s.weights['encoder'].dtype
  k_train, k_val = jax.random.split(jax.random.fold_in(state.rng, state.step))
  train = train._replace(masks=rc.dropout_masks(k_train, rates, ntoken, train.tokens.shape[1],
                                                nhid, dtype))
  val = val._replace(masks=rc.dropout_masks(k_val, rates, ntoken, val.tokens.shape[1], nhid,
                                            dtype))
  eta = hp.architect.eta * seq_len.astype(dtype) / bptt  # the original's lr2 * seq_len / bptt
  new_search, m = rs.search_step(hp, forward, s, train, val, eta)
  sums = jax.tree_util.tree_map(lambda x: jnp.where(first, jnp.zeros_like(x), x), state.metrics)
  sums = EpochSums(sums.steps + 1, sums.train_loss + m.train_loss, sums.val_loss + m.val_loss,
                   sums.hypergrad_norm + tree_norm(m.hypergradient))
  new = PTBSearchState(state.step + 1, new_search, state.rng, sums, state.nonfinite_step)
  return keep_if_finite(new, state, m.total_loss, m.val_loss, m.hypergradient,
                        new_search.weights), m


def jit_eval_window(primitives):
  """``(weights, alphas, stats, window, hidden) -> (NLL summed over the window's steps, next
  hidden)``: the search network in evaluation mode (running statistics, no dropout)."""
  @jax.jit
  def run(w, alphas, stats, batch: rc.TokenBatch, hidden):
    out = rc.search_forward(w, alphas, stats, batch.tokens, hidden, False, primitives,
                            length=batch.length)
    return rc.nll(out.log_probs, batch.targets, batch.length) * batch.length, out.hidden
  return run


def evaluate(eval_window, weights, alphas, stats, source: np.ndarray, bptt: int) -> float:
  """Mean NLL per token of ``source`` (rows, batch), window by window from a zero hidden state
  (the original's ``evaluate``; it divides the sum by ``rows`` where ``rows - 1`` steps are
  predicted, 0.01 % lower on PTB's validation split: here the mean is exact)."""
  rows = source.shape[0]
  hidden = jnp.zeros((source.shape[1], weights['encoder'].shape[1]), weights['encoder'].dtype)
  total = 0.0
  for i in range(0, rows - 1, bptt):
    batch = corpus_lib.window(source, i, min(bptt, rows - 1 - i), bptt)
    loss, hidden = eval_window(weights, alphas, stats, batch, hidden)
    total += float(loss)
  return total / (rows - 1)


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------

class RecurrentSearchResult(NamedTuple):
  state: PTBSearchState
  genotype: rc.RecurrentGenotype
  best_genotype: rc.RecurrentGenotype | None
  best_val_loss: float | None


class _Data(NamedTuple):
  corpus: corpus_lib.Corpus
  train: np.ndarray  # (rows, batch_size): the weights' split
  search: np.ndarray  # the validation split at batch_size: the alphas' split
  val: np.ndarray  # the validation split at eval_batch_size: the epoch's evaluation


def _cap(ids: np.ndarray, max_tokens: int) -> np.ndarray:
  return ids[:max_tokens] if max_tokens else ids


def load_corpus(cfg: Mapping) -> corpus_lib.Corpus:
  """The config's corpus (``dataset``, ``data_dir``, ``download``, ``demo_vocab``), each split
  cut to ``max_tokens`` (0: whole)."""
  data_dir = cfg['data_dir'] or str(data_lib.default_data_dir())
  c = corpus_lib.load_corpus(cfg['dataset'], data_dir, cfg['download'], cfg['demo_vocab'])
  cap = cfg['max_tokens']
  return c._replace(train=_cap(c.train, cap), valid=_cap(c.valid, cap), test=_cap(c.test, cap))


def load_data(cfg: Mapping) -> _Data:
  corpus = load_corpus(cfg)
  data = _Data(corpus, corpus_lib.batchify(corpus.train, cfg['batch_size']),
               corpus_lib.batchify(corpus.valid, cfg['batch_size']),
               corpus_lib.batchify(corpus.valid, cfg['eval_batch_size']))
  if data.search.shape[0] < 3 or data.train.shape[0] < 3:
    raise ValueError(f"batch_size={cfg['batch_size']}: leaves {data.train.shape[0]} training and "
                     f'{data.search.shape[0]} validation rows; at least 3 of each are needed')
  return data


def initial_state(cfg: Mapping, hp: rs.RecurrentSearchHParams, ntoken: int, dtype
                  ) -> PTBSearchState:
  config = rc.RecurrentConfig(ntoken, cfg['nhid'], cfg['steps'],
                              tuple(cfg['primitives']) or rc.PRIMITIVES)
  k_w, k_a, k_data = jax.random.split(jax.random.PRNGKey(cfg['seed']), 3)
  search = rs.init_search_state(hp, rc.init_weights(k_w, config, dtype),
                                rc.init_alphas(k_a, config, dtype),
                                rc.init_batch_stats(config, dtype), cfg['batch_size'])
  sums = EpochSums(jnp.zeros((), jnp.int32), *(jnp.zeros((), dtype) for _ in range(3)))
  return PTBSearchState(jnp.zeros((), jnp.int32), search, k_data, sums,
                        jnp.asarray(-1, jnp.int32))


def _report(r: Mapping) -> str:
  return (f'epoch {r["epoch"]}: train loss {r["train_loss"]:.4f} (ppl {r["train_ppl"]:.1f})  '
          f'search val loss {r["search_val_loss"]:.4f}  val loss {r["val_loss"]:.4f} (ppl '
          f'{r["val_ppl"]:.1f})  {r["steps"]} steps, {r["seconds"]:.1f} s\n'
          f'  genotype = {r["genotype_str"]}')


def _ppl(loss: float) -> float:
  return math.exp(min(loss, 700.0))  # a diverged loss prints as a huge number, not an error


def run_recurrent_search(cfg: Mapping, workdir: str, *, log: Callable[[str], None] = print
                         ) -> RecurrentSearchResult:
  """Runs (or resumes) the recurrent search described by ``cfg``
  (``experiments/configs/ptb_search.py``) in ``workdir``."""
  cfg = dict(cfg)
  check_config(cfg)
  run_config.check_workdir_usable(workdir)
  dtype = run_config.run_dtype(cfg)
  hp, rates, bptt = hparams_from_config(cfg), dropout_rates(cfg), cfg['bptt']
  primitives = tuple(cfg['primitives']) or rc.PRIMITIVES
  data = load_data(cfg)
  resumed = ckpt_lib.check_run_config(workdir, cfg, MAY_DIFFER)
  state = initial_state(cfg, hp, data.corpus.ntoken, dtype)
  plans = [epoch_plan(data.train.shape[0], data.search.shape[0], bptt, cfg['seed'], e)
           for e in range(cfg['epochs'])]
  forward = rs.search_network(primitives)
  step = jax.jit(lambda st, train, val, seq_len, first: ptb_search_step(
      hp, forward, rates, bptt, st, train, val, seq_len, first), donate_argnums=0)
  eval_window = jit_eval_window(primitives)
  plots = os.path.join(workdir, 'plots')
  num_weights = sum(x.size for x in jax.tree_util.tree_leaves(state.search.weights))

  def batches(epoch):
    p = plans[epoch]
    return lambda i: (corpus_lib.window(data.train, p.train_start[i], p.train_len[i], bptt),
                      corpus_lib.window(data.search, p.val_start[i], p.val_len[i], bptt),
                      p.seq_len[i], np.bool_(i == 0))

  def end_epoch(state, epoch, seconds):
    m = jax.device_get(state.metrics)
    s = state.search
    val_loss = evaluate(eval_window, s.weights, s.alphas, s.batch_stats, data.val, bptt)
    alphas = jax.device_get(s.alphas)
    genotype = rc.derive_genotype(alphas, primitives)
    write_genotype_files(workdir, genotype, alphas)
    train_loss = float(m.train_loss / m.steps)
    return {'kind': 'epoch', 'epoch': epoch + 1, 'step': int(state.step), 'steps': int(m.steps),
            'train_loss': train_loss, 'train_ppl': _ppl(train_loss),
            'search_val_loss': float(m.val_loss / m.steps),
            'hypergrad_norm': float(m.hypergrad_norm / m.steps),
            'val_loss': val_loss, 'val_ppl': _ppl(val_loss), 'seconds': seconds,
            'alphas_softmax': {'recurrent': np.asarray(jax.nn.softmax(alphas['recurrent'], -1))},
            'genotype': genotype.to_dict(), 'genotype_str': genotype.to_string()}

  def after_epoch(state, record, records):
    del state
    if not cfg['plots']:
      return
    try:
      from darts_jax import viz
      viz.save_recurrent_graph(rc.RecurrentGenotype.from_dict(record['genotype']), plots,
                               f'genotype_epoch{record["epoch"]:03d}')
      history = records + [record]
      viz.plot_curves([r['epoch'] for r in history],
                      {'training (dropout on)': [r['train_ppl'] for r in history],
                       'validation': [r['val_ppl'] for r in history]},
                      os.path.join(plots, 'perplexity.png'), 'perplexity', log_y=True)
    except ImportError as e:
      log(f'note: no plots ({e})')

  def intro(step):
    return [] if step else [
        f'DARTS recurrent search: {cfg["dataset"]}, {data.corpus.ntoken:,} words, '
        f'{data.train.size:,} training and {data.search.size:,} validation tokens, batch '
        f'{cfg["batch_size"]}, BPTT {bptt}, {cfg["epochs"]} epochs of about '
        f'{len(plans[0].seq_len)} steps, estimator {hp.estimator}, {num_weights:,} weights + '
        f'{state.search.alphas["recurrent"].size} alphas; lr {cfg["lr"]:g}, alpha lr '
        f'{cfg["arch_lr"]:g}']

  loop = run_loop.EpochLoop(
      what=f'the recurrent search step ({hp.estimator})', step=step, batches=batches,
      running=lambda m: (m.train_loss / m.steps, _ppl(float(m.train_loss / m.steps))),
      end_epoch=end_epoch, report=_report, scalars=SCALARS, after_epoch=after_epoch,
      intro=intro, second='ppl')
  state, records = run_loop.run_epochs(
      loop, state, cfg=cfg, workdir=workdir, epochs=cfg['epochs'],
      steps_per_epoch=[len(p.seq_len) for p in plans], resumed=resumed, main=True, log=log)

  genotype = rc.derive_genotype(jax.device_get(state.search.alphas), primitives)
  best = min(records, key=lambda r: r['val_loss'], default=None)
  best_genotype = rc.RecurrentGenotype.from_dict(best['genotype']) if best else None
  log(f'search done: {int(state.step)} steps. Final genotype:\n  {genotype.to_string()}')
  if best is not None:
    log(f'best epoch {best["epoch"]} (supernet val ppl {best["val_ppl"]:.2f}):\n  '
        f'{best_genotype.to_string()}')
    ckpt_lib.write_atomic(os.path.join(workdir, 'best_genotype.txt'),
                          best_genotype.to_string() + '\n')
  return RecurrentSearchResult(jax.device_get(state), genotype, best_genotype,
                               None if best is None else best['val_loss'])
