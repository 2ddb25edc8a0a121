"""Search health (darts_jax.health): the architecture Hessian against its definition, Lanczos
against a dense eigensolver, DARTS-ES's rule against a hand computation, the collapse
diagnostics against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from darts_jax import health
from darts_jax.supernet import SupernetConfig, init_alphas, init_supernet, make_loss


@pytest.mark.slow
def test_architecture_hessian_is_the_second_derivative_of_the_validation_loss(x64):
  # a small supernet in float64, training-mode BatchNorm (as RobustDARTS takes it): 2 nodes,
  # 3 ops, so n = 2 kinds x 5 edges x 3 ops = 30
  config = SupernetConfig(C=2, layers=2, nodes=2, multiplier=2,
                          primitives=('none', 'avg_pool_3x3', 'dil_conv_3x3'))
  variables = init_supernet(jax.random.PRNGKey(0), config, (8, 8), jnp.float64)
  alphas = jax.tree_util.tree_map(lambda a: 100 * a,  # away from uniform: a curved point
                                  init_alphas(jax.random.PRNGKey(1), config, jnp.float64))
  x = jax.random.normal(jax.random.PRNGKey(2), (4, 8, 8, 3), jnp.float64)
  batch = (x, jnp.arange(4) % 10)
  loss_fn = make_loss(config, train=True)
  loss = lambda a: loss_fn(variables.weights, a, variables.batch_stats, batch)[0]
  flat, unravel = ravel_pytree(alphas)
  n = flat.shape[0]
  assert n == 30

  # 7 columns per pass: the last pass holds the remainder
  hessian = jax.jit(lambda a, wd: health.architecture_hessian(loss, a, wd, chunk=7))
  h = np.asarray(hessian(alphas, 0.0))
  # against jax.hessian (reverse over forward, a separate implementation)
  np.testing.assert_allclose(h, jax.jit(jax.hessian(lambda f: loss(unravel(f))))(flat), rtol=1e-9,
                             atol=1e-12)
  # against central differences of the gradient, column by column
  grad = jax.jit(jax.grad(lambda f: loss(unravel(f))))
  eps = 1e-5
  fd = np.stack([(grad(flat.at[i].add(eps)) - grad(flat.at[i].add(-eps))) / (2 * eps)
                 for i in range(n)], axis=1)
  np.testing.assert_allclose(h, fd, rtol=1e-6, atol=1e-8 * np.abs(h).max())
  assert np.abs(h).max() > 1e-3  # not a trivially flat point
  # the architecture's weight decay shifts the diagonal, hence every eigenvalue, by itself
  np.testing.assert_allclose(np.asarray(hessian(alphas, 1e-3)) - h, 1e-3 * np.eye(n),
                             atol=1e-12)
  # 12 Lanczos steps on the network's Hessian-vector products: the dominant eigenvalue (the
  # Hessian is singular: each edge's softmax is unchanged by a constant added to its alphas,
  # so 10 of 30 eigenvalues are 0 and the Krylov space is smaller than n)
  dense = health.dense_eigenvalues(h)
  ritz = health.lanczos_eigenvalues(loss, alphas, 12, jax.random.PRNGKey(3))
  assert ritz[-1] == pytest.approx(dense[-1], rel=1e-6)
  assert np.sum(np.abs(dense) < 1e-10 * np.abs(dense).max()) >= 10


def _symmetric(eigenvalues, seed=0):
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eigenvalues),) * 2))
  return q @ np.diag(eigenvalues) @ q.T


def test_lanczos_finds_the_extreme_eigenvalues_of_a_known_spectrum(x64):
  ev = np.concatenate([[-3.0], np.linspace(-1, 1, 58), [5.0]])
  a = jnp.asarray(_symmetric(ev))
  v0 = jax.random.normal(jax.random.PRNGKey(0), (60,), jnp.float64)
  full = health.ritz_values(health.lanczos(lambda v: a @ v, v0, 60))
  np.testing.assert_allclose(full, np.sort(ev), atol=1e-10)
  # 20 steps: the isolated extremes converge first (Kaniel-Paige); the interior does not
  ritz = health.ritz_values(health.lanczos(lambda v: a @ v, v0, 20))
  assert ritz[-1] == pytest.approx(5.0, abs=1e-10)
  assert ritz[0] == pytest.approx(-3.0, abs=1e-6)
  assert health.spectrum(ritz).dominant == pytest.approx(5.0, abs=1e-10)


def test_lanczos_stops_where_the_krylov_space_ends(x64):
  # three distinct eigenvalues: the Krylov space of any start has dimension 3; the steps after
  # it carry no information and must not add spurious Ritz values (a 0 would exceed -1 here)
  ev = np.repeat([-4.0, -2.0, -1.0], 10)
  a = jnp.asarray(_symmetric(ev, seed=1))
  v0 = jax.random.normal(jax.random.PRNGKey(1), (30,), jnp.float64)
  np.testing.assert_allclose(health.ritz_values(health.lanczos(lambda v: a @ v, v0, 8)),
                             [-4.0, -2.0, -1.0], atol=1e-10)
  with pytest.raises(ValueError, match=r'steps=31: Lanczos needs 1 <= steps <= n = 30'):
    health.lanczos(lambda v: a @ v, v0, 31)


def test_darts_es_fires_as_robustdarts_rule_says():
  # an evaluation every 2 epochs; the eigenvalue triples at epoch 20. Hand computation: the
  # mean about evaluation j averages evaluations j-2..j+2; at epoch 20 the latest mean is about
  # evaluation 8 (epoch 16): (4 + 3) / 5 = 1.4 against 1.0 four evaluations before, about
  # epoch 8: 1.4 > 1.3, but epoch 8 < 10, too early. At epoch 22: (3 + 6) / 5 = 1.8 against
  # the mean about epoch 10: it fires, and the search returns to epoch 10 = 22 - 12.
  epochs = list(range(0, 40, 2))
  ev = [1.0] * 10 + [3.0] * 10
  assert health.early_stop(epochs[:11], ev[:11]) is None
  decision = health.early_stop(epochs[:12], ev[:12])
  assert decision == health.EarlyStop(epoch=22, stop_epoch=10, ratio=pytest.approx(1.8))
  # the early means average fewer evaluations: evaluations 0..2, then 0..3
  np.testing.assert_allclose(health.local_means([1, 2, 3, 4, 5, 6], 5), [2, 2.5, 3, 4])
  # a flat or falling eigenvalue never stops; nor one whose growth stays under the factor
  assert health.early_stop(epochs, [1.0] * 20) is None
  assert health.early_stop(epochs, list(np.linspace(2, 1, 20))) is None
  assert health.early_stop(epochs, list(1.01 ** np.arange(20))) is None
  rule = health.EarlyStopRule(window=3, delta=1, factor=1.3, start_epoch=0)
  assert health.early_stop([0, 1, 2, 3], [1, 1, 1, 9], rule) == health.EarlyStop(
      3, 1, pytest.approx((1 + 1 + 9) / 3))


def test_darts_ada_raises_the_weight_decay_tenfold_up_to_its_maximum():
  assert health.raised_weight_decay(3e-4) == pytest.approx(3e-3)
  assert health.raised_weight_decay(3e-3) == pytest.approx(3e-2)
  assert health.raised_weight_decay(0.03) is None
  assert health.raised_weight_decay(float(np.float32(0.03))) is None  # as the state holds it
  assert health.raised_weight_decay(0.02) == 0.03


def test_collapse_diagnostics_closed_forms():
  uniform = np.full((2, 8), 1 / 8)
  one_hot = np.eye(8)[[2, 5]]
  assert health.edge_entropy(uniform) == pytest.approx([np.log(8)] * 2)
  assert health.edge_entropy(one_hot) == pytest.approx([0, 0])
  p = np.array([[0.5, 0.3, 0.2]])
  assert health.edge_entropy(p)[0] == pytest.approx(-(0.5 * np.log(0.5) + 0.3 * np.log(0.3)
                                                       + 0.2 * np.log(0.2)))
  assert health.edge_margin(p)[0] == pytest.approx(0.2)
  # rows weighted by a PC-DARTS edge beta are normalised first
  assert health.edge_margin(0.25 * p)[0] == pytest.approx(0.2)
  genotype = {'normal': [['skip_connect', 0], ['sep_conv_3x3', 1], ['max_pool_3x3', 0],
                         ['skip_connect', 2]], 'normal_concat': [2, 3],
              'reduce': [['avg_pool_3x3', 0], ['dil_conv_5x5', 1]], 'reduce_concat': [2]}
  d = health.collapse_diagnostics({'normal': uniform, 'reduce': one_hot}, genotype,
                                  ('skip_connect', 'max_pool_3x3', 'avg_pool_3x3'))
  assert d == {'parameter_free_normal': 3.0, 'parameter_free_reduce': 1.0,
               'entropy_normal': pytest.approx(np.log(8)), 'margin_normal': 0.0,
               'entropy_reduce': 0.0, 'margin_reduce': 1.0}
  assert health.second_order_share(3.0, 1.0) == 0.25
  assert health.second_order_share(0.0, 0.0) == 0.0
