"""Hypergradients of bilevel problems on plain pytrees: DARTS first and second order and the
estimators hypergradient research compares them with.

The bilevel problem (DARTS eq. 3-4)::

    min_alpha L_val(w*(alpha), alpha)   s.t.   w*(alpha) = argmin_w L_train(w, alpha)

Every estimator takes two pure scalar functions ``train_loss(w, alpha)`` and
``val_loss(w, alpha)`` (batches closed over), the current ``w`` and ``alpha`` (any pytrees of
float arrays), and returns ``(grad_alpha, aux)`` with diagnostics in ``aux``. No Flax, no model
code: for the supernet, bind its ``loss(weights, alphas, batch_stats, batch)`` with
:func:`bind_loss`.

The inner (virtual) step is the weight optimiser itself, an optax transformation from its current
state, e.g. ``optax.chain(optax.add_decayed_weights(3e-4), optax.sgd(lr, momentum=0.9))``, which
gives DARTS's ``w' = w - xi (momentum * buf + grad_w L_train + wd * w)`` (clipping excluded).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

Pytree = Any
LossFn = Callable[[Pytree, Pytree], jax.Array]

# the estimators by name (make_estimator) and the inverse-Hessian solvers of `implicit`
ESTIMATORS = ('first_order', 'exact', 'finite_difference', 'unrolled', 'implicit')
IMPLICIT_SOLVERS = ('cg', 'neumann')


class HypergradientAux(NamedTuple):
  """Diagnostics. Fields an estimator does not compute are NaN (or -1 for counts)."""
  val_loss: jax.Array  # L_val at the point where grad_alpha was taken (w, or w' / w_K)
  train_loss: jax.Array  # L_train(w, alpha) where an inner step computes it, else NaN
  direct_norm: jax.Array  # ||grad_alpha L_val||, the first-order part
  indirect_norm: jax.Array  # ||hypergradient - direct part||
  v_norm: jax.Array  # ||grad_w L_val||: the vector the second-order term contracts
  solver_residual: jax.Array  # implicit: ||H q - v|| / ||v|| at the end
  solver_iterations: jax.Array  # implicit: iterations used (-1 elsewhere)
  converged: jax.Array  # implicit: residual <= tol (True elsewhere)


# ----------------------------------------------------------------------------------------------
# pytree arithmetic
# ----------------------------------------------------------------------------------------------


def tree_vdot(a: Pytree, b: Pytree) -> jax.Array:
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                             jax.tree_util.tree_leaves(b)))


def tree_norm(a: Pytree) -> jax.Array:
  return jnp.sqrt(tree_vdot(a, a))


def tree_axpy(alpha, x: Pytree, y: Pytree) -> Pytree:
  """alpha * x + y."""
  return jax.tree_util.tree_map(lambda xi, yi: alpha * xi + yi, x, y)


def tree_sub(a: Pytree, b: Pytree) -> Pytree:
  return jax.tree_util.tree_map(jnp.subtract, a, b)


def cosine_similarity(a: Pytree, b: Pytree) -> jax.Array:
  """<a, b> / (||a|| ||b||) over all leaves of two pytrees of the same structure."""
  _check_same_structure(a, b, 'a', 'b')
  return tree_vdot(a, b) / (tree_norm(a) * tree_norm(b))


def relative_error(estimate: Pytree, exact: Pytree) -> jax.Array:
  """||estimate - exact|| / ||exact|| (global 2-norms)."""
  _check_same_structure(estimate, exact, 'estimate', 'exact')
  return tree_norm(tree_sub(estimate, exact)) / tree_norm(exact)


# ----------------------------------------------------------------------------------------------
# input checks: one-line errors instead of tracebacks from inside JAX
# ----------------------------------------------------------------------------------------------


def _check_same_structure(a, b, name_a, name_b):
  sa, sb = jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b)
  if sa != sb:
    raise ValueError(f'{name_a} and {name_b} must be pytrees of the same structure; got {sa} '
                     f'and {sb}')
  shapes_a = [np.shape(x) for x in jax.tree_util.tree_leaves(a)]
  shapes_b = [np.shape(x) for x in jax.tree_util.tree_leaves(b)]
  if shapes_a != shapes_b:
    bad = next(i for i, (x, y) in enumerate(zip(shapes_a, shapes_b)) if x != y)
    raise ValueError(f'{name_a} and {name_b} differ in leaf {bad}: shapes {shapes_a[bad]} and '
                     f'{shapes_b[bad]}')


def _check_finite(tree, name):
  for x in jax.tree_util.tree_leaves(tree):
    if isinstance(x, jax.core.Tracer):
      return  # inside jit: values unknown
    if not np.issubdtype(np.asarray(x).dtype, np.floating):
      raise ValueError(f'{name} must hold floating-point arrays, got dtype {np.asarray(x).dtype}')
    if not np.all(np.isfinite(np.asarray(x))):
      raise ValueError(f'{name} holds non-finite values (NaN or inf)')


def _concrete(x) -> float | None:
  try:
    return float(x)
  except (jax.errors.ConcretizationTypeError, TypeError):
    return None


def _check_inputs(w, alpha):
  if not jax.tree_util.tree_leaves(w) or not jax.tree_util.tree_leaves(alpha):
    raise ValueError('w and alpha must be non-empty pytrees of arrays')
  _check_finite(w, 'w')
  _check_finite(alpha, 'alpha')


def _check_inner_state(inner: optax.GradientTransformation, inner_state, w):
  expected = jax.tree_util.tree_structure(jax.eval_shape(inner.init, w))
  got = jax.tree_util.tree_structure(inner_state)
  if expected != got:
    raise ValueError(f'inner_state does not belong to this inner optimiser and w: expected '
                     f'structure {expected}, got {got}')


# ----------------------------------------------------------------------------------------------
# second-order building blocks
# ----------------------------------------------------------------------------------------------


# Both products are forward over reverse, jax.jvp of a gradient along v: never a dense Hessian,
# and one backward pass with tangents. Every op's backward pass is therefore forward-mode
# differentiable (the CPU kernels' custom VJPs are written for it, ops/kernels.py).


def hvp(f: LossFn, w: Pytree, alpha: Pytree, v: Pytree) -> Pytree:
  """(d^2 f / dw dw) v, forward over reverse (see :func:`mixed_hvp`)."""
  _check_same_structure(w, v, 'w', 'v')
  return jax.jvp(lambda w_: _grads(f, w_, alpha)[0], (w,), (v,))[1]


def mixed_hvp(f: LossFn, w: Pytree, alpha: Pytree, v: Pytree) -> Pytree:
  """(d^2 f / dalpha dw) v: how grad_alpha f changes when w moves along v.

  Forward over reverse: the directional derivative of ``grad_alpha f`` along v, one backward
  pass carrying tangents. Reverse over reverse (``jax.grad`` of ``<grad_w f, v>``) is the same
  number but keeps the whole backward pass's values for a second backward pass: at the paper's
  size its program did not compile in 24 GB.
  """
  _check_same_structure(w, v, 'w', 'v')
  return jax.jvp(lambda w_: _grads(f, w_, alpha)[1], (w,), (v,))[1]


def _grads(f: LossFn, w: Pytree, alpha: Pytree) -> tuple[Pytree, Pytree]:
  # both gradients, even where one is discarded (XLA drops its computation): then every op
  # that reads w or alpha is under the reverse pass, whose rules the forward mode can
  # differentiate; an op outside it (e.g. one that reads only w, under grad_alpha alone) would
  # get the forward mode directly, and a custom_vjp op (ops/kernels.py) has none
  return jax.grad(f, argnums=(0, 1))(w, alpha)


def step_of_gradient(inner: optax.GradientTransformation, inner_state, w: Pytree
                     ) -> Callable[[Pytree], Pytree]:
  """``g -> w'``: the inner optimiser's real step from ``inner_state`` at ``w`` as a function of
  the gradient (eq. 6's w' = w - xi g for SGD); its VJP gives u = (dw'/dg)^T v."""
  return lambda g: optax.apply_updates(w, inner.update(g, inner_state, w)[0])


def inner_step(train_loss: LossFn, w: Pytree, alpha: Pytree, inner: optax.GradientTransformation,
               inner_state) -> tuple[Pytree, Any, jax.Array]:
  """One step of the weight optimiser on L_train: ``w' = w + update(grad_w L_train(w, alpha))``.

  Differentiable in alpha (DARTS eq. 6's virtual step). Returns ``(w', new_state, L_train(w))``.
  """
  loss, g = jax.value_and_grad(train_loss)(w, alpha)
  updates, new_state = inner.update(g, inner_state, w)
  return optax.apply_updates(w, updates), new_state, loss


def hypergradient_aux(val_loss, train_loss, direct, total, v_norm, residual=jnp.nan,
                      iterations=-1, converged=True) -> HypergradientAux:
  """The diagnostics of a hypergradient ``total`` whose first-order part is ``direct``."""
  return HypergradientAux(val_loss, jnp.asarray(train_loss, jnp.result_type(val_loss)),
                          tree_norm(direct), tree_norm(tree_sub(total, direct)), v_norm,
                          jnp.asarray(residual), jnp.asarray(iterations), jnp.asarray(converged))


# ----------------------------------------------------------------------------------------------
# estimators
# ----------------------------------------------------------------------------------------------


def first_order(train_loss: LossFn, val_loss: LossFn, w: Pytree, alpha: Pytree
                ) -> tuple[Pytree, HypergradientAux]:
  """DARTS first order: grad_alpha L_val(w, alpha), i.e. xi = 0 in eq. (6)."""
  _check_inputs(w, alpha)
  lv, (g_w, g_alpha) = jax.value_and_grad(val_loss, argnums=(0, 1))(w, alpha)
  return g_alpha, hypergradient_aux(lv, jnp.nan, g_alpha, g_alpha, tree_norm(g_w))


def unrolled(train_loss: LossFn, val_loss: LossFn, w: Pytree, alpha: Pytree,
             inner: optax.GradientTransformation, inner_state, inner_steps: int = 1,
             remat: bool = False) -> tuple[Pytree, HypergradientAux]:
  """Exact gradient of alpha -> L_val(w_K(alpha), alpha) through K = ``inner_steps`` real
  optimiser steps.

  K = 1 is DARTS second order (eq. 6, :func:`second_order`), computed exactly by differentiating
  through the step rather than by eq. (7)'s finite difference. ``remat`` recomputes each step's
  activations in the backward pass (``jax.checkpoint``): memory of one step instead of K.
  """
  if not isinstance(inner_steps, (int, np.integer)) or inner_steps < 1:
    raise ValueError(f'inner_steps={inner_steps!r}: the number of unrolled inner steps must be '
                     'an integer >= 1')
  _check_inputs(w, alpha)
  _check_inner_state(inner, inner_state, w)

  def objective(alpha_inner, alpha_val, dw):
    # alpha enters twice: through the inner steps (the indirect part of eq. 6) and directly in
    # L_val; dw = 0 makes the same backward pass also return v = grad_w L_val(w_K)
    def body(carry, _):
      w_k, state = carry
      w_next, state, loss = inner_step(train_loss, w_k, alpha_inner, inner, state)
      return (w_next, state), loss

    body = jax.checkpoint(body) if remat else body
    (w_k, _), train_losses = jax.lax.scan(body, (w, inner_state), None, length=inner_steps)
    return val_loss(jax.tree_util.tree_map(jnp.add, w_k, dw), alpha_val), train_losses[0]

  zeros = jax.tree_util.tree_map(jnp.zeros_like, w)
  (lv, lt), (indirect, direct, v) = jax.value_and_grad(objective, argnums=(0, 1, 2),
                                                       has_aux=True)(alpha, alpha, zeros)
  total = jax.tree_util.tree_map(jnp.add, indirect, direct)
  return total, hypergradient_aux(lv, lt, direct, total, tree_norm(v))


def second_order(train_loss: LossFn, val_loss: LossFn, w: Pytree, alpha: Pytree,
                 inner: optax.GradientTransformation, inner_state
                 ) -> tuple[Pytree, HypergradientAux]:
  """DARTS second order, eq. (6), exactly:

      grad_alpha L_val(w', alpha),   w' = w + update(g, w),   g = grad_w L_train(w, alpha)

  (the real step of ``inner``; for SGD ``w' = w - xi g``). Only g depends on alpha, so the
  chain rule gives

      grad_alpha L_val(w', alpha) + (d^2 L_train / dalpha dw) u,   u = (dw'/dg)^T v,
      v = grad_w' L_val(w', alpha)

  (for SGD u = -xi v: eq. 6's second term). The same number as :func:`unrolled` with K = 1,
  which differentiates through the step as one program; here the pieces run one after another,
  so the validation pass and the mixed second derivative never hold their memory at once.
  """
  _check_inputs(w, alpha)
  _check_inner_state(inner, inner_state, w)
  lt, g = jax.value_and_grad(train_loss)(w, alpha)
  w_prime, step_vjp = jax.vjp(step_of_gradient(inner, inner_state, w), g)
  lv, (v, g_alpha) = jax.value_and_grad(val_loss, argnums=(0, 1))(w_prime, alpha)
  (u,) = step_vjp(v)
  total = jax.tree_util.tree_map(jnp.add, g_alpha, mixed_hvp(train_loss, w, alpha, u))
  return total, hypergradient_aux(lv, lt, g_alpha, total, tree_norm(v))


def finite_difference(train_loss: LossFn, val_loss: LossFn, w: Pytree, alpha: Pytree,
                      inner: optax.GradientTransformation, inner_state, xi,
                      r: float = 0.01) -> tuple[Pytree, HypergradientAux]:
  """The paper's eq. (7): grad_alpha L_val(w', alpha) - xi * H v with the mixed second derivative
  H = d^2 L_train / dalpha dw estimated by central differences along v = grad_w' L_val(w', alpha):
  [grad_alpha L_train(w + R v) - grad_alpha L_train(w - R v)] / (2R), R = r / ||v||.

  ``xi`` is the inner step's learning rate (DARTS: the current weight learning rate).
  """
  if (value := _concrete(r)) is not None and not value > 0:  # a traced r is checked by its caller
    raise ValueError(f'r={r!r}: the finite-difference scale must be > 0 (the paper uses 0.01)')
  _check_inputs(w, alpha)
  _check_inner_state(inner, inner_state, w)
  w_prime, _, lt = inner_step(train_loss, w, alpha, inner, inner_state)
  lv, (v, g_alpha) = jax.value_and_grad(val_loss, argnums=(0, 1))(w_prime, alpha)
  v_norm = tree_norm(v)
  eps = r / v_norm
  grad_alpha_train = jax.grad(train_loss, argnums=1)
  g_plus = grad_alpha_train(tree_axpy(eps, v, w), alpha)
  g_minus = grad_alpha_train(tree_axpy(-eps, v, w), alpha)
  hv = jax.tree_util.tree_map(lambda p, m: (p - m) / (2 * eps), g_plus, g_minus)
  total = tree_axpy(-xi, hv, g_alpha)
  return total, hypergradient_aux(lv, lt, g_alpha, total, v_norm)


def conjugate_gradient(matvec: Callable[[Pytree], Pytree], b: Pytree, maxiter: int = 100,
                       tol: float = 1e-10):
  """Solves ``matvec(x) = b`` (symmetric positive definite) from x = 0.

  Returns ``(x, relative_residual, iterations)``; stops when ||r|| <= tol ||b||.
  """
  b_norm = tree_norm(b)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, b)

  def cond(state):
    _, _, _, rs, k = state
    return (k < maxiter) & (jnp.sqrt(rs) > tol * b_norm)

  def body(state):
    x, r, p, rs, k = state
    ap = matvec(p)
    step = rs / tree_vdot(p, ap)
    x = tree_axpy(step, p, x)
    r = tree_axpy(-step, ap, r)
    rs_new = tree_vdot(r, r)
    p = tree_axpy(rs_new / rs, p, r)
    return x, r, p, rs_new, k + 1

  x, _, _, rs, k = jax.lax.while_loop(cond, body, (zeros, b, b, tree_vdot(b, b), 0))
  return x, jnp.sqrt(rs) / b_norm, k


