"""The recurrent search's bilevel step: the original architect's semantics (quark0/darts
``rnn/architect.py``), every estimator of ``darts_jax.hypergradient`` on the recurrent loss.

The recurrent search's virtual step is the weight optimiser's real step: plain SGD at eta (the
network learning rate, 20), weight decay 5e-7, the gradient clipped to global norm 0.25 first,
no momentum. As the original codes it, the virtual model also keeps the OLD tied embedding
(``_construct_model_from_theta`` reloads the tied decoder weight over the stepped encoder):

    w' = w - eta (c g + wd w)   on every weight but the embedding,   c = min(1, 0.25 / (||g|| + 1e-6))

``exact`` and ``unrolled`` differentiate through this step (c included); the step is an optax
chain (:func:`virtual_step`), so they are the library's own estimators. The original's eq. (7)
adds three quirks, each an option of :class:`ArchitectHParams` (all on: the original; all off with
``virtual_clip`` and ``freeze_tied_embedding`` off: the paper's formula on w' = w - eta (g + wd w)):

- ``clip_v``: v = grad_w' L_val(w') is clipped by the same rule before the Hessian-vector product;
- ``eta_c_always``: the second-order term is scaled by eta * c with c = 0.25 / (||g|| + 1e-6) even
  when c >= 1 (nothing was clipped); off, by eta * min(c, 1), the scale the step applied;
- ``freeze_tied_embedding``: the virtual step leaves the embedding where it was (the finite
  difference still moves every weight, the embedding included, as the original does).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from darts_jax import hypergradient as hg
from darts_jax import recurrent as rc
from darts_jax.recurrent import TokenBatch, nll, temporal_activation_regularization

CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_: max_norm / (||g|| + 1e-6)


class ArchitectHParams(NamedTuple):
  """The recurrent search's virtual step and the original architect's eq. (7) (defaults:
  ``rnn/train_search.py``)."""
  eta: float = 20.0  # the network's SGD learning rate (times seq_len / bptt in the original)
  weight_decay: float = 5e-7
  clip: float = 0.25  # global gradient norm; <= 0: no clipping
  r: float = 0.01  # finite-difference scale: R = r / ||v||
  virtual_clip: bool = True  # the virtual step clips g, as the real weight step does
  clip_v: bool = True
  eta_c_always: bool = True
  freeze_tied_embedding: bool = True

  @classmethod
  def textbook(cls, **overrides) -> 'ArchitectHParams':
    """The paper's eq. (6) / (7) on w' = w - eta (g + wd w), every weight stepped."""
    return cls(**{'virtual_clip': False, 'clip_v': False, 'eta_c_always': False,
                  'freeze_tied_embedding': False, **overrides})


def clip_coefficient(g, max_norm) -> jax.Array:
  """c = max_norm / (||g|| + 1e-6): torch's ``clip_grad_norm_`` multiplies g by c when c < 1."""
  return max_norm / (hg.tree_norm(g) + CLIP_EPS)


def clip_tree(g, max_norm):
  """g * min(1, c) with torch's c (optax's own clip has no 1e-6: a relative difference of
  1e-6 / ||g||, beyond float64 checks)."""
  scale = jnp.minimum(clip_coefficient(g, max_norm), 1.0)
  return jax.tree_util.tree_map(lambda x: scale * x, g)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """:func:`clip_tree` as an optax transformation."""
  def update(updates, state, params=None):
    del params
    return clip_tree(updates, max_norm), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _embedding_mask(w):
  return {k: k == 'encoder' for k in w}


def virtual_step(hp: ArchitectHParams) -> optax.GradientTransformation:
  """The virtual step as an optax chain: [clip] -> + wd w -> SGD(eta) -> [embedding held]."""
  parts = [clip_by_global_norm(hp.clip)] if hp.virtual_clip and hp.clip > 0 else []
  parts += [optax.add_decayed_weights(hp.weight_decay), optax.sgd(hp.eta)]
  if hp.freeze_tied_embedding:
    parts.append(optax.masked(optax.set_to_zero(), _embedding_mask))
  return optax.chain(*parts)


