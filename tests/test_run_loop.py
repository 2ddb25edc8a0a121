"""The run skeleton (``darts_jax.run_loop``) on a toy run whose state is a few scalars: it
steps, logs, checkpoints and resumes bit for bit, stops on a non-finite step keeping the last
good checkpoint, and keeps the steps done when interrupted. No network: it compiles in a
second."""

import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import optim
from darts_jax import run_loop
from run_helpers import interrupt_after, latest_checkpoint

EPOCHS, SPE = 3, 4


class Metrics(NamedTuple):
  steps: jax.Array
  loss: jax.Array


class ToyState(NamedTuple):
  step: jax.Array
  w: jax.Array
  metrics: Metrics
  nonfinite_step: jax.Array


def _init(w0=1.0) -> ToyState:
  return ToyState(jnp.zeros((), jnp.int32), jnp.asarray(w0, jnp.float32),
                  Metrics(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32)),
                  jnp.asarray(-1, jnp.int32))


@jax.jit
def _step(state: ToyState, x):
  """Gradient descent on (w - x)^2 with the shared epoch sums and non-finite guard."""
  loss, g = jax.value_and_grad(lambda w: (w - x) ** 2)(state.w)
  previous = optim.epoch_sums(state.metrics, state.step, SPE)
  new = ToyState(state.step + 1, state.w - 0.1 * g,
                 Metrics(previous.steps + 1, previous.loss + loss), state.nonfinite_step)
  return optim.keep_if_finite(new, state, loss, g), loss


def _loop(data):
  def end_epoch(state, epoch, seconds):
    m = jax.device_get(state.metrics)
    return {'kind': 'epoch', 'epoch': epoch + 1, 'step': int(state.step),
            'loss': float(m.loss / m.steps), 'w': float(state.w)}

  def after_epoch(state, record, records):  # sees the earlier records, not this one
    record['seen'] = len(records)

  return run_loop.EpochLoop(
      what='the toy step', step=_step,
      batches=lambda epoch: (lambda i: (jnp.asarray(data[epoch * SPE + i], jnp.float32),)),
      running=lambda m: (m.loss / m.steps, 1.0), end_epoch=end_epoch,
      report=lambda r: f'epoch {r["epoch"]} loss {r["loss"]:.4f}', scalars=('loss',),
      after_epoch=after_epoch, intro=lambda step: [f'intro at step {step}'])


CFG = dict(log_every=1, checkpoint_every=3, keep_checkpoints=2, tensorboard=False,
           progress=False)


def _run(workdir, data, state=None, log=None, resumed=False):
  return run_loop.run_epochs(_loop(data), _init() if state is None else state, cfg=CFG,
                             workdir=str(workdir), epochs=EPOCHS, steps_per_epoch=SPE,
                             resumed=resumed, main=True,
                             log=(lambda s: None) if log is None else log)


def test_runs_every_step_and_writes_a_record_per_epoch(tmp_path):
  data = np.linspace(0.0, 1.0, EPOCHS * SPE)
  logs = []
  state, records = _run(tmp_path, data, log=logs.append)
  w = 1.0
  for x in data:  # the same descent in plain Python
    w -= 0.1 * 2 * (w - x)
  assert int(state.step) == EPOCHS * SPE
  assert float(state.w) == pytest.approx(w, rel=1e-6)
  assert [r['epoch'] for r in records] == [1, 2, 3]
  assert [r['seen'] for r in records] == [0, 1, 2]  # after_epoch sees the earlier records
  lines = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert sum(r['kind'] == 'train' for r in lines) == EPOCHS * SPE  # log_every=1
  assert [r['epoch'] for r in lines if r['kind'] == 'epoch'] == [1, 2, 3]
  assert latest_checkpoint(str(tmp_path / 'checkpoints')) == EPOCHS * SPE
  assert logs[0] == 'intro at step 0' and logs[1].startswith('compiling the toy step ... (')
  assert 'epoch 3 loss' in logs[-1]


def test_interrupted_run_resumes_bit_for_bit(tmp_path, monkeypatch):
  data = np.random.default_rng(0).normal(size=EPOCHS * SPE)
  full, records = _run(tmp_path / 'full', data)
  interrupt_after(6, lambda: _run(tmp_path / 'resumed', data), monkeypatch)
  assert latest_checkpoint(str(tmp_path / 'resumed' / 'checkpoints')) == 6  # kept on the way out
  logs = []
  resumed, resumed_records = _run(tmp_path / 'resumed', data, log=logs.append, resumed=True)
  assert any('resuming' in l and 'from step 6 (epoch 2, step 3 of 4)' in l for l in logs)
  for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert [r['w'] for r in resumed_records] == [r['w'] for r in records]


def test_nonfinite_step_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  data = np.zeros(EPOCHS * SPE)
  data[7] = np.inf  # epoch 2, its 4th step
  with pytest.raises(run_loop.NonFiniteError,
                     match=r'non-finite loss or gradient at step 7 \(epoch 2\); stopped. Last '
                           r'good checkpoint: step 6 in'):
    _run(tmp_path, data)
  assert latest_checkpoint(str(tmp_path / 'checkpoints')) == 6


def test_xla_slow_compile_banner_is_dropped_and_other_lines_kept(capfd):
  import os
  from darts_jax.run_loop import without_slow_compile_alarm
  banner = (b'2026-11-30 07:00:00.000000: E external/xla/xla/service/slow_operation_alarm.cc:73] '
            b'\n********************************\n[Compiling module jit_step] Very slow compile? '
            b'If you want to file a bug, run with envvar XLA_FLAGS=--xla_dump_to=/tmp/foo and '
            b'attach the results.\n********************************\n')
  with without_slow_compile_alarm():
    os.write(2, b'before\n' + banner + b'\nafter\n')
  assert capfd.readouterr().err == 'before\nafter\n'


@jax.jit
def _warm_step(state: ToyState, x):
  """A different step for the warm-up epochs: w moves the other way (told apart in the result)."""
  loss = (state.w - x) ** 2
  previous = optim.epoch_sums(state.metrics, state.step, SPE)
  new = ToyState(state.step + 1, state.w + 0.05,
                 Metrics(previous.steps + 1, previous.loss + loss), state.nonfinite_step)
  return new, loss


def test_warmup_epochs_run_their_own_step_and_resume_across_the_switch(tmp_path, monkeypatch):
  data = np.random.default_rng(1).normal(size=EPOCHS * SPE)
  loop = _loop(data)._replace(warmup_epochs=1, warmup_step=_warm_step,
                              warmup_what='the toy warm-up')

  def run(workdir, log=lambda s: None, resumed=False):
    return run_loop.run_epochs(loop, _init(), cfg=CFG, workdir=str(workdir), epochs=EPOCHS,
                               steps_per_epoch=SPE, resumed=resumed, main=True, log=log)

  logs = []
  state, _ = run(tmp_path / 'full', logs.append)
  w = 1.0 + 0.05 * SPE  # epoch 1: the warm-up step; then gradient descent
  for x in data[SPE:]:
    w -= 0.1 * 2 * (w - x)
  assert float(state.w) == pytest.approx(w, rel=1e-6)
  compiling = [l for l in logs if l.startswith('compiling')]
  assert [l.split(' ...')[0] for l in compiling] == ['compiling the toy warm-up',
                                                      'compiling the toy step']
  # interrupted in the warm-up (step 3), resumed: the same numbers bit for bit
  interrupt_after(3, lambda: run(tmp_path / 'resumed'), monkeypatch)
  resumed, _ = run(tmp_path / 'resumed', resumed=True)
  assert np.asarray(resumed.w) == np.asarray(state.w)
