"""The DARTS search step: one alpha step (eq. 6 / 7 or another estimator), then one weight step.

Everything the search carries from step to step is one pytree, :class:`SearchState`, and one
jitted pure function advances it: ``state, metrics = step(state, train_batch, val_batch)``.
The step is written for a device mesh: batches split over the mesh's ``'data'`` axis, the
state replicated and donated. One device is the default.

The optimisers are the original's (``shared/REFERENCE.md``), in optax terms:

- weights: ``chain(clip (PyTorch's), add_decayed_weights, sgd(cosine per epoch, momentum))``;
- alphas: ``chain(add_decayed_weights, adam)`` (PyTorch's Adam: L2 added to the gradient).

The second-order virtual step is the weight optimiser itself minus the clipping, run from its
current state (momentum buffer and step count, so xi = the current learning rate).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from darts_jax import gradient_loop
from darts_jax import hypergradient as hg
from darts_jax.optim import clip_by_global_norm_torch, cosine_per_epoch, epoch_sums, keep_if_finite
from darts_jax.spaces import SearchSpace, StepContext, StepLoss

Pytree = Any
Batch = tuple[jax.Array, jax.Array]  # (images NHWC, integer labels)


@dataclasses.dataclass(frozen=True)
class SearchHParams:
  """Bilevel optimisation settings; defaults are the paper's (``train_search.py``)."""
  # scaled together by the linear batch-size rule (config lr_scaling)
  LEARNING_RATES: ClassVar[tuple[str, ...]] = ('w_lr', 'w_lr_min', 'alpha_lr')
  epochs: int = 50
  steps_per_epoch: int = 391  # ceil(25,000 / 64)
  w_lr: float = 0.025
  w_lr_min: float = 0.001
  w_momentum: float = 0.9
  w_weight_decay: float = 3e-4
  grad_clip: float = 5.0
  alpha_lr: float = 3e-4
  alpha_b1: float = 0.5
  alpha_b2: float = 0.999
  alpha_eps: float = 1e-8
  alpha_weight_decay: float = 1e-3
  estimator: str = 'exact'  # see hypergradient.make_estimator
  unrolled_steps: int = 2  # K for estimator='unrolled' ('exact' is K = 1)
  remat: bool = False  # rematerialise each unrolled step in the backward pass
  fd_r: float = 0.01  # eq. (7)'s R = fd_r / ||v||
  implicit_solver: str = 'cg'
  implicit_maxiter: int = 20
  implicit_damping: float = 1.0
  neumann_terms: int = 20
  neumann_lr: float = 0.01
  # run the step's loss derivatives as one loop (gradient_loop), so XLA compiles each distinct
  # derivative program once; first_order, exact and finite_difference (the others run inline)
  loop_gradients: bool = True
  # epochs of weight steps alone before the bilevel steps start (PC-DARTS: 15 of 50): the
  # search loop runs warmup_step in them; search_step itself is always the bilevel step
  warmup_epochs: int = 0
  # the weights' decay as a value in the optimiser state instead of a constant of the program,
  # so that a run can change it without recompiling (DARTS-ADA raises it on an early stop)
  weight_decay_in_state: bool = False

  def __post_init__(self):
    warmup = self.warmup_epochs
    if (not isinstance(warmup, (int, np.integer)) or isinstance(warmup, bool)
        or not 0 <= warmup <= self.epochs):
      raise ValueError(f'warmup_epochs={self.warmup_epochs!r}: must be an integer in '
                       f'[0, epochs={self.epochs}]')
    for name in ('epochs', 'steps_per_epoch'):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f'{name}={value!r}: must be an integer >= 1')
    for name in ('w_lr', 'alpha_lr'):
      if not getattr(self, name) > 0:
        raise ValueError(f'{name}={getattr(self, name)!r}: must be > 0')
    for name in ('w_lr_min', 'w_weight_decay', 'alpha_weight_decay'):
      if not getattr(self, name) >= 0:
        raise ValueError(f'{name}={getattr(self, name)!r}: must be >= 0')
    if not self.grad_clip > 0:
      raise ValueError(f'grad_clip={self.grad_clip!r}: must be > 0')
    if not isinstance(self.loop_gradients, (bool, np.bool_)):
      raise ValueError(f'loop_gradients={self.loop_gradients!r}: must be True or False')
    hypergradient_estimator(self)  # the estimator's name and settings, checked once


