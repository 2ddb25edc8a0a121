"""The mathematics of the DARTS family's mixing rules, as small pure functions on arrays.

Each method of ``darts_jax.methods`` replaces DARTS's ``softmax(alpha)`` (eq. 2) by one of
these, or perturbs it:

- GDAS (Dong & Yang, 2019): a Gumbel-softmax sample, one-hot forward, straight-through
  backward (:func:`gumbel_one_hot`), temperature annealed from 10 to 0.1 (:func:`gdas_tau`);
- DrNAS (Chen et al., 2021): a Dirichlet sample of concentration ``elu(alpha) + 1``
  (:func:`dirichlet_concentration`), the KL divergence to Dir(1) as regulariser
  (:func:`dirichlet_kl`);
- SDARTS (Chen & Hsieh, 2020): a random or PGD-adversarial perturbation of the mixing weights
  within +-epsilon (:func:`sdarts_epsilon`, :func:`project_rows`, :func:`random_perturbation`,
  :func:`pgd_perturbation`);
- DARTS- (Chu et al., 2021): an auxiliary skip connection whose coefficient decays linearly
  (:func:`darts_minus_beta`).

Schedules take the epoch (from 0) and the number of epochs, as the originals set them once per
epoch.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import digamma, gammaln

# ----------------------------------------------------------------------------------------------
# GDAS
# ----------------------------------------------------------------------------------------------


def gdas_tau(epoch, epochs: int, tau_max: float = 10.0, tau_min: float = 0.1):
  """GDAS's temperature: linear from ``tau_max`` at the first epoch to ``tau_min`` at the last,
  ``tau_max - (tau_max - tau_min) * epoch / (epochs - 1)``."""
  return tau_max - (tau_max - tau_min) * epoch / max(epochs - 1, 1)


def gumbel_one_hot(alpha: jax.Array, gumbel: jax.Array, tau) -> jax.Array:
  """GDAS's sample per row: ``h = one_hot(argmax_k (log_softmax(alpha)_k + g_k) / tau)``, with
  the gradient of the Gumbel-softmax ``p = softmax((log_softmax(alpha) + g) / tau)`` at the
  chosen op only, ``dh_k / dalpha = [k = chosen] dp_k / dalpha`` (GDAS computes the chosen op
  alone, ``op_chosen(x) * h_chosen``, so no other op receives a gradient). The value is exactly
  one-hot."""
  p = jax.nn.softmax((jax.nn.log_softmax(alpha, axis=-1) + gumbel) / tau, axis=-1)
  h = jax.nn.one_hot(jnp.argmax(p, axis=-1), alpha.shape[-1], dtype=p.dtype)
  # h + h * (p - p): the value h exactly (x - x = 0), the straight-through gradient h * dp
  return h + h * (p - jax.lax.stop_gradient(p))


# ----------------------------------------------------------------------------------------------
# DrNAS
# ----------------------------------------------------------------------------------------------


def dirichlet_concentration(alpha: jax.Array) -> jax.Array:
  """DrNAS's concentration ``elu(alpha) + 1`` (positive for every alpha)."""
  return jax.nn.elu(alpha) + 1.0


def dirichlet_kl(concentration: jax.Array, prior: float = 1.0) -> jax.Array:
  """``KL(Dir(c) || Dir(prior * 1))`` per row (the last axis), the closed form
  ``log B(prior) - log B(c) + sum_k (c_k - prior)(psi(c_k) - psi(c_0))``, ``c_0 = sum_k c_k``."""
  c = concentration
  c0 = jnp.sum(c, axis=-1)
  k = c.shape[-1]
  log_b_c = jnp.sum(gammaln(c), axis=-1) - gammaln(c0)
  log_b_prior = k * gammaln(jnp.asarray(prior, c.dtype)) - gammaln(jnp.asarray(k * prior, c.dtype))
  return log_b_prior - log_b_c + jnp.sum((c - prior) * (digamma(c) - digamma(c0)[..., None]),
                                         axis=-1)


# ----------------------------------------------------------------------------------------------
# SDARTS
# ----------------------------------------------------------------------------------------------


def sdarts_epsilon(epoch, epochs: int, epsilon: float = 0.3, start: float = 0.03):
  """SDARTS's perturbation radius: linear from ``start`` to ``epsilon``,
  ``start + (epsilon - start) * epoch / epochs``."""
  return start + (epsilon - start) * epoch / epochs


def project_rows(m: jax.Array) -> jax.Array:
  """SDARTS's projection of perturbed mixing weights: each row clipped to [0, 1] and divided by
  its sum; a row that clips to all zeros puts 1 on its largest entry first."""
  clipped = jnp.clip(m, 0.0, 1.0)
  empty = jnp.sum(clipped, axis=-1, keepdims=True) == 0
  top = jax.nn.one_hot(jnp.argmax(m, axis=-1), m.shape[-1], dtype=m.dtype)
  clipped = jnp.where(empty, top, clipped)
  return clipped / jnp.sum(clipped, axis=-1, keepdims=True)


def random_perturbation(key: jax.Array, m: jax.Array, epsilon) -> jax.Array:
  """SDARTS-RS: ``project(m + U(-epsilon, epsilon))``."""
  noise = jax.random.uniform(key, m.shape, m.dtype, -1.0, 1.0) * epsilon
  return project_rows(m + noise)


def pgd_perturbation(loss: Callable[[jax.Array], jax.Array], key: jax.Array, m: jax.Array,
                     epsilon, steps: int = 7) -> jax.Array:
  """SDARTS-ADV: ``steps`` steps of projected sign-gradient ascent on ``loss(m')`` from a random
  start, step size ``2 epsilon / steps``, each step clipped to ``|m' - m| <= epsilon`` and
  projected (:func:`project_rows`). ``m`` may be a pytree of mixing matrices. If the attack ends
  below ``loss(m)``, ``m`` is returned unperturbed, as the original does."""
  leaves, tree = jax.tree_util.tree_flatten(m)
  keys = jax.random.split(key, len(leaves))
  start = tree.unflatten([random_perturbation(k, x, epsilon) for k, x in zip(keys, leaves)])
  lr = 2.0 * epsilon / steps

  def ascend(_, x):
    g = jax.grad(loss)(x)
    return jax.tree_util.tree_map(
        lambda x, g, m: project_rows(jnp.clip(x + lr * jnp.sign(g), m - epsilon, m + epsilon)),
        x, g, m)

  attacked = jax.lax.fori_loop(0, steps, ascend, start)
  worse = loss(attacked) >= loss(m)
  return jax.tree_util.tree_map(lambda a, m: jnp.where(worse, a, m), attacked, m)


# ----------------------------------------------------------------------------------------------
# DARTS-
# ----------------------------------------------------------------------------------------------


def darts_minus_beta(epoch, epochs: int, beta0: float = 1.0):
  """DARTS-'s auxiliary skip coefficient, decayed linearly: ``beta0 (epochs - epoch) / epochs``
  (1 at the first epoch, 1/epochs at the last; 0 after the search)."""
  return beta0 * (epochs - epoch) / epochs