def neumann(matvec: Callable[[Pytree], Pytree], b: Pytree, terms: int = 20, lr: float = 0.01):
  """Truncated Neumann series: H^-1 b ~ lr * sum_{j=0}^{terms} (I - lr H)^j b.

  Returns ``(x, relative_residual, terms)``.
  """
  def body(_, carry):
    p, acc = carry
    p = tree_axpy(-lr, matvec(p), p)
    return p, jax.tree_util.tree_map(jnp.add, acc, p)

  _, acc = jax.lax.fori_loop(0, terms, body, (b, b))
  x = jax.tree_util.tree_map(lambda a: lr * a, acc)
  return x, tree_norm(tree_sub(matvec(x), b)) / tree_norm(b), terms


def implicit(train_loss: LossFn, val_loss: LossFn, w: Pytree, alpha: Pytree,
             solver: str = 'cg', maxiter: int = 100, tol: float = 1e-10,
             neumann_terms: int = 20, neumann_lr: float = 0.01, damping: float = 0.0
             ) -> tuple[Pytree, HypergradientAux]:
  """The implicit-function-theorem hypergradient at w (taken as the inner optimum):

      grad_alpha L_val - (d^2 L_train / dalpha dw) [d^2 L_train / dw dw + damping I]^-1 grad_w L_val

  with the inverse applied by conjugate gradient (``solver='cg'``) or a truncated Neumann series
  (``solver='neumann'``), Hessian-vector products forward over reverse. A solve that does not
  reach ``tol`` reports ``converged=False`` and its residual in aux.
  """
  if solver not in IMPLICIT_SOLVERS:
    raise ValueError(f"solver={solver!r}: must be 'cg' or 'neumann'")
  if damping < 0:
    raise ValueError(f'damping={damping!r}: must be >= 0')
  _check_inputs(w, alpha)
  lv, (v, g_alpha) = jax.value_and_grad(val_loss, argnums=(0, 1))(w, alpha)
  matvec = lambda q: tree_axpy(damping, q, hvp(train_loss, w, alpha, q))
  if solver == 'cg':
    if maxiter < 1:
      raise ValueError(f'maxiter={maxiter!r}: must be >= 1')
    q, residual, iterations = conjugate_gradient(matvec, v, maxiter, tol)
  else:
    if neumann_terms < 1 or not neumann_lr > 0:
      raise ValueError(f'neumann_terms={neumann_terms!r} must be >= 1 and '
                       f'neumann_lr={neumann_lr!r} > 0')
    q, residual, iterations = neumann(matvec, v, neumann_terms, neumann_lr)
  total = tree_sub(g_alpha, mixed_hvp(train_loss, w, alpha, q))
  return total, hypergradient_aux(lv, jnp.nan, g_alpha, total, tree_norm(v), residual,
                                  iterations, residual <= tol)


