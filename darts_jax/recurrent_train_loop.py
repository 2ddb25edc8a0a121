"""Training a derived recurrent cell on a word-level corpus (the original's ``rnn/train.py``) as a
resumable run, and the evaluation of its result.

``run_recurrent_training(config, workdir)`` is what ``python -m experiments.ptb_train`` calls:

- the evaluation network of the genotype (850 units at the paper's size), batch 64, windows of
  ``max(5, int(N(b, 5)))`` steps with b = 35 (probability 0.95) or 17.5, at most 35 + 20, the
  learning rate scaled by the window's length over 35;
- NLL plus activation regularisation (``alpha``, 0 in the paper) on the dropped outputs and
  temporal activation regularisation (``beta`` = 1e-3) on the undropped ones, the gradient clipped
  to 0.25, SGD lr 20 with weight decay 8e-7;
- NT-ASGD (Merity et al., 2018): once the validation loss is worse than the best of all but the
  last ``nonmono`` = 5 evaluations, SGD becomes averaged SGD (torch's ``ASGD(t0=0, lambd=0)``), and
  from then on every evaluation is of the averaged weights;
- the best evaluated weights are kept in ``best_weights.npz``, and the test set is evaluated
  with them at batch 1 at the end.

``evaluate_run(workdir)`` (``python -m experiments.ptb_eval``) gives the perplexities of a run's
best weights on its corpus's splits.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from darts_jax import checkpoint as ckpt_lib
from darts_jax import recurrent as rc
from darts_jax import recurrent_search as rs
from darts_jax import run_config
from darts_jax import run_loop
from darts_jax.data import corpus as corpus_lib
from darts_jax.hypergradient import tree_axpy
from darts_jax.optim import keep_if_finite
from darts_jax.recurrent_search_loop import _ppl, dropout_rates, evaluate, load_corpus

MAY_DIFFER = ('log_every', 'checkpoint_every', 'keep_checkpoints', 'plots', 'tensorboard',
              'progress', 'data_dir', 'download')
SCALARS = ('train_loss', 'train_ppl', 'val_loss', 'val_ppl', 'averaging')
BEST_WEIGHTS = 'best_weights.npz'


class Averaging(NamedTuple):
  """torch's ``ASGD(lr, t0=0, lambd=0)`` state, as NT-ASGD starts it: off until the switch.
  Its step uses the eta of the step before (torch updates eta after the parameters), and its
  average starts over at the second step (mu = 1 copies the iterate)."""
  active: jax.Array  # bool
  average: Any  # ax: the averaged weights
  eta: jax.Array
  mu: jax.Array
  count: jax.Array  # ASGD steps taken


class TrainSums(NamedTuple):
  steps: jax.Array
  train_loss: jax.Array  # NLL of the step's forward


class LMTrainState(NamedTuple):
  step: jax.Array
  weights: Any
  hidden: jax.Array  # (B, nhid), carried between steps, zero at each epoch's start
  averaging: Averaging
  rng: jax.Array  # step t draws its dropout masks from fold_in(rng, t)
  metrics: TrainSums
  nonfinite_step: jax.Array


class TrainHParams(NamedTuple):
  lr: float = 20.0
  clip: float = 0.25
  weight_decay: float = 8e-7
  ar_alpha: float = 0.0  # activation regularisation of the dropped outputs
  tar_beta: float = 1e-3
  bptt: int = 35


def training_plan(rows: int, bptt: int, seed: int, epoch: int, max_delta: int = 20
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(start, drawn length, length in the data) of each window of an epoch, as ``train.py``
  draws them: b = bptt (probability 0.95) or bptt / 2, length max(5, int(N(b, 5))) capped at
  bptt + max_delta. Drawn from (seed, epoch)."""
  rng = np.random.default_rng([seed, epoch])
  rows_out = []
  i = 0
  while i < rows - 2:
    b = bptt if rng.random() < 0.95 else bptt / 2.
    seq = min(max(5, int(rng.normal(b, 5))), bptt + max_delta)
    rows_out.append((i, seq, min(seq, rows - 1 - i)))
    i += seq
  return tuple(np.asarray(c, np.int32) for c in zip(*rows_out))


def start_averaging(state: LMTrainState, lr: float) -> LMTrainState:
  """NT-ASGD's switch: a fresh ASGD state (eta = lr, mu = 1, no steps)."""
  a = state.averaging
  return state._replace(averaging=Averaging(
      jnp.ones((), bool), jax.tree_util.tree_map(jnp.zeros_like, a.average),
      jnp.full((), lr, a.eta.dtype), jnp.ones((), a.mu.dtype), jnp.zeros((), jnp.int32)))