class SearchMetrics(NamedTuple):
  """Sums over the current epoch's steps (reset by the epoch's first step)."""
  steps: jax.Array
  train_loss: jax.Array  # L_train(w, alpha) of the weight step
  train_correct: jax.Array  # top-1 hits of that forward pass
  train_examples: jax.Array
  val_loss: jax.Array  # L_val where the alpha gradient was taken (w' for second order)
  hypergrad_norm: jax.Array
  # ||grad_alpha L_val|| and ||hypergradient - that||: the first- and second-order parts'
  # norms (the health report's second-order share)
  direct_norm: jax.Array
  indirect_norm: jax.Array


class SearchState(NamedTuple):
  step: jax.Array  # completed search steps; epoch = step // steps_per_epoch
  weights: Pytree
  alphas: Pytree  # {'normal': (E, O), 'reduce': (E, O)}
  batch_stats: Pytree  # BN running statistics (read only by evaluation)
  w_opt_state: Any
  alpha_opt_state: Any
  rng: jax.Array  # base key; step t augments with fold_in(rng, t)
  metrics: SearchMetrics
  nonfinite_step: jax.Array  # -1, or the first step whose loss or gradient was not finite


# ----------------------------------------------------------------------------------------------
# optimisers
# ----------------------------------------------------------------------------------------------


def weight_lr_schedule(hp: SearchHParams) -> optax.Schedule:
  return cosine_per_epoch(hp.w_lr, hp.w_lr_min, hp.epochs, hp.steps_per_epoch)


def weight_inner_optimizer(hp: SearchHParams) -> optax.GradientTransformation:
  """The weight optimiser without clipping: SGD, momentum, L2 weight decay. It is both the
  second half of the real weight step and the virtual step of eq. (6)."""
  decay = (optax.inject_hyperparams(optax.add_decayed_weights)(weight_decay=hp.w_weight_decay)
           if hp.weight_decay_in_state else optax.add_decayed_weights(hp.w_weight_decay))
  return optax.chain(decay, optax.sgd(weight_lr_schedule(hp), momentum=hp.w_momentum))


def weight_decay(hp: SearchHParams, state: 'SearchState') -> float:
  """The weight decay the state's next step applies to the weights."""
  if not hp.weight_decay_in_state:
    return hp.w_weight_decay
  return float(state.w_opt_state[1][0].hyperparams['weight_decay'])


def with_weight_decay(hp: SearchHParams, state: 'SearchState', value: float) -> 'SearchState':
  """The state with another weight decay for its next steps (and their virtual steps)."""
  if not hp.weight_decay_in_state:
    raise ValueError('the weight decay is a constant of this search (weight_decay_in_state '
                     'is off)')
  clip, (decay, sgd) = state.w_opt_state
  old = decay.hyperparams['weight_decay']
  decay = decay._replace(hyperparams={**decay.hyperparams, 'weight_decay': jax.device_put(
      jnp.asarray(value, old.dtype), old.sharding)})
  return state._replace(w_opt_state=(clip, (decay, sgd)))


def weight_optimizer(hp: SearchHParams) -> optax.GradientTransformation:
  return optax.chain(clip_by_global_norm_torch(hp.grad_clip), weight_inner_optimizer(hp))


def alpha_optimizer(hp: SearchHParams) -> optax.GradientTransformation:
  return optax.chain(optax.add_decayed_weights(hp.alpha_weight_decay),
                     optax.adam(hp.alpha_lr, b1=hp.alpha_b1, b2=hp.alpha_b2, eps=hp.alpha_eps))


