"""A search step's derivatives as the iterations of one loop, so that XLA compiles each distinct
derivative program once.

A DARTS search step differentiates one loss several times at different points: first order twice
(L_val for alpha, then L_train for w), the exact eq. (6) three times plus a mixed second
derivative, eq. (7) five times. Written out in one jitted function, every call is another copy of
the network's forward and backward pass in the program. XLA compiles each copy (nested jits are
inlined), so compile time and the compiler's own memory grow with the number of calls; at the
paper's size the exact step's compilation alone outgrew 24 GB. A loop body is compiled once.

Here a step is a list of *points*: call i evaluates one derivative program at the point
``points[i](results)`` picks from the results of the calls before it,

    results[i] = program_i(points[i](results)),

and everything between two calls (an optimiser step, a finite-difference offset) is cheap
elementwise work recomputed where it is needed. :func:`run` runs the calls as one
``lax.fori_loop`` whose body holds each program once.

The estimators below are the same numbers as ``hypergradient.first_order``, ``second_order``
and ``finite_difference`` (tested to float64 round-off); those stay the definitions.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from darts_jax import hypergradient as hg

Pytree = Any

GRADIENT, MIXED = 0, 1  # the derivative programs (Call.program)
ESTIMATORS = ('first_order', 'exact', 'finite_difference')  # the ones written as calls here


class Probe(NamedTuple):
  """Where a call evaluates: the loss at (weights, alphas) on ``batch``; ``direction`` is the
  u of the mixed second derivative (None for a gradient)."""
  weights: Pytree
  alphas: Pytree
  batch: Any
  direction: Pytree = None


class Evaluation(NamedTuple):
  """What a call returns. The mixed program fills only ``g_alpha`` (the rest are zeros)."""
  loss: jax.Array
  aux: Any  # the loss's aux, e.g. supernet.LossAux(batch_stats, logits)
  g_w: Pytree
  g_alpha: Pytree


class Call(NamedTuple):
  program: int  # GRADIENT: value and gradient in (w, alpha); MIXED: (d^2 L / dalpha dw) u
  point: Callable[[Callable[[int], Evaluation]], Probe]  # (results by index) -> Probe


class Plan(NamedTuple):
  """Calls and what they compute from their results: for an estimator (:func:`plan`),
  ``finish(results)`` is ``(grad_alpha, HypergradientAux)``."""
  calls: tuple[Call, ...]
  finish: Callable[[Callable[[int], Evaluation]], Any]


def programs(loss: Callable, batch_stats: Pytree, shapes: Evaluation
             ) -> tuple[Callable, Callable]:
  """The two derivative programs of ``loss(weights, alphas, batch_stats, batch) -> (loss,
  aux)``, as functions of a :class:`Probe`; ``shapes`` (:func:`evaluation_shapes`) is what both
  return."""

  def gradient(p: Probe) -> Evaluation:
    (value, aux), (g_w, g_alpha) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
        p.weights, p.alphas, batch_stats, p.batch)
    return Evaluation(value, aux, g_w, g_alpha)

  def mixed(p: Probe) -> Evaluation:
    # eq. (6)'s second-order term, forward over reverse (hypergradient.mixed_hvp)
    g_alpha = hg.mixed_hvp(hg.bind_loss(loss, batch_stats, p.batch), p.weights, p.alphas,
                           p.direction)
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return zeros._replace(g_alpha=g_alpha)

  return gradient, mixed


def evaluation_shapes(loss: Callable, batch_stats: Pytree, p: Probe) -> Evaluation:
  """The gradient program's result at ``p``, as shapes: the loss's value and aux from a trace
  of the forward pass, the gradients' from their arguments. (``jax.eval_shape`` of the gradient
  program would trace its backward pass once more: a tenth to a half of a step's trace time.)"""
  value, aux = jax.eval_shape(loss, p.weights, p.alphas, batch_stats, p.batch)
  g_w, g_alpha = jax.eval_shape(lambda *args: args, p.weights, p.alphas)
  return Evaluation(value, aux, g_w, g_alpha)