class ArchitectAux(NamedTuple):
  """The original architect's intermediates (reference keys ``search/unrolled/*``)."""
  w_prime: hg.Pytree  # the virtual model's weights
  clip_coef: jax.Array  # c of the virtual step (unclipped g: c >= 1)
  val_loss: jax.Array  # L_val(w')
  v: hg.Pytree  # grad_w' L_val(w'), before clip_v
  direct: hg.Pytree  # grad_alpha L_val(w', alpha)
  hvp: hg.Pytree  # the central-difference mixed second derivative along (clipped) v


def architect_finite_difference(train_loss: hg.LossFn, val_loss: hg.LossFn, w, alpha,
                                hp: ArchitectHParams) -> tuple[hg.Pytree, ArchitectAux]:
  """Eq. (7) as the original architect computes it, its quirks per ``hp`` (module docstring):
  ``d - eta c [grad_alpha L_train(w + R v) - grad_alpha L_train(w - R v)] / (2R)``."""
  g = jax.grad(train_loss)(w, alpha)
  c = clip_coefficient(g, hp.clip) if hp.clip > 0 else jnp.ones((), hg.tree_norm(g).dtype)
  inner = virtual_step(hp)
  w_prime = hg.step_of_gradient(inner, inner.init(w), w)(g)
  lv, (v, d) = jax.value_and_grad(val_loss, argnums=(0, 1))(w_prime, alpha)
  u = clip_tree(v, hp.clip) if hp.clip_v and hp.clip > 0 else v
  radius = hp.r / hg.tree_norm(u)
  grad_alpha_train = jax.grad(train_loss, argnums=1)
  plus = grad_alpha_train(hg.tree_axpy(radius, u, w), alpha)
  minus = grad_alpha_train(hg.tree_axpy(-radius, u, w), alpha)
  hvp = jax.tree_util.tree_map(lambda p, m: (p - m) / (2 * radius), plus, minus)
  if hp.eta_c_always:
    scale = hp.eta * c  # the original: c even when nothing was clipped
  elif hp.virtual_clip and hp.clip > 0:
    scale = hp.eta * jnp.minimum(c, 1.0)  # the scale the virtual step applied to g
  else:
    scale = hp.eta
  return hg.tree_axpy(-scale, hvp, d), ArchitectAux(w_prime, c, lv, v, d, hvp)


# ----------------------------------------------------------------------------------------------
# the search step (rnn/train_search.py): the architect's alpha step, then the weight step
# ----------------------------------------------------------------------------------------------

ESTIMATORS = ('first_order', 'exact', 'finite_difference', 'unrolled', 'implicit')


class RecurrentSearchHParams(NamedTuple):
  """The recurrent search's step (defaults: ``rnn/train_search.py``, the paper's PTB search).

  ``estimator``: 'finite_difference' is the original architect's eq. (7) with its quirks
  (``architect``); 'exact' and 'unrolled' differentiate through the virtual step it describes;
  'first_order' and 'implicit' take no virtual step."""
  architect: ArchitectHParams = ArchitectHParams()
  estimator: str = 'finite_difference'
  alpha_lr: float = 3e-3
  alpha_b1: float = 0.9
  alpha_b2: float = 0.999
  alpha_eps: float = 1e-8
  alpha_weight_decay: float = 1e-3  # L2, added to the gradient (torch Adam's weight_decay)
  tar_beta: float = 1e-3  # temporal activation regularisation of the weight step's loss
  unrolled_steps: int = 1
  implicit_solver: str = 'cg'
  implicit_maxiter: int = 20

  def check(self) -> None:
    if self.estimator not in ESTIMATORS:
      raise ValueError(f'estimator={self.estimator!r} is unknown; allowed: '
                       f'{", ".join(ESTIMATORS)}')
    for name in ('alpha_lr', 'alpha_eps'):
      if not getattr(self, name) > 0:
        raise ValueError(f'{name}={getattr(self, name)!r}: must be > 0')
    if not self.architect.eta > 0:
      raise ValueError(f'architect.eta={self.architect.eta!r}: must be > 0 (the network '
                       'learning rate)')


