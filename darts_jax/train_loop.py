"""Training a derived network from scratch as a resumable run: the original's ``train.py``.

``run_train(config, workdir)`` is what ``python -m experiments.cifar_train`` calls. As in the
search, every piece of the run is a function of the config and the step count (data order from
(seed, epoch), augmentation, cutout and drop path from (seed, step)), so a run resumed from a
checkpoint continues bit for bit as it would have without the interruption. ``evaluate`` is what
``python -m experiments.cifar_eval`` calls.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from darts_jax import checkpoint as ckpt_lib
from darts_jax import cost
from darts_jax import data as data_lib
from darts_jax import nas_bench_201 as nb201
from darts_jax import parallel
from darts_jax import run_config
from darts_jax import run_loop
from darts_jax import train as train_lib
from darts_jax.data import folder as folder_lib
from darts_jax.data import imagenet
from darts_jax.genotypes import Genotype, load_genotype
from darts_jax.networks import NetworkCIFAR, NetworkImageNet
from darts_jax.ops import registry
from darts_jax.ops.init import num_params
from darts_jax.supernet import check_image_size, reduction_layers

# config keys that may change between a run and its resumption (they do not change results)
MAY_DIFFER = ('log_every', 'checkpoint_every', 'keep_checkpoints', 'tensorboard', 'progress',
              'data_dir', 'download', 'eval_every', 'loader_workers',
              'loader_threads') + run_config.PROCESS_KEYS
# what shard_weights splits over the devices: the weights and their momentum
SHARDED_FIELDS = ('weights', 'opt_state')
# epoch-record keys that go to TensorBoard
SCALARS = ('train_loss', 'train_acc', 'lr', 'test_loss', 'test_top1', 'test_top5')
# --config.search_space: whose networks are trained (the DARTS cells' NetworkCIFAR, or
# NAS-Bench-201's skeleton around one of its cells)
SPACES = ('darts_cnn', 'nas_bench_201')
Data = data_lib.Dataset | imagenet.StreamingSet


def _streamed(cfg: Mapping) -> bool:
  """ImageNet is decoded as it trains (and trains NetworkImageNet); the rest live in memory."""
  return cfg['dataset'] == 'imagenet'


def _image_shape(data: Data) -> tuple[int, int, int]:
  return data.image_shape if isinstance(data, imagenet.StreamingSet) else data.images.shape[1:]


def _num_examples(data: Data) -> int:
  return data.num_examples if isinstance(data, imagenet.StreamingSet) else len(data.labels)


class TrainResult(NamedTuple):
  state: train_lib.TrainState
  genotype: Genotype | nb201.Structure
  test: dict | None  # the last evaluation: {'loss', 'top1', 'top5', 'examples'}
  best_top1: float | None


def hparams_from_config(cfg: Mapping, steps_per_epoch: int) -> train_lib.TrainHParams:
  return run_config.hparams_from_config(train_lib.TrainHParams, cfg, steps_per_epoch)


def _nas_bench_201(cfg: Mapping) -> bool:
  return cfg.get('search_space', 'darts_cnn') == 'nas_bench_201'


def _resolved(cfg: dict) -> dict:
  """``cfg`` with its data source and augmentation resolved (a bad pair fails here): a run
  stores them so, and resumes with what it started with."""
  return {**cfg, 'data_source': data_lib.data_source(cfg['dataset'], cfg['data_source']),
          'augmentation': data_lib.dataset_augmentation(cfg['dataset'], cfg['augmentation'],
                                                        _streamed(cfg))}


def _check_config(cfg: Mapping) -> None:
  if cfg.get('search_space', 'darts_cnn') not in SPACES:
    raise ValueError(f"search_space={cfg['search_space']!r} is unknown; allowed: "
                     f'{", ".join(SPACES)}')
  for name in ('batch_size', 'init_channels', 'layers', 'epochs', 'stem_multiplier',
               'eval_every') + (('cells_per_stage',) if 'cells_per_stage' in cfg else ()):
    run_config.check_int(cfg, name, 1)
  if _streamed(cfg) and _nas_bench_201(cfg):
    raise ValueError("search_space='nas_bench_201' trains on small images; ImageNet trains "
                     'the DARTS cells (search_space=darts_cnn)')
  run_config.check_int(cfg, 'loader_threads', 1)
  for name, zero in (('image_size', 'as stored' if not _streamed(cfg) else '224'),
                     ('loader_workers', 'threads only')):
    run_config.check_int(cfg, name, 0, zero)
  if _nas_bench_201(cfg):
    for name in ('auxiliary', 'drop_path_prob'):
      if cfg[name]:
        raise ValueError(f'{name}={cfg[name]!r}: NAS-Bench-201\'s networks train without it '
                         f'(set {name}={"False" if name == "auxiliary" else "0"})')
  for name, zero in (('log_every', 'off'), ('checkpoint_every', 'epoch ends only'),
                     ('max_examples', 'all'), ('max_test_examples', 'all'),
                     ('cutout_length', 'no cutout'),
                     ('crop_padding', 'no crop')):
    run_config.check_int(cfg, name, 0, zero)
  run_config.check_int(cfg, 'keep_checkpoints', 1)
  run_config.check_execution_config(cfg)
  hparams_from_config(cfg, steps_per_epoch=1)  # the optimiser settings, before any data is read


def _load_genotype(cfg: Mapping) -> Genotype | nb201.Structure:
  if _nas_bench_201(cfg):
    structure = nb201.load_structure(cfg['genotype'])
    structure.validate_ops(nb201.PRIMITIVES)
    return structure
  genotype = load_genotype(cfg['genotype'])
  genotype.validate_ops(list(registry.OPS))
  return genotype


def _model(cfg: Mapping, genotype, dataset: Data):
  in_channels = _image_shape(dataset)[-1]
  if _nas_bench_201(cfg):
    return nb201.TinyNetwork(genotype, C=cfg['init_channels'],
                             cells_per_stage=cfg['cells_per_stage'],
                             num_classes=dataset.num_classes, in_channels=in_channels)
  network = NetworkImageNet if _streamed(cfg) else NetworkCIFAR
  extra = {} if _streamed(cfg) else {'stem_multiplier': cfg['stem_multiplier']}
  return network(C=cfg['init_channels'], num_classes=dataset.num_classes, layers=cfg['layers'],
                 auxiliary=cfg['auxiliary'], genotype=genotype, in_channels=in_channels, **extra)


def _check_shapes(cfg: Mapping, model, dataset: Data) -> None:
  image_size = tuple(_image_shape(dataset)[:2])
  if _nas_bench_201(cfg):
    nb201.check_images(jax.ShapeDtypeStruct((1, *image_size, model.in_channels), jnp.float32),
                       model.in_channels, 'network')
    return
  # NetworkImageNet's stem halves the side three times before the cells
  stem = 3 if _streamed(cfg) else 0
  reductions = len(reduction_layers(cfg['layers']))
  check_image_size((1, *image_size, model.in_channels), stem + reductions, model.in_channels,
                   what='network')
  if cfg['auxiliary']:
    # the head pools the map after the last reduction cell to 2x2 with a 5x5 window: CIFAR's at
    # stride 3 (8x8 at 32x32), ImageNet's at stride 2 (7x7 at 224x224, then a 2x2 conv)
    h, w = (n // 2 ** (stem + reductions) for n in image_size)
    stride, needs, pooled = (2, '224x224', '7x7') if _streamed(cfg) else (3, '32x32', '8x8')
    if [(n - 5) // stride + 1 if n >= 5 else 0 for n in (h, w)] != [2, 2]:
      raise ValueError(f'auxiliary=True needs {needs} images (the head pools a {pooled} map); '
                       f'{dataset.name} has {image_size[0]}x{image_size[1]}: set '
                       'auxiliary=False')


def param_counts(weights) -> tuple[int, int]:
  """``(without, with)`` the auxiliary head: the original reports the first."""
  total = num_params(weights)
  return total - num_params(weights.get('aux', {})), total


def _eval_batches(n: int, batch: int):
  """Index arrays of full-size batches covering ``0..n-1`` once, and a mask that drops the
  padding of the last one (one static shape: one compilation)."""
  batches = -(-n // batch)
  index = np.arange(batches * batch) % n
  mask = np.arange(batches * batch) < n
  return index.reshape(batches, batch), mask.reshape(batches, batch)


def evaluate(eval_fn: Callable, weights, batch_stats, test_set: Data,
             feed: parallel.BatchFeed) -> dict[str, float]:
  """Mean loss, top-1 and top-5 accuracy over the whole of ``test_set`` (eval-mode BN)."""
  sums = {'loss': 0.0, 'top1': 0.0, 'top5': 0.0, 'examples': 0.0}
  index, mask = _eval_batches(_num_examples(test_set), feed.batch_size)
  positions = np.arange(feed.batch_size)
  streamed = isinstance(test_set, imagenet.StreamingSet)
  reader = imagenet.EpochFeed(test_set, index, feed.rows, 0, 0) if streamed else None
  try:
    for t, (i, m) in enumerate(zip(index, mask)):
      images, labels = (feed.from_local(*reader(t)) if streamed
                        else feed(i, test_set.images, test_set.labels))
      out = jax.device_get(eval_fn(weights, batch_stats, images, labels, feed(positions, m)[0]))
      sums = {k: sums[k] + float(out[k]) for k in sums}
  finally:
    if reader is not None:
      reader.close()
  n = sums['examples']
  return {'loss': sums['loss'] / n, 'top1': sums['top1'] / n, 'top5': sums['top5'] / n,
          'examples': int(n)}


class _Setup(NamedTuple):
  cfg: dict
  dtype: jnp.dtype
  genotype: Genotype | nb201.Structure
  model: Any  # NetworkCIFAR or nas_bench_201.TinyNetwork
  train_set: Data
  test_set: Data
  hp: train_lib.TrainHParams
  ex: run_config.Execution


def _setup(cfg: Mapping, need_train: bool = True, workdir: str | None = None) -> _Setup:
  """Everything a run needs that can fail on bad input, before anything is written (and
  before any data is read, whether ``workdir`` can be written)."""
  cfg = _resolved({**run_config.BEFORE_DATASETS, **cfg})
  _check_config(cfg)
  if workdir is not None:
    run_config.check_workdir_usable(workdir)
  dtype = run_config.run_dtype(cfg)
  genotype = _load_genotype(cfg)
  test_set = _load(cfg, 'test', cfg['max_test_examples'])
  train_set = _load(cfg, 'train', cfg['max_examples']) if need_train else test_set
  batch = cfg['batch_size']
  if need_train and batch > _num_examples(train_set):
    raise ValueError(f'batch_size={batch} exceeds the {_num_examples(train_set)} training '
                     f'examples of {cfg["dataset"]!r}')
  # evaluation alone has no epochs: a test set smaller than a batch is fine
  hp = hparams_from_config(
      cfg, data_lib.steps_per_epoch(_num_examples(train_set), batch) if need_train else 1)
  model = _model(cfg, genotype, train_set)
  _check_shapes(cfg, model, train_set)
  return _Setup(cfg, dtype, genotype, model, train_set, test_set, hp,
                run_config.execution(cfg))


def _load(cfg: Mapping, split: str, limit: int) -> Data:
  """``split`` of the run's data: ImageNet listed for streaming, the rest read into memory;
  the first ``limit`` examples (0: all)."""
  if _streamed(cfg):
    sizes = (cfg['image_size'] or 224, cfg['resize_size'])
    if cfg['data_source'] == 'tfds':
      data = imagenet.load_streaming_tfds(cfg['data_dir'], split, *sizes, cfg['download'],
                                          cfg['loader_workers'], cfg['loader_threads'])
    else:
      data = imagenet.load_streaming(data_lib.folder_root('imagenet', cfg['data_dir']), split,
                                     *sizes, 'imagenet', cfg['loader_workers'],
                                     cfg['loader_threads'])
    if cfg['augmentation'] == 'none':  # the evaluation view for training too: no crop, flip
      data = data._replace(train=False)
    return imagenet.subset(data, limit)
  return data_lib.load_dataset(cfg['dataset'], split, cfg['data_dir'] or None, cfg['download'],
                               cfg['data_source'], cfg['image_size'], limit)


def _eval_fn(s: _Setup, weights_sharding=None):
  mean, std = s.train_set.mean, s.train_set.std
  return train_lib.jit_eval_step(
      s.model, s.ex.mesh, lambda images: data_lib.normalize(images, mean, std).astype(s.dtype),
      s.ex.compute_dtype, weights_sharding)


def _initial_state(s: _Setup):
  """The training state from the seed, placed on the mesh; and its shardings."""
  shape = _image_shape(s.train_set)
  state = train_lib.init_train_state(s.hp, s.model, jax.random.PRNGKey(s.cfg['seed']),
                                     tuple(shape[:2]), shape[-1], s.dtype)
  shardings = parallel.state_sharding(state, s.ex.mesh,
                                      SHARDED_FIELDS if s.ex.shard_weights else ())
  return parallel.place(state, shardings), shardings


def _epoch_loop(s: _Setup, state, shardings, best_checkpoint) -> run_loop.EpochLoop:
  """The training as the run skeleton takes it: the jitted step on augmented, cut-out batches,
  and at each epoch's end the test evaluation and the best checkpoint."""
  cfg, hp, ex, train_set = s.cfg, s.hp, s.ex, s.train_set
  batch, spe = cfg['batch_size'], hp.steps_per_epoch
  mean, std = train_set.mean, train_set.std

  augmentation = cfg['augmentation']
  streamed = isinstance(train_set, imagenet.StreamingSet)

  def preprocess(key, images):  # the original's transforms, cutout last (after Normalize)
    k_aug, k_cut = jax.random.split(key)
    if streamed:  # cropped and flipped as decoded: colour jitter and Normalize here
      x = imagenet.train_preprocess(k_aug, images, mean, std, augmentation == 'imagenet')
    else:
      x = data_lib.train_transform(k_aug, images, mean, std, augmentation,
                                   cfg['crop_padding'], cfg['flip'])
    return data_lib.cutout(k_cut, x, cfg['cutout_length']).astype(s.dtype)

  loss = train_lib.make_train_loss(s.model, hp.auxiliary_weight, ex.compute_dtype,
                                   hp.label_smoothing)
  if ex.batch_norm == 'per_device' and ex.mesh.size > 1:  # one device: the same as global
    loss = parallel.per_device_batch_norm(loss, ex.mesh.size, ex.mesh, batch_argnum=2,
                                          key_argnum=3)
  eval_fn = _eval_fn(s, shardings.weights)
  feed = parallel.BatchFeed(ex.mesh, batch)
  without_aux, with_aux = param_counts(state.weights)
  total = hp.epochs * spe

  readers = {}  # the epoch's reader: the run asks for an epoch's batches more than once

  def batches(epoch):
    order = data_lib.epoch_order(_num_examples(train_set), batch, cfg['seed'], epoch)
    if streamed:  # this process decodes its rows of each batch, reading ahead
      if epoch not in readers:
        for reader in readers.values():
          reader.close()
        readers.clear()
        readers[epoch] = imagenet.EpochFeed(train_set, order, feed.rows, cfg['seed'], epoch)
      return lambda i: (feed.from_local(*readers[epoch](i)),)
    return lambda i: (feed(order[i], train_set.images, train_set.labels),)

  def end_epoch(state, epoch, seconds):
    m = jax.device_get(state.metrics)
    step = int(state.step)
    record = {'kind': 'epoch', 'epoch': epoch + 1, 'step': step,
              'lr': float(train_lib.learning_rate(hp)(epoch * spe)),
              'drop_path_prob': float(train_lib.drop_path_prob(hp, epoch * spe)),
              'train_loss': float(m.loss / m.steps),
              'train_acc': float(m.correct / m.examples), 'seconds': seconds}
    if (epoch + 1) % cfg['eval_every'] == 0 or step == total:
      test = evaluate(eval_fn, state.weights, state.batch_stats, s.test_set, feed)
      record.update(test_loss=test['loss'], test_top1=test['top1'], test_top5=test['top5'])
    return record

  def keep_best(state, record, records):
    # before the latest checkpoint: a run resumed from there has its best epoch on disk. A run
    # interrupted between the two redoes this epoch bit for bit: its save is on disk.
    best = _best_top1(records)
    if 'test_top1' in record and (best is None or record['test_top1'] > best):
      if best_checkpoint.latest_step() != record['step']:
        best_checkpoint.save(record['step'], state,
                             {'epoch': record['epoch'], 'test_top1': record['test_top1']})

  madds = cost.network_multiply_adds(
      s.model, {'params': state.weights, 'batch_stats': state.batch_stats},
      _image_shape(train_set))
  schedule = (f'x {hp.lr_gamma:g} per epoch' if hp.lr_schedule == 'exponential'
              else f'cosine to {hp.lr_min:g}')

  def intro(step):
    lines = [] if step else [
        f'training {s.genotype.to_string()}\n  on {cfg["dataset"]} '
        f'{tuple(_image_shape(train_set))}: {_num_examples(train_set)} training, '
        f'{_num_examples(s.test_set)} test examples, {train_set.num_classes} classes; '
        f'{hp.epochs} epochs x {spe} steps, {ex.describe(batch)}; lr {hp.lr:g} {schedule}'
        f'{" (Nesterov)" if hp.nesterov else ""}'
        + (f', label smoothing {hp.label_smoothing:g}' if hp.label_smoothing else '') + '; '
        + (f'NAS-Bench-201 skeleton, N={cfg["cells_per_stage"]}' if _nas_bench_201(cfg)
           else f'{cfg["layers"]} cells') + f', C={cfg["init_channels"]}']
    return lines + [f'parameters: {without_aux:,} ' + (
        f'({with_aux:,} with the auxiliary head)' if cfg['auxiliary'] else '(no auxiliary head)')
        + f'; {madds:,} multiply-adds per image']

  return run_loop.EpochLoop(
      what='the training step',
      step=train_lib.jit_train_step(hp, s.model, ex.mesh, preprocess, loss, shardings),
      batches=batches, running=lambda m: (m.loss / m.steps, m.correct / m.examples),
      end_epoch=end_epoch, report=_epoch_report, scalars=SCALARS, after_epoch=keep_best,
      intro=intro)