# SearchHParams fields that configure the estimator (hypergradient.make_estimator's keywords)
ESTIMATOR_OPTIONS = ('unrolled_steps', 'remat', 'fd_r', 'implicit_solver', 'implicit_maxiter',
                     'implicit_damping', 'neumann_terms', 'neumann_lr')


def hypergradient_estimator(hp: SearchHParams) -> hg.Estimator:
  """The configured hypergradient estimator; its inner step is the weight optimiser minus the
  clipping (eq. 6's virtual step is the real optimiser's)."""
  return hg.make_estimator(hp.estimator, weight_inner_optimizer(hp),
                           **{k: getattr(hp, k) for k in ESTIMATOR_OPTIONS})


def _zero_metrics(dtype) -> SearchMetrics:
  # distinct arrays: the state is donated, and one buffer may not be donated twice
  return SearchMetrics(*(jnp.zeros((), t) for t in (jnp.int32, dtype, jnp.int32, jnp.int32,
                                                     dtype, dtype, dtype, dtype)))


def init_search_state(hp: SearchHParams, weights: Pytree, alphas: Pytree, batch_stats: Pytree,
                      rng: jax.Array) -> SearchState:
  """Fresh optimiser states around given initial values (see ``supernet.init_supernet`` and
  ``supernet.init_alphas``)."""
  dtype = jnp.result_type(*jax.tree_util.tree_leaves(alphas))
  return SearchState(step=jnp.zeros((), jnp.int32), weights=weights, alphas=alphas,
                     batch_stats=batch_stats, w_opt_state=weight_optimizer(hp).init(weights),
                     alpha_opt_state=alpha_optimizer(hp).init(alphas),
                     rng=jnp.asarray(rng), metrics=_zero_metrics(dtype),
                     nonfinite_step=jnp.asarray(-1, jnp.int32))


def current_weight_lr(hp: SearchHParams, step) -> jax.Array:
  return weight_lr_schedule(hp)(step)


# ----------------------------------------------------------------------------------------------
# the step
# ----------------------------------------------------------------------------------------------


class Stepped(NamedTuple):
  """A loss that depends on the step (a stochastic or annealed search method,
  ``darts_jax.methods``): ``at(StepContext) -> StepLoss``. The search step binds it to its own
  context (:func:`step_context`), so the sample is one for the whole step: every estimator
  differentiates the sampled objective with the sample held fixed."""
  at: Callable[[StepContext], StepLoss]


# the stream of a step's method draws, beside augmentation's fold_in(rng, step) split
SAMPLE_STREAM = 1


