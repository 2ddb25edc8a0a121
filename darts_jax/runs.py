"""What every resumable run (search, training) does the same way: subsets, atomic writes, the
progress bar, the non-finite guard's error, and keeping the last steps on the way out."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from darts_jax import checkpoint as ckpt_lib
from darts_jax import parallel
from darts_jax.data import Dataset
from darts_jax.supernet import COMPUTE_DTYPES


class NonFiniteError(RuntimeError):
  """The loss or a gradient stopped being finite; the last good checkpoint is kept."""


def subset(dataset: Dataset, n: int) -> Dataset:
  """The first ``n`` examples (0: all)."""
  return dataset._replace(images=dataset.images[:n], labels=dataset.labels[:n]) if n else dataset


def write_atomic(path: str, text: str) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def progress(total: int, initial: int, desc: str, enabled: bool):
  """A tqdm bar on stderr (rate and ETA), or a silent one."""
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True,
              leave=True, file=sys.stderr)


def nonfinite_error(bad_step: int, steps_per_epoch: int, last_checkpoint: int | None,
                    workdir: str) -> NonFiniteError:
  return NonFiniteError(
      f'non-finite loss or gradient at step {bad_step} (epoch {bad_step // steps_per_epoch + 1}); '
      f'stopped. Last good checkpoint: '
      f'{"none" if last_checkpoint is None else f"step {last_checkpoint}"} in '
      f'{workdir}/checkpoints')


def on_stop(error: BaseException, state, checkpoints, save: Callable[[], None],
            log: Callable[[str], None]) -> None:
  """Keeps the steps done since the last checkpoint when a run stops on an interruption or an
  error (the caller re-raises). An interruption inside a step may leave the state's buffers
  donated to a step that never finished; then the previous checkpoint is all there is. A
  non-finite stop keeps the last good checkpoint as it is."""
  if not isinstance(error, NonFiniteError):
    try:
      if checkpoints.latest_step() != int(state.step):
        save()
    except (RuntimeError, ValueError, NonFiniteError) as e:
      log(f'could not checkpoint the state on the way out ({type(e).__name__}: {e})')
  if isinstance(error, KeyboardInterrupt):
    log(f'interrupted; last checkpoint: step {checkpoints.latest_step()}. Rerun the same '
        'command to resume.')


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
# every config key the scale-out added (experiments/configs/scale_out.py, num_devices aside)
SCALE_OUT_KEYS = tuple(BEFORE_SCALE_OUT) + ('lr_base_batch',) + PROCESS_KEYS


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
  check = lambda write: ckpt_lib.check_run_config(  # noqa: E731
      workdir, cfg, may_differ, write, absent_means=BEFORE_SCALE_OUT)
  resumed = check(True) if main else False
  parallel.barrier('config')
  return resumed if main else check(False)


def restore_latest(checkpoints, state, workdir: str, resumed: bool, steps_per_epoch: int,
                   log: Callable[[str], None]):
  """The latest checkpoint of the run in ``workdir`` if there is one, else ``state``."""
  if checkpoints.latest_step() is not None:
    state, _ = checkpoints.restore(state)
    step = int(state.step)
    log(f'resuming {workdir} from step {step} (epoch {step // steps_per_epoch + 1}, step '
        f'{step % steps_per_epoch + 1} of {steps_per_epoch})')
  elif resumed:
    log(f'{workdir} has this run\'s config but no checkpoint: starting from step 0')
  return state


def compile_ahead(step_fn, args: tuple, what: str, log: Callable[[str], None]):
  """``step_fn`` compiled for ``args`` before the first step, so that its cost is visible."""
  log(f'compiling {what} ...')
  t0 = time.perf_counter()
  compiled = step_fn.lower(*args).compile()
  log(f'compiled in {time.perf_counter() - t0:.1f} s')
  return compiled
