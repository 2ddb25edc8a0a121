"""Hypergradient estimators against closed forms, dense Hessians and brute-force differences."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from darts_jax import hypergradient as hg

# ---- the paper's toy problem (Fig. 2) ----------------------------------------------------------


def toy_val(w, a):
  return a * w - 2 * a + 1


def toy_train(w, a):
  return w**2 - 2 * a * w + a**2


@pytest.mark.parametrize('xi,buf', [(0.3, 0.0), (0.5, 0.7), (0.1, -1.5)])
def test_toy_estimators_closed_forms(x64, xi, buf):
  w, a = jnp.array(-2.0), jnp.array(2.0)
  inner = optax.sgd(xi, momentum=0.9)
  state = optax.tree_utils.tree_set(inner.init(w), trace=jnp.array(buf))
  # w' = w - xi (0.9 buf + 2w - 2a);  d/da L_val(w'(a), a) = w' + 2 xi a - 2
  w_prime = w - xi * (0.9 * buf + 2 * w - 2 * a)
  exact = w_prime + 2 * xi * a - 2
  g, aux = hg.second_order(toy_train, toy_val, w, a, inner, state)
  assert float(g) == pytest.approx(float(exact), rel=1e-12)
  assert float(aux.direct_norm) == pytest.approx(abs(float(w_prime) - 2), rel=1e-12)
  assert float(aux.train_loss) == pytest.approx(float(toy_train(w, a)))
  # L_train is quadratic: eq. (7)'s central difference is exact up to rounding
  g_fd, _ = hg.finite_difference(toy_train, toy_val, w, a, inner, state, xi=xi, r=0.01)
  assert float(g_fd) == pytest.approx(float(exact), rel=1e-10)
  g_first, _ = hg.first_order(toy_train, toy_val, w, a)
  assert float(g_first) == pytest.approx(float(w - 2))
  # IFT: (w - 2) - (-2) (2)^-1 a
  g_ift, aux = hg.implicit(toy_train, toy_val, w, a)
  assert float(g_ift) == pytest.approx(float(w - 2 + a), rel=1e-12) and bool(aux.converged)


def test_the_factory_gives_each_estimator_its_closed_form(x64):
  """``make_estimator`` by name, on the toy problem at xi = 0.3 with a momentum buffer of 0.7:
  exact and finite difference give eq. 6, unrolled K = 2 the two-step closed form, first
  order grad_alpha L_val, implicit the IFT value."""
  w, a, xi, buf = jnp.array(-2.0), jnp.array(2.0), 0.3, 0.7
  inner = optax.sgd(xi, momentum=0.9)
  state = optax.tree_utils.tree_set(inner.init(w), trace=jnp.array(buf))
  w1 = w - xi * (0.9 * buf + 2 * w - 2 * a)  # dw1/da = 2 xi
  w2 = w1 - xi * (0.9 * (0.9 * buf + 2 * w - 2 * a) + 2 * w1 - 2 * a)
  dw2 = 2 * xi - xi * (0.9 * 2 * -1 * 1 + 2 * 2 * xi - 2)  # d/da of w2's recursion
  expected = {'first_order': w - 2, 'exact': w1 + 2 * xi * a - 2,
              'finite_difference': w1 + 2 * xi * a - 2, 'unrolled': a * dw2 + w2 - 2,
              'implicit': w - 2 + a}
  for name, value in expected.items():
    est = hg.make_estimator(name, inner, unrolled_steps=2, implicit_damping=0.0,
                            implicit_maxiter=10)
    g, _ = est.estimate(toy_train, toy_val, w, a, state, xi)
    assert est.name == name
    assert float(g) == pytest.approx(float(value), rel=1e-10), name


def test_finite_difference_scale_may_be_traced(x64):
  # a sweep over r compiles once when r is an argument of the jitted function
  w, a, xi = jnp.array(-2.0), jnp.array(2.0), 0.3
  inner = optax.sgd(xi)
  fd = jax.jit(lambda r: hg.finite_difference(toy_train, toy_val, w, a, inner, inner.init(w),
                                              xi=xi, r=r)[0])
  exact = (w - xi * (2 * w - 2 * a)) + 2 * xi * a - 2
  for r in (1e-2, 1e-4):
    assert float(fd(jnp.asarray(r))) == pytest.approx(float(exact), rel=1e-8)


def test_xi_zero_is_first_order(x64):
  w, a = {'w': jnp.array([0.3, -1.0])}, jnp.array([0.5, 2.0])
  train = lambda w, a: jnp.sum(jnp.sin(w['w'] * a) ** 2)
  val = lambda w, a: jnp.sum(jnp.cos(w['w'] + a))
  inner = optax.sgd(0.0, momentum=0.9)
  g_so, _ = hg.unrolled(train, val, w, a, inner, inner.init(w))
  g_fo, _ = hg.first_order(train, val, w, a)
  np.testing.assert_allclose(g_so, g_fo, rtol=1e-14)


# ---- ridge regression: an inner problem with a closed-form solution -----------------------------


def _ridge():
  rng = np.random.default_rng(0)
  x_tr, x_val = rng.normal(size=(30, 5)), rng.normal(size=(20, 5))
  w_true = rng.normal(size=5)
  y_tr = x_tr @ w_true + 0.1 * rng.normal(size=30)
  y_val = x_val @ w_true + 0.1 * rng.normal(size=20)
  train = lambda w, lam: (0.5 * jnp.mean((x_tr @ w - y_tr) ** 2)
                          + 0.5 * jnp.exp(lam[0]) * jnp.sum(w**2))
  val = lambda w, lam: 0.5 * jnp.mean((x_val @ w - y_val) ** 2)
  lam = jnp.array([np.log(0.3)])
  a = x_tr.T @ x_tr / 30 + 0.3 * np.eye(5)
  w_star = np.linalg.solve(a, x_tr.T @ y_tr / 30)
  dw = -np.linalg.solve(a, 0.3 * w_star)  # dw*/dlam
  exact = (x_val.T @ (x_val @ w_star - y_val) / 20) @ dw
  return train, val, jnp.asarray(w_star), lam, float(exact), a


def test_ridge_implicit_is_exact_and_unrolled_converges(x64):
  train, val, w_star, lam, exact, a = _ridge()
  g_cg, aux = hg.implicit(train, val, w_star, lam, solver='cg', tol=1e-12)
  assert float(g_cg[0]) == pytest.approx(exact, rel=1e-9) and bool(aux.converged)
  lr = 1.0 / np.linalg.eigvalsh(a).max()
  errors = []
  for steps in (1, 10, 300):
    inner = optax.sgd(lr)
    g, _ = hg.unrolled(train, val, w_star, lam, inner, inner.init(w_star), inner_steps=steps)
    errors.append(abs(float(g[0]) - exact) / abs(exact))
  assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-6
  g_fo, _ = hg.first_order(train, val, w_star, lam)
  assert float(g_fo[0]) == 0.0 and exact != 0.0  # L_val does not depend on lam directly
  g_remat, _ = hg.unrolled(train, val, w_star, lam, optax.sgd(lr), optax.sgd(lr).init(w_star),
                           inner_steps=10, remat=True)
  g_plain, _ = hg.unrolled(train, val, w_star, lam, optax.sgd(lr), optax.sgd(lr).init(w_star),
                           inner_steps=10)
  np.testing.assert_allclose(g_remat, g_plain, rtol=1e-12)


def test_neumann_approaches_cg_and_cg_reports_non_convergence(x64):
  train, val, w_star, lam, exact, a = _ridge()
  lr = 1.0 / np.linalg.eigvalsh(a).max()
  g_cg, _ = hg.implicit(train, val, w_star, lam, solver='cg', tol=1e-12)
  g_few, _ = hg.implicit(train, val, w_star, lam, solver='neumann', neumann_terms=5,
                         neumann_lr=lr)
  g_many, aux = hg.implicit(train, val, w_star, lam, solver='neumann', neumann_terms=3000,
                            neumann_lr=lr)
  assert abs(float(g_many[0] - g_cg[0])) < 1e-8 * abs(float(g_cg[0]))
  assert abs(float(g_few[0] - g_cg[0])) > 1e3 * abs(float(g_many[0] - g_cg[0]))
  _, aux = hg.implicit(train, val, w_star, lam, solver='cg', maxiter=1, tol=1e-12)
  assert not bool(aux.converged) and float(aux.solver_residual) > 1e-3
  assert int(aux.solver_iterations) == 1


# ---- building blocks against dense Hessians ---------------------------------------------------


@pytest.mark.slow
def test_hvp_and_mixed_hvp_against_dense_hessian(x64):
  rng = np.random.default_rng(3)
  w = {'a': jnp.asarray(rng.normal(size=(3, 2))), 'b': jnp.asarray(rng.normal(size=2))}
  alpha = {'k': jnp.asarray(rng.normal(size=4))}
  x = jnp.asarray(rng.normal(size=(5, 3)))

  def f(w, alpha):
    h = jnp.tanh(x @ w['a'] + w['b'][None, :])
    return jnp.sum(jax.nn.softmax(alpha['k'])[None, :2] * h**2) + jnp.sum(alpha['k'] ** 3) * jnp.sum(h)

  v = {'a': jnp.asarray(rng.normal(size=(3, 2))), 'b': jnp.asarray(rng.normal(size=2))}
  flat_w, unravel_w = jax.flatten_util.ravel_pytree(w)
  flat_a, unravel_a = jax.flatten_util.ravel_pytree(alpha)
  flat_v = jax.flatten_util.ravel_pytree(v)[0]
  g = lambda fw, fa: f(unravel_w(fw), unravel_a(fa))
  h_ww = jax.hessian(g, argnums=0)(flat_w, flat_a)
  h_aw = jax.jacfwd(jax.grad(g, argnums=1), argnums=0)(flat_w, flat_a)
  np.testing.assert_allclose(jax.flatten_util.ravel_pytree(hg.hvp(f, w, alpha, v))[0],
                             h_ww @ flat_v, rtol=1e-12)
  np.testing.assert_allclose(jax.flatten_util.ravel_pytree(hg.mixed_hvp(f, w, alpha, v))[0],
                             h_aw @ flat_v, rtol=1e-12)


def test_cosine_and_relative_error():
  a, b = {'x': jnp.array([1.0, 0.0])}, {'x': jnp.array([1.0, 1.0])}
  assert float(hg.cosine_similarity(a, b)) == pytest.approx(1 / np.sqrt(2))
  assert float(hg.relative_error(a, b)) == pytest.approx(1 / np.sqrt(2))


# ---- bad input ---------------------------------------------------------------------------------


def test_bad_inputs_have_clear_errors():
  w, a = jnp.array(-2.0), jnp.array(2.0)
  inner = optax.sgd(0.1, momentum=0.9)
  with pytest.raises(ValueError, match='inner_steps=0: .* must be an integer >= 1'):
    hg.unrolled(toy_train, toy_val, w, a, inner, inner.init(w), inner_steps=0)
  with pytest.raises(ValueError, match='r=0.0: the finite-difference scale must be > 0'):
    hg.finite_difference(toy_train, toy_val, w, a, inner, inner.init(w), xi=0.1, r=0.0)
  with pytest.raises(ValueError, match='w and v must be pytrees of the same structure'):
    hg.hvp(toy_train, {'w': w}, a, [w])
  with pytest.raises(ValueError, match='w holds non-finite values'):
    hg.first_order(toy_train, toy_val, jnp.array(np.nan), a)
  with pytest.raises(ValueError, match='inner_state does not belong to this inner optimiser'):
    hg.unrolled(toy_train, toy_val, w, a, inner, optax.adam(0.1).init(w))
  with pytest.raises(ValueError, match="estimator='second' is unknown; allowed: first_order, "
                                       "exact, finite_difference, unrolled, implicit"):
    hg.make_estimator('second')
  with pytest.raises(ValueError, match="estimator='exact' steps the inner optimiser: give inner="):
    hg.make_estimator('exact')
  with pytest.raises(ValueError, match='implicit_damping=-1: must be >= 0'):
    hg.make_estimator('implicit', implicit_damping=-1)
  with pytest.raises(ValueError, match="solver='lu': must be 'cg' or 'neumann'"):
    hg.implicit(toy_train, toy_val, w, a, solver='lu')


# ---- exact second order through a real (tiny) search network -------------------------------


# ---- exact (the chain rule in pieces) equals unrolled K = 1 (one program) -----------------


def test_exact_equals_unrolled_one_step_for_any_inner_optimiser(x64):
  """u = (dw'/dg)^T v is taken by the optimiser's own VJP: Adam's step is not linear in g."""
  w = {'w': jnp.array([0.3, -1.0, 0.7])}
  a = jnp.array([0.5, 2.0, -0.4])
  train = lambda w, a: jnp.sum(jnp.sin(w['w'] * a) ** 2 + w['w'] ** 2 * jnp.exp(a))
  val = lambda w, a: jnp.sum(jnp.cos(w['w'] + a) * w['w'])
  for inner in (optax.adam(0.1), optax.chain(optax.add_decayed_weights(0.1),
                                             optax.sgd(0.2, momentum=0.9))):
    state = inner.init(w)
    g_exact, aux_exact = hg.second_order(train, val, w, a, inner, state)
    g_unrolled, aux_unrolled = hg.unrolled(train, val, w, a, inner, state, inner_steps=1)
    assert float(hg.relative_error(g_exact, g_unrolled)) <= 1e-14
    assert float(aux_exact.val_loss) == pytest.approx(float(aux_unrolled.val_loss), rel=1e-15)


def _supernet_problem(config, seed, image=8):
  from darts_jax.supernet import init_alphas, init_supernet
  variables = init_supernet(jax.random.PRNGKey(seed), config, (image, image), jnp.float64)
  alphas = init_alphas(jax.random.PRNGKey(seed + 1), config, jnp.float64, scale=0.5)
  key_t, key_v, key_b = jax.random.split(jax.random.PRNGKey(seed + 2), 3)
  train = (jax.random.normal(key_t, (4, image, image, 3), jnp.float64), jnp.array([0, 1, 2, 3]))
  val = (jax.random.normal(key_v, (4, image, image, 3), jnp.float64), jnp.array([3, 2, 1, 0]))
  leaves, tree = jax.tree_util.tree_flatten(variables.weights)
  keys = jax.random.split(key_b, len(leaves))
  buf = tree.unflatten([0.1 * jax.random.normal(k, x.shape, x.dtype)
                        for k, x in zip(keys, leaves)])
  return variables, alphas, train, val, buf


@pytest.mark.slow
@pytest.mark.extended
def test_exact_equals_unrolled_and_central_differences_on_random_supernets(x64):
  """eq. 6 by the chain rule in pieces (``second_order``) against jax.grad through the whole
  step (``unrolled``, K = 1), float64, to 1e-12, on supernets with per-cell remat (as the
  paper-size search runs) and random weights, momentum buffers and batches. Ops: one of each
  kind (pooling, identity, separable and dilated convolution), to keep the compile short; the
  reference file covers all eight. Then both against float64 central differences of the
  objective itself."""
  from darts_jax.supernet import SupernetConfig, make_loss
  inner = optax.chain(optax.add_decayed_weights(3e-4), optax.sgd(0.1, momentum=0.9))
  config = SupernetConfig(C=2, layers=2, remat_cells=True, primitives=(
      'none', 'max_pool_3x3', 'skip_connect', 'sep_conv_3x3', 'dil_conv_3x3'))
  loss = make_loss(config)

  @jax.jit
  def both(weights, alphas, stats, train, val, buf):
    state = optax.tree_utils.tree_set(inner.init(weights), trace=buf)
    args = (hg.bind_loss(loss, stats, train), hg.bind_loss(loss, stats, val), weights, alphas,
            inner, state)
    return hg.second_order(*args)[0], hg.unrolled(*args, inner_steps=1)[0]

  # arrays are arguments, not closed-over constants, which XLA would spend minutes folding
  @jax.jit
  def objective(alphas, weights, stats, train, val, buf):
    """L_val(w'(alpha), alpha) with the same virtual step, forward only."""
    state = optax.tree_utils.tree_set(inner.init(weights), trace=buf)
    w_prime, _, _ = hg.inner_step(hg.bind_loss(loss, stats, train), weights, alphas, inner, state)
    return loss(w_prime, alphas, stats, val)[0]

  rng = np.random.default_rng(0)
  for seed in (0, 5):
    variables, alphas, train, val, buf = _supernet_problem(config, seed)
    data = (variables.weights, variables.batch_stats, train, val, buf)
    exact, unrolled = both(variables.weights, alphas, variables.batch_stats, train, val, buf)
    assert float(hg.relative_error(exact, unrolled)) <= 1e-12, seed
    assert float(hg.tree_norm(exact)) > 0
    # and both are the derivative of the objective: float64 central differences along a random
    # direction (eps 1e-6: the loss is piecewise smooth, and at 1e-4 a ReLU or max-pool kink
    # is crossed)
    d = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(size=a.shape)), alphas)
    eps = 1e-6
    numeric = (objective(hg.tree_axpy(eps, d, alphas), *data)
               - objective(hg.tree_axpy(-eps, d, alphas), *data)) / (2 * eps)
    assert float(hg.tree_vdot(exact, d)) == pytest.approx(float(numeric), rel=1e-6), seed