def should_average(val_losses: list[float], nonmono: int) -> bool:
  """The non-monotone trigger: the newest loss is worse than the best before the last
  ``nonmono`` ones (``len > nonmono and loss > min(losses[:-nonmono])``, the list before the
  newest is appended)."""
  *before, newest = val_losses
  return len(before) > nonmono and newest > min(before[:-nonmono])


def train_step(hp: TrainHParams, genotype: rc.RecurrentGenotype, rates: rc.DropoutRates,
               state: LMTrainState, batch: rc.TokenBatch, seq_len: jax.Array, first: jax.Array
               ) -> tuple[LMTrainState, jax.Array]:
  """One step of ``train.py``: NLL + AR + TAR, clip, then SGD at lr * seq_len / bptt, or ASGD
  once averaging is on."""
  w = state.weights
  hidden = jnp.where(first, jnp.zeros_like(state.hidden), state.hidden)
  ntoken, nhid = w['encoder'].shape
  dtype = w['encoder'].dtype
  masks = rc.dropout_masks(jax.random.fold_in(state.rng, state.step), rates, ntoken,
                           batch.tokens.shape[1], nhid, dtype)
  batch = batch._replace(masks=masks)

  def loss(w):
    out = rc.eval_forward(w, genotype, batch.tokens, hidden, masks, batch.length)
    raw = rc.nll(out.log_probs, batch.targets, batch.length)
    total = raw + hp.tar_beta * rc.temporal_activation_regularization(out.hiddens, batch.length)
    if hp.ar_alpha:
      dropped = out.hiddens if masks.output is None else out.hiddens * masks.output[None]
      total = total + hp.ar_alpha * rc.activation_regularization(dropped, batch.length)
    return total, (raw, out.hidden)

  (total, (raw, next_hidden)), g = jax.value_and_grad(loss, has_aux=True)(w)
  g = rs.clip_tree(g, hp.clip) if hp.clip > 0 else g
  g = tree_axpy(hp.weight_decay, w, g)  # torch's weight_decay: + wd * w
  lr_now = hp.lr * seq_len.astype(dtype) / hp.bptt
  a = state.averaging
  sgd = tree_axpy(-lr_now, g, w)
  stepped = tree_axpy(-a.eta, g, w)  # ASGD (lambd = 0: no decay term) at the previous eta
  count = a.count + 1
  average = jax.tree_util.tree_map(
      lambda ax, p: jnp.where(a.mu == 1, p, ax + (p - ax) * a.mu), a.average, stepped)
  asgd = Averaging(a.active, average, lr_now, 1.0 / jnp.maximum(1, count).astype(a.mu.dtype),
                   count)
  on = a.active
  weights = jax.tree_util.tree_map(lambda x, y: jnp.where(on, x, y), stepped, sgd)
  averaging = jax.tree_util.tree_map(lambda x, y: jnp.where(on, x, y), asgd, a)
  sums = jax.tree_util.tree_map(lambda x: jnp.where(first, jnp.zeros_like(x), x), state.metrics)
  sums = TrainSums(sums.steps + 1, sums.train_loss + raw)
  new = LMTrainState(state.step + 1, weights, next_hidden, averaging, state.rng, sums,
                     state.nonfinite_step)
  return keep_if_finite(new, state, total, g), raw


def jit_eval_window(genotype: rc.RecurrentGenotype):
  @jax.jit
  def run(w, _alphas, _stats, batch: rc.TokenBatch, hidden):
    out = rc.eval_forward(w, genotype, batch.tokens, hidden, length=batch.length)
    return rc.nll(out.log_probs, batch.targets, batch.length) * batch.length, out.hidden
  return run


def evaluated_weights(state: LMTrainState):
  """The weights an evaluation reads: the average once NT-ASGD is on."""
  return state.averaging.average if bool(state.averaging.active) else state.weights


def check_config(cfg: Mapping) -> None:
  for name in ('nhid', 'epochs', 'batch_size', 'eval_batch_size', 'test_batch_size', 'nonmono'):
    run_config.check_int(cfg, name, 1)
  run_config.check_int(cfg, 'bptt', 2)
  for name in ('log_every', 'checkpoint_every', 'max_tokens', 'max_seq_len_delta'):
    run_config.check_int(cfg, name, 0, 'all' if name == 'max_tokens' else 'off')
  dropout_rates(cfg)
  if not cfg['lr'] > 0:
    raise ValueError(f"lr={cfg['lr']!r}: must be > 0")
  genotype_of(cfg)


def genotype_of(cfg: Mapping) -> rc.RecurrentGenotype:
  """The config's genotype: a name (DARTS_V1, DARTS_V2, DARTS), a file with the original's
  string form or JSON (a search's genotype.txt), or the string itself."""
  spec = cfg['genotype']
  if isinstance(spec, str) and os.path.isfile(spec):
    with open(spec, encoding='utf-8') as f:
      spec = f.read().strip()
  genotype = rc.parse_genotype(spec)
  genotype.validate_ops()
  return genotype


