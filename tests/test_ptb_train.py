"""Training a recurrent cell as a run: the original's windows, NT-ASGD's trigger and torch's
ASGD (float64, against the algorithm written out step by step), a tiny training that resumes
bit for bit, ptb_eval, and one-line errors."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import recurrent as rc
from darts_jax import recurrent_search as rs
from darts_jax import recurrent_train_loop as rt
from experiments.configs.ptb_train import get_config
from run_helpers import interrupt_after, latest_checkpoint, leaves

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_training_windows_are_the_originals():
  rows, bptt, delta = 5000, 35, 20
  start, seq, length = rt.training_plan(rows, bptt, seed=1267, epoch=0, max_delta=delta)
  np.testing.assert_array_equal(start, np.concatenate([[0], np.cumsum(seq)[:-1]]))
  assert seq.min() >= 5 and seq.max() <= bptt + delta
  np.testing.assert_array_equal(length, np.minimum(seq, rows - 1 - start))
  assert start[-1] < rows - 2 <= start[-1] + seq[-1]
  # N(35, 5) truncated towards zero 95 % of the time: the mean drawn length is close to
  # 0.95 * 34.5 + 0.05 * 17 = 33.6 (the standard error over ~150 windows is about 0.6)
  assert abs(seq.mean() - 33.6) < 2.5, seq.mean()
  again = rt.training_plan(rows, bptt, 1267, 0, delta)
  for x, y in zip((start, seq, length), again):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize('losses,nonmono,expected', [
    ([5.0, 4.0, 3.0], 1, False),  # improving
    ([5.0, 4.0, 4.5], 1, False),  # 4.5 is not worse than 5.0, the best before the last one
    ([5.0, 4.0, 5.5], 1, True),  # 5.5 is
    ([5.0, 4.0, 4.5], 2, False),  # only 2 earlier losses: not more than nonmono
    ([3.0, 4.0, 4.5, 4.2], 2, True),  # 4.2 > min([3.0])
    ([4.0, 3.0, 3.5, 3.6], 2, False),  # 3.6 > min([4.0])? no
])
def test_nt_asgd_trigger_is_the_originals_rule(losses, nonmono, expected):
  assert rt.should_average(losses, nonmono) is expected


def _problem():
  config = rc.RecurrentConfig(ntoken=11, nhid=4, steps=3)
  w = rc.init_weights(jax.random.PRNGKey(0), config, jnp.float64, init_range=0.4)
  genotype = rc.RecurrentGenotype((('relu', 0), ('tanh', 1), ('sigmoid', 1)), (1, 2, 3))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 7, 3), 0, 11)
  return config, w, genotype, tokens


def test_asgd_is_torchs_averaged_sgd(x64):
  """Three SGD steps, the switch, then four ASGD steps, against torch's ASGD(t0=0, lambd=0)
  written out: the step uses the eta set after the step before (the scaled lr), mu = 1 copies
  the iterate into the average, then mu = 1 / steps."""
  config, w, genotype, tokens = _problem()
  hp = rt.TrainHParams(lr=2.0, clip=0.25, weight_decay=0.01, tar_beta=0.1, bptt=6)
  rates = rc.DropoutRates(0, 0, 0, 0, 0)
  cfg = {'seed': 0, 'lr': hp.lr, 'nhid': 4, 'batch_size': 3}
  state = rt.initial_state(cfg, genotype, 11, jnp.float64)._replace(weights=w)
  step = jax.jit(lambda s, b, q, f: rt.train_step(hp, genotype, rates, s, b, q, f))
  seqs = [6, 3, 5, 6, 4, 6, 2]

  def grad(w_, batch, hidden):
    def loss(w_):
      out = rc.eval_forward(w_, genotype, batch.tokens, hidden)
      return (rc.nll(out.log_probs, batch.targets)
              + hp.tar_beta * rc.temporal_activation_regularization(out.hiddens)), out.hidden
    g, h = jax.grad(loss, has_aux=True)(w_)
    g = rs.clip_tree(g, hp.clip)
    return jax.tree_util.tree_map(lambda g_, p: g_ + hp.weight_decay * p, g, w_), h

  ref_w, hidden, eta, mu, ax, asgd_steps = w, jnp.zeros((3, 4)), hp.lr, 1.0, None, 0
  for t, seq in enumerate(seqs):
    if t == 3:
      state = rt.start_averaging(state, hp.lr)
      eta, mu, asgd_steps = hp.lr, 1.0, 0  # a new torch.optim.ASGD(lr=20, t0=0, lambd=0)
    batch = rc.TokenBatch(tokens[t % 4, :6], tokens[t % 4, 1:7])
    state, _ = step(state, batch, jnp.int32(seq), jnp.bool_(t == 0))
    g, hidden = grad(ref_w, batch, hidden)
    lr_now = hp.lr * seq / hp.bptt
    if t < 3:
      ref_w = jax.tree_util.tree_map(lambda p, g_: p - lr_now * g_, ref_w, g)
    else:
      asgd_steps += 1
      ref_w = jax.tree_util.tree_map(lambda p, g_: p - eta * g_, ref_w, g)
      ax = ref_w if mu == 1 else jax.tree_util.tree_map(lambda a, p: a + (p - a) * mu, ax, ref_w)
      eta, mu = lr_now, 1 / max(1, asgd_steps)
    for a, b in zip(jax.tree_util.tree_leaves(state.weights), jax.tree_util.tree_leaves(ref_w)):
      np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
  for a, b in zip(jax.tree_util.tree_leaves(state.averaging.average),
                  jax.tree_util.tree_leaves(ax)):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
  # the average is the mean of the iterates after ASGD steps 2, 3 and 4
  assert float(state.averaging.mu) == pytest.approx(1 / 4)


def micro_config(**overrides):
  c = get_config('tiny').to_dict()
  c.update(progress=False, plots=False, tensorboard=False, log_every=1, checkpoint_every=3,
           max_tokens=400, epochs=5, nonmono=1, lr=60.0)
  c.update(overrides)
  return c


@pytest.mark.slow
def test_tiny_training_switches_to_averaging_resumes_bitwise_and_evaluates(tmp_path,
                                                                           monkeypatch):
  config = micro_config()
  full = rt.run_recurrent_training(config, str(tmp_path / 'full'), log=lambda s: None)
  records = [json.loads(l) for l in open(tmp_path / 'full' / 'metrics.jsonl')]
  epochs = [r for r in records if r['kind'] == 'epoch']
  assert [r['epoch'] for r in epochs] == [1, 2, 3, 4, 5]
  # NT-ASGD: after the first epoch whose validation loss triggers the rule, every epoch averages
  losses = [r['val_loss'] for r in epochs]
  first = next(i for i in range(1, 6) if rt.should_average(losses[:i], 1))
  assert [r['averaging'] for r in epochs] == [False] * first + [True] * (5 - first)
  assert first < 5  # this run switches (lr 60 makes the validation loss rise)
  results = json.loads((tmp_path / 'full' / 'results.json').read_text())
  assert results['best_val_loss'] == min(r['val_loss'] for r in epochs)
  assert results['test_ppl'] == pytest.approx(np.exp(results['test_loss']))

  # the run's best weights evaluated again by ptb_eval give the same validation loss
  proc = subprocess.run([sys.executable, '-m', 'experiments.ptb_eval',
                         f'--workdir={tmp_path}/full'], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr
  valid = float(proc.stdout.split('valid: loss ')[1].split(',')[0])
  assert valid == pytest.approx(results['best_val_loss'], abs=1e-4)
  test = float(proc.stdout.split('test: loss ')[1].split(',')[0])
  assert test == pytest.approx(results['test_loss'], abs=1e-4)

  interrupt_after(5, lambda: rt.run_recurrent_training(config, str(tmp_path / 'resumed'),
                                                       log=lambda s: None), monkeypatch)
  assert latest_checkpoint(str(tmp_path / 'resumed' / 'checkpoints')) == 5
  resumed = rt.run_recurrent_training(config, str(tmp_path / 'resumed'), log=lambda s: None)
  for x, y in zip(leaves(full.state), leaves(resumed.state), strict=True):
    np.testing.assert_array_equal(x, y)
  assert resumed.test_loss == full.test_loss


@pytest.mark.parametrize('args,message', [
    (['--config.genotype=DARTS_V9'], 'DARTS_V9'),
    (['--config.dropoute=-0.1'], 'dropoute=-0.1: a dropout rate must be in [0, 1)'),
    (['--config.nonmono=0'], 'nonmono=0: must be an integer >= 1'),
])
def test_cli_bad_input_is_one_line(tmp_path, args, message):
  proc = subprocess.run([sys.executable, '-m', 'experiments.ptb_train',
                         '--config=experiments/configs/ptb_train.py:tiny',
                         f'--workdir={tmp_path}/run', *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], lines


def test_ptb_eval_of_a_directory_without_a_run_is_one_line(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'experiments.ptb_eval', f'--workdir={tmp_path}'],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert proc.stderr.strip() == (f'error: --workdir={tmp_path} holds no trained recurrent '
                                 'network (it needs config.json and best_weights.npz)')
