"""The DARTS search on images as a resumable run: data, the jitted step, genotypes, pictures.

``run_search(config, workdir)`` is what ``python -m experiments.cifar_search`` calls. The search
space is a plug-in (``darts_jax.spaces``; the paper's CNN space by default) and the search
method a transformation of it (``darts_jax.methods``); the loop, checkpoints and logs are the
shared skeleton of ``darts_jax.run_loop``. The data order is drawn from (seed, epoch) and
augmentation from (seed, step), so a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, NamedTuple

import jax
import numpy as np

from darts_jax import checkpoint as ckpt_lib
from darts_jax import data as data_lib
from darts_jax import methods
from darts_jax import parallel
from darts_jax import run_config
from darts_jax import run_loop
from darts_jax import search as search_lib
from darts_jax.ops.init import num_params
from darts_jax.spaces import SearchSpace, StepContext
from darts_jax.spaces import cnn

# config keys that may change between a run and its resumption (they do not change results)
# remat_cells and loop_gradients change memory and compile time, not one number: a run may
# resume with either on or off
MAY_DIFFER = ('log_every', 'checkpoint_every', 'keep_checkpoints', 'plots', 'tensorboard',
              'progress', 'data_dir', 'download', 'remat_cells',
              'loop_gradients') + run_config.PROCESS_KEYS
# what shard_weights splits over the devices: the weights and their momentum
SHARDED_FIELDS = ('weights', 'w_opt_state')
# epoch-record keys that go to TensorBoard
SCALARS = ('train_loss', 'train_acc', 'val_loss', 'val_acc', 'search_val_loss', 'lr')
# (config, num_classes, in_channels) -> the search space
SpaceFromRun = Callable[[Mapping, int, int], SearchSpace]


class SearchResult(NamedTuple):
  state: search_lib.SearchState
  genotype: Any
  best_genotype: Any | None
  best_val_acc: float | None


def hparams_from_config(cfg: Mapping, steps_per_epoch: int) -> search_lib.SearchHParams:
  return run_config.hparams_from_config(search_lib.SearchHParams, cfg, steps_per_epoch)


def _check_config(cfg: Mapping) -> None:
  for name in ('batch_size', 'init_channels', 'layers', 'epochs'):
    run_config.check_int(cfg, name, 1)
  for name in ('log_every', 'checkpoint_every', 'max_examples', 'eval_batches'):
    run_config.check_int(cfg, name, 0,
                         'all' if name in ('max_examples', 'eval_batches') else 'off')
  run_config.check_execution_config(cfg)
  if not 0 < cfg['train_portion'] < 1:
    raise ValueError(f"train_portion={cfg['train_portion']!r}: must be in (0, 1)")
  hparams_from_config(cfg, steps_per_epoch=1)  # the optimiser settings, before any data is read


def write_genotype_files(workdir: str, genotype, architecture) -> None:
  """``genotype.json``, ``genotype.txt`` (the original's string form) and ``alphas.npz`` (the
  raw architecture pytree, one array per dotted leaf name: ``normal``, ``reduce`` for DARTS)."""
  ckpt_lib.write_atomic(os.path.join(workdir, 'genotype.json'), genotype.to_json() + '\n')
  ckpt_lib.write_atomic(os.path.join(workdir, 'genotype.txt'), genotype.to_string() + '\n')
  tmp = os.path.join(workdir, 'alphas.tmp.npz')
  np.savez(tmp, **{k: np.asarray(v) for k, v in ckpt_lib.flatten_named(architecture).items()})
  os.replace(tmp, os.path.join(workdir, 'alphas.npz'))


def _format_mixing(mixing: Mapping[str, np.ndarray], choices) -> str:
  lines = []
  for cell, w in mixing.items():
    lines.append(f'  softmax(alpha_{cell}) (rows: edges; columns: {", ".join(choices)})')
    lines.extend('    ' + ' '.join(f'{x:.3f}' for x in row) for row in w)
  return '\n'.join(lines)


def _epoch_report(r: Mapping, choices) -> str:
  return (f'epoch {r["epoch"]}: lr {r["lr"]:.5f}  train loss {r["train_loss"]:.4f} acc '
          f'{r["train_acc"]:.4f}  val loss {r["val_loss"]:.4f} acc {r["val_acc"]:.4f} '
          f'({r["val_examples"]} examples)  {r["seconds"]:.1f} s\n'
          f'{_format_mixing(r["alphas_softmax"], choices)}\n'
          f'  genotype = {r["genotype_str"]}')


def _search_loss(space: SearchSpace, ex: run_config.Execution):
  """The search step's loss (``search.search_loss``), per-device BatchNorm around each loss the
  step uses when the run asks for it."""
  if ex.batch_norm == 'per_device' and ex.mesh.size > 1:  # one device: the same as global
    return search_lib.search_loss(space, ex.compute_dtype, lambda f: parallel.per_device_batch_norm(
        f, ex.mesh.size, ex.mesh))
  return search_lib.search_loss(space, ex.compute_dtype)


def _evaluation_loss(space: SearchSpace, compute_dtype, epochs: int):
  """``(weights, architecture, batch_stats, batch, epoch) -> (loss, aux)`` in evaluation mode:
  a stepped method's network without a draw, at the epoch (DARTS-'s skip coefficient)."""
  if space.make_step_loss is None:
    plain = space.make_loss(False, compute_dtype)
    return lambda w, a, st, b, epoch: plain(w, a, st, b)
  at = space.make_step_loss(False, compute_dtype)
  return lambda w, a, st, b, epoch: at(StepContext(None, epoch, epochs)).loss(w, a, st, b)


def _validation(eval_fn, state, epoch: int, feed, val_set, eval_batches: int
                ) -> tuple[float, float, int]:
  """The original's ``infer``: eval-mode BN over the alpha half, in order, in whole batches.
  Returns (mean loss, accuracy, examples)."""
  batch = feed.batch_size
  n = len(val_set.labels) // batch
  n = min(n, eval_batches) if eval_batches else n
  loss_sum, correct, seen = 0.0, 0, 0
  for j in range(n):
    loss, hits = eval_fn(state.weights, state.alphas, state.batch_stats,
                         feed(np.arange(j * batch, (j + 1) * batch), val_set.images,
                              val_set.labels), np.int32(epoch))
    loss_sum, correct, seen = loss_sum + float(loss), correct + int(hits), seen + batch
  return loss_sum / max(seen, 1), correct / max(seen, 1), seen


class _Setup(NamedTuple):
  """A search whose inputs are checked and whose data is read; nothing written yet."""
  cfg: dict
  dtype: Any
  full: data_lib.Dataset
  train_set: data_lib.Dataset  # the weights' half
  val_set: data_lib.Dataset  # the alphas' half
  hp: search_lib.SearchHParams
  ex: run_config.Execution
  space: SearchSpace
  method: str


def _setup(cfg: Mapping, workdir: str, space_from_run: SpaceFromRun, method: str) -> _Setup:
  """What can fail on bad input before anything is written: the config, the workdir (before
  any data is read or downloaded), the data, the devices and the space's construction. The
  space checks the image size when it initialises (``_initial_state``), also before any
  write."""
  cfg = dict(cfg)
  _check_config(cfg)
  methods.get(method)  # an unknown name fails before any data is read
  run_config.check_workdir_usable(workdir)
  dtype = run_config.run_dtype(cfg)
  data_dir = cfg['data_dir'] or data_lib.default_data_dir()
  full = data_lib.subset(
      data_lib.load_dataset(cfg['dataset'], 'train', data_dir, cfg['download']),
      cfg['max_examples'])
  train_set, val_set = data_lib.search_split(full, cfg['train_portion'])
  batch = cfg['batch_size']
  for name, part in (('weight', train_set), ('alpha', val_set)):
    if batch > len(part.labels):
      raise ValueError(f'batch_size={batch} exceeds the {len(part.labels)} examples of the '
                       f'{name} half of {cfg["dataset"]!r}')
  hp = hparams_from_config(cfg, data_lib.steps_per_epoch(len(train_set.labels), batch))
  ex = run_config.execution(cfg)
  space = methods.build(method, cfg, space_from_run, full.num_classes, full.images.shape[-1])
  return _Setup(cfg, dtype, full, train_set, val_set, hp, ex, space, method)


def _initial_state(s: _Setup):
  """The search state from the seed, placed on the mesh; and its shardings."""
  key_w, key_a, key_data = jax.random.split(jax.random.PRNGKey(s.cfg['seed']), 3)
  weights, batch_stats = s.space.init(key_w, (1, *s.full.images.shape[1:]), s.dtype)
  state = search_lib.init_search_state(s.hp, weights, s.space.init_architecture(key_a, s.dtype),
                                       batch_stats, key_data)
  shardings = parallel.state_sharding(state, s.ex.mesh,
                                      SHARDED_FIELDS if s.ex.shard_weights else ())
  return parallel.place(state, shardings), shardings


def _epoch_loop(s: _Setup, workdir: str, state, shardings, log: Callable[[str], None]
                ) -> run_loop.EpochLoop:
  """The search as the run skeleton takes it: the jitted step on the two halves' batches, and
  at each epoch's end the validation, the genotype files and the pictures."""
  cfg, hp, ex, space = s.cfg, s.hp, s.ex, s.space
  batch, spe = cfg['batch_size'], hp.steps_per_epoch
  mean, std = s.full.mean, s.full.std
  preprocess = lambda key, images: data_lib.augment(  # noqa: E731
      key, images, mean, std, cfg['crop_padding'], cfg['flip']).astype(s.dtype)
  loss = _search_loss(space, ex)
  eval_loss = _evaluation_loss(space, ex.compute_dtype, hp.epochs)
  eval_fn = search_lib.jit_eval_step(
      lambda w, a, st, b, epoch: eval_loss(
          w, a, st, (data_lib.normalize(b[0], mean, std).astype(s.dtype), b[1]), epoch),
      ex.mesh, shardings.weights, extra_args=1)
  feed = parallel.BatchFeed(ex.mesh, batch)
  num_weights = num_params(state.weights)

  def batches(epoch):
    order_w = data_lib.epoch_order(len(s.train_set.labels), batch, cfg['seed'], epoch)
    order_a = data_lib.epoch_order(len(s.val_set.labels), batch, cfg['seed'] + 1_000_003, epoch)
    return lambda i: (feed(order_w[i], s.train_set.images, s.train_set.labels),
                      feed(order_a[i % len(order_a)], s.val_set.images, s.val_set.labels))

  def end_epoch(state, epoch, seconds):
    m = jax.device_get(state.metrics)
    val_loss, val_acc, seen = _validation(eval_fn, state, epoch, feed, s.val_set,
                                          cfg['eval_batches'])
    architecture = jax.device_get(state.alphas)
    genotype = space.genotype(architecture)
    if ex.main:
      write_genotype_files(workdir, genotype, architecture)
    return {
        'kind': 'epoch', 'epoch': epoch + 1, 'step': int(state.step),
        'lr': float(search_lib.current_weight_lr(hp, epoch * spe)),
        'train_loss': float(m.train_loss / m.steps),
        'train_acc': float(m.train_correct / m.train_examples),
        'search_val_loss': float(m.val_loss / m.steps),
        'hypergrad_norm': float(m.hypergrad_norm / m.steps),
        'val_loss': val_loss, 'val_acc': val_acc, 'val_examples': seen, 'seconds': seconds,
        'alphas_softmax': space.mixing(architecture), 'genotype': genotype.to_dict(),
        'genotype_str': genotype.to_string()}

  def intro(step):
    return [] if step else [
        f'{methods.get(s.method).summary}\n'
        f'search: {cfg["dataset"]} {tuple(s.full.images.shape[1:3])}, '
        f'{len(s.train_set.labels)} + {len(s.val_set.labels)} examples, {hp.epochs} epochs '
        f'x {spe} steps, {ex.describe(batch)}, estimator {hp.estimator}, {space.summary}, '
        f'{num_weights:,} weights; w lr {hp.w_lr:g}, alpha lr {hp.alpha_lr:g}']

  return run_loop.EpochLoop(
      what=f'the search step ({hp.estimator})',
      step=search_lib.jit_search_step(hp, loss, ex.mesh, preprocess, shardings),
      warmup_epochs=hp.warmup_epochs,
      warmup_step=search_lib.jit_warmup_step(hp, loss, ex.mesh, preprocess, shardings),
      warmup_what=f'the warm-up step (weights only for {hp.warmup_epochs} epochs)',
      batches=batches,
      running=lambda m: (m.train_loss / m.steps, m.train_correct / m.train_examples),
      end_epoch=end_epoch, report=lambda r: _epoch_report(r, space.choices), scalars=SCALARS,
      after_epoch=_Pictures(workdir, space, cfg['plots'] and ex.main, log).draw, intro=intro)