def hparams_from_config(cfg: Mapping) -> TrainHParams:
  return TrainHParams(cfg['lr'], cfg['clip'], cfg['wdecay'], cfg['alpha'], cfg['beta'],
                      cfg['bptt'])


def initial_state(cfg: Mapping, genotype: rc.RecurrentGenotype, ntoken: int, dtype
                  ) -> LMTrainState:
  config = rc.RecurrentConfig(ntoken, cfg['nhid'], len(genotype.recurrent))
  k_w, k_data = jax.random.split(jax.random.PRNGKey(cfg['seed']))
  w = rc.init_weights(k_w, config, dtype)
  averaging = Averaging(jnp.zeros((), bool), jax.tree_util.tree_map(jnp.zeros_like, w),
                        jnp.full((), cfg['lr'], dtype), jnp.ones((), dtype),
                        jnp.zeros((), jnp.int32))
  return LMTrainState(jnp.zeros((), jnp.int32), w,
                      jnp.zeros((cfg['batch_size'], cfg['nhid']), dtype), averaging, k_data,
                      TrainSums(jnp.zeros((), jnp.int32), jnp.zeros((), dtype)),
                      jnp.asarray(-1, jnp.int32))


def _save_weights(path: str, weights) -> None:
  tmp = path + '.tmp.npz'
  np.savez(tmp, **{k: np.asarray(v) for k, v in rc.to_original(jax.device_get(weights)).items()})
  os.replace(tmp, path)


def load_weights(path: str) -> dict[str, jax.Array]:
  """Weights written by a training run (the original's parameter names)."""
  with np.load(path) as f:
    return jax.tree_util.tree_map(jnp.asarray, rc.from_original(dict(f)))


class TrainResult(NamedTuple):
  state: LMTrainState
  best_val_loss: float | None
  test_loss: float | None


def _report(r: Mapping) -> str:
  mode = 'ASGD, averaged weights' if r['averaging'] else 'SGD'
  return (f'epoch {r["epoch"]}: train loss {r["train_loss"]:.4f} (ppl {r["train_ppl"]:.1f})  '
          f'val loss {r["val_loss"]:.4f} (ppl {r["val_ppl"]:.2f}, {mode})  {r["steps"]} steps, '
          f'{r["seconds"]:.1f} s')


