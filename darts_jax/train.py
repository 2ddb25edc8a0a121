"""Training a derived (discrete) network from scratch: the step of the original's ``train.py``.

One jitted pure function advances a :class:`TrainState`: forward with drop path (probability
ramped linearly over the epochs), loss ``CE(logits) + auxiliary_weight * CE(auxiliary logits)``,
PyTorch's gradient clipping, SGD with momentum and L2 weight decay, cosine learning rate stepped
once per epoch down to 0, with the epoch's sums and a non-finite guard in the state. The
evaluation step sums test loss, top-1 and top-5 hits of the main head. Defaults are the paper's
CIFAR-10 evaluation (``shared/REFERENCE.md``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from darts_jax.losses import cast_floating, cross_entropy
from darts_jax.ops import init as init_lib
from darts_jax.optim import clip_by_global_norm_torch, cosine_per_epoch, epoch_sums, keep_if_finite

Pytree = Any
Batch = tuple[jax.Array, jax.Array]


LR_SCHEDULES = ('cosine', 'exponential')


@dataclasses.dataclass(frozen=True)
class TrainHParams:
  # scaled together by the linear batch-size rule (config lr_scaling)
  LEARNING_RATES: ClassVar[tuple[str, ...]] = ('lr', 'lr_min')
  epochs: int = 600
  steps_per_epoch: int = 521  # ceil(50,000 / 96)
  lr: float = 0.025
  lr_min: float = 0.0
  momentum: float = 0.9
  weight_decay: float = 3e-4
  grad_clip: float = 5.0  # 0: no clipping (NAS-Bench-201's recipe)
  auxiliary_weight: float = 0.4
  drop_path_prob: float = 0.2  # reached at the last epoch: p(e) = drop_path_prob * e / epochs
  nesterov: bool = False  # PyTorch's SGD(nesterov=True), as NAS-Bench-201 trains
  # 'cosine' (to lr_min, CIFAR) or 'exponential': lr * lr_gamma ** epoch, the original's
  # StepLR(step_size=1, gamma=0.97) for ImageNet
  lr_schedule: str = 'cosine'
  lr_gamma: float = 0.97
  label_smoothing: float = 0.0  # ImageNet's 0.1: targets (1 - eps) one-hot + eps / classes

  def __post_init__(self):
    for name in ('epochs', 'steps_per_epoch'):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f'{name}={value!r}: must be an integer >= 1')
    if not self.lr > 0:
      raise ValueError(f'lr={self.lr!r}: must be > 0')
    if not self.grad_clip >= 0:
      raise ValueError(f'grad_clip={self.grad_clip!r}: must be >= 0 (0: no clipping)')
    if not isinstance(self.nesterov, (bool, np.bool_)):
      raise ValueError(f'nesterov={self.nesterov!r}: must be True or False')
    for name in ('lr_min', 'momentum', 'weight_decay', 'auxiliary_weight'):
      if not getattr(self, name) >= 0:
        raise ValueError(f'{name}={getattr(self, name)!r}: must be >= 0')
    if not 0 <= self.drop_path_prob < 1:
      raise ValueError(f'drop_path_prob={self.drop_path_prob!r}: must be in [0, 1)')
    if self.lr_schedule not in LR_SCHEDULES:
      raise ValueError(f'lr_schedule={self.lr_schedule!r} is unknown; allowed: '
                       f'{", ".join(LR_SCHEDULES)}')
    if not 0 < self.lr_gamma <= 1:
      raise ValueError(f'lr_gamma={self.lr_gamma!r}: must be in (0, 1]')
    if not 0 <= self.label_smoothing < 1:
      raise ValueError(f'label_smoothing={self.label_smoothing!r}: must be in [0, 1)')


class TrainMetrics(NamedTuple):
  """Sums over the current epoch's steps (reset by the epoch's first step)."""
  steps: jax.Array
  loss: jax.Array  # CE + auxiliary_weight * CE_aux, as optimised
  correct: jax.Array  # top-1 hits of the main head
  examples: jax.Array


class TrainState(NamedTuple):
  step: jax.Array
  weights: Pytree  # the network's Linen params
  batch_stats: Pytree
  opt_state: Any
  rng: jax.Array  # base key; step t draws its randomness from fold_in(rng, t)
  metrics: TrainMetrics
  nonfinite_step: jax.Array  # -1, or the first step whose loss or gradient was not finite


def learning_rate(hp: TrainHParams) -> optax.Schedule:
  """The weights' learning rate per step, constant within an epoch as the original steps its
  scheduler once per epoch."""
  if hp.lr_schedule == 'exponential':
    return lambda count: hp.lr * hp.lr_gamma ** (count // hp.steps_per_epoch)
  return cosine_per_epoch(hp.lr, hp.lr_min, hp.epochs, hp.steps_per_epoch)


def optimizer(hp: TrainHParams) -> optax.GradientTransformation:
  # PyTorch's SGD: the decay joins the gradient before the momentum buffer; Nesterov's step is
  # g + momentum * buffer, which optax's trace(nesterov=True) computes the same way
  clip = clip_by_global_norm_torch(hp.grad_clip) if hp.grad_clip else optax.identity()
  return optax.chain(clip, optax.add_decayed_weights(hp.weight_decay),
                     optax.sgd(learning_rate(hp), momentum=hp.momentum, nesterov=hp.nesterov))


def drop_path_prob(hp: TrainHParams, step) -> jax.Array:
  """The original sets ``drop_path_prob * epoch / epochs`` at the start of each epoch."""
  return hp.drop_path_prob * (step // hp.steps_per_epoch) / hp.epochs


def init_train_state(hp: TrainHParams, model: nn.Module, rng: jax.Array, image_size=(32, 32),
                     in_channels: int = 3, dtype=jnp.float32) -> TrainState:
  """PyTorch's default initialisation of ``model`` (an evaluation network), fresh optimiser."""
  k_init, k_run = jax.random.split(rng)
  images = jnp.zeros((2, *image_size, in_channels), dtype)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images, True))
  values = init_lib.torch_default_init(k_init, dict(shapes))
  weights, stats = values['params'], values.get('batch_stats', {})
  # distinct zero arrays: the state is donated, and one buffer may not be donated twice
  metrics = TrainMetrics(*(jnp.zeros((), t) for t in (jnp.int32, dtype, jnp.int32, jnp.int32)))
  return TrainState(jnp.zeros((), jnp.int32), weights, stats, optimizer(hp).init(weights), k_run,
                    metrics, jnp.asarray(-1, jnp.int32))


