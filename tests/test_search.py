"""The search step's pieces against closed forms: the per-epoch cosine schedule, the virtual step
being the real optimiser, the alpha-then-weight order, the NaN guard, the estimator settings."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from darts_jax import hypergradient as hg
from darts_jax import search as S


def test_cosine_schedule_is_constant_within_an_epoch():
  hp = S.SearchHParams(epochs=4, steps_per_epoch=3, w_lr=0.1, w_lr_min=0.01)
  lr = [float(S.current_weight_lr(hp, t)) for t in range(12)]
  expected = [0.01 + 0.09 * 0.5 * (1 + np.cos(np.pi * (t // 3) / 4)) for t in range(12)]
  np.testing.assert_allclose(lr, expected, rtol=1e-6)
  assert lr[0] == pytest.approx(0.1) and lr[2] == lr[0] and lr[3] < lr[2]


def _quadratic_problem():
  """L_train(w, a) = 0.5 |w - a|^2 + 0.1 sum w^3 ; L_val(w, a) = sum (w * a) + sum a^2."""
  w = {'x': jnp.array([0.3, -0.2, 0.5])}
  a = {'normal': jnp.array([[0.1, -0.4, 0.2]]), 'reduce': jnp.array([[0.0, 0.3, -0.1]])}

  def train_loss(w, a):
    return 0.5 * jnp.sum((w['x'] - a['normal'][0]) ** 2) + 0.1 * jnp.sum(w['x'] ** 3) + \
        0.0 * jnp.sum(a['reduce'])

  def val_loss(w, a):
    return jnp.sum(w['x'] * a['reduce'][0]) + jnp.sum(a['normal'] ** 2)

  return w, a, train_loss, val_loss


def test_virtual_step_is_the_real_optimiser_without_clipping():
  w, a, train_loss, _ = _quadratic_problem()
  hp = S.SearchHParams(epochs=2, steps_per_epoch=2, grad_clip=1e6, w_weight_decay=0.01)
  real = S.weight_optimizer(hp)
  state = real.init(w)
  # advance once so that the momentum buffer and the step count are non-trivial
  g0 = jax.grad(train_loss)(w, a)
  _, state = real.update(g0, state, w)
  w_virtual, _, _ = hg.inner_step(train_loss, w, a, S.weight_inner_optimizer(hp), state[1])
  updates, _ = real.update(jax.grad(train_loss)(w, a), state, w)
  np.testing.assert_allclose(optax.apply_updates(w, updates)['x'], w_virtual['x'], rtol=1e-7)
  # and in closed form: w' = w - xi (m buf + g + wd w), xi = lr of step 1 (epoch 0)
  g = jax.grad(train_loss)(w, a)['x']
  buf = g0['x'] + hp.w_weight_decay * w['x']
  expected = w['x'] - hp.w_lr * (hp.w_momentum * buf + g + hp.w_weight_decay * w['x'])
  np.testing.assert_allclose(w_virtual['x'], expected, rtol=1e-6)


def _loss_contract(train_loss, val_loss):
  """Adapts the closed-form losses to the supernet contract: batch[1] selects train or val."""

  def loss(weights, alphas, batch_stats, batch):
    images, labels = batch
    value = jnp.where(images[0, 0] > 0, train_loss(weights, alphas), val_loss(weights, alphas))
    logits = jnp.zeros((labels.shape[0], 3)) + weights['x'][None, :]
    return value, _Aux(batch_stats, logits)

  return loss


class _Aux(NamedTuple):
  batch_stats: dict
  logits: jax.Array


@pytest.mark.slow
def test_step_is_alpha_first_then_weights_in_closed_form(x64):
  w, a, train_loss, val_loss = _quadratic_problem()
  loss = _loss_contract(train_loss, val_loss)
  hp = S.SearchHParams(epochs=1, steps_per_epoch=5, estimator='exact', grad_clip=1e6)
  state = S.init_search_state(hp, w, a, {}, jax.random.PRNGKey(0))
  train = (jnp.ones((2, 1)), jnp.array([0, 1]))
  val = (-jnp.ones((2, 1)), jnp.array([2, 0]))
  new, aux = S.search_step(hp, loss, state, train, val)

  # eq. (6) by hand: w' = w - xi (g + wd w) (zero momentum), grad of L_val(w'(a), a)
  def objective(alpha):
    wx = w['x'] - hp.w_lr * (jax.grad(train_loss)(w, alpha)['x'] + hp.w_weight_decay * w['x'])
    return val_loss({'x': wx}, alpha)

  g_alpha = jax.grad(objective)(a)
  adam = S.alpha_optimizer(hp)
  upd, _ = adam.update(g_alpha, adam.init(a), a)
  alphas = optax.apply_updates(a, upd)
  for cell in ('normal', 'reduce'):
    np.testing.assert_allclose(new.alphas[cell], alphas[cell], rtol=1e-12)
  # the weight step uses the NEW alphas
  g_w = jax.grad(train_loss)(w, alphas)['x'] + hp.w_weight_decay * w['x']
  np.testing.assert_allclose(new.weights['x'], w['x'] - hp.w_lr * g_w, rtol=1e-12)
  assert int(new.step) == 1 and int(new.metrics.steps) == 1
  assert int(new.metrics.train_examples) == 2


def test_warmup_step_is_the_weight_step_alone(x64):
  """PC-DARTS's warm-up: SGD on L_train at the current alphas, which and whose Adam state stay
  as they are; the epoch's alpha-side sums stay 0."""
  w, a, train_loss, val_loss = _quadratic_problem()
  loss = _loss_contract(train_loss, val_loss)
  hp = S.SearchHParams(epochs=2, steps_per_epoch=5, warmup_epochs=1, grad_clip=1e6)
  state = S.init_search_state(hp, w, a, {}, jax.random.PRNGKey(0))
  train = (jnp.ones((2, 1)), jnp.array([0, 1]))
  val = (-jnp.ones((2, 1)), jnp.array([2, 0]))
  new, _ = S.warmup_step(hp, loss, state, train, val)
  g_w = jax.grad(train_loss)(w, a)['x'] + hp.w_weight_decay * w['x']
  np.testing.assert_allclose(new.weights['x'], w['x'] - hp.w_lr * g_w, rtol=1e-12)
  for x, y in zip(jax.tree_util.tree_leaves((new.alphas, new.alpha_opt_state)),
                  jax.tree_util.tree_leaves((state.alphas, state.alpha_opt_state))):
    np.testing.assert_array_equal(x, y)
  assert int(new.step) == 1 and int(new.metrics.steps) == 1
  assert float(new.metrics.train_loss) == pytest.approx(float(train_loss(w, a)), rel=1e-12)
  assert float(new.metrics.val_loss) == 0 and float(new.metrics.hypergrad_norm) == 0
  with pytest.raises(ValueError, match=r'warmup_epochs=3: must be an integer in \[0, epochs=2\]'):
    S.SearchHParams(epochs=2, warmup_epochs=3)