def run_recurrent_training(cfg: Mapping, workdir: str, *, log: Callable[[str], None] = print
                           ) -> TrainResult:
  """Runs (or resumes) the training described by ``cfg`` (``experiments/configs/ptb_train.py``)
  in ``workdir``; then evaluates the best weights on the test split at ``test_batch_size``."""
  cfg = dict(cfg)
  check_config(cfg)
  run_config.check_workdir_usable(workdir)
  dtype = run_config.run_dtype(cfg)
  genotype, hp = genotype_of(cfg), hparams_from_config(cfg)
  rates = dropout_rates(cfg)
  corpus = load_corpus(cfg)
  train = corpus_lib.batchify(corpus.train, cfg['batch_size'])
  val = corpus_lib.batchify(corpus.valid, cfg['eval_batch_size'])
  cfg['genotype'] = genotype.to_string()  # the run keeps what it trains, not where it came from
  resumed = ckpt_lib.check_run_config(workdir, cfg, MAY_DIFFER)
  ckpt_lib.write_atomic(os.path.join(workdir, 'genotype.txt'), genotype.to_string() + '\n')
  state = initial_state(cfg, genotype, corpus.ntoken, dtype)
  steps = hp.bptt + cfg['max_seq_len_delta']  # every window padded to the longest
  plans = [training_plan(train.shape[0], hp.bptt, cfg['seed'], e, cfg['max_seq_len_delta'])
           for e in range(cfg['epochs'])]
  step = jax.jit(lambda st, batch, seq_len, first: train_step(
      hp, genotype, rates, st, batch, seq_len, first), donate_argnums=0)
  eval_window = jit_eval_window(genotype)
  best_path = os.path.join(workdir, BEST_WEIGHTS)
  num_weights = sum(x.size for x in jax.tree_util.tree_leaves(state.weights))

  def batches(epoch):
    start, seq, length = plans[epoch]
    return lambda i: (corpus_lib.window(train, start[i], length[i], steps), seq[i],
                      np.bool_(i == 0))

  def end_epoch(state, epoch, seconds):
    m = jax.device_get(state.metrics)
    val_loss = evaluate(eval_window, evaluated_weights(state), None, None, val, hp.bptt)
    train_loss = float(m.train_loss / m.steps)
    return {'kind': 'epoch', 'epoch': epoch + 1, 'step': int(state.step), 'steps': int(m.steps),
            'train_loss': train_loss, 'train_ppl': _ppl(train_loss), 'val_loss': val_loss,
            'val_ppl': _ppl(val_loss), 'averaging': bool(state.averaging.active),
            'seconds': seconds}

  def after_epoch(state, record, records):
    if record['val_loss'] < min((r['val_loss'] for r in records), default=np.inf):
      _save_weights(best_path, evaluated_weights(state))  # the original's save_checkpoint
    if cfg['plots']:
      try:
        from darts_jax import viz
        history = records + [record]
        viz.plot_curves([r['epoch'] for r in history],
                        {'training (dropout on)': [r['train_ppl'] for r in history],
                         'validation': [r['val_ppl'] for r in history]},
                        os.path.join(workdir, 'plots', 'perplexity.png'), 'perplexity',
                        log_y=True)
      except ImportError as e:
        log(f'note: no plots ({e})')

  def advance(state, record, records):
    if record['averaging']:
      return state
    sgd_losses = [r['val_loss'] for r in records + [record] if not r['averaging']]
    if should_average(sgd_losses, cfg['nonmono']):
      log(f'epoch {record["epoch"]}: validation loss {record["val_loss"]:.4f} is worse than the '
          f'best before the last {cfg["nonmono"]} epochs: switching to averaged SGD (NT-ASGD)')
      return start_averaging(state, hp.lr)
    return state

  def intro(step):
    return [] if step else [
        f'training {genotype.to_string()} on {cfg["dataset"]}: {corpus.ntoken:,} words, '
        f'{train.size:,} training tokens, batch {cfg["batch_size"]}, BPTT {hp.bptt} '
        f'(+ up to {cfg["max_seq_len_delta"]}), {cfg["epochs"]} epochs of about '
        f'{len(plans[0][0])} steps, {num_weights:,} weights; SGD lr {hp.lr:g} -> NT-ASGD']

  loop = run_loop.EpochLoop(
      what='the training step', step=step, batches=batches,
      running=lambda m: (m.train_loss / m.steps, _ppl(float(m.train_loss / m.steps))),
      end_epoch=end_epoch, report=_report, scalars=SCALARS, after_epoch=after_epoch,
      intro=intro, second='ppl', advance=advance)
  state, records = run_loop.run_epochs(
      loop, state, cfg=cfg, workdir=workdir, epochs=cfg['epochs'],
      steps_per_epoch=[len(p[0]) for p in plans], resumed=resumed, main=True, log=log)

  best = min((r['val_loss'] for r in records), default=None)
  test_loss = None
  if os.path.exists(best_path):
    weights = load_weights(best_path)
    test = corpus_lib.batchify(corpus.test, cfg['test_batch_size'])
    test_loss = evaluate(eval_window, weights, None, None, test, hp.bptt)
    summary = {'best_val_loss': best, 'best_val_ppl': _ppl(best), 'test_loss': test_loss,
               'test_ppl': _ppl(test_loss), 'test_batch_size': cfg['test_batch_size']}
    ckpt_lib.write_atomic(os.path.join(workdir, 'results.json'), json.dumps(summary) + '\n')
    log(f'training done: best val ppl {_ppl(best):.2f}; test ppl {_ppl(test_loss):.2f} (batch '
        f'{cfg["test_batch_size"]}, the best weights)')
  return TrainResult(jax.device_get(state), best, test_loss)


def evaluate_run(workdir: str, dataset_dir: str | None = None, batch_sizes: Mapping[str, int]
                 | None = None, log: Callable[[str], None] = print) -> dict[str, float]:
  """Perplexity of a training run's best weights on the validation and test splits of its
  corpus (at the run's batch sizes unless ``batch_sizes`` says otherwise)."""
  config_path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(config_path) or not os.path.isfile(os.path.join(workdir, BEST_WEIGHTS)):
    raise ValueError(f'--workdir={workdir} holds no trained recurrent network (it needs '
                     f'config.json and {BEST_WEIGHTS})')
  with open(config_path) as f:
    cfg = json.load(f)
  if dataset_dir:
    cfg['data_dir'] = dataset_dir
  run_config.run_dtype(cfg)
  genotype = rc.parse_genotype(cfg['genotype'])
  corpus = load_corpus(cfg)
  weights = load_weights(os.path.join(workdir, BEST_WEIGHTS))
  eval_window = jit_eval_window(genotype)
  sizes = {'valid': cfg['eval_batch_size'], 'test': cfg['test_batch_size'],
           **dict(batch_sizes or {})}
  out = {}
  for split, batch in sizes.items():
    loss = evaluate(eval_window, weights, None, None,
                    corpus_lib.batchify(getattr(corpus, split), batch), cfg['bptt'])
    out[f'{split}_loss'], out[f'{split}_ppl'] = loss, _ppl(loss)
    log(f'{split}: loss {loss:.4f}, perplexity {_ppl(loss):.2f} (batch {batch})')
  return out