def step_context(hp: SearchHParams, rng: jax.Array, step) -> StepContext:
  """Step ``step``'s context: its draws from ``fold_in(fold_in(rng, step), SAMPLE_STREAM)``
  (a function of the step alone, so a resumed search draws the same), and its epoch."""
  key = jax.random.fold_in(jax.random.fold_in(rng, step), SAMPLE_STREAM)
  return StepContext(key, jnp.asarray(step) // hp.steps_per_epoch, hp.epochs)


def search_loss(space: SearchSpace, compute_dtype=None,
                wrap: Callable[[Callable], Callable] = lambda f: f) -> 'Callable | Stepped':
  """What :func:`search_step` takes for ``space``: its training loss, or a method's
  :class:`Stepped` one; ``wrap`` applies to each loss the step uses (per-device BatchNorm)."""
  if space.make_step_loss is None:
    return wrap(space.make_loss(True, compute_dtype))
  at = space.make_step_loss(True, compute_dtype)

  def wrapped(context):
    losses = at(context)
    return losses._replace(loss=wrap(losses.loss),
                           weight_loss=losses.weight_loss and wrap(losses.weight_loss))
  return Stepped(wrapped)


def losses_at(hp: SearchHParams, loss: 'Callable | Stepped', state: SearchState) -> StepLoss:
  """The step's losses: a plain loss serves both halves; a :class:`Stepped` one is bound to
  the step's context."""
  if isinstance(loss, Stepped):
    return loss.at(step_context(hp, state.rng, state.step))
  return StepLoss(loss)


def alpha_gradient(hp: SearchHParams, loss: Callable, state: SearchState, train: Batch,
                   val: Batch) -> tuple[Pytree, hg.HypergradientAux]:
  """The architecture gradient by the configured estimator at the current state: the virtual
  step starts from the weight optimiser's current state (momentum buffer, step count), so xi is
  the current learning rate."""
  return hypergradient_estimator(hp).estimate(
      hg.bind_loss(loss, state.batch_stats, train), hg.bind_loss(loss, state.batch_stats, val),
      state.weights, state.alphas, state.w_opt_state[1], current_weight_lr(hp, state.step))


def weight_step(hp: SearchHParams, loss: Callable, weights: Pytree, alphas: Pytree,
                batch_stats: Pytree, w_opt_state, train: Batch):
  """The weight half of a search step: ``w <- SGD(w, grad_w L_train(w, alpha))`` (clip 5,
  momentum, weight decay). Returns ``(weights, w_opt_state, train_loss, LossAux, grad_w)``."""
  (train_loss, loss_aux), g_w = jax.value_and_grad(loss, has_aux=True)(
      weights, alphas, batch_stats, train)
  return (*_weight_update(hp, weights, w_opt_state, g_w), train_loss, loss_aux, g_w)


def _weight_update(hp: SearchHParams, weights, w_opt_state, g_w):
  updates, w_opt_state = weight_optimizer(hp).update(g_w, w_opt_state, weights)
  return optax.apply_updates(weights, updates), w_opt_state


class _Halves(NamedTuple):
  """Both halves of a search step: the alpha step and the weight step after it."""
  g_alpha: Pytree
  aux: hg.HypergradientAux
  alphas: Pytree
  alpha_opt_state: Any
  weights: Pytree
  w_opt_state: Any
  train_loss: jax.Array
  loss_aux: Any
  g_w: Pytree


def _alpha_step(hp: SearchHParams, alphas, alpha_opt_state, g_alpha):
  updates, alpha_opt_state = alpha_optimizer(hp).update(g_alpha, alpha_opt_state, alphas)
  return optax.apply_updates(alphas, updates), alpha_opt_state


def _inline_halves(hp, losses: StepLoss, state: SearchState, train, val) -> _Halves:
  # alpha step: eq. (6) (or the configured estimator), then Adam
  g_alpha, aux = alpha_gradient(hp, losses.loss, state, train, val)
  alphas, alpha_opt_state = _alpha_step(hp, state.alphas, state.alpha_opt_state, g_alpha)
  weights, w_opt_state, train_loss, loss_aux, g_w = weight_step(
      hp, losses.for_weights, state.weights, alphas, state.batch_stats,
      state.w_opt_state, train)
  return _Halves(g_alpha, aux, alphas, alpha_opt_state, weights, w_opt_state, train_loss,
                 loss_aux, g_w)


def step_plan(hp: SearchHParams, state: SearchState, train: Batch, val: Batch,
              weight_loss: Callable | None = None) -> gradient_loop.Plan:
  """:func:`search_step` (estimators first_order, exact, finite_difference) as the calls of a
  gradient loop; its ``finish`` makes ``(new state, HypergradientAux)`` from their results.
  Other plans can share the loop (``gradient_loop.concatenate``): each derivative program is
  then compiled once for all of them. A method's own ``weight_loss`` (SDARTS's) is another
  function than the loop's: its weight step then runs in ``finish``, after the loop."""
  estimator = gradient_loop.plan(hp.estimator, weight_inner_optimizer(hp), state.weights,
                                 state.alphas, state.w_opt_state[1],
                                 current_weight_lr(hp, state.step), train, val, hp.fd_r)

  def alpha_step(r):  # Adam on the hypergradient; cheap, so recomputed where it is needed
    g_alpha, aux = estimator.finish(r)
    alphas, alpha_opt_state = _alpha_step(hp, state.alphas, state.alpha_opt_state, g_alpha)
    return g_alpha, aux, alphas, alpha_opt_state

  def at_new_alphas(r):  # the weight step's point: grad_w L_train(w, alpha_new)
    return gradient_loop.Probe(state.weights, alpha_step(r)[2], train)

  def finish(r):
    last = r(len(estimator.calls))
    return _new_state(hp, state, train, _Halves(
        *alpha_step(r), *_weight_update(hp, state.weights, state.w_opt_state, last.g_w),
        last.loss, last.aux, last.g_w))

  def finish_own_weight_step(r):
    g_alpha, aux, alphas, alpha_opt_state = alpha_step(r)
    return _new_state(hp, state, train, _Halves(g_alpha, aux, alphas, alpha_opt_state, *weight_step(
        hp, weight_loss, state.weights, alphas, state.batch_stats, state.w_opt_state, train)))

  if weight_loss is not None:
    return gradient_loop.Plan(estimator.calls, finish_own_weight_step)
  weight_call = gradient_loop.Call(gradient_loop.GRADIENT, at_new_alphas)
  return gradient_loop.Plan(estimator.calls + (weight_call,), finish)


def _new_state(hp: SearchHParams, state: SearchState, train: Batch, h: _Halves
               ) -> tuple[SearchState, hg.HypergradientAux]:
  """The state after a step whose two halves are ``h``, with the epoch's running metrics."""
  labels = train[1]
  correct = jnp.sum(jnp.argmax(h.loss_aux.logits, -1) == labels).astype(jnp.int32)
  hypergrad_norm = hg.tree_norm(h.g_alpha)
  previous = epoch_sums(state.metrics, state.step, hp.steps_per_epoch)
  add = lambda total, x: total + jnp.asarray(x).astype(total.dtype)  # noqa: E731
  metrics = SearchMetrics(
      previous.steps + 1, add(previous.train_loss, h.train_loss),
      previous.train_correct + correct, previous.train_examples + labels.shape[0],
      add(previous.val_loss, h.aux.val_loss), add(previous.hypergrad_norm, hypergrad_norm),
      add(previous.direct_norm, h.aux.direct_norm),
      add(previous.indirect_norm, h.aux.indirect_norm))
  new = SearchState(state.step + 1, h.weights, h.alphas, h.loss_aux.batch_stats, h.w_opt_state,
                    h.alpha_opt_state, state.rng, metrics, state.nonfinite_step)
  return keep_if_finite(new, state, h.train_loss, h.aux.val_loss, h.g_alpha, h.g_w), h.aux


def search_step(hp: SearchHParams, loss: 'Callable | Stepped', state: SearchState, train: Batch,
                val: Batch, preprocess: Callable | None = None
                ) -> tuple[SearchState, hg.HypergradientAux]:
  """One DARTS search step (Algorithm 1): alpha first, then w on the train batch with the new
  alpha. ``preprocess(key, images)`` augments raw batches inside the step (None: use as given).
  ``loss`` is the space's loss, or a method's :class:`Stepped` one.

  A non-finite loss or gradient leaves the state as it was and records the step in
  ``nonfinite_step``; every later step is then a no-op, so the last good state survives.
  """
  if preprocess is not None:
    k_train, k_val = jax.random.split(jax.random.fold_in(state.rng, state.step))
    train = (preprocess(k_train, train[0]), train[1])
    val = (preprocess(k_val, val[0]), val[1])

  losses = losses_at(hp, loss, state)
  if hp.loop_gradients and hp.estimator in gradient_loop.ESTIMATORS:
    # every loss derivative a call of one loop: the same numbers as _inline_halves
    plan = step_plan(hp, state, train, val, losses.weight_loss)
    return plan.finish(gradient_loop.run(losses.loss, state.batch_stats, plan.calls))
  return _new_state(hp, state, train, _inline_halves(hp, losses, state, train, val))


def warmup_step(hp: SearchHParams, loss: 'Callable | Stepped', state: SearchState, train: Batch,
                val: Batch, preprocess: Callable | None = None) -> tuple[SearchState, None]:
  """A step of the warm-up epochs (``hp.warmup_epochs``; PC-DARTS's first 15): the weight half
  alone, at the current alphas, which stay as they are. The epoch's validation loss and
  hypergradient norm sums stay 0: no alpha step ran. The same data and random streams as
  :func:`search_step`, so a resumed warm-up continues bitwise."""
  del val  # drawn by the loop as for a search step; no alpha step reads it
  if preprocess is not None:
    k_train, _ = jax.random.split(jax.random.fold_in(state.rng, state.step))
    train = (preprocess(k_train, train[0]), train[1])
  losses = losses_at(hp, loss, state)
  weights, w_opt_state, train_loss, loss_aux, g_w = weight_step(
      hp, losses.for_weights, state.weights, state.alphas, state.batch_stats,
      state.w_opt_state, train)
  labels = train[1]
  correct = jnp.sum(jnp.argmax(loss_aux.logits, -1) == labels).astype(jnp.int32)
  previous = epoch_sums(state.metrics, state.step, hp.steps_per_epoch)
  metrics = previous._replace(
      steps=previous.steps + 1,
      train_loss=previous.train_loss + train_loss.astype(previous.train_loss.dtype),
      train_correct=previous.train_correct + correct,
      train_examples=previous.train_examples + labels.shape[0])
  new = state._replace(step=state.step + 1, weights=weights, batch_stats=loss_aux.batch_stats,
                       w_opt_state=w_opt_state, metrics=metrics)
  return keep_if_finite(new, state, train_loss, g_w), None


# ----------------------------------------------------------------------------------------------
# device mesh
# ----------------------------------------------------------------------------------------------


def _jit_on_mesh(step: Callable, mesh: Mesh, state_sharding: Any = None):
  """``step(state, train, val) -> (state, aux)`` jitted for ``mesh``: batches sharded over
  ``'data'``, the state donated (its buffers are reused for the next state) and replicated, or
  placed as ``state_sharding`` says (``parallel.state_sharding``). XLA all-reduces the
  gradients."""
  replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  placed = replicated if state_sharding is None else state_sharding
  return jax.jit(step, in_shardings=(placed, batch, batch), out_shardings=(placed, replicated),
                 donate_argnums=0)


def jit_search_step(hp: SearchHParams, loss: Callable, mesh: Mesh,
                    preprocess: Callable | None = None, state_sharding: Any = None):
  """``search_step`` jitted for ``mesh`` (see ``_jit_on_mesh``)."""
  return _jit_on_mesh(lambda state, train, val: search_step(hp, loss, state, train, val,
                                                            preprocess), mesh, state_sharding)


def jit_warmup_step(hp: SearchHParams, loss: Callable, mesh: Mesh,
                    preprocess: Callable | None = None, state_sharding: Any = None):
  """:func:`warmup_step` jitted as :func:`jit_search_step` is."""
  return _jit_on_mesh(lambda state, train, val: warmup_step(hp, loss, state, train, val,
                                                            preprocess), mesh, state_sharding)


def jit_eval_step(eval_loss: Callable, mesh: Mesh, weights_sharding: Any = None,
                  extra_args: int = 0):
  """``(weights, alphas, batch_stats, batch, *extra) -> (loss sum, top-1 hits)`` with
  evaluation-mode BatchNorm (running statistics), as the original's ``infer``; ``extra_args``
  replicated arguments follow the batch (a stepped method's epoch)."""
  replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  weights_sharding = replicated if weights_sharding is None else weights_sharding

  def step(weights, alphas, batch_stats, data, *extra):
    loss, aux = eval_loss(weights, alphas, batch_stats, data, *extra)
    labels = data[1]
    return (loss * labels.shape[0],
            jnp.sum(jnp.argmax(aux.logits, -1) == labels).astype(jnp.int32))

  return jax.jit(step, in_shardings=(weights_sharding, replicated, replicated, batch)
                 + (replicated,) * extra_args, out_shardings=replicated)