def test_nonfinite_step_keeps_the_last_good_state():
  w, a, train_loss, val_loss = _quadratic_problem()
  loss = _loss_contract(train_loss, val_loss)
  hp = S.SearchHParams(epochs=1, steps_per_epoch=5, estimator='first_order')
  state = S.init_search_state(hp, w, a, {}, jax.random.PRNGKey(0))
  train, val = (jnp.ones((2, 1)), jnp.array([0, 1])), (-jnp.ones((2, 1)), jnp.array([2, 0]))
  step = jax.jit(lambda s, t, v: S.search_step(hp, loss, s, t, v))
  good, _ = step(state, train, val)
  broken = good._replace(weights={'x': good.weights['x'].at[0].set(jnp.nan)})
  after, _ = step(broken, train, val)
  assert int(after.nonfinite_step) == 1  # the step that met the NaN
  assert int(after.step) == 1  # not advanced
  np.testing.assert_array_equal(after.alphas['normal'], good.alphas['normal'])
  later, _ = step(after, train, val)  # every later step is a no-op
  assert int(later.nonfinite_step) == 1 and int(later.step) == 1


def test_metrics_reset_at_each_epoch():
  w, a, train_loss, val_loss = _quadratic_problem()
  loss = _loss_contract(train_loss, val_loss)
  hp = S.SearchHParams(epochs=3, steps_per_epoch=2, estimator='first_order')
  state = S.init_search_state(hp, w, a, {}, jax.random.PRNGKey(0))
  train, val = (jnp.ones((2, 1)), jnp.array([0, 1])), (-jnp.ones((2, 1)), jnp.array([2, 0]))
  counts = []
  for _ in range(5):
    state, _ = S.search_step(hp, loss, state, train, val)
    counts.append(int(state.metrics.steps))
  assert counts == [1, 2, 1, 2, 1]


def test_bad_hparams_are_one_line_errors():
  with pytest.raises(ValueError, match="estimator='second' is unknown; allowed: first_order"):
    S.SearchHParams(estimator='second')
  with pytest.raises(ValueError, match='unrolled_steps=0'):
    S.SearchHParams(unrolled_steps=0)
  with pytest.raises(ValueError, match='fd_r=0'):
    S.SearchHParams(fd_r=0)
  with pytest.raises(ValueError, match="loop_gradients='yes': must be True or False"):
    S.SearchHParams(loop_gradients='yes')
  with pytest.raises(ValueError, match="implicit_solver='lu': must be 'cg' or 'neumann'"):
    S.SearchHParams(implicit_solver='lu')
  with pytest.raises(ValueError, match='w_lr=0'):
    S.SearchHParams(w_lr=0)


def test_the_estimator_is_built_from_the_hparams():
  """``search.hypergradient_estimator`` is ``make_estimator`` with the hparams' settings: the
  unrolled depth reaches the estimator (K = 3 real SGD steps on L_train = 0.5 (w - a)^2, closed
  form)."""
  hp = S.SearchHParams(estimator='unrolled', unrolled_steps=3, w_momentum=0.0,
                       w_weight_decay=0.0, w_lr=0.25, w_lr_min=0.25)
  est = S.hypergradient_estimator(hp)
  assert est.name == 'unrolled'
  train = lambda w, a: 0.5 * jnp.sum((w - a) ** 2)
  val = lambda w, a: jnp.sum(w)  # d L_val / d w_K = 1, no direct alpha term
  w, a = jnp.array([2.0]), jnp.array([1.0])
  inner = S.weight_inner_optimizer(hp)
  g, _ = est.estimate(train, val, w, a, inner.init(w), 0.25)
  # w_{k+1} = w_k - 0.25 (w_k - a): dw_K/da = 1 - 0.75^K
  np.testing.assert_allclose(g, [1 - 0.75 ** 3], rtol=1e-6)
