"""Real 2-process runs on this machine: two Python processes, one CPU device each, joined by
``jax.distributed`` (localhost coordinator, gloo collectives), each feeding only its half of
every global batch. A search and a training equal the 1-process runs with 2 devices; process 0
alone writes the logs and files; the orbax checkpoints written by both restore. Every process
is killed if it runs past its time."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from darts_jax import checkpoint as ckpt_lib
from test_data import fake_batches, write_archive

pytestmark = pytest.mark.slow  # each run compiles in two processes side by side

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 300  # seconds for each run (the two compile side by side on 2 cores)
# 2 cells of 2 nodes, C=2, three ops, 40 + 40 images of batch 8: 2 epochs x 5 steps
CONFIG = ['--config=experiments/configs/search.py:tiny', '--config.max_examples=0',
          '--config.layers=2', '--config.init_channels=2', '--config.nodes=2',
          '--config.multiplier=2', '--config.batch_size=8', '--config.estimator=first_order',
          '--config.primitives=("max_pool_3x3","skip_connect","sep_conv_3x3")',
          '--config.checkpoint_every=3', '--config.log_every=1', '--config.progress=False',
          '--config.plots=False', '--config.download=False', '--config.num_devices=0']


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start(args, devices, module='experiments.cifar_search', config=CONFIG):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices} '
                       '--xla_backend_optimization_level=0')
  # a session of its own: on a timeout the whole process group is killed
  return subprocess.Popen([sys.executable, '-m', module, *config, *args],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True)


def _wait_all(procs):
  """Waits for every process within TIMEOUT; kills them all on the first failure or timeout."""
  deadline = time.monotonic() + TIMEOUT
  outputs = [None] * len(procs)
  try:
    for i, p in enumerate(procs):
      outputs[i] = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
      if p.returncode != 0:
        raise AssertionError(f'process {i} exited with {p.returncode}:\n{outputs[i][1][-3000:]}')
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
  return outputs


def _final_state(workdir, folder='checkpoints', step=10):
  checkpoints = ckpt_lib.Checkpoints(os.path.join(workdir, folder))
  try:
    assert checkpoints.latest_step() == step
    return checkpoints.read(step)
  finally:
    checkpoints.close()


def _distributed(port, i):
  return ['--config.distributed=True', f'--config.coordinator_address=localhost:{port}',
          '--config.num_processes=2', f'--config.process_id={i}', '--config.distributed_timeout=60']


def _epoch_records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(l) for l in f if '"kind": "epoch"' in l]


def _assert_states_close(s1, s2):
  assert s1.keys() == s2.keys()
  for name in s1:
    np.testing.assert_allclose(np.asarray(s2[name]), np.asarray(s1[name]), rtol=2e-5,
                               atol=2e-6, err_msg=name)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp('cifar_mp')
  write_archive(d / 'cifar-10-python.tar.gz', fake_batches(rows=16))  # 80 training images
  return str(d)


@pytest.mark.slow
@pytest.mark.extended
def test_two_processes_equal_one_process_with_two_devices(data_dir, tmp_path):
  one = str(tmp_path / 'one')
  (_, err), = _wait_all([_start([f'--config.data_dir={data_dir}', f'--workdir={one}'], 2)])

  two = str(tmp_path / 'two')
  port = _free_port()
  procs = [_start([f'--config.data_dir={data_dir}', f'--workdir={two}', *_distributed(port, i)],
                  1) for i in range(2)]
  (out0, _), (out1, _) = _wait_all(procs)

  # process 0 reports the run; process 1 only computes
  assert 'on 2 device(s) in 2 processes' in out0 and 'epoch 2:' in out0
  assert 'epoch' not in out1
  # one record per epoch (not one per process), equal to the 1-process run's
  records = {'one': _epoch_records(one), 'two': _epoch_records(two)}
  assert [r['epoch'] for r in records['two']] == [1, 2]
  for a, b in zip(records['one'], records['two'], strict=True):
    for key in ('train_loss', 'train_acc', 'val_loss', 'val_acc', 'search_val_loss'):
      assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
  assert records['one'][-1]['genotype_str'] == records['two'][-1]['genotype_str']
  # the final states (orbax checkpoints, written by both processes) agree to float32 round-off
  _assert_states_close(_final_state(one), _final_state(two))
  with np.load(os.path.join(one, 'alphas.npz')) as a, np.load(os.path.join(two, 'alphas.npz')) as b:
    np.testing.assert_allclose(b['normal'], a['normal'], rtol=2e-5, atol=2e-6)

  # the 2-process run's checkpoint resumes in one process on one device (global BN: the device
  # count may change); the run is complete, so it restores, reports and stops
  (out, _), = _wait_all([_start([f'--config.data_dir={data_dir}', f'--workdir={two}',
                                 '--config.num_devices=1'], 1)])
  assert 'resuming' in out and 'from step 10' in out and 'search done: 10 steps' in out


# the training tiny preset on the fake archive: 3 cells with the auxiliary head, C=2, batch 16,
# 80 training images (2 epochs x 5 steps), 17 test images (a full and a padded, masked batch)
TRAIN_CONFIG = ['--config=experiments/configs/train.py:tiny', '--config.max_examples=0',
                '--config.max_test_examples=0', '--config.init_channels=2',
                '--config.download=False', '--config.progress=False', '--config.num_devices=0']


@pytest.mark.slow
@pytest.mark.extended
def test_two_process_training_equals_one_process_with_two_devices(data_dir, tmp_path):
  train = lambda args, devices: _start(args, devices, 'experiments.cifar_train', TRAIN_CONFIG)
  one = str(tmp_path / 'one')
  _wait_all([train([f'--config.data_dir={data_dir}', f'--workdir={one}'], 2)])
  two = str(tmp_path / 'two')
  port = _free_port()
  (out0, _), (out1, _) = _wait_all([
      train([f'--config.data_dir={data_dir}', f'--workdir={two}', *_distributed(port, i)], 1)
      for i in range(2)])
  assert 'in 2 processes' in out0 and 'epoch 2:' in out0 and 'epoch' not in out1
  a, b = _epoch_records(one), _epoch_records(two)
  assert [r['epoch'] for r in b] == [1, 2]
  for r1, r2 in zip(a, b, strict=True):
    # the test set split over the processes, its padding masked: the same sums
    for key in ('train_loss', 'train_acc', 'test_loss', 'test_top1', 'test_top5'):
      assert r1[key] == pytest.approx(r2[key], rel=1e-5, abs=1e-6), key
  _assert_states_close(_final_state(one), _final_state(two))
  best = max(range(2), key=lambda e: (a[e]['test_top1'], -e))  # the first best epoch
  _assert_states_close(_final_state(one, 'best', 5 * (best + 1)),
                       _final_state(two, 'best', 5 * (best + 1)))
