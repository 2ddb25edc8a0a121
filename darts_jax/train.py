"""Training a derived (discrete) network from scratch: the step of the original's ``train.py``.

One jitted pure function advances a :class:`TrainState`: forward with drop path (probability
ramped linearly over the epochs), loss ``CE(logits) + auxiliary_weight * CE(auxiliary logits)``,
PyTorch's gradient clipping, SGD with momentum and L2 weight decay, cosine learning rate stepped
once per epoch down to 0. Defaults are the paper's CIFAR-10 evaluation (``shared/REFERENCE.md``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from darts_jax import ops as ops_lib
from darts_jax.search import clip_by_global_norm_torch, cosine_per_epoch
from darts_jax.supernet import cross_entropy

Pytree = Any
Batch = tuple[jax.Array, jax.Array]


@dataclasses.dataclass(frozen=True)
class TrainHParams:
  epochs: int = 600
  steps_per_epoch: int = 521  # ceil(50,000 / 96)
  lr: float = 0.025
  lr_min: float = 0.0
  momentum: float = 0.9
  weight_decay: float = 3e-4
  grad_clip: float = 5.0
  auxiliary_weight: float = 0.4
  drop_path_prob: float = 0.2  # reached at the last epoch: p(e) = drop_path_prob * e / epochs

  def __post_init__(self):
    for name in ('epochs', 'steps_per_epoch'):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f'{name}={value!r}: must be an integer >= 1')
    if not self.lr > 0:
      raise ValueError(f'lr={self.lr!r}: must be > 0')
    if not self.grad_clip > 0:
      raise ValueError(f'grad_clip={self.grad_clip!r}: must be > 0')
    for name in ('lr_min', 'momentum', 'weight_decay', 'auxiliary_weight'):
      if not getattr(self, name) >= 0:
        raise ValueError(f'{name}={getattr(self, name)!r}: must be >= 0')
    if not 0 <= self.drop_path_prob < 1:
      raise ValueError(f'drop_path_prob={self.drop_path_prob!r}: must be in [0, 1)')


class TrainState(NamedTuple):
  step: jax.Array
  params: Pytree
  batch_stats: Pytree
  opt_state: Any
  rng: jax.Array  # base key; step t draws drop path from fold_in(rng, t)


def optimizer(hp: TrainHParams) -> optax.GradientTransformation:
  return optax.chain(clip_by_global_norm_torch(hp.grad_clip),
                     optax.add_decayed_weights(hp.weight_decay),
                     optax.sgd(cosine_per_epoch(hp.lr, hp.lr_min, hp.epochs, hp.steps_per_epoch),
                               momentum=hp.momentum))


def drop_path_prob(hp: TrainHParams, step) -> jax.Array:
  """The original sets ``drop_path_prob * epoch / epochs`` at the start of each epoch."""
  return hp.drop_path_prob * (step // hp.steps_per_epoch) / hp.epochs


def init_train_state(hp: TrainHParams, model: nn.Module, rng: jax.Array, image_size=(32, 32),
                     in_channels: int = 3, dtype=jnp.float32) -> TrainState:
  """PyTorch's default initialisation of ``model`` (an evaluation network), fresh optimiser."""
  k_init, k_run = jax.random.split(rng)
  images = jnp.zeros((2, *image_size, in_channels), dtype)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images, True))
  values = ops_lib.torch_default_init(k_init, dict(shapes))
  params, stats = values['params'], values.get('batch_stats', {})
  return TrainState(jnp.zeros((), jnp.int32), params, stats, optimizer(hp).init(params), k_run)


def make_train_loss(model: nn.Module, auxiliary_weight: float):
  """``loss(params, batch_stats, batch, key, drop_path_prob) -> (loss, (batch_stats, logits))``."""

  def loss(params, batch_stats, batch, key, p):
    images, labels = batch
    (logits, logits_aux), updates = model.apply(
        {'params': params, 'batch_stats': batch_stats}, images, True, p,
        rngs={'drop_path': key}, mutable=['batch_stats'])
    value = cross_entropy(logits, labels)
    if logits_aux is not None:
      value = value + auxiliary_weight * cross_entropy(logits_aux, labels)
    return value, (updates['batch_stats'], logits)

  return loss


def train_step(hp: TrainHParams, model: nn.Module, state: TrainState,
               batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step. Returns the new state and ``{'loss', 'correct'}`` of this batch."""
  key = jax.random.fold_in(state.rng, state.step)
  loss = make_train_loss(model, hp.auxiliary_weight)
  (value, (stats, logits)), grads = jax.value_and_grad(loss, has_aux=True)(
      state.params, state.batch_stats, batch, key, drop_path_prob(hp, state.step))
  updates, opt_state = optimizer(hp).update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  correct = jnp.sum(jnp.argmax(logits, -1) == batch[1]).astype(jnp.int32)
  return (TrainState(state.step + 1, params, stats, opt_state, state.rng),
          {'loss': value, 'correct': correct})


def jit_train_step(hp: TrainHParams, model: nn.Module, mesh: Mesh):
  """``train_step`` jitted for ``mesh``: the batch split over ``'data'``, the state replicated
  and donated."""
  replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  return jax.jit(lambda state, batch: train_step(hp, model, state, batch),
                 in_shardings=(replicated, data), out_shardings=(replicated, replicated),
                 donate_argnums=0)