def run_train(cfg: Mapping, workdir: str, *,
              log: Callable[[str], None] = print) -> TrainResult:
  """Runs (or resumes) the training described by ``cfg`` (see ``experiments/configs/train.py``)
  in ``workdir``. An interruption or error checkpoints the steps done so far before it
  propagates; calling again resumes. The best test top-1 epoch is kept in ``workdir/best``.
  """
  s = _setup(cfg, workdir=workdir)
  log = s.ex.speaker(log)
  resumed = run_config.check_workdir(workdir, s.cfg, MAY_DIFFER, s.ex.main)
  if s.ex.main:
    ckpt_lib.write_atomic(os.path.join(workdir, 'genotype.txt'), s.genotype.to_string() + '\n')
    if s.train_set.classes:  # a folder dataset: which folder each label is
      folder_lib.write_classes(s.train_set.classes, workdir)
  state, shardings = _initial_state(s)
  best_checkpoint = ckpt_lib.Checkpoints(os.path.join(workdir, 'best'), 1)
  try:
    state, records = run_loop.run_epochs(
        _epoch_loop(s, state, shardings, best_checkpoint), state, cfg=s.cfg, workdir=workdir,
        epochs=s.hp.epochs, steps_per_epoch=s.hp.steps_per_epoch, resumed=resumed,
        main=s.ex.main, log=log)
  finally:
    best_checkpoint.close()

  total = s.hp.epochs * s.hp.steps_per_epoch
  best = _best_top1(records)
  if best is not None:
    log(f'training done: {total} steps; best test top-1 {best:.4f} (checkpoint in '
        f'{workdir}/best)')
  tested = [r for r in records if 'test_top1' in r]
  test = None
  if tested and tested[-1]['step'] == total:
    test = {'loss': tested[-1]['test_loss'], 'top1': tested[-1]['test_top1'],
            'top5': tested[-1]['test_top5'], 'examples': _num_examples(s.test_set)}
  return TrainResult(parallel.to_host(state), s.genotype, test, best)