def alpha_optimizer(hp: RecurrentSearchHParams) -> optax.GradientTransformation:
  """torch's Adam(weight_decay=wd): wd * alpha added to the gradient, then Adam (eps as optax's)."""
  return optax.chain(optax.add_decayed_weights(hp.alpha_weight_decay),
                     optax.adam(hp.alpha_lr, hp.alpha_b1, hp.alpha_b2, hp.alpha_eps))


def weight_optimizer(hp: RecurrentSearchHParams, lr) -> optax.GradientTransformation:
  """The weight step: torch's clip_grad_norm(0.25), then SGD(lr, weight_decay) without momentum."""
  a = hp.architect
  parts = [clip_by_global_norm(a.clip)] if a.clip > 0 else []
  return optax.chain(*parts, optax.add_decayed_weights(a.weight_decay), optax.sgd(lr))


class RecurrentSearchState(NamedTuple):
  weights: hg.Pytree
  alphas: hg.Pytree
  batch_stats: hg.Pytree  # the search cell's BatchNorm running statistics
  alpha_opt_state: optax.OptState
  hidden_train: jax.Array  # (B, nhid): the two hidden-state streams, carried between steps
  hidden_val: jax.Array


class RecurrentStepMetrics(NamedTuple):
  train_loss: jax.Array  # NLL of the weight step's forward
  total_loss: jax.Array  # + tar_beta * TAR: what the weight step differentiates
  val_loss: jax.Array  # L_val where the alpha gradient was taken
  hypergradient: hg.Pytree  # the alpha gradient Adam took


def init_search_state(hp: RecurrentSearchHParams, weights, alphas, batch_stats, batch_size: int
                      ) -> RecurrentSearchState:
  hp.check()
  nhid = weights['W0'].shape[1] // 2
  zeros = lambda: jnp.zeros((batch_size, nhid), weights['W0'].dtype)  # noqa: E731
  # two buffers: a jitted step may donate the state, and one buffer cannot be donated twice
  return RecurrentSearchState(weights, alphas, batch_stats, alpha_optimizer(hp).init(alphas),
                              zeros(), zeros())


def search_network(primitives=rc.PRIMITIVES, train: bool = True, remat: bool = True,
                   nodes: str = 'unrolled'):
  """``forward(w, alpha, batch_stats, batch, hidden)`` of the search network on a
  :class:`~darts_jax.recurrent.TokenBatch` (its masks and length applied); ``remat`` and
  ``nodes`` as in :func:`~darts_jax.recurrent.search_forward`."""
  def forward(w, alpha, batch_stats, batch: TokenBatch, hidden):
    return rc.search_forward(w, alpha, batch_stats, batch.tokens, hidden, train,
                             tuple(primitives), batch.masks, batch.length, remat, nodes)
  return forward


def _as_batch(batch) -> TokenBatch:
  return batch if isinstance(batch, TokenBatch) else TokenBatch(*batch)


def _loss(forward, batch_stats, batch: TokenBatch, hidden):
  """(w, alpha) -> NLL of ``forward`` on ``batch`` from ``hidden``, and its output (next
  hidden, per-step outputs, statistics)."""
  def loss(w, alpha):
    out = forward(w, alpha, batch_stats, batch, hidden)
    return nll(out.log_probs, batch.targets, batch.length), out
  return loss


