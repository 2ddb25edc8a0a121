"""The DARTS search on images as a resumable run: data, the jitted step, genotypes, pictures.

``run_search(config, workdir)`` is what ``python -m experiments.cifar_search`` calls. The search
space is a plug-in (``darts_jax.spaces``; the paper's CNN space by default) and the search
method a transformation of it (``darts_jax.methods``); the loop, checkpoints and logs are the
shared skeleton of ``darts_jax.run_loop``. The data order is drawn from (seed, epoch) and
augmentation from (seed, step), so a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Mapping, NamedTuple

import jax
import numpy as np

from darts_jax import checkpoint as ckpt_lib
from darts_jax import data as data_lib
from darts_jax import health
from darts_jax import methods
from darts_jax import parallel
from darts_jax import run_config
from darts_jax import run_loop
from darts_jax import search as search_lib
from darts_jax.data import folder as folder_lib
from darts_jax.ops.init import num_params
from darts_jax.spaces import SearchSpace, StepContext
from darts_jax.spaces import cnn, nas_bench_201

# config keys that may change between a run and its resumption (they do not change results)
# remat_cells and loop_gradients change memory and compile time, not one number: a run may
# resume with either on or off
MAY_DIFFER = ('log_every', 'checkpoint_every', 'keep_checkpoints', 'plots', 'tensorboard',
              'progress', 'data_dir', 'download', 'remat_cells',
              'loop_gradients') + run_config.PROCESS_KEYS
# what shard_weights splits over the devices: the weights and their momentum
SHARDED_FIELDS = ('weights', 'w_opt_state')
# epoch-record keys that go to TensorBoard (and the health report's, HEALTH_PREFIXES per cell)
SCALARS = ('train_loss', 'train_acc', 'val_loss', 'val_acc', 'search_val_loss', 'lr',
           'dominant_eigenvalue', 'second_order_share', 'weight_decay')
HEALTH_PREFIXES = ('parameter_free_', 'entropy_', 'margin_')
# --config.early_stop: none, RobustDARTS's DARTS-ES (stop, return the genotype of the epoch the
# rule chose) and DARTS-ADA (return there with 10x the weights' decay, up to 0.03)
EARLY_STOPS = ('none', 'darts_es', 'darts_ada')
# (config, num_classes, in_channels) -> the search space
SpaceFromRun = Callable[[Mapping, int, int], SearchSpace]
# --config.search_space: the paper's CNN cells, NAS-Bench-201's cell
SPACES: Mapping[str, SpaceFromRun] = {cnn.NAME: cnn.space_from_run,
                                      nas_bench_201.NAME: nas_bench_201.space_from_run}


def space_builder(cfg: Mapping) -> SpaceFromRun:
  """The space ``cfg['search_space']`` names; a one-line ValueError naming the allowed ones."""
  name = cfg.get('search_space', cnn.NAME)
  if name not in SPACES:
    raise ValueError(f'search_space={name!r} is unknown; allowed: {", ".join(SPACES)}')
  return SPACES[name]


class SearchResult(NamedTuple):
  state: search_lib.SearchState
  genotype: Any
  best_genotype: Any | None
  best_val_acc: float | None


def hparams_from_config(cfg: Mapping, steps_per_epoch: int) -> search_lib.SearchHParams:
  hp = run_config.hparams_from_config(search_lib.SearchHParams, cfg, steps_per_epoch)
  # DARTS-ADA changes the weight decay mid-run: a value in the state, not a constant
  return dataclasses.replace(hp, weight_decay_in_state=cfg.get('early_stop') == 'darts_ada')


def _check_config(cfg: Mapping) -> None:
  space_builder(cfg)  # an unknown space fails before any data is read
  for name in ('batch_size', 'init_channels', 'layers', 'epochs') + (
      ('cells_per_stage',) if 'cells_per_stage' in cfg else ()):
    run_config.check_int(cfg, name, 1)
  for name in ('log_every', 'checkpoint_every', 'max_examples', 'eval_batches'):
    run_config.check_int(cfg, name, 0,
                         'all' if name in ('max_examples', 'eval_batches') else 'off')
  run_config.check_execution_config(cfg)
  run_config.check_int(cfg, 'image_size', 0, 'as stored')
  if not 0 < cfg['train_portion'] < 1:
    raise ValueError(f"train_portion={cfg['train_portion']!r}: must be in (0, 1)")
  _check_health_config(cfg)
  hparams_from_config(cfg, steps_per_epoch=1)  # the optimiser settings, before any data is read


def _check_health_config(cfg: Mapping) -> None:
  run_config.check_int(cfg, 'hessian_every', 0, 'off')
  run_config.check_int(cfg, 'hessian_batch', 1)
  run_config.check_int(cfg, 'hessian_lanczos_steps', 0, 'the dense Hessian')
  run_config.check_int(cfg, 'es_window', 1)
  run_config.check_int(cfg, 'es_delta', 1)
  run_config.check_int(cfg, 'es_start_epoch', 0)
  if not cfg['es_factor'] > 0:
    raise ValueError(f"es_factor={cfg['es_factor']!r}: must be > 0 (RobustDARTS: 1.3)")
  if cfg['early_stop'] not in EARLY_STOPS:
    raise ValueError(f"early_stop={cfg['early_stop']!r} is unknown; allowed: "
                     f"{', '.join(EARLY_STOPS)}")
  if cfg['early_stop'] != 'none' and not cfg['hessian_every']:
    raise ValueError(f"early_stop={cfg['early_stop']!r} watches the Hessian's dominant "
                     'eigenvalue: set hessian_every >= 1 (RobustDARTS: 2)')


def early_stop_rule(cfg: Mapping) -> health.EarlyStopRule:
  return health.EarlyStopRule(cfg['es_window'], cfg['es_delta'], cfg['es_factor'],
                              cfg['es_start_epoch'])


def write_genotype_files(workdir: str, genotype, architecture=None) -> None:
  """``genotype.json``, ``genotype.txt`` (the original's string form) and, given the
  architecture, ``alphas.npz`` (the raw architecture pytree, one array per dotted leaf name:
  ``normal``, ``reduce`` for DARTS)."""
  ckpt_lib.write_atomic(os.path.join(workdir, 'genotype.json'), genotype.to_json() + '\n')
  ckpt_lib.write_atomic(os.path.join(workdir, 'genotype.txt'), genotype.to_string() + '\n')
  if architecture is None:
    return
  tmp = os.path.join(workdir, 'alphas.tmp.npz')
  np.savez(tmp, **{k: np.asarray(v) for k, v in ckpt_lib.flatten_named(architecture).items()})
  os.replace(tmp, os.path.join(workdir, 'alphas.npz'))


def _format_mixing(mixing: Mapping[str, np.ndarray], choices) -> str:
  lines = []
  for cell, w in mixing.items():
    lines.append(f'  softmax(alpha_{cell}) (rows: edges; columns: {", ".join(choices)})')
    lines.extend('    ' + ' '.join(f'{x:.3f}' for x in row) for row in w)
  return '\n'.join(lines)


def _health_line(r: Mapping) -> str:
  """The health report's one line: per cell, parameter-free ops, mean entropy and margin;
  the second-order share; the dominant eigenvalue where it was evaluated."""
  cells = [k[len('entropy_'):] for k in r if k.startswith('entropy_')]
  parts = [f'{c}: {r.get(f"parameter_free_{c}", 0):.0f} parameter-free, entropy '
           f'{r[f"entropy_{c}"]:.3f}, margin {r[f"margin_{c}"]:.3f}' for c in cells]
  parts.append(f'second-order share {r["second_order_share"]:.3f}')
  if 'dominant_eigenvalue' in r:
    parts.append(f'dominant eigenvalue {r["dominant_eigenvalue"]:.4g} '
                 f'({r["hessian_seconds"]:.1f} s)')
  line = '  health: ' + '; '.join(parts)
  if 'early_stop' in r:
    e = r['early_stop']
    line += (f'\n  early stop: the eigenvalue\'s mean grew {e["ratio"]:.2f}x; the search returns '
             f'to epoch {e["stop_epoch"]}')
  return line


def _epoch_report(r: Mapping, choices) -> str:
  return (f'epoch {r["epoch"]}: lr {r["lr"]:.5f}  train loss {r["train_loss"]:.4f} acc '
          f'{r["train_acc"]:.4f}  val loss {r["val_loss"]:.4f} acc {r["val_acc"]:.4f} '
          f'({r["val_examples"]} examples)  {r["seconds"]:.1f} s\n'
          f'{_format_mixing(r["alphas_softmax"], choices)}\n'
          f'  genotype = {r["genotype_str"]}\n{_health_line(r)}')


def _search_loss(space: SearchSpace, ex: run_config.Execution):
  """The search step's loss (``search.search_loss``), per-device BatchNorm around each loss the
  step uses when the run asks for it."""
  if ex.batch_norm == 'per_device' and ex.mesh.size > 1:  # one device: the same as global
    return search_lib.search_loss(space, ex.compute_dtype, lambda f: parallel.per_device_batch_norm(
        f, ex.mesh.size, ex.mesh))
  return search_lib.search_loss(space, ex.compute_dtype)


def _evaluation_loss(space: SearchSpace, compute_dtype, epochs: int, train: bool = False):
  """``(weights, architecture, batch_stats, batch, epoch) -> (loss, aux)`` in evaluation mode
  (``train``: with batch statistics, as the health report's Hessian): a stepped method's
  network without a draw, at the epoch (DARTS-'s skip coefficient)."""
  if space.make_step_loss is None:
    plain = space.make_loss(train, compute_dtype)
    return lambda w, a, st, b, epoch: plain(w, a, st, b)
  at = space.make_step_loss(train, compute_dtype)
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


class _Curvature:
  """The health report's Hessian of the architecture (``darts_jax.health``), as RobustDARTS
  takes it: L_val at the current weights on one batch of the alpha half (here always the same
  one, its first ``hessian_batch`` images without augmentation, so that epochs compare), with
  batch statistics (training-mode BatchNorm), plus the architecture's L2 weight decay on the
  diagonal. Evaluated after epoch e (0-based) when e % hessian_every == 0 and after the last."""

  def __init__(self, s: '_Setup', workdir: str):
    cfg, hp = s.cfg, s.hp
    self.every, self.epochs, self.steps = cfg['hessian_every'], hp.epochs, cfg[
        'hessian_lanczos_steps']
    self.dir = os.path.join(workdir, 'hessian') if s.ex.main and not self.steps else None
    self.key = jax.random.fold_in(jax.random.PRNGKey(cfg['seed']), 0x4E55)  # Lanczos starts
    n = cfg['hessian_batch']
    images = data_lib.normalize(s.val_set.images[:n], s.full.mean, s.full.std).astype(s.dtype)
    replicated = jax.sharding.NamedSharding(s.ex.mesh, jax.sharding.PartitionSpec())
    self.batch = jax.device_put((images, s.val_set.labels[:n]), replicated)
    loss = _evaluation_loss(s.space, s.ex.compute_dtype, hp.epochs, train=True)
    wd, steps = hp.alpha_weight_decay, self.steps

    def curvature(weights, alphas, batch_stats, batch, epoch, key):
      f = lambda a: loss(weights, a, batch_stats, batch, epoch)[0]  # noqa: E731
      if steps:
        return health.architecture_lanczos(f, alphas, steps, key, wd)
      # one tangent pass per column at a time: the memory of one Hessian-vector product
      return health.architecture_hessian(f, alphas, wd, chunk=1)

    self.curvature = jax.jit(curvature)

  def due(self, epoch: int) -> bool:
    return bool(self.every) and (epoch % self.every == 0 or epoch == self.epochs - 1)

  def report(self, state, epoch: int) -> dict:
    """The eigenvalues' record entries after epoch ``epoch`` (0-based); the dense Hessian
    goes to ``hessian/epoch_NNN.npy`` (1-based, as the records count)."""
    t0 = time.perf_counter()
    out = jax.device_get(self.curvature(state.weights, state.alphas, state.batch_stats,
                                        self.batch, np.int32(epoch),
                                        jax.random.fold_in(self.key, epoch)))
    if self.steps:
      eigenvalues = health.ritz_values(out)
    else:
      eigenvalues = health.dense_eigenvalues(out)
      if self.dir is not None:
        os.makedirs(self.dir, exist_ok=True)
        tmp = os.path.join(self.dir, 'tmp.npy')
        np.save(tmp, out)
        os.replace(tmp, os.path.join(self.dir, f'epoch_{epoch + 1:03d}.npy'))
    spectrum = health.spectrum(eigenvalues)
    return {'dominant_eigenvalue': spectrum.dominant, 'smallest_eigenvalue': spectrum.smallest,
            'top_eigenvalues': list(spectrum.top), 'hessian_seconds': time.perf_counter() - t0,
            'hessian_examples': int(self.batch[1].shape[0])}


def _early_stop_decision(cfg: Mapping, hp, record: Mapping, records: list) -> dict | None:
  """DARTS-ES's rule on the dominant eigenvalues of ``records`` and ``record`` (1-based
  epochs in the records; health.early_stop counts from 0). Not after the last epoch (nothing
  is left to stop), nor in DARTS-ADA once its weight decay is at the maximum."""
  if (cfg['early_stop'] == 'none' or 'dominant_eigenvalue' not in record
      or record['epoch'] == hp.epochs):
    return None
  at_maximum = health.raised_weight_decay(record['weight_decay']) is None
  if cfg['early_stop'] == 'darts_ada' and at_maximum:
    return None
  evaluated = [r for r in [*records, record] if 'dominant_eigenvalue' in r]
  decision = health.early_stop([r['epoch'] - 1 for r in evaluated],
                               [r['dominant_eigenvalue'] for r in evaluated], early_stop_rule(cfg))
  if decision is None:
    return None
  return {'epoch': decision.epoch + 1, 'stop_epoch': decision.stop_epoch + 1,
          'ratio': decision.ratio}


def _ada_rewind(hp, record: Mapping) -> run_loop.Rewind | None:
  """DARTS-ADA after an early stop: back to the epoch the rule chose, the weights' decay
  raised tenfold (up to 0.03)."""
  stop = record.get('early_stop')
  if stop is None:
    return None
  raised = health.raised_weight_decay(record['weight_decay'])
  return run_loop.Rewind(
      stop['stop_epoch'], lambda state: search_lib.with_weight_decay(hp, state, raised),
      {'weight_decay': raised, 'early_stop': stop})


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
  # the data source and augmentation stored resolved (a bad pair fails here): a run resumes
  # with what it started with
  cfg = {**cfg, 'data_source': data_lib.data_source(cfg['dataset'], cfg['data_source']),
         'augmentation': data_lib.dataset_augmentation(cfg['dataset'], cfg['augmentation'])}
  _check_config(cfg)
  methods.get(method)  # an unknown name fails before any data is read
  run_config.check_workdir_usable(workdir)
  dtype = run_config.run_dtype(cfg)
  full = data_lib.load_dataset(cfg['dataset'], 'train', cfg['data_dir'] or None,
                              cfg['download'], cfg['data_source'], cfg['image_size'],
                              cfg['max_examples'])
  train_set, val_set = data_lib.search_split(full, cfg['train_portion'])
  batch = cfg['batch_size']
  for name, part in (('weight', train_set), ('alpha', val_set)):
    if batch > len(part.labels):
      raise ValueError(f'batch_size={batch} exceeds the {len(part.labels)} examples of the '
                       f'{name} half of {cfg["dataset"]!r}')
  if cfg['hessian_every'] and cfg['hessian_batch'] > len(val_set.labels):
    raise ValueError(f"hessian_batch={cfg['hessian_batch']} exceeds the "
                     f'{len(val_set.labels)} examples of the alpha half of {cfg["dataset"]!r}')
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
  preprocess = lambda key, images: data_lib.train_transform(  # noqa: E731
      key, images, mean, std, cfg['augmentation'], cfg['crop_padding'],
      cfg['flip']).astype(s.dtype)
  loss = _search_loss(space, ex)
  eval_loss = _evaluation_loss(space, ex.compute_dtype, hp.epochs)
  eval_fn = search_lib.jit_eval_step(
      lambda w, a, st, b, epoch: eval_loss(
          w, a, st, (data_lib.normalize(b[0], mean, std).astype(s.dtype), b[1]), epoch),
      ex.mesh, shardings.weights, extra_args=1)
  feed = parallel.BatchFeed(ex.mesh, batch)
  num_weights = num_params(state.weights)
  curvature = _Curvature(s, workdir) if cfg['hessian_every'] else None
  cells = tuple(space.mixing(jax.device_get(state.alphas)))

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
    mixing = space.mixing(architecture)
    record = {
        'kind': 'epoch', 'epoch': epoch + 1, 'step': int(state.step),
        'lr': float(search_lib.current_weight_lr(hp, epoch * spe)),
        'train_loss': float(m.train_loss / m.steps),
        'train_acc': float(m.train_correct / m.train_examples),
        'search_val_loss': float(m.val_loss / m.steps),
        'hypergrad_norm': float(m.hypergrad_norm / m.steps),
        'val_loss': val_loss, 'val_acc': val_acc, 'val_examples': seen, 'seconds': seconds,
        'alphas_softmax': mixing, 'genotype': genotype.to_dict(),
        'genotype_str': genotype.to_string(),
        'weight_decay': search_lib.weight_decay(hp, state),
        # the health report (darts_jax.health): collapse diagnostics every epoch
        **health.collapse_diagnostics(mixing, genotype.to_dict(), space.parameter_free),
        'second_order_share': health.second_order_share(m.direct_norm, m.indirect_norm)}
    if curvature is not None and curvature.due(epoch):
      record.update(curvature.report(state, epoch))
    return record

  def decide(record, records):
    stop = _early_stop_decision(cfg, hp, record, records)
    return record if stop is None else {**record, 'early_stop': stop}

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
      end_epoch=end_epoch, report=lambda r: _epoch_report(r, space.choices),
      scalars=SCALARS + tuple(p + c for p in HEALTH_PREFIXES for c in cells),
      after_epoch=_Pictures(workdir, space, cfg['plots'] and ex.main, log).draw, intro=intro,
      decide=decide,
      finished=lambda records: cfg['early_stop'] == 'darts_es' and _stopped(records) is not None,
      rewind=(lambda record, records: _ada_rewind(hp, record)) if cfg['early_stop'] == 'darts_ada'
      else (lambda record, records: None),
      keep_epoch_checkpoints=cfg['early_stop'] == 'darts_ada')


def _stopped(records: list) -> dict | None:
  """The early stop among ``records``, if one was decided."""
  return next((r['early_stop'] for r in records if 'early_stop' in r), None)


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
      from darts_jax import viz
      viz.plot_search_health(records + [record], self.dir)
    except ImportError as e:
      self.log(f'note: no plots ({e})')
      self.enabled = False


def run_search(cfg: Mapping, workdir: str, *, log: Callable[[str], None] = print,
               space_from_run: SpaceFromRun | None = None,
               method: str | None = None) -> SearchResult:
  """Runs (or resumes) the search described by ``cfg`` (see ``experiments/configs/search.py``)
  in ``workdir``: the space ``space_from_run`` builds for the data (default: the config's
  ``search_space``), as ``method`` (default: the config's ``method``, else DARTS) searches it
  (``darts_jax.methods``).
  An interruption or error checkpoints the steps done so far before it propagates; calling
  again resumes."""
  s = _setup(cfg, workdir, space_from_run or space_builder(cfg),
             method or cfg.get('method', 'darts'))
  log = s.ex.speaker(log)
  state, shardings = _initial_state(s)
  resumed = run_config.check_workdir(workdir, s.cfg, MAY_DIFFER, s.ex.main)
  if s.ex.main and s.full.classes:  # a folder dataset: which folder each label is
    folder_lib.write_classes(s.full.classes, workdir)
  state, records = run_loop.run_epochs(
      _epoch_loop(s, workdir, state, shardings, log), state, cfg=s.cfg, workdir=workdir,
      epochs=s.hp.epochs, steps_per_epoch=s.hp.steps_per_epoch, resumed=resumed,
      main=s.ex.main, log=log)

  genotype = s.space.genotype(jax.device_get(state.alphas))
  stop = _stopped(records) if s.cfg['early_stop'] == 'darts_es' else None
  if stop is not None:  # DARTS-ES: the genotype of the epoch the rule chose
    chosen = next(r for r in records if r['epoch'] == stop['stop_epoch'])
    genotype = s.space.genotype_from_dict(chosen['genotype'])
    log(f'early stop (DARTS-ES) after epoch {stop["epoch"]}: the genotype of epoch '
        f'{stop["stop_epoch"]} is the result (genotype.txt)')
    if s.ex.main:  # alphas.npz stays the last epoch's: the records keep no raw alphas
      write_genotype_files(workdir, genotype)
  best = max(records, key=lambda r: r['val_acc'], default=None)
  best_genotype = s.space.genotype_from_dict(best['genotype']) if best else None
  log(f'search done: {int(state.step)} steps. Final genotype:\n  {genotype.to_string()}')
  if best is not None:
    log(f'best epoch {best["epoch"]} (supernet val acc {best["val_acc"]:.4f}):\n  '
        f'{best_genotype.to_string()}')
    if s.ex.main:
      ckpt_lib.write_atomic(os.path.join(workdir, 'best_genotype.txt'),
                            best_genotype.to_string() + '\n')
  return SearchResult(parallel.to_host(state), genotype, best_genotype,
                      None if best is None else best['val_acc'])