def _best_top1(records) -> float | None:
  return max((r['test_top1'] for r in records if 'test_top1' in r), default=None)


def _epoch_report(r: Mapping) -> str:
  text = (f'epoch {r["epoch"]}: lr {r["lr"]:.5f}  drop path {r["drop_path_prob"]:.3f}  train '
          f'loss {r["train_loss"]:.4f} acc {r["train_acc"]:.4f}')
  if 'test_top1' in r:
    text += (f'  test loss {r["test_loss"]:.4f} top-1 {r["test_top1"]:.4f} top-5 '
             f'{r["test_top5"]:.4f}')
  return text + f'  {r["seconds"]:.1f} s'


def evaluate_checkpoint(cfg: Mapping, workdir: str | None = None, which: str = 'best',
                        weights_file: str | None = None, *,
                        log: Callable[[str], None] = print) -> dict[str, float]:
  """Test-set loss, top-1 and top-5 of a trained network: a run's ``best`` or ``last``
  checkpoint in ``workdir``, or ``weights_file``, an ``.npz`` of the original's released
  weights (``experiments.convert_torch_checkpoint``) for the network ``cfg`` describes."""
  if (workdir is None) == (weights_file is None):
    raise ValueError('give either a training workdir or --weights=FILE.npz')
  if which not in ('best', 'last'):
    raise ValueError(f"checkpoint={which!r}: allowed: best, last")
  if weights_file is not None and not os.path.isfile(weights_file):
    raise ValueError(f'weights={weights_file!r}: no such file')
  s = _setup(cfg, need_train=False)
  log = s.ex.speaker(log)
  shape = _image_shape(s.test_set)
  state = train_lib.init_train_state(s.hp, s.model, jax.random.PRNGKey(0), tuple(shape[:2]),
                                     shape[-1], s.dtype)
  if weights_file is not None:
    from darts_jax import interop
    variables = interop.from_original(
        interop.load_npz_weights(weights_file),
        {'params': state.weights, 'batch_stats': state.batch_stats})
    weights, stats = variables['params'], variables['batch_stats']
    source = weights_file
  else:
    directory = os.path.join(workdir, 'best' if which == 'best' else 'checkpoints')
    if not os.path.isdir(directory):
      raise ValueError(f'no {which} checkpoint in {workdir} ({directory} does not exist)')
    checkpoints = ckpt_lib.Checkpoints(directory)
    try:
      if checkpoints.latest_step() is None:
        raise ValueError(f'no {which} checkpoint in {directory}')
      restored, meta = checkpoints.restore(state)
    finally:
      checkpoints.close()
    weights, stats = restored.weights, restored.batch_stats
    epoch = f', epoch {meta["epoch"]}' if meta and 'epoch' in meta else ''
    source = f'{directory} (step {int(restored.step)}{epoch})'
  weights, stats = parallel.replicate((weights, stats), s.ex.mesh)
  result = evaluate(_eval_fn(s), weights, stats, s.test_set,
                    parallel.BatchFeed(s.ex.mesh, s.cfg['batch_size']))
  log(f'{source}: test loss {result["loss"]:.4f}  top-1 {result["top1"]:.4f}  top-5 '
      f'{result["top5"]:.4f}  ({result["examples"]} {s.cfg["dataset"]} test images)')
  return result