def architect_step(hp: RecurrentSearchHParams, forward, w, alpha, batch_stats, train,
                   hidden_train, val, hidden_val, eta) -> tuple[hg.Pytree, jax.Array, jax.Array]:
  """The alpha gradient by ``hp.estimator``, L_val where it was taken, and the next validation
  hidden state: from the virtual model w' after a virtual step (as ``architect.step(unrolled=
  True)`` returns it), else from w. ``eta`` is this step's network learning rate."""
  a = hp.architect._replace(eta=eta)
  train, val = _as_batch(train), _as_batch(val)
  train_full = _loss(forward, batch_stats, train, hidden_train)
  val_full = _loss(forward, batch_stats, val, hidden_val)
  train_loss = lambda w_, al: train_full(w_, al)[0]  # noqa: E731
  val_loss = lambda w_, al: val_full(w_, al)[0]  # noqa: E731
  if hp.estimator == 'first_order':  # grad_alpha L_val(w, alpha); its forward gives the hidden
    (lv, out), g = jax.value_and_grad(val_full, argnums=1, has_aux=True)(w, alpha)
    return g, lv, out.hidden
  if hp.estimator == 'finite_difference':
    g, aux = architect_finite_difference(train_loss, val_loss, w, alpha, a)
    at = aux.w_prime
  else:
    inner = virtual_step(a)
    estimator = hg.make_estimator(hp.estimator, inner, unrolled_steps=hp.unrolled_steps,
                                  implicit_solver=hp.implicit_solver,
                                  implicit_maxiter=hp.implicit_maxiter)
    g, _ = estimator.estimate(train_loss, val_loss, w, alpha, inner.init(w), a.eta)
    at = w
    if hp.estimator in ('exact', 'unrolled'):
      at = hg.step_of_gradient(inner, inner.init(w), w)(jax.grad(train_loss)(w, alpha))
  lv, out = val_full(jax.lax.stop_gradient(at), alpha)
  return g, lv, out.hidden


def search_step(hp: RecurrentSearchHParams, forward, state: RecurrentSearchState, train, val,
                eta) -> tuple[RecurrentSearchState, RecurrentStepMetrics]:
  """One step of the recurrent search: Adam on the architect's alpha gradient, then clipped
  SGD at ``eta`` on NLL + tar_beta * TAR with the new alphas (``rnn/train_search.py``).

  ``forward(w, alpha, batch_stats, batch, hidden) -> RecurrentOutput`` is the search network
  in training mode (:func:`search_network`); ``train`` and ``val`` are
  :class:`~darts_jax.recurrent.TokenBatch` es (or (tokens, targets)), time-major. The running statistics follow the weight step's forward (the original
  also folds in the architect's forwards on the same model: one on the validation batch for
  first order, three on the training batch for its finite difference)."""
  train, val = _as_batch(train), _as_batch(val)
  g, lv, hidden_val = architect_step(hp, forward, state.weights, state.alphas, state.batch_stats,
                                     train, state.hidden_train, val, state.hidden_val, eta)
  updates, alpha_opt_state = alpha_optimizer(hp).update(g, state.alpha_opt_state, state.alphas)
  alphas = optax.apply_updates(state.alphas, updates)

  def weight_loss(w):
    out = forward(w, alphas, state.batch_stats, train, state.hidden_train)
    raw = nll(out.log_probs, train.targets, train.length)
    tar = temporal_activation_regularization(out.hiddens, train.length)
    return raw + hp.tar_beta * tar, (raw, out)

  (total, (raw, out)), gw = jax.value_and_grad(weight_loss, has_aux=True)(state.weights)
  opt = weight_optimizer(hp, eta)
  w_updates, _ = opt.update(gw, opt.init(state.weights), state.weights)
  new = RecurrentSearchState(optax.apply_updates(state.weights, w_updates), alphas,
                             out.batch_stats, alpha_opt_state, out.hidden, hidden_val)
  return new, RecurrentStepMetrics(raw, total, lv, g)
