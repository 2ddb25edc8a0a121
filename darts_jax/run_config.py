"""From a run's config to what it runs with, the same for every run (search, training,
evaluation): checked integers, the float dtype, the hyperparameter dataclass, the execution
(device mesh, processes, BatchNorm semantics, bf16) and the workdir guard.

A config is a flat dict (``experiments/configs``); keys that only say how processes meet or
what is shown may change when a run is resumed, the others must not.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from darts_jax import checkpoint as ckpt_lib
from darts_jax import parallel
from darts_jax.losses import COMPUTE_DTYPES


def check_int(cfg, name: str, minimum: int, meaning_of_zero: str = '') -> None:
  value = cfg[name]
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    zero = f' (0: {meaning_of_zero})' if meaning_of_zero else ''
    raise ValueError(f'{name}={value!r}: must be an integer >= {minimum}{zero}')


DTYPES = ('float32', 'float64')


def run_dtype(cfg: Mapping) -> jnp.dtype:
  """The run's float dtype (``cfg['dtype']``), with 64-bit JAX switched on for float64."""
  if cfg['dtype'] not in DTYPES:
    raise ValueError(f"dtype={cfg['dtype']!r} is not supported; allowed: {', '.join(DTYPES)}")
  dtype = jnp.dtype(cfg['dtype'])
  if dtype == jnp.float64 and not jax.config.jax_enable_x64:
    jax.config.update('jax_enable_x64', True)
  return dtype


def hparams_from_config(cls, cfg: Mapping, steps_per_epoch: int):
  """The hyperparameter dataclass ``cls`` from the config keys that name its fields, its
  ``LEARNING_RATES`` scaled by ``cfg['lr_scaling']`` for ``cfg['batch_size']``."""
  fields = {f.name for f in dataclasses.fields(cls)}
  values = {k: cfg[k] for k in fields if k in cfg and k != 'steps_per_epoch'}
  values.update(parallel.scaled_learning_rates(
      {k: values[k] for k in cls.LEARNING_RATES}, cfg['batch_size'], cfg['lr_base_batch'],
      cfg['lr_scaling']))
  return cls(steps_per_epoch=steps_per_epoch, **values)


# how the processes of a run find each other: a resumed run may change them (they do not change
# what is computed)
PROCESS_KEYS = ('distributed', 'coordinator_address', 'num_processes', 'process_id',
                'distributed_timeout')
# what a run started before the scale-out keys existed did: it resumes under these values
BEFORE_SCALE_OUT = {'batch_norm': 'global', 'shard_weights': False, 'compute_dtype': '',
                    'lr_scaling': 'none'}
# what a search started before the DARTS family's keys existed did (plain DARTS, no warm-up)
BEFORE_METHODS = {'method': 'darts', 'partial_channels': 4, 'warmup_epochs': 0,
                  'gdas_tau_max': 10.0, 'gdas_tau_min': 0.1, 'drnas_kl_scale': 1e-3,
                  'sdarts_epsilon': 0.3, 'sdarts_pgd_steps': 7, 'darts_minus_beta': 1.0}
# what a search started before the health report's keys existed did (no Hessian, no early stop)
BEFORE_HEALTH = {'hessian_every': 0, 'hessian_batch': 64, 'hessian_lanczos_steps': 0,
                 'early_stop': 'none', 'es_window': 5, 'es_delta': 4, 'es_factor': 1.3,
                 'es_start_epoch': 10}
# what a run started before NAS-Bench-201's space existed did: the DARTS space, training
# without Nesterov momentum
BEFORE_SPACES = {'search_space': 'darts_cnn', 'cells_per_stage': 5, 'nesterov': False}
# what a run started before the datasets beyond CIFAR existed did: it read an archive into
# memory and augmented it with crop and flip, and trained with a cosine schedule, no smoothing
# (runs store data_source and augmentation resolved, never '')
BEFORE_DATASETS = {'data_source': 'archive', 'augmentation': 'crop_flip', 'image_size': 0,
                   'resize_size': 256,
                   'loader_workers': 0, 'loader_threads': 8, 'lr_schedule': 'cosine',
                   'lr_gamma': 0.97, 'label_smoothing': 0.0}
# every config key the scale-out added (experiments/configs/scale_out.py, num_devices aside)
SCALE_OUT_KEYS = tuple(BEFORE_SCALE_OUT) + ('lr_base_batch',) + PROCESS_KEYS
# config keys an earlier version called otherwise (old -> new): its runs still resume
RENAMED_KEYS = {'steps': 'nodes'}  # a cell's intermediate nodes
# what may differ from a training run's own config when its checkpoint is evaluated: where the
# data is, how much of it, on which devices and in which precision (and how processes meet)
EVALUATION_KEYS = ('data_dir', 'download', 'max_test_examples', 'num_devices',
                   'compute_dtype', 'loader_workers', 'loader_threads') + PROCESS_KEYS


