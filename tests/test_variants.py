"""The DARTS family's own mathematics (``darts_jax.variants``, ``darts_jax.methods``): GDAS's
straight-through Gumbel sample, DrNAS's Dirichlet, SDARTS's perturbations, DARTS-'s auxiliary
skip, against closed forms, float64 quadrature, sampling statistics and limits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import genotypes, methods, variants
from darts_jax import search as S
from darts_jax.spaces import StepContext, cnn
from darts_jax.supernet import (CellMixing, SupernetConfig, architecture_mixing, init_alphas,
                                init_supernet, make_mixing_loss)

# small cells (2 nodes, 4 ops) keep the network tests' compile short
OPS = ('none', 'skip_connect', 'avg_pool_3x3', 'sep_conv_3x3')
CFG = dict(init_channels=4, layers=3, nodes=2, multiplier=2, stem_multiplier=3, primitives=OPS,
           partial_channels=4, gdas_tau_max=10.0, gdas_tau_min=0.1, drnas_kl_scale=1e-3,
           sdarts_epsilon=0.3, sdarts_pgd_steps=7, darts_minus_beta=1.0)


def _batch(dtype=jnp.float32, n=4, size=8, seed=0):
  key = jax.random.PRNGKey(5 + n + 100 * seed)
  return (jax.random.normal(key, (n, size, size, 3), dtype), jnp.arange(n) % 10)


def _space(name, **changes):
  return methods.build(name, {**CFG, **changes}, cnn.space_from_run, 10, 3)


# GDAS -----------------------------------------------------------------------------------------

def test_gdas_tau_is_linear_from_ten_to_a_tenth():
  assert variants.gdas_tau(0, 250) == 10.0
  assert variants.gdas_tau(249, 250) == pytest.approx(0.1)
  assert variants.gdas_tau(124.5, 250) == pytest.approx(5.05)


def test_gumbel_one_hot_is_the_argmax_sample_with_the_straight_through_gradient(x64):
  alpha = jax.random.normal(jax.random.PRNGKey(0), (6, 8), jnp.float64)
  g = jax.random.gumbel(jax.random.PRNGKey(1), alpha.shape, jnp.float64)
  tau = 0.7
  h = variants.gumbel_one_hot(alpha, g, tau)
  chosen = np.argmax(np.asarray(jax.nn.log_softmax(alpha) + g), -1)
  np.testing.assert_array_equal(h, np.eye(8)[chosen])  # exactly one-hot, for any tau
  # d/dalpha sum(c * h): only the chosen op's weight carries gradient, that of the
  # Gumbel-softmax p = softmax((log_softmax(alpha) + g) / tau): dp_i/dalpha_j = p_i (d_ij - p_j)
  # / tau (the log_softmax's shift cancels in p)
  c = jax.random.normal(jax.random.PRNGKey(2), alpha.shape, jnp.float64)
  grad = jax.grad(lambda a: jnp.sum(c * variants.gumbel_one_hot(a, g, tau)))(alpha)
  p = np.asarray(jax.nn.softmax((jax.nn.log_softmax(alpha) + g) / tau))
  rows = np.arange(6)
  pc = p[rows, chosen]
  expected = (np.asarray(c)[rows, chosen] * pc)[:, None] * (np.eye(8)[chosen] - p) / tau
  np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-14)


def test_gdas_soft_sample_tends_to_the_hard_network_as_tau_goes_to_zero(x64):
  """The Gumbel-softmax p at tau -> 0 is the one-hot h: the soft network (mixing p) tends to
  the hard one GDAS computes (mixing h), which is the network of the sampled ops alone."""
  space = _space('gdas')
  weights, stats = space.init(jax.random.PRNGKey(0), (1, 8, 8, 3), jnp.float64)
  alphas = space.init_architecture(jax.random.PRNGKey(1), jnp.float64)
  alphas = jax.tree_util.tree_map(lambda a: a * 1e3, alphas)  # spread the ops apart
  batch = _batch(jnp.float64)
  context = StepContext(jax.random.PRNGKey(3), 249, 250)  # the last epoch's tau 0.1
  hard, _ = jax.jit(space.make_step_loss(True, None)(context).loss)(weights, alphas, stats,
                                                                     batch)
  mixing_loss = jax.jit(make_mixing_loss(cnn.config_from_run({**CFG, 'partial_channels': 1}, 10,
                                                             3)))
  own = architecture_mixing(alphas, jnp.float64, 2)

  def at(tau):  # the same draws as the method's (fold_in per cell kind)
    out = {}
    for i, kind in enumerate(('normal', 'reduce')):
      g = jax.random.gumbel(jax.random.fold_in(context.key, i), alphas[kind].shape, jnp.float64)
      out[kind] = own[kind]._replace(ops=jax.nn.softmax(
          (jax.nn.log_softmax(alphas[kind]) + g) / tau))
    return mixing_loss(weights, out, stats, batch)[0]

  errors = [abs(float(at(tau)) - float(hard)) for tau in (1.0, 1e-2, 1e-4)]
  assert errors[-1] < 1e-10 and errors[0] > errors[-1]


def test_gdas_genotype_keeps_the_two_strongest_pairs_even_from_one_input():
  primitives = ('none', 'skip_connect', 'sep_conv_3x3')
  normal = np.zeros((14, 3))
  normal[0] = [0.0, 3.0, 2.9]  # node 0: softmax 0.51 and 0.46 on input 0, 1/3 on input 1
  g = genotypes.derive_genotype_by_pairs({'normal': normal, 'reduce': normal}, primitives)
  assert list(g.normal[:2]) == [('skip_connect', 0), ('sep_conv_3x3', 0)]
  # the original's rule takes one op from each of the two strongest inputs instead
  assert list(genotypes.derive_genotype({'normal': normal, 'reduce': normal},
                                        primitives).normal[:2]) == [('skip_connect', 0),
                                                              ('skip_connect', 1)]


# DrNAS ----------------------------------------------------------------------------------------

def test_dirichlet_kl_matches_quadrature_of_the_beta_case(x64):
  # K = 2: Dir(a, b) is Beta(a, b); KL(Beta(a, b) || Beta(1, 1)) = E[log f] by quadrature
  from math import lgamma
  for a, b in ((1.5, 2.5), (3.0, 1.2), (1.0, 1.0)):  # bounded densities
    x = np.linspace(1e-9, 1 - 1e-9, 2_000_001)
    log_f = lgamma(a + b) - lgamma(a) - lgamma(b) + (a - 1) * np.log(x) + (b - 1) * np.log1p(-x)
    expected = np.trapezoid(np.exp(log_f) * log_f, x)
    got = float(variants.dirichlet_kl(jnp.array([a, b], jnp.float64)))
    assert got == pytest.approx(expected, abs=2e-4)
  assert float(variants.dirichlet_kl(jnp.ones(8, jnp.float64))) == pytest.approx(0, abs=1e-12)


def test_dirichlet_samples_are_reparameterised(x64):
  """The sample mean is c / c0 and the mean of the samples' gradients is the gradient of the
  mean, d(c_i / c0)/dc_j = (d_ij c0 - c_i) / c0^2, within the sampling error."""
  c = jnp.array([0.8, 1.5, 3.0], jnp.float64)
  keys = jax.random.split(jax.random.PRNGKey(0), 20_000)
  theta = jax.vmap(lambda k: jax.random.dirichlet(k, c, dtype=jnp.float64))(keys)
  jac = jax.vmap(lambda k: jax.jacobian(lambda c: jax.random.dirichlet(k, c,
                                                                    dtype=jnp.float64))(c))(keys)
  c0 = float(jnp.sum(c))
  np.testing.assert_allclose(theta.mean(0), c / c0, atol=4 * float(theta.std(0).max()) / 141)
  expected = (np.eye(3) * c0 - np.asarray(c)[:, None]) / c0**2
  se = np.asarray(jac.std(0)) / np.sqrt(len(keys))
  assert np.all(np.abs(np.asarray(jac.mean(0)) - expected) < 5 * se + 1e-6)


def test_drnas_genotype_ranks_by_the_concentration_mean():
  space = _space('drnas', partial_channels=1)
  alphas = jax.device_get(space.init_architecture(jax.random.PRNGKey(0), jnp.float32))
  alphas = {k: np.asarray(v) * 500 for k, v in alphas.items()}
  c = {k: np.where(v > 0, v, np.expm1(np.minimum(v, 0))) + 1 for k, v in alphas.items()}
  mean = {k: v / v.sum(-1, keepdims=True) for k, v in c.items()}
  # the original's rule on the mean, by hand: per node the 2 inputs of largest non-none mean
  gene, start = [], 0
  for i in range(2):
    rows = mean['normal'][start:start + i + 2, 1:]
    for j in sorted(range(i + 2), key=lambda j: -rows[j].max())[:2]:
      gene.append((OPS[1 + int(np.argmax(rows[j]))], j))
    start += i + 2
  assert list(space.genotype(alphas).normal) == gene


@pytest.mark.slow
@pytest.mark.extended
def test_drnas_hypergradients_hold_the_sample_fixed(x64):
  """Exact second order equals jax.grad through one real inner step (unrolled, K = 1) on the
  sampled objective: both differentiate the one Dirichlet sample of the step."""
  space = _space('drnas', partial_channels=1, layers=1)
  weights, stats = space.init(jax.random.PRNGKey(0), (1, 4, 4, 3), jnp.float64)
  alphas = space.init_architecture(jax.random.PRNGKey(1), jnp.float64)
  loss = S.Stepped(space.make_step_loss(True, None))
  out = {}
  for name, options in (('exact', {}), ('unrolled', {'unrolled_steps': 1})):
    hp = S.SearchHParams(epochs=2, steps_per_epoch=3, estimator=name, w_lr=0.1,
                         loop_gradients=False, **options)
    state = S.init_search_state(hp, weights, alphas, stats, jax.random.PRNGKey(2))
    out[name] = jax.jit(lambda state: S.alpha_gradient(
        hp, S.losses_at(hp, loss, state).loss, state, _batch(jnp.float64, size=4),
        _batch(jnp.float64, 6, size=4))[0])(state)
  for kind in ('normal', 'reduce'):
    np.testing.assert_allclose(out['exact'][kind], out['unrolled'][kind], rtol=1e-9, atol=1e-13)
    assert float(jnp.abs(out['exact'][kind]).max()) > 1e-6


# SDARTS ---------------------------------------------------------------------------------------

def test_sdarts_epsilon_and_projection():
  assert variants.sdarts_epsilon(0, 50) == pytest.approx(0.03)
  assert variants.sdarts_epsilon(25, 50) == pytest.approx(0.165)
  m = jnp.array([[0.5, 1.4, -0.2], [-0.1, -0.3, -0.2]])
  np.testing.assert_allclose(variants.project_rows(m), [[0.5 / 1.5, 1 / 1.5, 0], [1, 0, 0]])


def test_random_perturbation_is_uniform_within_epsilon_then_projected():
  m = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(0), (14, 8)))
  key, eps = jax.random.PRNGKey(1), 0.2
  u = jax.random.uniform(key, m.shape, m.dtype, -1.0, 1.0) * eps
  assert float(jnp.abs(u).max()) <= eps
  np.testing.assert_array_equal(variants.random_perturbation(key, m, eps),
                                variants.project_rows(m + u))


def test_pgd_ascends_and_is_dropped_when_it_cannot():
  m = {'a': jnp.full((3, 4), 0.25)}
  c = jnp.array([1.0, 0.0, 0.0, 0.0])
  linear = lambda x: jnp.sum(x['a'] @ c)  # noqa: E731 - grows with the first op's weight
  out = variants.pgd_perturbation(linear, jax.random.PRNGKey(0), m, 0.1, 7)
  assert float(linear(out)) > float(linear(m))
  np.testing.assert_allclose(out['a'].sum(-1), 1.0, rtol=1e-6)
  # sign ascent raises op 0 by 2 eps / 7 a step until the radius clips it: 0.25 + 0.1, then
  # the projection divides by the row sum
  assert np.all(np.asarray(out['a'][:, 0]) >= 0.35 / (1 + 0.1 + 1e-6))
  peak = lambda x: -jnp.sum((x['a'] - 0.25) ** 2)  # noqa: E731 - no perturbation helps
  np.testing.assert_array_equal(
      variants.pgd_perturbation(peak, jax.random.PRNGKey(0), m, 0.1, 7)['a'], m['a'])


@pytest.mark.parametrize('name', ['sdarts_rs', 'sdarts_adv'])
def test_sdarts_perturbs_the_weight_step_only(name):
  space = _space(name, partial_channels=1)
  weights, stats = space.init(jax.random.PRNGKey(0), (1, 8, 8, 3), jnp.float32)
  alphas = space.init_architecture(jax.random.PRNGKey(1), jnp.float32)
  context = StepContext(jax.random.PRNGKey(2), 10, 50)
  losses = space.make_step_loss(True, None)(context)
  batch = _batch()
  plain = jax.jit(space.make_loss(True, None))(weights, alphas, stats, batch)[0]
  assert float(jax.jit(losses.loss)(weights, alphas, stats, batch)[0]) == float(plain)
  perturbed = float(jax.jit(losses.weight_loss)(weights, alphas, stats, batch)[0])
  if name == 'sdarts_rs':  # the same draw by hand: U(-eps, eps) on softmax(alpha), projected
    eps = variants.sdarts_epsilon(10, 50, 0.3)
    mixing = architecture_mixing(alphas, jnp.float32, 2)
    by_hand = {k: m._replace(ops=variants.random_perturbation(
        jax.random.fold_in(context.key, i), m.ops, eps))
        for i, (k, m) in enumerate(mixing.items())}
    config = cnn.config_from_run({**CFG, 'partial_channels': 1}, 10, 3)
    expected = jax.jit(make_mixing_loss(config))(weights, by_hand, stats, batch)[0]
    assert perturbed == pytest.approx(float(expected), rel=1e-6)
  assert perturbed != float(plain)


# DARTS- ---------------------------------------------------------------------------------------

def test_darts_minus_beta_decays_linearly():
  assert variants.darts_minus_beta(0, 50) == 1.0
  assert variants.darts_minus_beta(49, 50) == pytest.approx(0.02)
  assert variants.darts_minus_beta(50, 50) == 0.0


def test_auxiliary_skip_is_beta_times_a_skip_connection(x64):
  """With the auxiliary FactorizedReduce given the weights of the candidate skip_connect's, the
  supernet with beta * skip(x) added on every edge is DARTS's with the skip column's mixing
  weight raised by beta (the mixed op is linear in its mixing weights)."""
  config = SupernetConfig(C=4, layers=3, nodes=2, multiplier=2, primitives=OPS,
                          auxiliary_skip=True)
  darts_config = SupernetConfig(C=4, layers=3, nodes=2, multiplier=2, primitives=OPS)
  variables = init_supernet(jax.random.PRNGKey(0), config, (8, 8), jnp.float64)
  weights = jax.tree_util.tree_map(lambda x: x, variables.weights)
  for cell in weights.values():  # aux weights := candidate skip weights (reduction cells)
    for group in cell.values() if isinstance(cell, dict) else ():
      if isinstance(group, dict) and 'auxiliary_skip' in group and group['auxiliary_skip']:
        group['auxiliary_skip'] = group['skip_connect']
  darts_weights, darts_stats = jax.tree_util.tree_map(lambda x: x, (weights,
                                                                     variables.batch_stats))
  for tree in (darts_weights, darts_stats):
    for cell in tree.values():
      for group in cell.values() if isinstance(cell, dict) else ():
        if isinstance(group, dict):
          group.pop('auxiliary_skip', None)
  alphas = init_alphas(jax.random.PRNGKey(1), config, jnp.float64)
  batch = _batch(jnp.float64)
  beta = 0.37
  aux = jax.jit(make_mixing_loss(config))(
      weights, architecture_mixing(alphas, jnp.float64, 2, beta), variables.batch_stats, batch)[0]
  skip = OPS.index('skip_connect')
  raised = {k: CellMixing(m.ops.at[:, skip].add(beta)) for k, m in
            architecture_mixing(alphas, jnp.float64, 2).items()}
  darts = jax.jit(make_mixing_loss(darts_config))(darts_weights, raised, darts_stats, batch)[0]
  assert float(aux) == pytest.approx(float(darts), rel=1e-12)
  assert any('auxiliary_skip' in g for c in weights.values() if isinstance(c, dict)
             for g in c.values() if isinstance(g, dict) and g.get('auxiliary_skip'))



# the methods ----------------------------------------------------------------------------------

def test_every_method_is_a_config_key_with_one_line_errors():
  assert set(methods.METHODS) == {'darts', 'pc_darts', 'gdas', 'drnas', 'sdarts_rs',
                                  'sdarts_adv', 'darts_minus'}
  with pytest.raises(ValueError, match=r"method='gdass' is unknown; allowed: darts, pc_darts"):
    methods.get('gdass')
  for name, key, bad, match in (
      ('gdas', 'gdas_tau_min', 0.0, 'tau_min > 0'),
      ('drnas', 'drnas_kl_scale', -1.0, 'must be >= 0'),
      ('sdarts_adv', 'sdarts_pgd_steps', 0, 'integer >= 1'),
      ('sdarts_rs', 'sdarts_epsilon', 0.01, "exceed the schedule's start"),
      ('darts_minus', 'darts_minus_beta', -0.5, 'must be >= 0')):
    with pytest.raises(ValueError, match=match):
      _space(name, **{key: bad})


def test_stepped_methods_draw_from_the_step_alone():
  """A step's context is a function of (rng, step): a resumed search draws the same samples."""
  hp = S.SearchHParams(epochs=4, steps_per_epoch=5)
  rng = jax.random.PRNGKey(7)
  a, b = S.step_context(hp, rng, 12), S.step_context(hp, rng, 12)
  np.testing.assert_array_equal(a.key, b.key)
  assert int(a.epoch) == 2 and a.epochs == 4
  assert not np.array_equal(S.step_context(hp, rng, 13).key, a.key)