class _Pictures:
  """The space's per-epoch plots; one notice, then none, when the plotting packages are
  missing."""

  def __init__(self, workdir: str, space: SearchSpace, enabled: bool, log: Callable):
    self.dir = os.path.join(workdir, 'plots')
    self.space, self.enabled, self.log = space, enabled, log

  def draw(self, state, record, records) -> None:
    del state
    if not self.enabled:
      return
    history = [{k: np.asarray(v) for k, v in r['alphas_softmax'].items()}
               for r in records + [record]]
    try:
      self.space.draw(self.dir, record['epoch'],
                      self.space.genotype_from_dict(record['genotype']), history)
    except ImportError as e:
      self.log(f'note: no plots ({e})')
      self.enabled = False


def run_search(cfg: Mapping, workdir: str, *, log: Callable[[str], None] = print,
               space_from_run: SpaceFromRun = cnn.space_from_run,
               method: str | None = None) -> SearchResult:
  """Runs (or resumes) the search described by ``cfg`` (see ``experiments/configs/search.py``)
  in ``workdir``: the space ``space_from_run`` builds for the data, as ``method`` (default: the
  config's ``method``, else DARTS) searches it (``darts_jax.methods``).
  An interruption or error checkpoints the steps done so far before it propagates; calling
  again resumes."""
  s = _setup(cfg, workdir, space_from_run, method or cfg.get('method', 'darts'))
  log = s.ex.speaker(log)
  state, shardings = _initial_state(s)
  resumed = run_config.check_workdir(workdir, s.cfg, MAY_DIFFER, s.ex.main)
  state, records = run_loop.run_epochs(
      _epoch_loop(s, workdir, state, shardings, log), state, cfg=s.cfg, workdir=workdir,
      epochs=s.hp.epochs, steps_per_epoch=s.hp.steps_per_epoch, resumed=resumed,
      main=s.ex.main, log=log)

  genotype = s.space.genotype(jax.device_get(state.alphas))
  best = max(records, key=lambda r: r['val_acc'], default=None)
  best_genotype = s.space.genotype_from_dict(best['genotype']) if best else None
  log(f'search done: {s.hp.epochs * s.hp.steps_per_epoch} steps. Final genotype:\n  '
      f'{genotype.to_string()}')
  if best is not None:
    log(f'best epoch {best["epoch"]} (supernet val acc {best["val_acc"]:.4f}):\n  '
        f'{best_genotype.to_string()}')
    if s.ex.main:
      ckpt_lib.write_atomic(os.path.join(workdir, 'best_genotype.txt'),
                            best_genotype.to_string() + '\n')
  return SearchResult(parallel.to_host(state), genotype, best_genotype,
                      None if best is None else best['val_acc'])
