"""What every resumable run (search, training) does the same way: subsets, atomic writes, the
progress bar, the non-finite guard's error, and keeping the last steps on the way out."""

from __future__ import annotations

import os
import sys
from typing import Callable

from darts_jax.data import Dataset


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
