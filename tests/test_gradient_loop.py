"""The search step with its derivatives as one loop (``gradient_loop``) against the same step
written out (``loop_gradients=False``: the hypergradient module's estimators), float64, every
state field to round-off; and the loop's purpose, each derivative program once in the program."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from darts_jax import gradient_loop as gl
from darts_jax import hypergradient as hg
from darts_jax import search as S
from darts_jax.supernet import SupernetConfig, make_loss
from tests.test_hypergradient import _supernet_problem
from tests.test_search import _loss_contract, _quadratic_problem

# the smallest supernet with every part the loop must carry: a cell recomputed in the backward
# pass (remat_cells), BatchNorm statistics, a convolution with its own derivative rules
CONFIG = SupernetConfig(C=2, layers=2, remat_cells=True,
                        primitives=('none', 'skip_connect', 'sep_conv_3x3'))


def _with_momentum(state, buf):
  # a non-trivial momentum buffer and step count: xi and the virtual step's momentum term
  inner = optax.tree_utils.tree_set(state.w_opt_state[1], trace=buf)
  return state._replace(w_opt_state=(state.w_opt_state[0], inner), step=jnp.asarray(3))


def _supernet_state(hp, seed):
  variables, alphas, train, val, buf = _supernet_problem(CONFIG, seed)
  state = S.init_search_state(hp, variables.weights, alphas, variables.batch_stats,
                              jax.random.PRNGKey(seed))
  return _with_momentum(state, buf), train, val


def _hparams(estimator, loop):
  return S.SearchHParams(epochs=2, steps_per_epoch=2, estimator=estimator, loop_gradients=loop,
                         w_weight_decay=0.01)


def _assert_looped_is_written_out(loss, estimator, state, train, val):
  step = jax.jit(lambda h, s, t, v: S.search_step(h, loss, s, t, v), static_argnums=0)
  (new, aux), (ref, ref_aux) = [step(_hparams(estimator, loop), state, train, val)
                                for loop in (True, False)]
  assert int(new.nonfinite_step) == -1 and int(new.step) == int(state.step) + 1
  for got, want in zip(jax.tree_util.tree_leaves((new, aux)),
                       jax.tree_util.tree_leaves((ref, ref_aux))):
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
  # the step moved both halves
  assert float(hg.tree_norm(hg.tree_sub(new.alphas, state.alphas))) > 0
  assert float(hg.tree_norm(hg.tree_sub(new.weights, state.weights))) > 0


@pytest.mark.parametrize('estimator', gl.ESTIMATORS)
def test_looped_step_is_the_written_out_step_in_closed_form(x64, estimator):
  """The closed-form bilevel problem of test_search, momentum, weight decay and xi all
  non-trivial."""
  w, a, train_loss, val_loss = _quadratic_problem()
  state = S.init_search_state(_hparams(estimator, True), w, a, {}, jax.random.PRNGKey(0))
  state = _with_momentum(state, {'x': jnp.array([0.2, -0.1, 0.4])})
  train, val = (jnp.ones((2, 1)), jnp.array([0, 1])), (-jnp.ones((2, 1)), jnp.array([2, 0]))
  _assert_looped_is_written_out(_loss_contract(train_loss, val_loss), estimator, state, train,
                                val)


@pytest.mark.slow
@pytest.mark.extended
def test_looped_exact_step_is_the_written_out_step_on_a_supernet(x64):
  """The mixed second derivative and the recomputed cells inside the loop's branches: exact
  second order on a random supernet."""
  state, train, val = _supernet_state(_hparams('exact', True), seed=3)
  _assert_looped_is_written_out(make_loss(CONFIG), 'exact', state, train, val)


def _program_lines(estimator, loop):
  """Lines of the step's lowered program (StableHLO, before XLA's optimisation)."""
  loss = make_loss(CONFIG)
  hp = _hparams(estimator, loop)
  state, train, val = _supernet_state(hp, seed=0)
  lowered = jax.jit(lambda s, t, v: S.search_step(hp, loss, s, t, v)).lower(state, train, val)
  return len(lowered.as_text().splitlines())


@pytest.mark.slow
@pytest.mark.extended  # a compile-size guard: 35 s of CI's 13 minutes
def test_each_derivative_program_appears_once(x64):
  # finite difference: five gradients written out, one in the loop (plus the points'
  # elementwise work, a large share in a network this small: measured 45,904 and 15,754 lines)
  fd_written, fd_looped = _program_lines('finite_difference', False), _program_lines(
      'finite_difference', True)
  fo_looped = _program_lines('first_order', True)
  assert fd_looped < fd_written / 2.5, (fd_looped, fd_written)
  # the loop's program barely grows with the number of calls
  assert fd_looped < 1.2 * fo_looped, (fd_looped, fo_looped)


def test_plan_names_the_estimators_it_has():
  with pytest.raises(ValueError, match="estimator='implicit' is not written as calls; allowed: "
                     'first_order, exact, finite_difference'):
    gl.plan('implicit', optax.sgd(0.1), {'w': jnp.zeros(2)}, {'a': jnp.zeros(2)}, None, 0.1,
            None, None)
