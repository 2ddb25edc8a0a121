"""The one skeleton of every resumable run (the CNN search and training, and the runs to come).

A run supplies an :class:`EpochLoop`: its jitted step, the batches of each step, and what it does
at an epoch's end. :func:`run_epochs` owns the rest, the same way for every run:

- restore the latest checkpoint of ``workdir/checkpoints``, drop the metric records written
  after it, and hand the run the epoch records so far;
- compile the step ahead (its cost is shown), then loop with a progress bar, a running record
  every ``log_every`` steps and a checkpoint every ``checkpoint_every`` steps and at each
  epoch's end;
- stop on the first non-finite loss or gradient (the step records it in ``nonfinite_step``),
  keeping the last good checkpoint;
- on an interruption or error, checkpoint the steps done so far, then re-raise.

Every step is a function of the state and the step count (data order from (seed, epoch),
randomness from (seed, step)), so a resumed run continues bit for bit.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import numpy as np

from darts_jax import checkpoint as ckpt_lib
from darts_jax import compile_cache
from darts_jax import parallel
from darts_jax.metrics_log import MetricWriter

Record = dict[str, Any]


class NonFiniteError(RuntimeError):
  """The loss or a gradient stopped being finite; the last good checkpoint is kept."""


class EpochLoop(NamedTuple):
  """What a run supplies to :func:`run_epochs`.

  The state is a NamedTuple with ``step`` (steps done), ``metrics`` (the epoch's running sums,
  reset by the step itself) and ``nonfinite_step`` (-1, or the first non-finite step).
  """
  what: str  # the step's name while it compiles, e.g. 'the search step (exact)'
  step: Callable  # jitted: (state, *batches) -> (state, aux)
  batches: Callable[[int], Callable[[int], tuple]]  # epoch -> (step in the epoch -> batches)
  # host metrics -> (mean loss, second figure) so far; the bar names the second one `second`
  running: Callable[[Any], tuple[float, float]]
  # (state, epoch, seconds) -> this epoch's record ('kind': 'epoch'); writes the run's own files
  end_epoch: Callable[[Any, int, float], Record]
  report: Callable[[Record], str]  # an epoch record as the log shows it
  scalars: tuple[str, ...]  # record keys that go to TensorBoard
  # (state, record, earlier records) after the record is written, before the epoch's
  # checkpoint: pictures, a best checkpoint
  after_epoch: Callable[[Any, Record, list[Record]], None] = lambda state, record, records: None
  intro: Callable[[int], list[str]] = lambda step: []  # log lines once restored, at `step`
  second: str = 'acc'  # what running's second figure is (accuracy; perplexity for a language model)
  # (state, record, records so far) -> the state the next epoch starts from, after after_epoch and
  # before the epoch's checkpoint (a decision taken on the epoch's record, e.g. NT-ASGD's switch)
  advance: Callable[[Any, Record, list[Record]], Any] = lambda state, record, records: state
  # the step of the first `warmup_epochs` epochs instead of `step` (jitted, the same
  # signature; PC-DARTS's weight-only warm-up), and its name while it compiles
  warmup_epochs: int = 0
  warmup_step: Callable | None = None
  warmup_what: str = 'the warm-up step'
  # (record, records so far) -> the record with what the run decides on its history (an early
  # stop), before the record is written
  decide: Callable[[Record, list[Record]], Record] = lambda record, records: record
  # records so far -> whether the run is over before its last epoch (an early stop); asked
  # after each epoch's checkpoint and when a run resumes
  finished: Callable[[list[Record]], bool] = lambda records: False
  # (record, records so far) -> a Rewind, or None: the run returns to an earlier epoch's end
  # (DARTS-ADA); asked after the epoch's checkpoint
  rewind: Callable[[Record, list[Record]], 'Rewind | None'] = lambda record, records: None
  # the epoch-end checkpoints a rewind may return to are kept: every one (with rewind set)
  keep_epoch_checkpoints: bool = False


class Rewind(NamedTuple):
  """Return to the end of epoch ``epoch`` (1-based, as records count), change the state
  restored from its checkpoint by ``change`` (a raised weight decay), and go on from there.
  The later checkpoints and epoch records are dropped; ``note`` is written as a ``'rewind'``
  record (it keeps what the run learnt on the abandoned epochs)."""
  epoch: int
  change: Callable[[Any], Any]
  note: Record


def progress(total: int, initial: int, desc: str, enabled: bool):
  """A tqdm bar on stderr (rate and ETA), or a silent one."""
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True,
              leave=True, file=sys.stderr)


class Epochs(NamedTuple):
  """Where each epoch starts: ``starts[e]`` steps come before epoch e (0-based), and
  ``starts[-1]`` is the run's length. Epochs may differ in length (a language model's epoch
  is as long as its drawn sequence lengths make it)."""
  starts: np.ndarray

  @classmethod
  def of(cls, steps_per_epoch: 'int | Sequence[int]', epochs: int) -> 'Epochs':
    lengths = ([steps_per_epoch] * epochs if isinstance(steps_per_epoch, (int, np.integer))
               else list(steps_per_epoch)[:epochs])
    return cls(np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]))

  @property
  def total(self) -> int:
    return int(self.starts[-1])

  def epoch_of(self, step: int) -> int:
    """The 0-based epoch that step ``step`` (0-based) belongs to."""
    return int(np.searchsorted(self.starts, step, side='right')) - 1

  def length(self, epoch: int) -> int:
    return int(self.starts[epoch + 1] - self.starts[epoch])

  def where(self, step: int) -> str:
    """'epoch E, step S of N' (1-based) for the step after ``step`` steps."""
    e = min(self.epoch_of(step), len(self.starts) - 2)
    return f'epoch {e + 1}, step {step - int(self.starts[e]) + 1} of {self.length(e)}'


def nonfinite_error(bad_step: int, epochs: Epochs, last_checkpoint: int | None,
                    workdir: str) -> NonFiniteError:
  return NonFiniteError(
      f'non-finite loss or gradient at step {bad_step} (epoch {epochs.epoch_of(bad_step) + 1}); '
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


def restore_latest(checkpoints, state, workdir: str, resumed: bool, epochs: Epochs,
                   log: Callable[[str], None]):
  """The latest checkpoint of the run in ``workdir`` if there is one, else ``state``."""
  if checkpoints.latest_step() is not None:
    state, _ = checkpoints.restore(state)
    step = int(state.step)
    log(f'resuming {workdir} from step {step} ({epochs.where(step)})')
  elif resumed:
    log(f'{workdir} has this run\'s config but no checkpoint: starting from step 0')
  return state


def _is_alarm(line: bytes) -> bool:
  text = line.strip()
  return (b'slow_operation_alarm' in text or b'Very slow compile?' in text
          or (len(text) > 8 and not text.strip(b'*')))


def _forward_without_alarm(read_fd: int, write_fd: int) -> None:
  dropped = False
  with os.fdopen(read_fd, 'rb', buffering=0) as pipe:
    for line in iter(pipe.readline, b''):
      if _is_alarm(line) or (dropped and not line.strip()):
        dropped = True
        continue
      dropped = False
      os.write(write_fd, line)


@contextlib.contextmanager
def without_slow_compile_alarm():
  """Drops XLA's "Very slow compile? If you want to file a bug ..." banner from stderr.

  XLA logs it (as an error, with no switch to turn it off) whenever a compile passes a time
  limit; on a 2-core CPU a search step passes it, and the banner reads like a crash while the
  run has already said that it is compiling. XLA writes to file descriptor 2 whatever Python's
  ``sys.stderr`` is; every other line written there passes through.
  """
  target = 2
  try:
    sys.stderr.flush()
    saved = os.dup(target)
  except OSError:  # no descriptor 2
    yield
    return
  read_fd, write_fd = os.pipe()
  os.dup2(write_fd, target)
  os.close(write_fd)
  forwarder = threading.Thread(target=_forward_without_alarm, args=(read_fd, saved), daemon=True)
  forwarder.start()
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, target)  # closes the pipe's last write end: the forwarder reads to its end
    forwarder.join()
    os.close(saved)


def compile_ahead(step_fn, args: tuple, what: str, log: Callable[[str], None]):
  """``step_fn`` compiled for ``args`` before the first step, so that its cost is visible.
  A program compiled before comes from the persistent cache (:mod:`darts_jax.compile_cache`)."""
  cache = jax.config.jax_compilation_cache_dir
  log(f'compiling {what} ... ' + (f'(later runs load it from the cache {cache})' if cache
                                   else '(the compilation cache is off)'))
  t0 = time.perf_counter()
  with without_slow_compile_alarm():
    compiled = step_fn.lower(*args).compile()
  compile_cache.release_compiler_memory()
  log(f'compiled in {time.perf_counter() - t0:.1f} s')
  return compiled


def _rewind(rewind: Rewind, state, records: list[Record], checkpoints, writer, bounds: Epochs,
            log: Callable[[str], None]):
  """Carries out ``rewind``: the state of epoch ``rewind.epoch``'s checkpoint, changed, saved
  in place of that checkpoint, every later checkpoint and record dropped. A crash half-way
  resumes from an earlier checkpoint and, every step being a function of the state, reaches
  the same rewind again."""
  to_step = int(bounds.starts[rewind.epoch])
  state, _ = checkpoints.restore(state, step=to_step)
  state = rewind.change(state)
  for step in checkpoints.steps():
    if step >= to_step:
      checkpoints.delete(step)
  checkpoints.save(to_step, state, {'epoch': rewind.epoch})
  writer.truncate_after(to_step)
  writer.write({'kind': 'rewind', 'step': to_step, 'epoch': rewind.epoch, **rewind.note})
  log(f'rewound to the end of epoch {rewind.epoch} (step {to_step})')
  return state, [r for r in records if r['step'] <= to_step]


def run_epochs(loop: EpochLoop, state, *, cfg: Mapping, workdir: str, epochs: int,
               steps_per_epoch: 'int | Sequence[int]', resumed: bool, main: bool,
               log: Callable[[str], None]) -> tuple[Any, list[Record]]:
  """Runs ``loop`` from ``state`` (or the latest checkpoint in ``workdir``) to ``epochs`` epochs
  of ``steps_per_epoch`` steps (one number, or one per epoch). Reads ``cfg``'s ``log_every``,
  ``checkpoint_every``, ``keep_checkpoints``, ``tensorboard`` and ``progress``; only the
  ``main`` process writes metrics. Returns the final state and every epoch's record (those of
  earlier runs included).
  """
  bounds = Epochs.of(steps_per_epoch, epochs)
  total = bounds.total
  checkpoints = ckpt_lib.Checkpoints(
      os.path.join(workdir, 'checkpoints'), cfg['keep_checkpoints'],
      keep=(lambda s: s in bounds.starts) if loop.keep_epoch_checkpoints else None)
  writer = MetricWriter(workdir, cfg['tensorboard'], enabled=main)

  def guard():
    bad = int(state.nonfinite_step)
    if bad >= 0:
      raise nonfinite_error(bad, bounds, checkpoints.latest_step(), workdir)

  def save():
    guard()
    step = int(state.step)
    checkpoints.save(step, state, {'epoch': bounds.epoch_of(step)})  # epochs completed

  try:
    state = restore_latest(checkpoints, state, workdir, resumed, bounds, log)
    step = int(state.step)
    writer.truncate_after(step)
    parallel.barrier('metrics')  # every process reads the records as process 0 left them
    records = [r for r in writer.records() if r.get('kind') == 'epoch']
    for line in loop.intro(step):
      log(line)
    compiled = {}  # warm-up or not -> the compiled step, each compiled where first needed

    def step_for(epoch, args):
      warm = epoch < loop.warmup_epochs and loop.warmup_step is not None
      if warm not in compiled:
        compiled[warm] = compile_ahead(loop.warmup_step if warm else loop.step, args,
                                       loop.warmup_what if warm else loop.what, log)
      return compiled[warm]

    if loop.finished(records):
      log(f'{workdir} is complete: the run stopped early at step {step}')
      step = total
    if step < total:  # the first program before the loop: a failed compile saves nothing
      epoch = bounds.epoch_of(step)
      step_for(epoch, (state, *loop.batches(epoch)(step - int(bounds.starts[epoch]))))
    try:
      while step < total:
        epoch = bounds.epoch_of(step)
        start, end = int(bounds.starts[epoch]), int(bounds.starts[epoch + 1])
        batches = loop.batches(epoch)
        step_fn = step_for(epoch, (state, *batches(step - start)))
        bar = progress(end - start, step - start, f'epoch {epoch + 1}/{epochs}', cfg['progress'])
        t0 = time.perf_counter()
        while step < end:
          state, _ = step_fn(state, *batches(step - start))
          step += 1
          bar.update(1)
          if cfg['log_every'] and step % cfg['log_every'] == 0:
            guard()
            loss, second = loop.running(jax.device_get(state.metrics))
            bar.set_postfix({'loss': f'{loss:.3f}', loop.second: f'{second:.3f}'})
            writer.write({'kind': 'train', 'step': step, 'train_loss': loss},
                         {'train/loss_running': loss})
          if cfg['checkpoint_every'] and step % cfg['checkpoint_every'] == 0 and step < end:
            save()
        bar.close()
        guard()
        record = loop.decide(loop.end_epoch(state, epoch, time.perf_counter() - t0), records)
        writer.write(record, {k: record[k] for k in loop.scalars if k in record})
        log(loop.report(record))
        loop.after_epoch(state, record, records)
        state = loop.advance(state, record, records)
        records.append(record)
        save()
        rewind = loop.rewind(record, records)
        if rewind is not None:
          state, records = _rewind(rewind, state, records, checkpoints, writer, bounds, log)
          step = int(state.step)
        elif loop.finished(records):
          log(f'stopped early after epoch {epoch + 1} of {epochs}')
          break
    except (KeyboardInterrupt, Exception) as e:
      on_stop(e, state, checkpoints, save, log)
      raise
  finally:
    writer.close()
    checkpoints.close()
  return state, records