def run(loss: Callable, batch_stats: Pytree, calls: Sequence[Call]) -> Callable[[int], Evaluation]:
  """Runs ``calls`` in order inside one loop; returns their results by index."""
  # call i reads only the results of calls before it, so the first call's point needs none
  shapes = evaluation_shapes(loss, batch_stats, calls[0].point(lambda k: None))
  gradient, mixed = programs(loss, batch_stats, shapes)
  kinds = sorted({c.program for c in calls})
  chosen = [(gradient, mixed)[k] for k in kinds]

  def point(call: Call, results) -> Probe:
    p = call.point(results)
    if MIXED in kinds and p.direction is None:  # every branch of the loop body has one shape
      p = p._replace(direction=jax.tree_util.tree_map(jnp.zeros_like, p.weights))
    return p

  def read(stacked):
    return lambda k: jax.tree_util.tree_map(lambda r: r[k], stacked)

  def body(i, stacked):
    probe = jax.lax.switch(i, [lambda s, c=c: point(c, read(s)) for c in calls], stacked)
    if len(chosen) == 1:
      result = chosen[0](probe)
    else:
      which = jnp.asarray([kinds.index(c.program) for c in calls])[i]
      result = jax.lax.switch(which, chosen, probe)
    return jax.tree_util.tree_map(lambda r, x: r.at[i].set(x), stacked, result)

  stacked = jax.tree_util.tree_map(lambda s: jnp.zeros((len(calls),) + s.shape, s.dtype),
                                   shapes)  # results start as zeros
  return read(jax.lax.fori_loop(0, len(calls), body, stacked))


def concatenate(plans: Sequence[Plan]) -> tuple[tuple[Call, ...], list[Callable]]:
  """Several plans as one list of calls (one loop, each program compiled once for all of them),
  and each plan's ``finish`` over that list's results."""
  calls, finishes, offset = [], [], 0
  for p in plans:
    def shifted(r, offset=offset):  # the plan's own result k is the list's k + offset
      return lambda k: r(k + offset)
    calls += [c._replace(point=lambda r, point=c.point, s=shifted: point(s(r))) for c in p.calls]
    finishes.append(lambda r, finish=p.finish, s=shifted: finish(s(r)))
    offset += len(p.calls)
  return tuple(calls), finishes


# ----------------------------------------------------------------------------------------------
# the estimators as calls
# ----------------------------------------------------------------------------------------------


def plan(name: str, inner: optax.GradientTransformation, w: Pytree, alpha: Pytree, inner_state,
         xi, train, val, fd_r: float = 0.01) -> Plan:
  """The calls of estimator ``name`` (one of :data:`ESTIMATORS`) at (w, alpha), the inner
  optimiser ``inner`` from ``inner_state`` (learning rate ``xi``), batches ``train``, ``val``."""
  if name not in ESTIMATORS:
    raise ValueError(f'estimator={name!r} is not written as calls; allowed: '
                     f'{", ".join(ESTIMATORS)}')

  step = hg.step_of_gradient(inner, inner_state, w)  # w'(g)
  def second_order_aux(r, total):  # calls 0 and 1: L_train at w, L_val at w'
    return hg.hypergradient_aux(r(1).loss, r(0).loss, r(1).g_alpha, total,
                                hg.tree_norm(r(1).g_w))

  at_w_train = Call(GRADIENT, lambda r: Probe(w, alpha, train))
  at_w_prime_val = Call(GRADIENT, lambda r: Probe(step(r(0).g_w), alpha, val))

  if name == 'first_order':  # grad_alpha L_val(w, alpha)
    def finish(r):
      g = r(0).g_alpha
      return g, hg.hypergradient_aux(r(0).loss, jnp.nan, g, g, hg.tree_norm(r(0).g_w))
    return Plan((Call(GRADIENT, lambda r: Probe(w, alpha, val)),), finish)

  if name == 'exact':  # eq. (6): grad_alpha L_val(w') + (d^2 L_train / dalpha dw) u
    def u(r):  # u = (dw'/dg)^T v, v = grad_w' L_val(w'): for SGD, -xi v
      return jax.vjp(step, r(0).g_w)[1](r(1).g_w)[0]

    def finish(r):
      total = jax.tree_util.tree_map(jnp.add, r(1).g_alpha, r(2).g_alpha)
      return total, second_order_aux(r, total)
    return Plan((at_w_train, at_w_prime_val,
                 Call(MIXED, lambda r: Probe(w, alpha, train, u(r)))), finish)

  # eq. (7): H v by central differences of grad_alpha L_train at w +- R v, R = fd_r / ||v||
  def eps(r):
    return fd_r / hg.tree_norm(r(1).g_w)

  def offset(sign):
    return lambda r: Probe(hg.tree_axpy(sign * eps(r), r(1).g_w, w), alpha, train)

  def finish(r):
    hv = jax.tree_util.tree_map(lambda p, m: (p - m) / (2 * eps(r)), r(2).g_alpha,
                                r(3).g_alpha)
    total = hg.tree_axpy(-xi, hv, r(1).g_alpha)
    return total, second_order_aux(r, total)
  return Plan((at_w_train, at_w_prime_val, Call(GRADIENT, offset(1.0)),
               Call(GRADIENT, offset(-1.0))), finish)