def smoothed_cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
  """Mean cross-entropy against ``(1 - smoothing) one_hot + smoothing / classes``: the
  original's ``CrossEntropyLabelSmooth`` (Szegedy et al., 2016); 0 is plain cross-entropy."""
  if not smoothing:
    return cross_entropy(logits, labels)
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype),
                                smoothing)
  return jnp.mean(optax.softmax_cross_entropy(logits, targets))


def make_train_loss(model: nn.Module, auxiliary_weight: float, compute_dtype=None,
                    label_smoothing: float = 0.0):
  """``loss(weights, batch_stats, batch, key, drop_path_prob) -> (loss, (batch_stats, logits))``.

  ``compute_dtype='bfloat16'``: bf16 convolutions on a bf16 copy of the (float32 master)
  weights and images; BN statistics and the loss stay float32 (``supernet.make_loss``). Both
  heads' targets are smoothed by ``label_smoothing``, as the original's ImageNet training."""
  cast_floating(None, compute_dtype)

  def loss(weights, batch_stats, batch, key, p):
    images, labels = batch
    (logits, logits_aux), updates = model.apply(
        {'params': cast_floating(weights, compute_dtype), 'batch_stats': batch_stats},
        cast_floating(images, compute_dtype), True, p, rngs={'drop_path': key},
        mutable=['batch_stats'])
    value = smoothed_cross_entropy(logits, labels, label_smoothing)
    if logits_aux is not None:
      value = value + auxiliary_weight * smoothed_cross_entropy(logits_aux, labels,
                                                                label_smoothing)
    return value, (updates['batch_stats'], logits)

  return loss


