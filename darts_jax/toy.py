"""The paper's toy bilevel problem (Fig. 2): alternating first/second-order updates.

    L_val(w, alpha) = alpha * w - 2 alpha + 1,     L_train(w, alpha) = w^2 - 2 alpha w + alpha^2

The inner optimum is w*(alpha) = alpha, so the true objective is alpha^2 - 2 alpha + 1 with
optimum (alpha, w) = (1, 1). The alternating scheme (alpha step with the DARTS hypergradient,
then one SGD step on w) has its fixed point at w = alpha = 2 / (1 + 2 xi): first order (xi = 0)
ends at (2, 2), xi = 0.5 at the true optimum.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from darts_jax import hypergradient as hg


def toy_val_loss(w, alpha):
  return alpha * w - 2 * alpha + 1


def toy_train_loss(w, alpha):
  return w**2 - 2 * alpha * w + alpha**2


def fixed_point(xi: float) -> float:
  """w = alpha of the alternating scheme's fixed point."""
  return 2.0 / (1.0 + 2.0 * xi)


class ToyTrajectory(NamedTuple):
  alpha: jax.Array  # (steps + 1,)
  w: jax.Array


def run_toy(xi: float, steps: int = 2000, lr_alpha: float = 0.05, lr_w: float = 0.05,
            start=(2.0, -2.0)) -> ToyTrajectory:
  """Alternating updates from (alpha, w) = start: alpha step first (eq. 6 with this xi, computed
  exactly through the virtual SGD step), then the w step, as DARTS's Algorithm 1."""
  if xi < 0:
    raise ValueError(f'xi={xi!r}: must be >= 0 (0 is first order)')
  inner = optax.sgd(xi)

  def step(carry, _):
    alpha, w = carry
    g, _ = hg.unrolled(toy_train_loss, toy_val_loss, w, alpha, inner, inner.init(w))
    alpha = alpha - lr_alpha * g
    w = w - lr_w * jax.grad(toy_train_loss)(w, alpha)
    return (alpha, w), (alpha, w)

  a0, w0 = jnp.asarray(start[0], jnp.float32), jnp.asarray(start[1], jnp.float32)
  _, (alphas, ws) = jax.lax.scan(step, (a0, w0), None, length=steps)
  return ToyTrajectory(jnp.concatenate([a0[None], alphas]), jnp.concatenate([w0[None], ws]))