# each method with one estimator of the gradient loop and one inline one, every estimator with
# two methods (all 25 pairs ran once by hand: README "The DARTS family"); each pair is a compile
# the inline estimators (unrolled, implicit) compile a program of their own per method: the
# extended tier
_INLINE = pytest.mark.extended
PAIRS = [('gdas', 'exact'), pytest.param('gdas', 'implicit', marks=_INLINE),
         ('drnas', 'finite_difference'), pytest.param('drnas', 'unrolled', marks=_INLINE),
         ('sdarts_rs', 'first_order'), pytest.param('sdarts_rs', 'implicit', marks=_INLINE),
         ('sdarts_adv', 'exact'), pytest.param('sdarts_adv', 'unrolled', marks=_INLINE),
         ('darts_minus', 'finite_difference'), ('darts_minus', 'first_order')]


@pytest.mark.slow
@pytest.mark.parametrize('name, estimator', PAIRS)
def test_methods_step_with_the_estimators(name, estimator):
  space = _space(name, layers=1, partial_channels=2)
  weights, stats = space.init(jax.random.PRNGKey(0), (1, 4, 4, 3), jnp.float32)
  alphas = space.init_architecture(jax.random.PRNGKey(1), jnp.float32)
  hp = S.SearchHParams(epochs=2, steps_per_epoch=2, estimator=estimator)
  state = S.init_search_state(hp, weights, alphas, stats, jax.random.PRNGKey(2))
  new, aux = jax.jit(lambda s: S.search_step(hp, S.Stepped(space.make_step_loss(True, None)), s,
                                             _batch(n=8, size=4), _batch(n=8, size=4, seed=1)))(
                                                 state)
  assert int(new.nonfinite_step) == -1 and np.isfinite(float(aux.val_loss))
  assert all(float(jnp.abs(new.alphas[k] - alphas[k]).max()) > 0 for k in alphas)
  assert float(new.metrics.hypergrad_norm) > 0
