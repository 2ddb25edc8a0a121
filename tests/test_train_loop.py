"""Training a derived network as a run: a tiny training on a fake CIFAR-10 archive with bitwise
resume, test evaluation against a hand-computed reference, the auxiliary loss in training only,
the genotype in every accepted form, the original's weights evaluated, and one-line errors."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import checkpoint as ckpt_lib
from darts_jax import data as data_lib
from darts_jax import interop, run_loop
from darts_jax.genotypes import DARTS_V1, DARTS_V2, load_genotype
from darts_jax.networks import NetworkCIFAR
from darts_jax.train_loop import (evaluate_checkpoint, param_counts, run_train, _eval_batches)
from experiments.configs.train import get_config
from run_helpers import interrupt_after, latest_checkpoint, leaves
from test_data import fake_batches, write_archive

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp('cifar')
  write_archive(d / 'cifar-10-python.tar.gz', fake_batches(rows=16))  # 80 train, 17 test
  return str(d)


def micro_config(data_dir, **overrides):
  """The tiny preset shrunk further: 3 cells (auxiliary head on), C=2, 80 images, 2 x 5 steps."""
  c = get_config('tiny').to_dict()
  c.update(data_dir=data_dir, download=False, max_examples=0, max_test_examples=0,
           init_channels=2, log_every=1, checkpoint_every=2, progress=False, tensorboard=True)
  c.update(overrides)
  return c


@pytest.mark.slow
def test_tiny_training_runs_resumes_bitwise_and_evaluates(data_dir, tmp_path, monkeypatch):
  config = micro_config(data_dir)
  logs = []
  full = run_train(config, str(tmp_path / 'full'), log=logs.append)
  assert int(full.state.step) == 10
  records = [json.loads(l) for l in open(tmp_path / 'full' / 'metrics.jsonl')]
  epochs = [r for r in records if r['kind'] == 'epoch']
  assert [r['epoch'] for r in epochs] == [1, 2]
  assert epochs[1]['drop_path_prob'] == pytest.approx(0.2 * 1 / 2)  # 0.2 * epoch / epochs
  assert epochs[0]['lr'] == pytest.approx(0.025) and epochs[1]['lr'] == pytest.approx(0.0125)
  assert any(f.startswith('events') for f in os.listdir(tmp_path / 'full' / 'tensorboard'))
  without, with_aux = param_counts(full.state.weights)
  assert any(line.startswith(f'parameters: {without:,} ({with_aux:,} with the auxiliary head); ')
             and line.endswith(' multiply-adds per image') for line in logs)
  assert (tmp_path / 'full' / 'genotype.txt').read_text().strip() == DARTS_V2.to_string()

  # the test evaluation over all 17 test images (one padded batch of 16 + 1), by hand
  test = data_lib.load_dataset('cifar10', 'test', data_dir, False)
  model = NetworkCIFAR(2, 10, 3, True, DARTS_V2)
  logits, aux = model.apply({'params': full.state.weights, 'batch_stats': full.state.batch_stats},
                            data_lib.normalize(test.images, test.mean, test.std), False)
  assert aux is None  # no auxiliary head in evaluation
  logp = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64)))
  ranks = (logp > logp[np.arange(17), test.labels][:, None]).sum(-1)
  expect = {'test_loss': -logp[np.arange(17), test.labels].mean(),
            'test_top1': np.mean(ranks == 0), 'test_top5': np.mean(ranks < 5)}
  for k, v in expect.items():
    assert epochs[-1][k] == pytest.approx(v, abs=1e-5), k
  assert full.test['examples'] == 17
  # the best epoch's checkpoint and the evaluation command agree with the record
  best = max(epochs, key=lambda r: r['test_top1'])
  again = evaluate_checkpoint(config, str(tmp_path / 'full'), 'best', log=lambda s: None)
  assert again['top1'] == pytest.approx(best['test_top1'])
  last = evaluate_checkpoint(config, str(tmp_path / 'full'), 'last', log=lambda s: None)
  assert last['loss'] == pytest.approx(epochs[-1]['test_loss'], abs=1e-5)

  # the original's weights (here: ours written in its names) evaluate to the same numbers
  named = interop.to_original({'params': full.state.weights, 'batch_stats': full.state.batch_stats})
  np.savez(tmp_path / 'original.npz', **named)
  released = evaluate_checkpoint(config, weights_file=str(tmp_path / 'original.npz'),
                                 log=lambda s: None)
  assert released['loss'] == pytest.approx(last['loss'], abs=1e-6)

  # Ctrl-C after 3 steps (checkpoint_every=2): the run checkpoints step 3 on its way out;
  # resumed, it ends with the same state, bit for bit, and the same records
  interrupt_after(3, lambda: run_train(config, str(tmp_path / 'resumed'), log=lambda s: None),
                  monkeypatch)
  assert latest_checkpoint(str(tmp_path / 'resumed' / 'checkpoints')) == 3
  resumed = run_train(config, str(tmp_path / 'resumed'), log=lambda s: None)
  for x, y in zip(leaves(full.state), leaves(resumed.state), strict=True):
    np.testing.assert_array_equal(x, y)
  strip = lambda rs: [{k: v for k, v in r.items() if k != 'seconds'} for r in rs
                      if r['kind'] == 'epoch']
  assert strip(json.loads(l) for l in open(tmp_path / 'resumed' / 'metrics.jsonl')) == strip(
      records)


@pytest.mark.slow
@pytest.mark.extended
def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
  config = micro_config(data_dir, lr=1e30, checkpoint_every=1, epochs=1)
  with pytest.raises(run_loop.NonFiniteError,
                     match=r'non-finite loss or gradient at step (\d+)') as e:
    run_train(config, str(tmp_path / 'run'), log=lambda s: None)
  bad = int(str(e.value).split('at step ')[1].split()[0])
  checkpoints = ckpt_lib.Checkpoints(str(tmp_path / 'run' / 'checkpoints'))
  assert bad >= 1 and checkpoints.latest_step() == bad
  latest = checkpoints.manager.restore(bad)['state']
  checkpoints.close()
  assert all(np.all(np.isfinite(v)) for v in latest.values()
             if np.issubdtype(v.dtype, np.floating))


def test_eval_batches_cover_every_example_once():
  index, mask = _eval_batches(17, 8)
  assert index.shape == mask.shape == (3, 8)
  assert sorted(index[mask].tolist()) == list(range(17))


def test_param_counts_are_the_published_ones():
  """The count printed at the start: the original's (without the auxiliary head) and ours with
  it, for the paper's DARTS_V2 and DARTS_V1 networks (3.3M published)."""
  for genotype, without, with_aux in ((DARTS_V2, 3_349_342, 3_825_768),
                                      (DARTS_V1, 3_169_414, 3_645_840)):
    shapes = jax.eval_shape(lambda: NetworkCIFAR(36, 10, 20, True, genotype).init(
        jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)), True))
    assert param_counts(shapes['params']) == (without, with_aux)