class Execution(NamedTuple):
  """Where and how a run computes (``darts_jax.parallel``)."""
  mesh: jax.sharding.Mesh
  batch_norm: str  # 'global' or 'per_device'
  shard_weights: bool
  compute_dtype: str | None  # None: the run's dtype; 'bfloat16': mixed precision
  main: bool  # this process writes logs and files

  def speaker(self, log: Callable[[str], None]) -> Callable[[str], None]:
    """``log`` on process 0, which speaks for the run; silence on the others."""
    return log if self.main else (lambda text: None)

  def describe(self, batch_size: int) -> str:
    text = f'batch {batch_size} on {self.mesh.size} device(s)'
    if jax.process_count() > 1:
      text += f' in {jax.process_count()} processes'
    if self.mesh.size > 1:
      text += f' ({batch_size // self.mesh.size} per device, {self.batch_norm} BN'
      text += ', weights sharded)' if self.shard_weights else ')'
    if self.compute_dtype:
      text += f', {self.compute_dtype} compute'
    return text


def check_execution_config(cfg: Mapping) -> None:
  """The execution keys' values, checked before any data is read or process started."""
  check_int(cfg, 'num_devices', 0, 'all')
  parallel.check_batch_norm_mode(cfg['batch_norm'])
  if not isinstance(cfg['shard_weights'], bool):
    raise ValueError(f"shard_weights={cfg['shard_weights']!r}: must be true or false")
  if cfg['compute_dtype'] not in ('',) + COMPUTE_DTYPES:
    raise ValueError(f"compute_dtype={cfg['compute_dtype']!r}: allowed: '' (the dtype), "
                     f'{", ".join(COMPUTE_DTYPES)}')
  parallel.DistributedConfig.from_config(cfg)
  parallel.scaled_learning_rates({}, cfg['batch_size'], cfg['lr_base_batch'], cfg['lr_scaling'])


def execution(cfg: Mapping) -> Execution:
  """Joins the processes of a multi-process run (``distributed``), then builds the device
  mesh for ``cfg['batch_size']``."""
  parallel.initialize(parallel.DistributedConfig.from_config(cfg))
  mesh = parallel.make_mesh(cfg['num_devices'] or None)  # 0: every device
  parallel.check_batch_divisible(cfg['batch_size'], mesh)
  return Execution(mesh, cfg['batch_norm'], cfg['shard_weights'], cfg['compute_dtype'] or None,
                   parallel.is_main_process())


def check_workdir(workdir: str, cfg: Mapping, may_differ: tuple[str, ...], main: bool) -> bool:
  """``checkpoint.check_run_config`` for every process: process 0 checks and writes the run's
  ``config.json`` first, then the others check against it. With global BatchNorm the number of
  devices does not change what is computed, so a run may resume on another number of them."""
  may_differ = tuple(may_differ)
  if cfg['batch_norm'] == 'global':
    may_differ += ('num_devices',)
  if cfg['lr_scaling'] == 'none':
    may_differ += ('lr_base_batch',)  # unused then
  # what an older run's config lacks means these values, for the keys this kind of run has
  absent_means = {k: v for k, v in {**BEFORE_SCALE_OUT, **BEFORE_METHODS, **BEFORE_HEALTH,
                                     **BEFORE_SPACES, **BEFORE_DATASETS}.items() if k in cfg}
  check = lambda write: ckpt_lib.check_run_config(  # noqa: E731
      workdir, cfg, may_differ, write, absent_means=absent_means, renamed=RENAMED_KEYS)
  resumed = check(True) if main else False
  parallel.barrier('config')
  return resumed if main else check(False)


def check_workdir_usable(workdir: str) -> None:
  """A one-line error, before any data is read or fetched, when ``workdir`` cannot be created
  or written (its nearest existing ancestor is a file, or not writable). Creates nothing."""
  path = os.path.abspath(workdir)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  if not os.path.isdir(path):
    raise ValueError(f'workdir={workdir!r} cannot be created: {path} is not a directory')
  if not os.access(path, os.W_OK):
    raise ValueError(f'workdir={workdir!r} cannot be written: {path} is not writable')


def evaluation_config(stored: Mapping, given: Mapping, defaults: Mapping, workdir: str) -> dict:
  """The config to evaluate the training run in ``workdir`` with: the run's own (``stored``,
  its ``config.json``), except the :data:`EVALUATION_KEYS` where the command line (``given``)
  differs from its preset (``defaults``). A run from before the scale-out keys takes the
  preset's values of them; its genotype is the run's ``genotype.txt``, as trained, even if the
  genotype's source has moved since."""
  missing = sorted(set(given) - set(stored) - set(SCALE_OUT_KEYS) - set(BEFORE_DATASETS))
  if missing:
    raise ValueError(f'--workdir={workdir} is not a training run (its config.json has no '
                     f'{", ".join(missing[:3])})')
  config = dict(stored)
  config.update({k: defaults[k] for k in SCALE_OUT_KEYS if k not in stored})
  config.update({k: v for k, v in BEFORE_DATASETS.items() if k not in stored})
  config.update({k: given[k] for k in EVALUATION_KEYS if given[k] != defaults[k]})
  genotype = os.path.join(workdir, 'genotype.txt')
  if os.path.isfile(genotype):
    config['genotype'] = genotype
  return config
