"""The recurrent search space: fidelity to the original's recurrent reference file (the verifier's
command line), genotypes, parameter counts at the paper's sizes, the architect's options and
every estimator on the recurrent loss."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from darts_jax import hypergradient as hg
from darts_jax import recurrent as rc
from darts_jax import recurrent_search as rs
from darts_jax.reference import PASS

ROOT = pathlib.Path(__file__).parent.parent
RNN_REFERENCE = pathlib.Path(__file__).parent / 'data' / 'quark0_rnn_reference.npz'


@pytest.fixture(scope='module')
def rnn_report(tmp_path_factory):
  out = tmp_path_factory.mktemp('verify_rnn') / 'report.json'
  result = subprocess.run([sys.executable, '-m', 'experiments.verify_reference',
                           str(RNN_REFERENCE), '--out', str(out)], cwd=ROOT,
                          env=dict(os.environ), capture_output=True, text=True, timeout=1200)
  assert result.returncode == 0 and out.exists(), result.stderr[-3000:]
  report = json.loads(out.read_text())
  assert json.loads(result.stdout) == report
  return report


# the tolerances: states, first derivatives, genotypes, the evaluation model and the
# weight step at float64 round-off; exact hypergradients 1e-8; the finite difference and the
# full step taken from it 1e-6; the two exact computations of eq. 6 against each other 1e-12
ROUNDOFF = ['search/logprob_train', 'search/loss_train', 'search/hidden_train_next',
            'search/hiddens_train', 'search/bn_after_train/running_mean',
            'search/bn_after_train/running_var', 'search/logprob_eval', 'search/grad_w_train',
            'search/grad_alphas_train', 'search/loss_val', 'search/hypergrad_first_order',
            'search/hidden_val_next', 'search/unrolled/clip_coef', 'search/unrolled/w',
            'search/unrolled/loss_val', 'search/unrolled/grad_w_val',
            'search/unrolled/grad_alphas_val', 'search/hidden_val_next_unrolled', 'eval/logprob',
            'eval/loss', 'eval/hidden_next', 'eval/hiddens', 'eval/tar', 'eval/grad_w']
EXACT = ['search/hypergrad_exact', 'search/hypergrad_exact_textbook', 'search/hypergrad_fd_limit']
FINITE = ['search/hypergrad_fd', 'search/unrolled/hvp_fd', 'search/step/alphas',
          'search/step/loss_train', 'search/step/loss_total', 'search/step/hidden_train_next',
          'search/step/w']


@pytest.mark.slow
@pytest.mark.parametrize('names,tol', [(ROUNDOFF, 1e-9), (EXACT, 1e-8), (FINITE, 1e-6),
                                       (['search/exact_vs_unrolled'], 1e-12)])
def test_recurrent_reference_matches_the_original(rnn_report, names, tol):
  for name in names:
    q = rnn_report['quantities'][name]
    assert q['status'] == PASS and q['rel_err'] <= tol, (name, q)


@pytest.mark.slow
def test_recurrent_reference_every_quantity_and_genotype(rnn_report):
  q = rnn_report['quantities']
  assert q['genotypes'] == {'status': PASS, 'matched': 20, 'total': 20, 'mismatches': []}
  assert q['search/genotype']['status'] == PASS
  assert rnn_report['summary'] == {'pass': 37, 'fail': 0, 'not yet computed': 0}
  assert rnn_report['ok'] is True


def test_published_genotypes_print_as_the_original():
  assert str(rc.DARTS_V2) == (
      "Genotype(recurrent=[('sigmoid', 0), ('relu', 1), ('relu', 1), ('identity', 1), "
      "('tanh', 2), ('sigmoid', 5), ('tanh', 3), ('relu', 5)], concat=range(1, 9))")
  for g in (rc.DARTS_V1, rc.DARTS_V2):
    assert rc.parse_genotype(str(g)) == g
    assert rc.parse_genotype(g.to_json()) == g
    assert rc.RecurrentGenotype.from_dict(json.loads(g.to_json())) == g
  assert rc.parse_genotype('DARTS') == rc.DARTS_V2
  # a concat that is not a run prints as a list, as the original's namedtuple would
  odd = rc.RecurrentGenotype((('tanh', 0), ('relu', 1), ('relu', 0)), (1, 3))
  assert str(odd).endswith('concat=[1, 3])') and rc.parse_genotype(str(odd)) == odd


@pytest.mark.parametrize('spec,message', [
    ("Genotype(recurrent=[('tanh', 1)], concat=range(1, 2))",
     "node 1 takes state 1 ('tanh'); allowed states are 0..0"),
    ("Genotype(recurrent=[('tanh', 0)], concat=[2])", 'concat: 2 is not a state index 0..1'),
    ('NOT_A_GENOTYPE', "unknown recurrent genotype 'NOT_A_GENOTYPE'"),
    ('Genotype(recurrent=', 'malformed recurrent genotype string'),
])
def test_bad_recurrent_genotypes_are_one_line_errors(spec, message):
  with pytest.raises(ValueError, match=None) as e:
    rc.parse_genotype(spec)
  assert message in str(e.value) and '\n' not in str(e.value)


def test_alpha_rows_must_be_a_triangle():
  assert rc.steps_of(36) == 8 and rc.steps_of(1) == 1
  with pytest.raises(ValueError, match='recurrent alphas have 35 rows'):
    rc.steps_of(35)


def test_edge_probabilities_place_each_edge_in_its_node_slot():
  probs = jnp.arange(6 * 2, dtype=jnp.float32).reshape(6, 2)  # 3 nodes: 1 + 2 + 3 edges
  slots = np.asarray(rc.edge_probabilities(probs, 3))
  assert slots.shape == (3, 4, 2)
  np.testing.assert_array_equal(slots[0, :1], probs[0:1])
  np.testing.assert_array_equal(slots[1, :2], probs[1:3])
  np.testing.assert_array_equal(slots[2, :3], probs[3:6])
  # the slots after node i (states not yet computed) weigh nothing
  assert not slots[0, 1:].any() and not slots[1, 2:].any() and not slots[2, 3:].any()


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def test_paper_sizes_have_the_originals_parameter_counts():
  # RNN_README.md: search 4,810,000 + 180 alphas at 300 units; evaluation 22,960,000 at 850
  shapes = lambda n: jax.eval_shape(  # noqa: E731
      lambda: rc.init_weights(jax.random.PRNGKey(0), rc.RecurrentConfig(ntoken=10000, nhid=n)))
  assert _count(shapes(300)) == 4_810_000
  assert _count(shapes(850)) == 22_960_000
  alphas = rc.init_alphas(jax.random.PRNGKey(0), rc.RecurrentConfig(ntoken=10000, nhid=300))
  assert _count(alphas) == 180


def _problem(seed, ntoken=11, nhid=4, steps=3, T=4, B=3):
  """A small random recurrent search problem in float64 (weights large enough that the
  nonlinearities matter, as in the reference file): (w, alpha, data)."""
  config = rc.RecurrentConfig(ntoken=ntoken, nhid=nhid, steps=steps)
  k = jax.random.split(jax.random.PRNGKey(seed), 6)
  w = rc.init_weights(k[0], config, jnp.float64, init_range=0.5)
  w['decoder_bias'] = 0.1 * jax.random.normal(k[1], (ntoken,), jnp.float64)
  alpha = rc.init_alphas(k[2], config, jnp.float64, scale=0.5)
  tokens = jax.random.randint(k[3], (2, T + 1, B), 0, ntoken)
  hidden = 0.5 * jax.random.normal(k[4], (2, B, nhid), jnp.float64)
  return w, alpha, (rc.init_batch_stats(config, jnp.float64), tokens, hidden)


def _losses(data):
  """(L_train, L_val): NLL of the next token on two batches, each from its own hidden state."""
  stats, tokens, hidden = data

  def loss(which):
    # the scan cell: the same numbers as the unrolled one (test_ptb_search), a shorter compile
    return lambda w_, a_: rc.nll(rc.search_forward(w_, a_, stats, tokens[which, :-1],
                                                   hidden[which], nodes='scan').log_probs,
                                 tokens[which, 1:])
  return loss(0), loss(1)


@pytest.mark.parametrize('hp', [rs.ArchitectHParams(eta=1.0), rs.ArchitectHParams.textbook(eta=1.0)],
                         ids=['as_coded', 'textbook'])
def test_exact_equals_unrolled_through_the_recurrent_virtual_step(x64, hp):
  """eq. 6 in pieces against jax.grad through the virtual step (clipping and the held
  embedding included), float64, on random recurrent problems."""
  inner = rs.virtual_step(hp)

  @jax.jit
  def both(w, alpha, data):
    train, val = _losses(data)
    return (hg.second_order(train, val, w, alpha, inner, inner.init(w))[0],
            hg.unrolled(train, val, w, alpha, inner, inner.init(w))[0])

  for seed in (0, 1):
    exact, unrolled = both(*_problem(seed))
    assert float(hg.relative_error(exact, unrolled)) <= 1e-12
    assert float(hg.tree_norm(exact)) > 0


def test_textbook_finite_difference_is_the_papers_eq7(x64):
  """With every quirk off, the architect's finite difference is the library's eq. (7) on the
  plain SGD virtual step; each quirk then changes the number in the way it names."""
  textbook = rs.ArchitectHParams.textbook(eta=0.5)
  # eta_c_always with a clip that never binds (c > 1): the second-order term scaled by c
  loose = textbook._replace(clip=1e6, eta_c_always=True)
  frozen = rs.virtual_step(textbook._replace(freeze_tied_embedding=True))
  inner = rs.virtual_step(textbook)

  @jax.jit
  def run(w, alpha, data):
    train, val = _losses(data)
    ours, _ = rs.architect_finite_difference(train, val, w, alpha, textbook)
    paper, _ = hg.finite_difference(train, val, w, alpha, inner, inner.init(w), xi=0.5, r=0.01)
    scaled, aux = rs.architect_finite_difference(train, val, w, alpha, loose)
    g = jax.grad(train)(w, alpha)
    return ours, paper, scaled, aux, g, hg.step_of_gradient(frozen, frozen.init(w), w)(g)

  w, alpha, data = _problem(2)
  ours, paper, scaled, aux, g, w_prime = run(w, alpha, data)
  assert float(hg.relative_error(ours, paper)) <= 1e-12
  c = float(aux.clip_coef)
  assert c > 1
  np.testing.assert_allclose(np.asarray(scaled['recurrent'] - aux.direct['recurrent']),
                             c * np.asarray(ours['recurrent'] - aux.direct['recurrent']),
                             rtol=1e-9, atol=1e-14)
  # the held embedding: the virtual step leaves exactly that weight where it was
  np.testing.assert_array_equal(w_prime['encoder'], w['encoder'])
  np.testing.assert_allclose(w_prime['W0'], w['W0'] - 0.5 * (g['W0'] + 5e-7 * w['W0']),
                             rtol=1e-14)


def test_torch_clip_rule_in_closed_form(x64):
  g = {'a': jnp.array([3.0, 4.0]), 'b': jnp.array([0.0])}
  out, _ = rs.clip_by_global_norm(1.0).update(g, optax.EmptyState())
  np.testing.assert_allclose(out['a'], np.array([3.0, 4.0]) / (5.0 + 1e-6), rtol=1e-15)
  same, _ = rs.clip_by_global_norm(10.0).update(g, optax.EmptyState())
  np.testing.assert_array_equal(same['a'], g['a'])


@pytest.mark.parametrize('estimator', rs.ESTIMATORS)
def test_every_estimator_runs_the_recurrent_search_step(x64, estimator):
  config = rc.RecurrentConfig(ntoken=11, nhid=4, steps=3)
  w = rc.init_weights(jax.random.PRNGKey(0), config, jnp.float64, init_range=0.5)
  alpha = rc.init_alphas(jax.random.PRNGKey(1), config, jnp.float64, scale=0.5)
  stats = rc.init_batch_stats(config, jnp.float64)
  hp = rs.RecurrentSearchHParams(estimator=estimator, implicit_maxiter=3)
  state = rs.init_search_state(hp, w, alpha, stats, batch_size=3)
  tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 5, 3), 0, 11)
  forward = rs.search_network(nodes='scan')
  new, metrics = jax.jit(lambda s: rs.search_step(hp, forward, s, (tokens[0, :4], tokens[0, 1:]),
                                                  (tokens[1, :4], tokens[1, 1:]), 20.0))(state)
  assert np.isfinite(float(metrics.total_loss)) and float(metrics.total_loss) > float(
      metrics.train_loss)  # TAR > 0
  assert float(hg.tree_norm(hg.tree_sub(new.alphas, alpha))) > 0
  assert new.hidden_train.shape == new.hidden_val.shape == (3, 4)
  assert not np.allclose(new.batch_stats['mean'], stats['mean'])


def test_bad_estimator_is_a_one_line_error():
  with pytest.raises(ValueError, match="estimator='second' is unknown; allowed: first_order, "
                     'exact, finite_difference, unrolled, implicit'):
    rs.RecurrentSearchHParams(estimator='second').check()


# ----------------------------------------------------------------------------------------------
# dropouts (not in the reference file: their statistics and placement are tested here)
# ----------------------------------------------------------------------------------------------

def test_dropout_masks_have_the_rates_and_keep_the_mean():
  rates = rc.DropoutRates(dropout=0.75, dropouth=0.25, dropoutx=0.5, dropouti=0.2, dropoute=0.1)
  m = rc.dropout_masks(jax.random.PRNGKey(0), rates, ntoken=4000, batch=400, nhid=100)
  for mask, rate, shape in ((m.embedding_rows, 0.1, (4000, 1)), (m.embedding, 0.2, (400, 100)),
                            (m.x, 0.5, (400, 100)), (m.h, 0.25, (400, 100)),
                            (m.output, 0.75, (400, 100))):
    mask = np.asarray(mask)
    assert mask.shape == shape
    # inverted dropout: kept entries scaled by 1 / (1 - rate), so the mean stays 1
    np.testing.assert_allclose(np.unique(mask), [0.0, 1 / (1 - rate)], rtol=1e-6)
    n = mask.size
    assert abs(np.mean(mask == 0) - rate) < 4 * np.sqrt(rate * (1 - rate) / n)
  # five independent draws: no two masks of one shape are the same
  assert not np.array_equal(m.embedding, m.x) and not np.array_equal(m.h, m.output)
  none = rc.dropout_masks(jax.random.PRNGKey(0), rc.DropoutRates(0, 0, 0, 0, 0), 10, 2, 3)
  assert none == rc.Masks()
  with pytest.raises(ValueError, match=r'dropouth=1.0: a dropout rate must be in \[0, 1\)'):
    rc.dropout_masks(jax.random.PRNGKey(0), rc.DropoutRates(dropouth=1.0), 10, 2, 3)


def _small(seed=0, T=4, B=3, ntoken=7, nhid=4):
  config = rc.RecurrentConfig(ntoken=ntoken, nhid=nhid, steps=3)
  k = jax.random.split(jax.random.PRNGKey(seed), 4)
  w = rc.init_weights(k[0], config, jnp.float64, init_range=0.5)
  alpha = rc.init_alphas(k[1], config, jnp.float64, scale=0.5)
  tokens = jax.random.randint(k[2], (T, B), 0, ntoken)
  hidden = 0.5 * jax.random.normal(k[3], (B, nhid), jnp.float64)
  return config, w, alpha, rc.init_batch_stats(config, jnp.float64), tokens, hidden


def test_dropouts_act_where_the_original_puts_them(x64):
  config, w, alpha, stats, tokens, hidden = _small()
  B, n = hidden.shape
  genotype = rc.RecurrentGenotype((('tanh', 0), ('relu', 1), ('sigmoid', 1)), (1, 2, 3))
  search = lambda w_, m: rc.search_forward(w_, alpha, stats, tokens, hidden, masks=m)  # noqa
  evaluate = lambda w_, m: rc.eval_forward(w_, genotype, tokens, hidden, masks=m)  # noqa
  ones = rc.Masks(jnp.ones((7, 1)), jnp.ones((B, n)), jnp.ones((B, n)), jnp.ones((B, n)),
                  jnp.ones((B, n)))
  for forward in (search, evaluate):
    # masks of ones change nothing
    plain, masked = forward(w, None), forward(w, ones)
    np.testing.assert_array_equal(plain.log_probs, masked.log_probs)
    # output dropout (locked: one mask for every step) acts after the recurrence only: the
    # hidden states stay, and the decoder reads the masked outputs
    out_mask = jnp.ones((B, n)).at[1, 2].set(0.0).at[0, 0].set(2.0)
    dropped = forward(w, rc.Masks(output=out_mask))
    np.testing.assert_array_equal(dropped.hiddens, plain.hiddens)
    logits = jnp.einsum('tbh,vh->tbv', plain.hiddens * out_mask[None], w['encoder'])
    np.testing.assert_allclose(dropped.log_probs, jax.nn.log_softmax(
        logits + w['decoder_bias'][None, None], -1), rtol=1e-13)
    # the embedded input enters the cell only through W0: dropping it by its row of the
    # table (dropoute, every token the same word), by dropouti or by dropoutx is one thing
    same = jnp.full_like(tokens, 3)
    run = lambda m: (rc.search_forward(w, alpha, stats, same, hidden, masks=m)  # noqa: E731
                     if forward is search else rc.eval_forward(w, genotype, same, hidden,
                                                               masks=m))
    row = run(rc.Masks(embedding_rows=jnp.ones((7, 1)).at[3].set(0.0)))
    np.testing.assert_allclose(row.log_probs, run(rc.Masks(embedding=jnp.zeros((B, n)))).log_probs,
                               rtol=1e-14)
    np.testing.assert_allclose(row.log_probs, run(rc.Masks(x=jnp.zeros((B, n)))).log_probs,
                               rtol=1e-14)
    # dropouth masks every matrix product's state input (and h's rows of W0): with it at 0
    # the node matrices and those rows have no effect at all
    grads = jax.grad(lambda w_: jnp.sum(forward(w_, rc.Masks(h=jnp.zeros((B, n)))).log_probs))(w)
    assert not np.any(grads['Ws']) and not np.any(grads['W0'][n:])
    assert np.any(grads['W0'][:n])
