"""The search as a run: a tiny search on a fake CIFAR-10 archive in the real format, bitwise
resume, the NaN guard, and clear one-line errors for bad input (nothing overwritten)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from darts_jax import checkpoint as ckpt_lib
from darts_jax.data import DataError
from darts_jax.run_loop import NonFiniteError
from darts_jax.search_loop import run_search
from experiments.configs.search import get_config
from run_helpers import interrupt_after, latest_checkpoint, leaves
from test_data import fake_batches, write_archive

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp('cifar')
  write_archive(d / 'cifar-10-python.tar.gz', fake_batches(rows=16))  # 80 training images
  return str(d)


def micro_config(data_dir, **overrides):
  """The tiny preset shrunk further: 2 cells of 2 nodes, C=2, 40 + 40 images, 2 epochs x 5."""
  c = get_config('tiny').to_dict()
  c.update(data_dir=data_dir, download=False, max_examples=0, layers=2, init_channels=2,
           nodes=2, multiplier=2, batch_size=8, estimator='first_order', log_every=1,
           checkpoint_every=2, progress=False, plots=False)
  c.update(overrides)
  return c


@pytest.mark.slow
def test_tiny_search_runs_and_resumes_bitwise(data_dir, tmp_path, monkeypatch):
  config = micro_config(data_dir)
  full = run_search(config, str(tmp_path / 'full'), log=lambda s: None)
  assert int(full.state.step) == 10
  for name in ('genotype.json', 'genotype.txt', 'alphas.npz', 'metrics.jsonl', 'config.json'):
    assert os.path.exists(tmp_path / 'full' / name), name
  with np.load(tmp_path / 'full' / 'alphas.npz') as f:
    np.testing.assert_array_equal(f['normal'], full.state.alphas['normal'])
  assert (tmp_path / 'full' / 'genotype.txt').read_text().strip() == full.genotype.to_string()
  assert any(f.startswith('events') for f in os.listdir(tmp_path / 'full' / 'tensorboard'))
  records = [json.loads(l) for l in open(tmp_path / 'full' / 'metrics.jsonl')]
  epochs = [r for r in records if r['kind'] == 'epoch']
  assert [r['epoch'] for r in epochs] == [1, 2]
  # softmaxed alphas in the record are the softmax of the state's alphas
  a = np.asarray(full.state.alphas['reduce'], np.float64)
  np.testing.assert_allclose(epochs[-1]['alphas_softmax']['reduce'],
                             np.exp(a) / np.exp(a).sum(-1, keepdims=True), rtol=1e-5)

  # Ctrl-C mid-epoch after 3 steps (checkpoint_every=2): the run checkpoints step 3 on its way
  # out; resumed, it ends with the same state, bit for bit
  interrupt_after(3, lambda: run_search(config, str(tmp_path / 'resumed'), log=lambda s: None),
                  monkeypatch)
  assert latest_checkpoint(str(tmp_path / 'resumed' / 'checkpoints')) == 3
  resumed = run_search(config, str(tmp_path / 'resumed'), log=lambda s: None)
  for x, y in zip(leaves(full.state), leaves(resumed.state), strict=True):
    np.testing.assert_array_equal(x, y)
  assert resumed.genotype == full.genotype
  again = [json.loads(l) for l in open(tmp_path / 'resumed' / 'metrics.jsonl')]
  strip = lambda rs: [{k: v for k, v in r.items() if k != 'seconds'} for r in rs
                      if r['kind'] == 'epoch']
  assert strip(again) == strip(records)

  # the same workdir with an incompatible config: a clear error, nothing overwritten
  before = (tmp_path / 'full' / 'config.json').read_text()
  with pytest.raises(ValueError, match=r"different config \(batch_size: 8 -> 4\)"):
    run_search(dict(config, batch_size=4), str(tmp_path / 'full'), log=lambda s: None)
  assert (tmp_path / 'full' / 'config.json').read_text() == before


@pytest.mark.slow
@pytest.mark.extended
def test_a_stochastic_method_searches_on_a_mesh_in_bf16_and_resumes_bitwise(data_dir, tmp_path,
                                                                              monkeypatch):
  """GDAS (a Gumbel sample per step, tau annealed per epoch) runs the search from its config
  key on a 2-device mesh in bf16; interrupted and resumed, it draws the same samples (from the
  step's number) and ends bit for bit where an uninterrupted run does. (Every method with every
  estimator: tests/test_variants.py.)"""
  config = micro_config(data_dir, method='gdas', num_devices=2, compute_dtype='bfloat16')
  full = run_search(config, str(tmp_path / 'full'), log=lambda s: None)
  assert int(full.state.step) == 10 and int(full.state.nonfinite_step) == -1
  first = {k: np.asarray(v) for k, v in full.state.alphas.items()}
  assert all(np.any(v != 0) for v in first.values())
  records = [json.loads(l) for l in open(tmp_path / 'full' / 'metrics.jsonl')]
  assert all(np.isfinite(r['val_loss']) for r in records if r['kind'] == 'epoch')
  interrupt_after(3, lambda: run_search(config, str(tmp_path / 'resumed'), log=lambda s: None),
                  monkeypatch)
  resumed = run_search(config, str(tmp_path / 'resumed'), log=lambda s: None)
  for x, y in zip(leaves(full.state), leaves(resumed.state), strict=True):
    np.testing.assert_array_equal(x, y)
  assert resumed.genotype == full.genotype


@pytest.mark.slow
def test_nonfinite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(data_dir,
                                                                               tmp_path):
  # a learning rate of 1e30 overflows the weight gradients within a few steps
  config = micro_config(data_dir, w_lr=1e30, checkpoint_every=1)
  with pytest.raises(NonFiniteError, match=r'non-finite loss or gradient at step (\d+)') as e:
    run_search(config, str(tmp_path / 'run'), log=lambda s: None)
  bad = int(str(e.value).split('at step ')[1].split()[0])
  checkpoints = ckpt_lib.Checkpoints(str(tmp_path / 'run' / 'checkpoints'))
  assert bad >= 1 and checkpoints.latest_step() == bad  # the state just before the bad step
  assert f'Last good checkpoint: step {bad}' in str(e.value)
  latest = checkpoints.read(bad)
  assert all(np.all(np.isfinite(v)) for v in latest.values() if np.issubdtype(v.dtype, np.floating))


def test_missing_archive_is_a_clear_error_and_writes_nothing(tmp_path):
  with pytest.raises(DataError, match='cifar-10-python.tar.gz'):
    run_search(micro_config(str(tmp_path / 'empty')), str(tmp_path / 'run'), log=lambda s: None)
  assert not (tmp_path / 'run').exists()


def _cli(*args, devices=1):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'experiments.cifar_search', *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('args, message', [
    (['--config=experiments/configs/search.py:huge'], "unknown preset 'huge'; allowed: paper"),
    (['--config.no_such_key=1'], 'no_such_key'),
    (['--config.estimator=second'], "estimator='second' is unknown; allowed: first_order"),
    (['--config.search_space=nb201'], "search_space='nb201' is unknown; allowed: darts_cnn, "
                                      'nas_bench_201'),
    (['--config.batch_norm=sync'], "batch_norm='sync': allowed: global, per_device"),
    (['--config.compute_dtype=float16'], "compute_dtype='float16': allowed: '' (the dtype), "
                                         'bfloat16'),
    (['--config.lr_scaling=sqrt'], "lr_scaling='sqrt': allowed: none, linear"),
    (['--config.distributed=True', '--config.coordinator_address=localhost'],
     "coordinator_address='localhost': give \"host:port\""),
])
def test_cli_bad_input(tmp_path, args, message):
  result = _cli(*args, f'--workdir={tmp_path / "run"}')
  assert result.returncode != 0
  assert message in result.stderr
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'run').exists()


def test_cli_unusable_workdir_fails_before_the_data_is_read(tmp_path):
  # the paper preset would download CIFAR-10 first; the workdir is checked before that
  empty = tmp_path / 'no_data'
  empty.mkdir()
  result = _cli(f'--config.data_dir={empty}', '--config.download=False', '--workdir=/dev/null/x')
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip() == ("error: workdir='/dev/null/x' cannot be created: /dev/null is "
                                   'not a directory')
  assert not list(empty.iterdir())


def test_cli_batch_not_divisible_by_devices(data_dir, tmp_path):
  result = _cli('--config=experiments/configs/search.py:tiny', f'--config.data_dir={data_dir}',
                '--config.max_examples=0', '--config.batch_size=6', '--config.num_devices=4',
                f'--workdir={tmp_path / "run"}', devices=4)
  assert result.returncode == 2, result.stderr
  assert 'batch_size=6 is not divisible by the number of devices (4)' in result.stderr
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('args, message', [
    ([], 'distributed=True: could not join the run (coordinator_address should be defined'),
    (['--config.coordinator_address=localhost:1', '--config.num_processes=2',
      '--config.process_id=1', '--config.distributed_timeout=2'],
     "coordinator_address='localhost:1': nothing answered there within 2 s"),
])
def test_cli_distributed_without_the_other_processes(data_dir, tmp_path, args, message):
  result = _cli('--config=experiments/configs/search.py:tiny', f'--config.data_dir={data_dir}',
                '--config.max_examples=0', '--config.batch_size=8', '--config.distributed=True',
                *args, f'--workdir={tmp_path / "run"}')
  assert result.returncode == 2, result.stderr
  assert message in result.stderr
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'run').exists()


# a rule made to fire at every chance: the ratio of two positive eigenvalues exceeds 1e-3 (the
# architecture's weight decay makes the dominant one positive)
FIRING_RULE = dict(hessian_every=1, hessian_batch=16, es_window=1, es_delta=1, es_factor=1e-3,
                   es_start_epoch=0)


@pytest.mark.slow
@pytest.mark.extended  # the suite runs the same on NAS-Bench-201's space (test_nas_bench_201.py)
def test_health_report_and_darts_es(data_dir, tmp_path):
  """The health report as a run writes it, and DARTS-ES with the firing rule: it stops after
  epoch 2 and returns epoch 1's genotype."""
  es = micro_config(data_dir, epochs=4, early_stop='darts_es', plots=True, **FIRING_RULE)
  result = run_search(es, str(tmp_path / 'es'), log=lambda s: None)
  records = [json.loads(l) for l in open(tmp_path / 'es' / 'metrics.jsonl')]
  epochs = [r for r in records if r['kind'] == 'epoch']
  assert int(result.state.step) == 10 and [r['epoch'] for r in epochs] == [1, 2]
  assert epochs[1]['early_stop']['stop_epoch'] == 1
  assert result.genotype.to_dict() == epochs[0]['genotype']
  assert (tmp_path / 'es' / 'genotype.txt').read_text().strip() == result.genotype.to_string()
  for r in epochs:
    # the dense Hessian of 2 kinds x 5 edges x 8 ops, its eigenvalues in the record
    h = np.load(tmp_path / 'es' / 'hessian' / f'epoch_{r["epoch"]:03d}.npy')
    ev = np.linalg.eigvalsh(h.astype(np.float64))
    assert h.shape == (80, 80) and r['dominant_eigenvalue'] == pytest.approx(ev[-1], rel=1e-6)
    assert r['dominant_eigenvalue'] > 0 and r['hessian_examples'] == 16
    assert r['entropy_normal'] <= np.log(8) and 0 <= r['margin_reduce'] <= 1
    assert r['parameter_free_normal'] in range(5) and r['second_order_share'] == 0.0
  assert {'hessian_eigenvalue.png', 'collapse_diagnostics.png'} <= set(
      os.listdir(tmp_path / 'es' / 'plots'))
  # the run is complete: called again, it steps no further
  assert int(run_search(es, str(tmp_path / 'es'), log=lambda s: None).state.step) == 10