def test_genotype_in_every_form(tmp_path):
  assert load_genotype('DARTS_V1') == DARTS_V1
  assert load_genotype(DARTS_V2.to_string()) == DARTS_V2
  assert load_genotype(DARTS_V2.to_json()) == DARTS_V2
  (tmp_path / 'search').mkdir()
  (tmp_path / 'search' / 'genotype.json').write_text(DARTS_V1.to_json())
  assert load_genotype(str(tmp_path / 'search')) == DARTS_V1
  assert load_genotype(str(tmp_path / 'search' / 'genotype.json')) == DARTS_V1
  (tmp_path / 'genotype.txt').write_text(DARTS_V2.to_string() + '\n')
  assert load_genotype(str(tmp_path / 'genotype.txt')) == DARTS_V2
  with pytest.raises(ValueError, match=r"genotype='DARTS_V9' is neither a published name "
                                       r'\(DARTS_V1, DARTS_V2'):
    load_genotype('DARTS_V9')
  with pytest.raises(ValueError, match='the directory has no genotype.json'):
    load_genotype(str(tmp_path))
  (tmp_path / 'bad.json').write_text('{"normal": []')
  with pytest.raises(ValueError, match='bad.json: genotype JSON is malformed'):
    load_genotype(str(tmp_path / 'bad.json'))
  with pytest.raises(ValueError, match='malformed genotype string'):
    load_genotype('Genotype(normal=[(')


def _cli(module, *args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('args, message', [
    (['--config.genotype=DARTS_V9'], "genotype='DARTS_V9' is neither a published name"),
    ([f'--config.genotype={DARTS_V2.to_string().replace("dil_conv_3x3", "conv_9x9")}'],
     "genotype uses unknown op 'conv_9x9'"),
    (['--config=experiments/configs/train.py:huge'], "unknown preset 'huge'; allowed: paper"),
    (['--config.cutout_length=-1'], 'cutout_length=-1: must be an integer >= 0'),
    (['--config.dataset=digits', '--config.auxiliary=True'], 'auxiliary=True needs 32x32 images'),
])
def test_cli_bad_input(tmp_path, args, message):
  result = _cli('experiments.cifar_train', *args, f'--workdir={tmp_path / "run"}')
  assert result.returncode == 2, result.stderr
  assert message in result.stderr
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('args, message', [
    ([], 'give --workdir (a training run) or --weights (an .npz)'),
    (['--workdir=/nonexistent'], '--workdir=/nonexistent: no config.json there'),
    (['--weights=/nonexistent.npz', '--config.dataset=digits', '--config.auxiliary=False'],
     "weights='/nonexistent.npz': no such file"),
    (['--checkpoint=first', '--workdir=x'], 'first'),
])
def test_eval_cli_bad_input(args, message):
  result = _cli('experiments.cifar_eval', *args)
  assert result.returncode == 2, result.stderr
  assert message in result.stderr
  assert 'Traceback' not in result.stderr


def test_eval_cli_refuses_a_search_workdir(tmp_path):
  from experiments.configs.search import get_config as search_config
  (tmp_path / 'config.json').write_text(json.dumps(search_config('tiny').to_dict()))
  result = _cli('experiments.cifar_eval', f'--workdir={tmp_path}')
  message = f'--workdir={tmp_path} is not a training run (its config.json has no '
  assert result.returncode == 2, result.stderr
  assert message in result.stderr
  assert 'Traceback' not in result.stderr