def train_step(hp: TrainHParams, model: nn.Module, state: TrainState, batch: Batch,
               preprocess: Callable | None = None,
               loss: Callable | None = None) -> tuple[TrainState, jax.Array]:
  """One SGD step; returns the new state and this batch's loss. ``preprocess(key, images)``
  augments a raw batch inside the step (None: use it as given). ``loss`` replaces
  ``make_train_loss(model, hp.auxiliary_weight)`` (mixed precision, per-device BN).

  A non-finite loss or gradient leaves the state as it was and records the step in
  ``nonfinite_step``; every later step is then a no-op, so the last good state survives.
  """
  key = jax.random.fold_in(state.rng, state.step)
  if preprocess is not None:
    k_aug, key = jax.random.split(key)
    batch = (preprocess(k_aug, batch[0]), batch[1])
  loss = (make_train_loss(model, hp.auxiliary_weight, label_smoothing=hp.label_smoothing)
          if loss is None else loss)
  (value, (stats, logits)), grads = jax.value_and_grad(loss, has_aux=True)(
      state.weights, state.batch_stats, batch, key, drop_path_prob(hp, state.step))
  updates, opt_state = optimizer(hp).update(grads, state.opt_state, state.weights)
  weights = optax.apply_updates(state.weights, updates)

  labels = batch[1]
  previous = epoch_sums(state.metrics, state.step, hp.steps_per_epoch)
  metrics = TrainMetrics(
      previous.steps + 1, previous.loss + value.astype(previous.loss.dtype),
      previous.correct + jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.int32),
      previous.examples + labels.shape[0])
  new = TrainState(state.step + 1, weights, stats, opt_state, state.rng, metrics,
                   state.nonfinite_step)
  return keep_if_finite(new, state, value, grads), value


def jit_train_step(hp: TrainHParams, model: nn.Module, mesh: Mesh,
                   preprocess: Callable | None = None, loss: Callable | None = None,
                   state_sharding: Any = None):
  """``train_step`` jitted for ``mesh``: the batch split over ``'data'``, the state donated and
  replicated, or placed as ``state_sharding`` says (``parallel.state_sharding``)."""
  replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  placed = replicated if state_sharding is None else state_sharding
  return jax.jit(lambda state, batch: train_step(hp, model, state, batch, preprocess, loss),
                 in_shardings=(placed, data), out_shardings=(placed, replicated),
                 donate_argnums=0)


def eval_step(model: nn.Module, weights: Pytree, batch_stats: Pytree, images: jax.Array,
              labels: jax.Array, mask: jax.Array, compute_dtype=None) -> dict[str, jax.Array]:
  """Sums over the ``mask``ed examples of a test batch, evaluation-mode BN, main head only:
  ``{'loss', 'top1', 'top5', 'examples'}``. ``mask`` pads a short last batch to full shape."""
  logits, _ = model.apply({'params': cast_floating(weights, compute_dtype),
                           'batch_stats': batch_stats}, cast_floating(images, compute_dtype),
                          False)
  logits = logits.astype(jnp.float32)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], -1)[:, 0]
  k = min(5, logits.shape[-1])
  top5 = jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1)
  top1 = jnp.argmax(logits, -1) == labels
  m = mask.astype(jnp.float32)
  return {'loss': jnp.sum(nll * m), 'top1': jnp.sum(top1 * m), 'top5': jnp.sum(top5 * m),
          'examples': jnp.sum(m)}


def jit_eval_step(model: nn.Module, mesh: Mesh, preprocess: Callable | None = None,
                  compute_dtype=None, weights_sharding: Any = None):
  """``eval_step`` jitted for ``mesh``: ``(weights, batch_stats, images, labels, mask) -> sums``.
  ``preprocess(images)`` normalises a raw batch inside the step."""
  replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  weights_sharding = replicated if weights_sharding is None else weights_sharding

  def step(weights, batch_stats, images, labels, mask):
    images = images if preprocess is None else preprocess(images)
    return eval_step(model, weights, batch_stats, images, labels, mask, compute_dtype)

  return jax.jit(step, in_shardings=(weights_sharding, replicated, data, data, data),
                 out_shardings=replicated)