class Estimator(NamedTuple):
  """A hypergradient estimator with its settings bound, as optax binds an optimiser's:

      grad_alpha, aux = estimator.estimate(train_loss, val_loss, w, alpha, inner_state, xi)

  ``inner_state`` is the inner (weight) optimiser's current state and ``xi`` its current
  learning rate; estimators that take no inner step ignore both."""
  name: str
  estimate: Callable[..., tuple[Pytree, HypergradientAux]]


def _check_int(name: str, value, minimum: int = 1) -> None:
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
    raise ValueError(f'{name}={value!r}: must be an integer >= {minimum}')


def make_estimator(name: str, inner: optax.GradientTransformation | None = None, *,
                   unrolled_steps: int = 2, remat: bool = False, fd_r: float = 0.01,
                   implicit_solver: str = 'cg', implicit_maxiter: int = 20,
                   implicit_damping: float = 1.0, implicit_tol: float = 1e-10,
                   neumann_terms: int = 20, neumann_lr: float = 0.01) -> Estimator:
  """The one place an estimator's name and settings become a function (the search step, the
  reference verifier and the hypergradient study all build theirs here):

  - ``first_order``: grad_alpha L_val(w, alpha), xi = 0 in eq. (6);
  - ``exact``: eq. (6) differentiated through the real step of ``inner`` (:func:`second_order`);
  - ``finite_difference``: eq. (7), R = ``fd_r`` / ||v||;
  - ``unrolled``: through K = ``unrolled_steps`` real steps of ``inner`` (``remat``: recompute
    each step in the backward pass);
  - ``implicit``: the implicit-function-theorem hypergradient, ``implicit_solver`` 'cg' or
    'neumann'.

  Settings are checked here, each bad one a one-line ValueError.
  """
  if name not in ESTIMATORS:
    raise ValueError(f'estimator={name!r} is unknown; allowed: {", ".join(ESTIMATORS)}')
  _check_int('unrolled_steps', unrolled_steps)
  _check_int('implicit_maxiter', implicit_maxiter)
  _check_int('neumann_terms', neumann_terms)
  for key, value in (('fd_r', fd_r), ('neumann_lr', neumann_lr)):
    # a traced value (an r sweep compiled once) is checked by its caller
    if (concrete := _concrete(value)) is not None and not concrete > 0:
      raise ValueError(f'{key}={value!r}: must be > 0')
  if not implicit_damping >= 0:
    raise ValueError(f'implicit_damping={implicit_damping!r}: must be >= 0')
  if implicit_solver not in IMPLICIT_SOLVERS:
    raise ValueError(f"implicit_solver={implicit_solver!r}: must be 'cg' or 'neumann'")
  if name in ('exact', 'finite_difference', 'unrolled') and inner is None:
    raise ValueError(f'estimator={name!r} steps the inner optimiser: give inner=')

  def estimate(train_loss, val_loss, w, alpha, inner_state=None, xi=None):
    if name == 'first_order':
      return first_order(train_loss, val_loss, w, alpha)
    if name == 'exact':
      return second_order(train_loss, val_loss, w, alpha, inner, inner_state)
    if name == 'unrolled':
      return unrolled(train_loss, val_loss, w, alpha, inner, inner_state,
                      inner_steps=unrolled_steps, remat=remat)
    if name == 'finite_difference':
      if xi is None:
        raise ValueError("estimator='finite_difference' scales eq. (7)'s second-order term by "
                         'xi, the inner learning rate: give xi=')
      return finite_difference(train_loss, val_loss, w, alpha, inner, inner_state, xi=xi, r=fd_r)
    return implicit(train_loss, val_loss, w, alpha, solver=implicit_solver,
                    maxiter=implicit_maxiter, tol=implicit_tol, neumann_terms=neumann_terms,
                    neumann_lr=neumann_lr, damping=implicit_damping)

  return Estimator(name, estimate)


def bind_loss(loss: Callable, batch_stats: Pytree, batch) -> LossFn:
  """``(w, alpha) -> loss(w, alpha, batch_stats, batch)[0]``: a supernet loss with the
  ``loss(weights, alphas, batch_stats, batch) -> (loss, aux)`` contract, as estimators take it."""
  return lambda w, alpha: loss(w, alpha, batch_stats, batch)[0]
