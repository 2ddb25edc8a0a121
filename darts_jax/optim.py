"""The optimiser pieces both runs (search and training) use, in optax terms: PyTorch's gradient
clipping, the original's cosine schedule stepped once per epoch, and the in-step bookkeeping of
a state that carries its epoch's sums and a non-finite guard (fields ``step``, ``metrics`` and
``nonfinite_step``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from darts_jax.hypergradient import tree_norm


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
  """PyTorch's ``clip_grad_norm_``: scale by ``max_norm / (norm + 1e-6)`` when that is < 1.

  optax's ``clip_by_global_norm`` divides by the norm itself; the original's epsilon is kept so
  that one step matches the original to float64 round-off.
  """

  def update(updates, state, params=None):
    del params
    coef = max_norm / (tree_norm(updates) + 1e-6)
    scale = jnp.minimum(coef, 1.0)
    return jax.tree_util.tree_map(lambda g: (g * scale).astype(g.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def cosine_per_epoch(lr: float, lr_min: float, epochs: int,
                     steps_per_epoch: int) -> optax.Schedule:
  """Cosine annealing per epoch (constant within an epoch, as the original steps its
  ``CosineAnnealingLR`` once per epoch): lr(e) = min + (lr0 - min) (1 + cos(pi e / E)) / 2."""

  def schedule(count):
    epoch = count // steps_per_epoch
    return lr_min + (lr - lr_min) * 0.5 * (1 + jnp.cos(jnp.pi * epoch / epochs))

  return schedule


def all_finite(*trees) -> jax.Array:
  # a norm is finite iff every entry is (NaN and inf propagate): one reduction per tree
  return jnp.all(jnp.stack([jnp.isfinite(tree_norm(t)) for t in trees]))


def epoch_sums(metrics, step, steps_per_epoch: int):
  """The running sums ``metrics``, zeroed at each epoch's first step."""
  first_of_epoch = step % steps_per_epoch == 0
  return jax.tree_util.tree_map(lambda m: jnp.where(first_of_epoch, jnp.zeros_like(m), m),
                                metrics)


def keep_if_finite(new, old, *checked):
  """``new``, or ``old`` unchanged when a tree of ``checked`` is not finite or an earlier step
  was not; ``nonfinite_step`` records the first such step, so every later step is a no-op."""
  ok = (old.nonfinite_step < 0) & all_finite(*checked)
  kept = jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), new, old)
  nonfinite = jnp.where((old.nonfinite_step < 0) & ~ok, old.step, old.nonfinite_step)
  return kept._replace(nonfinite_step=nonfinite)