@pytest.mark.slow
@pytest.mark.extended
def test_darts_ada_returns_with_more_weight_decay_and_resumes_bitwise(data_dir, tmp_path,
                                                                      monkeypatch):
  """DARTS-ADA with the firing rule (3 Lanczos steps for the eigenvalue): back to epoch 1 twice
  (weight decay 3e-4 -> 3e-3 -> 0.03, the maximum), then on to the end; an interrupted run
  resumes bit for bit."""
  ada = micro_config(data_dir, epochs=3, early_stop='darts_ada', hessian_lanczos_steps=3,
                     **FIRING_RULE)
  full = run_search(ada, str(tmp_path / 'ada'), log=lambda s: None)
  records = [json.loads(l) for l in open(tmp_path / 'ada' / 'metrics.jsonl')]
  rewinds = [r for r in records if r['kind'] == 'rewind']
  assert [(r['epoch'], r['weight_decay']) for r in rewinds] == [(1, pytest.approx(3e-3)),
                                                                (1, pytest.approx(0.03))]
  epochs = [r for r in records if r['kind'] == 'epoch']
  assert [r['epoch'] for r in epochs] == [1, 2, 3] and int(full.state.step) == 15
  assert [r['weight_decay'] for r in epochs] == pytest.approx([3e-4, 0.03, 0.03])
  assert all(r['dominant_eigenvalue'] > 0 for r in epochs)
  assert not any('early_stop' in r for r in epochs[1:])  # at the maximum, the rule is off
  # interrupted after 12 steps (the second pass through epoch 2), resumed: the same run
  interrupt_after(12, lambda: run_search(ada, str(tmp_path / 'resumed'), log=lambda s: None),
                  monkeypatch)
  resumed = run_search(ada, str(tmp_path / 'resumed'), log=lambda s: None)
  for x, y in zip(leaves(full.state), leaves(resumed.state), strict=True):
    np.testing.assert_array_equal(x, y)
  again = [json.loads(l) for l in open(tmp_path / 'resumed' / 'metrics.jsonl')]
  strip = lambda rs: [{k: v for k, v in r.items() if k not in ('seconds', 'hessian_seconds')}
                      for r in rs if r['kind'] in ('epoch', 'rewind')]
  assert strip(again) == strip(records)
