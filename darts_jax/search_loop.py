"""The DARTS search as a resumable run: data, jitted steps, checkpoints, logs and pictures.

``run_search(config, workdir)`` is what ``python -m experiments.cifar_search`` calls. Every
piece of the run is a function of the config and the step count: the data order is drawn from
(seed, epoch), augmentation from (seed, step), so a run resumed from a checkpoint continues
exactly as it would have without the interruption.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from darts_jax import checkpoint as ckpt_lib
from darts_jax import data as data_lib
from darts_jax import parallel
from darts_jax import runs
from darts_jax import search as search_lib
from darts_jax.genotypes import PRIMITIVES, Genotype, derive_genotype
from darts_jax.metrics_log import MetricWriter
from darts_jax.runs import NonFiniteError  # noqa: F401  (re-exported: the command catches it)
from darts_jax.supernet import (SupernetConfig, check_image_size, init_alphas, init_supernet,
                                make_loss)

# config keys that may change between a run and its resumption (they do not change results)
MAY_DIFFER = ('log_every', 'checkpoint_every', 'keep_checkpoints', 'plots', 'tensorboard',
              'progress', 'data_dir', 'download') + runs.PROCESS_KEYS


# what shard_weights splits over the devices: the weights and their momentum
SHARDED_FIELDS = ('weights', 'w_opt_state')


class SearchResult(NamedTuple):
  state: search_lib.SearchState
  genotype: Genotype
  best_genotype: Genotype | None
  best_val_acc: float | None


def hparams_from_config(cfg: Mapping, steps_per_epoch: int) -> search_lib.SearchHParams:
  return runs.hparams_from_config(search_lib.SearchHParams, cfg, steps_per_epoch)


def _check_config(cfg: Mapping) -> None:
  for name in ('batch_size', 'init_channels', 'layers', 'epochs'):
    runs.check_int(cfg, name, 1)
  for name in ('log_every', 'checkpoint_every', 'max_examples', 'eval_batches'):
    runs.check_int(cfg, name, 0, 'all' if name in ('max_examples', 'eval_batches') else 'off')
  runs.check_execution_config(cfg)
  if not 0 < cfg['train_portion'] < 1:
    raise ValueError(f"train_portion={cfg['train_portion']!r}: must be in (0, 1)")
  hparams_from_config(cfg, steps_per_epoch=1)  # the optimiser settings, before any data is read


def _softmax(alphas) -> dict[str, np.ndarray]:
  return {k: np.asarray(jax.nn.softmax(jnp.asarray(v, jnp.float32), axis=-1))
          for k, v in alphas.items()}


def write_genotype_files(workdir: str, genotype: Genotype, alphas: Mapping) -> None:
  """``genotype.json``, ``genotype.txt`` (the original's string form) and ``alphas.npz``."""
  runs.write_atomic(os.path.join(workdir, 'genotype.json'), genotype.to_json() + '\n')
  runs.write_atomic(os.path.join(workdir, 'genotype.txt'), genotype.to_string() + '\n')
  tmp = os.path.join(workdir, 'alphas.tmp.npz')
  np.savez(tmp, **{k: np.asarray(v) for k, v in alphas.items()})
  os.replace(tmp, os.path.join(workdir, 'alphas.npz'))


class _Pictures:
  """Per-epoch genotype graphs and alpha plots; skipped with one notice when the optional
  plotting packages are missing."""

  def __init__(self, workdir: str, primitives, enabled: bool, log: Callable):
    self.dir = os.path.join(workdir, 'plots')
    self.primitives, self.enabled, self.log = primitives, enabled, log

  def draw(self, epoch: int, genotype: Genotype, history: list) -> None:
    if not self.enabled:
      return
    try:
      from darts_jax import viz
      os.makedirs(self.dir, exist_ok=True)
      viz.save_genotype_graphs(genotype, self.dir, f'genotype_epoch{epoch:03d}')
      viz.plot_alpha_heatmaps(history[-1], self.primitives,
                              os.path.join(self.dir, f'alphas_epoch{epoch:03d}.png'),
                              title=f'softmax(alpha), epoch {epoch}')
      viz.plot_alpha_evolution(history, self.primitives,
                               os.path.join(self.dir, 'alpha_evolution.png'))
    except ImportError as e:
      self.log(f'note: no plots ({e})')
      self.enabled = False


def _format_alphas(softmaxed: Mapping[str, np.ndarray], primitives) -> str:
  lines = []
  for cell, w in softmaxed.items():
    lines.append(f'  softmax(alpha_{cell}) (rows: edges; columns: {", ".join(primitives)})')
    lines.extend('    ' + ' '.join(f'{x:.3f}' for x in row) for row in w)
  return '\n'.join(lines)


def run_search(cfg: Mapping, workdir: str, *,
               log: Callable[[str], None] = print) -> SearchResult:
  """Runs (or resumes) the search described by ``cfg`` (see ``experiments/configs/search.py``)
  in ``workdir``. An interruption or error checkpoints the steps done so far before it
  propagates; calling again resumes.
  """
  cfg = dict(cfg)
  _check_config(cfg)
  dtype = runs.run_dtype(cfg)

  # data first: a bad data directory fails before anything is written
  data_dir = cfg['data_dir'] or data_lib.default_data_dir()
  full = runs.subset(data_lib.load_dataset(cfg['dataset'], 'train', data_dir, cfg['download']),
                 cfg['max_examples'])
  train_set, val_set = data_lib.search_split(full, cfg['train_portion'])
  batch = cfg['batch_size']
  for name, part in (('weight', train_set), ('alpha', val_set)):
    if batch > len(part.labels):
      raise ValueError(f'batch_size={batch} exceeds the {len(part.labels)} examples of the '
                       f'{name} half of {cfg["dataset"]!r}')
  spe = data_lib.steps_per_epoch(len(train_set.labels), batch)
  hp = hparams_from_config(cfg, spe)
  ex = runs.execution(cfg)
  mesh = ex.mesh
  log = ex.speaker(log)
  primitives = tuple(cfg['primitives']) if cfg.get('primitives') else PRIMITIVES
  net = SupernetConfig(C=cfg['init_channels'], num_classes=full.num_classes,
                       layers=cfg['layers'], steps=cfg['steps'], multiplier=cfg['multiplier'],
                       stem_multiplier=cfg['stem_multiplier'],
                       in_channels=full.images.shape[-1], primitives=primitives)
  image_size = tuple(full.images.shape[1:3])
  check_image_size((1, *image_size, net.in_channels), len(net.reduction_layers), net.in_channels,
                   dtype)

  resumed = runs.check_workdir(workdir, cfg, MAY_DIFFER, ex.main)
  mean, std = full.mean, full.std
  preprocess = lambda key, images: data_lib.augment(
      key, images, mean, std, cfg['crop_padding'], cfg['flip']).astype(dtype)
  loss = make_loss(net, compute_dtype=ex.compute_dtype)
  if ex.batch_norm == 'per_device' and mesh.size > 1:  # one device: the same as global
    loss = parallel.per_device_batch_norm(loss, mesh.size, mesh)
  eval_loss = make_loss(net, train=False, compute_dtype=ex.compute_dtype)

  key_w, key_a, key_data = jax.random.split(jax.random.PRNGKey(cfg['seed']), 3)
  variables = init_supernet(key_w, net, image_size, dtype)
  state = search_lib.init_search_state(hp, variables.weights, init_alphas(key_a, net, dtype),
                                       variables.batch_stats, key_data)
  shardings = parallel.state_sharding(state, mesh, SHARDED_FIELDS if ex.shard_weights else ())
  state = parallel.place(state, shardings)
  step_fn = search_lib.jit_search_step(hp, loss, mesh, preprocess, shardings)
  eval_fn = search_lib.jit_eval_step(
      lambda w, a, s, b: eval_loss(w, a, s, (data_lib.normalize(b[0], mean, std).astype(dtype),
                                             b[1])), mesh, shardings.weights)
  feed = parallel.BatchFeed(mesh, batch)
  checkpoints = ckpt_lib.Checkpoints(os.path.join(workdir, 'checkpoints'),
                                     cfg['keep_checkpoints'])
  writer = MetricWriter(workdir, cfg['tensorboard'], enabled=ex.main)
  state = runs.restore_latest(checkpoints, state, workdir, resumed, spe, log)
  step = int(state.step)
  writer.truncate_after(step)
  parallel.barrier('metrics')  # every process reads the records as process 0 left them
  records = [r for r in writer.records() if r.get('kind') == 'epoch']
  history = [{k: np.asarray(v) for k, v in r['alphas_softmax'].items()} for r in records]
  best = max(records, key=lambda r: r['val_acc'], default=None)
  pictures = _Pictures(workdir, primitives, cfg['plots'] and ex.main, log)
  total = hp.epochs * spe
  if step == 0:
    log(f'DARTS search: {cfg["dataset"]} {image_size}, {len(train_set.labels)} + '
        f'{len(val_set.labels)} examples, {hp.epochs} epochs x {spe} steps, '
        f'{ex.describe(batch)}, estimator {hp.estimator}, {net.layers} cells, C={net.C}, '
        f'{sum(np.size(x) for x in jax.tree_util.tree_leaves(state.weights)):,} weights; '
        f'w lr {hp.w_lr:g}, alpha lr {hp.alpha_lr:g}')

  def guard():
    bad = int(state.nonfinite_step)
    if bad >= 0:
      raise runs.nonfinite_error(bad, spe, checkpoints.latest_step(), workdir)

  def save():
    guard()
    checkpoints.save(int(state.step), state, {'epoch': int(state.step) // spe})

  genotype = derive_genotype(jax.device_get(state.alphas), primitives, net.steps, net.multiplier)
  if step < total:
    example = feed(np.arange(batch), train_set.images, train_set.labels)
    step_fn = runs.compile_ahead(step_fn, (state, example, example),
                                 f'the search step ({hp.estimator})', log)
  try:
    while step < total:
      epoch = step // spe
      order_w = data_lib.epoch_order(len(train_set.labels), batch, cfg['seed'], epoch)
      order_a = data_lib.epoch_order(len(val_set.labels), batch, cfg['seed'] + 1_000_003, epoch)
      bar = runs.progress(spe, step % spe, f'epoch {epoch + 1}/{hp.epochs}', cfg['progress'])
      t0 = time.perf_counter()
      while step < (epoch + 1) * spe:
        i = step % spe
        iw, ia = order_w[i], order_a[i % len(order_a)]
        state, _ = step_fn(state, feed(iw, train_set.images, train_set.labels),
                           feed(ia, val_set.images, val_set.labels))
        step += 1
        bar.update(1)
        if cfg['log_every'] and step % cfg['log_every'] == 0:
          guard()
          m = jax.device_get(state.metrics)
          bar.set_postfix(loss=f'{m.train_loss / m.steps:.3f}',
                          acc=f'{m.train_correct / m.train_examples:.3f}')
          writer.write({'kind': 'train', 'step': step,
                        'train_loss': m.train_loss / m.steps},
                       {'train/loss_running': m.train_loss / m.steps})
        if cfg['checkpoint_every'] and step % cfg['checkpoint_every'] == 0 and step % spe:
          save()
      bar.close()
      guard()
      record, genotype = _end_of_epoch(cfg, hp, state, epoch, eval_fn, feed, val_set,
                                       primitives, net, time.perf_counter() - t0)
      history.append(record['alphas_softmax'])
      if ex.main:
        write_genotype_files(workdir, genotype, jax.device_get(state.alphas))
      writer.write(record, {k: record[k] for k in ('train_loss', 'train_acc', 'val_loss',
                                                   'val_acc', 'search_val_loss', 'lr')})
      if best is None or record['val_acc'] > best['val_acc']:
        best = record
      log(_epoch_report(record, primitives))
      pictures.draw(epoch + 1, genotype, history)
      save()
  except (KeyboardInterrupt, Exception) as e:
    runs.on_stop(e, state, checkpoints, save, log)
    raise
  finally:
    writer.close()
    checkpoints.close()

  best_genotype = Genotype.from_json(json.dumps(best['genotype'])) if best else None
  log(f'search done: {total} steps. Final genotype:\n  {genotype.to_string()}')
  if best is not None:
    log(f'best epoch {best["epoch"]} (supernet val acc {best["val_acc"]:.4f}):\n  '
        f'{best_genotype.to_string()}')
    if ex.main:
      runs.write_atomic(os.path.join(workdir, 'best_genotype.txt'),
                        best_genotype.to_string() + '\n')
  return SearchResult(parallel.to_host(state), genotype, best_genotype,
                      None if best is None else best['val_acc'])


def _end_of_epoch(cfg, hp, state, epoch, eval_fn, feed, val_set, primitives, net, seconds):
  m = jax.device_get(state.metrics)
  batch = feed.batch_size
  n_eval = len(val_set.labels) // batch
  if cfg['eval_batches']:
    n_eval = min(n_eval, cfg['eval_batches'])
  loss_sum, correct, seen = 0.0, 0, 0
  for j in range(n_eval):  # the original's infer(): eval-mode BN over the alpha half, in order
    l, c = eval_fn(state.weights, state.alphas, state.batch_stats,
                   feed(np.arange(j * batch, (j + 1) * batch), val_set.images, val_set.labels))
    loss_sum, correct, seen = loss_sum + float(l), correct + int(c), seen + batch
  alphas = jax.device_get(state.alphas)
  genotype = derive_genotype(alphas, primitives, net.steps, net.multiplier)
  record = {
      'kind': 'epoch', 'epoch': epoch + 1, 'step': int(state.step),
      'lr': float(search_lib.current_weight_lr(hp, epoch * hp.steps_per_epoch)),
      'train_loss': float(m.train_loss / m.steps),
      'train_acc': float(m.train_correct / m.train_examples),
      'search_val_loss': float(m.val_loss / m.steps),
      'hypergrad_norm': float(m.hypergrad_norm / m.steps),
      'val_loss': loss_sum / max(seen, 1), 'val_acc': correct / max(seen, 1),
      'val_examples': seen, 'seconds': seconds,
      'alphas_softmax': _softmax(alphas), 'genotype': genotype.to_dict(),
      'genotype_str': genotype.to_string()}
  return record, genotype


def _epoch_report(r: Mapping, primitives) -> str:
  return (f'epoch {r["epoch"]}: lr {r["lr"]:.5f}  train loss {r["train_loss"]:.4f} acc '
          f'{r["train_acc"]:.4f}  val loss {r["val_loss"]:.4f} acc {r["val_acc"]:.4f} '
          f'({r["val_examples"]} examples)  {r["seconds"]:.1f} s\n'
          f'{_format_alphas(r["alphas_softmax"], primitives)}\n'
          f'  genotype = {r["genotype_str"]}')
