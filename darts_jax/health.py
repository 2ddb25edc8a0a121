"""Search health: the curvature of the validation loss in the architecture, and the signs of
collapse (RobustDARTS: Zela et al., "Understanding and Robustifying Differentiable Architecture
Search", ICLR 2020).

RobustDARTS found that the dominant eigenvalue of

    H = d^2 L_val(w, alpha) / d alpha^2   (+ the architecture's L2 weight decay on the diagonal)

at the current weights predicts the test error of the derived cell (Pearson 0.867): a sharp
minimum in alpha loses most when the cell is discretised. Its early stop (DARTS-ES, Sec. 4.3)
watches a sliding mean of that eigenvalue.

Everything here is a pure function: the Hessian and its eigenvalues on plain pytrees (no Flax, no
model code, as :mod:`darts_jax.hypergradient`), the early-stopping rule on a list of eigenvalues,
and the collapse diagnostics on what a search's epoch record already holds.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

Pytree = Any


# ----------------------------------------------------------------------------------------------
# the Hessian of the architecture and its spectrum
# ----------------------------------------------------------------------------------------------


def architecture_hvp(loss: Callable[[Pytree], jax.Array], alpha: Pytree):
  """``(flat alpha, v -> H v)``: the Hessian of ``loss`` in the architecture times a vector,
  both over ``ravel_pytree(alpha)``'s order; forward over reverse, as ``hypergradient.hvp``."""
  flat, unravel = ravel_pytree(alpha)
  grad = jax.grad(lambda a: loss(unravel(a)))
  return flat, lambda v: jax.jvp(grad, (flat,), (v,))[1]


def architecture_hessian(loss: Callable[[Pytree], jax.Array], alpha: Pytree,
                         weight_decay: float = 0.0, chunk: int | None = None) -> jax.Array:
  """The dense Hessian of ``loss`` (a scalar function of the architecture pytree) at ``alpha``,
  over ``ravel_pytree(alpha)``'s order, plus ``weight_decay * I``: the L2 term of the
  architecture optimiser (DARTS's 1e-3), which RobustDARTS adds to the gradient it
  differentiates and which shifts every eigenvalue by exactly ``weight_decay``.

  Column i is the Hessian-vector product with the i-th basis vector; ``chunk`` of them run at
  once (``lax.map``'s ``batch_size``: memory of ``chunk`` tangent passes, one compiled
  program whatever the architecture's size). The result is symmetrised, (H + H^T) / 2: the
  products agree with it up to rounding.
  """
  flat, hvp = architecture_hvp(loss, alpha)
  n = flat.shape[0]
  if chunk is not None and (not isinstance(chunk, (int, np.integer)) or chunk < 1):
    raise ValueError(f'chunk={chunk!r}: must be an integer >= 1 (Hessian columns per pass)')
  columns = jax.lax.map(hvp, jnp.eye(n, dtype=flat.dtype), batch_size=min(chunk or n, n))
  h = 0.5 * (columns + columns.T)
  return h + weight_decay * jnp.eye(n, dtype=flat.dtype)


class Lanczos(NamedTuple):
  """``steps`` Lanczos iterations: the tridiagonal T = Q^T H Q of the Krylov space of ``v0``."""
  diagonal: jax.Array  # (steps,)
  off_diagonal: jax.Array  # (steps - 1,); an entry ~0 means the Krylov space ended there


def lanczos(matvec: Callable[[jax.Array], jax.Array], v0: jax.Array, steps: int) -> Lanczos:
  """The Lanczos tridiagonalisation of a symmetric operator on flat vectors, with full
  reorthogonalisation (the basis is kept: ``steps`` x n numbers, small for an architecture),
  so that the Ritz values do not repeat as they do in exact-arithmetic-only Lanczos.
  ``steps`` matrix-vector products; jit it with ``steps`` static."""
  n = v0.shape[0]
  if not isinstance(steps, (int, np.integer)) or not 1 <= steps <= n:
    raise ValueError(f'steps={steps!r}: Lanczos needs 1 <= steps <= n = {n} (the size of the '
                     'architecture)')
  q0 = v0 / jnp.linalg.norm(v0)
  basis = jnp.zeros((steps, n), v0.dtype).at[0].set(q0)
  tiny = jnp.finfo(v0.dtype).eps

  def body(k, carry):
    basis, diag, off = carry
    q = basis[k]
    w = matvec(q)
    a = jnp.vdot(q, w)
    # full reorthogonalisation against every earlier vector (twice: Kahan's "twice is enough")
    for _ in range(2):
      w = w - basis.T @ (basis @ w)
    b = jnp.linalg.norm(w)
    scale = jnp.maximum(jnp.abs(a), 1.0)
    nxt = jnp.where(b > tiny * scale * n, w / jnp.where(b > 0, b, 1.0), 0.0)
    basis = jnp.where(k + 1 < steps, basis.at[jnp.minimum(k + 1, steps - 1)].set(nxt), basis)
    return basis, diag.at[k].set(a), off.at[k].set(b)

  zeros = jnp.zeros((steps,), v0.dtype)
  _, diag, off = jax.lax.fori_loop(0, steps, body, (basis, zeros, zeros))
  return Lanczos(diag, off[:-1])


def ritz_values(t: Lanczos, rtol: float | None = None) -> np.ndarray:
  """The eigenvalues of the Lanczos tridiagonal (ascending), on the host: estimates of the
  operator's extreme eigenvalues, exact once the Krylov space holds their eigenvectors. The
  tridiagonal is cut where the Krylov space ended (an off-diagonal entry ~0); past it the
  iteration produced no information."""
  diag, off = np.asarray(t.diagonal, np.float64), np.asarray(t.off_diagonal, np.float64)
  scale = max(np.abs(diag).max(initial=0.0), np.abs(off).max(initial=0.0), 1e-300)
  rtol = rtol if rtol is not None else 100 * np.finfo(np.asarray(t.diagonal).dtype).eps
  ended = np.flatnonzero(np.abs(off) <= rtol * scale)
  k = int(ended[0]) + 1 if ended.size else len(diag)
  tri = np.diag(diag[:k]) + np.diag(off[:k - 1], 1) + np.diag(off[:k - 1], -1)
  return np.linalg.eigvalsh(tri)


def architecture_lanczos(loss: Callable[[Pytree], jax.Array], alpha: Pytree, steps: int,
                         key: jax.Array, weight_decay: float = 0.0) -> Lanczos:
  """:func:`lanczos` on the architecture Hessian (with ``weight_decay * I``, as
  :func:`architecture_hessian`) from a start drawn from ``key``: ``min(steps, n)``
  Hessian-vector products instead of the dense Hessian's n."""
  flat, hvp = architecture_hvp(loss, alpha)
  v0 = jax.random.normal(key, flat.shape, flat.dtype)
  return lanczos(lambda v: hvp(v) + weight_decay * v, v0, min(steps, flat.shape[0]))


def lanczos_eigenvalues(loss: Callable[[Pytree], jax.Array], alpha: Pytree, steps: int,
                        key: jax.Array, weight_decay: float = 0.0) -> np.ndarray:
  """The Ritz values (ascending) of :func:`architecture_lanczos`: the extreme eigenvalues,
  the dominant one first to converge."""
  return ritz_values(jax.device_get(architecture_lanczos(loss, alpha, steps, key,
                                                         weight_decay)))


class Spectrum(NamedTuple):
  """What a report keeps of the architecture Hessian's eigenvalues."""
  dominant: float  # the largest eigenvalue: RobustDARTS's criterion (max of eigvals(H))
  smallest: float
  top: tuple[float, ...]  # the largest few, descending


def spectrum(eigenvalues: np.ndarray, top: int = 5) -> Spectrum:
  ev = np.sort(np.asarray(eigenvalues, np.float64))[::-1]
  return Spectrum(float(ev[0]), float(ev[-1]), tuple(float(x) for x in ev[:top]))


def dense_eigenvalues(hessian: jax.Array) -> np.ndarray:
  """All eigenvalues (ascending) of a dense symmetric Hessian, in float64 on the host."""
  return np.linalg.eigvalsh(np.asarray(hessian, np.float64))


# ----------------------------------------------------------------------------------------------
# early stopping on the dominant eigenvalue (RobustDARTS Sec. 4.3, DARTS-ES)
# ----------------------------------------------------------------------------------------------


class EarlyStopRule(NamedTuple):
  """DARTS-ES's settings (RobustDARTS ``train_search.py``'s defaults)."""
  window: int = 5  # evaluations in the sliding mean, centred on its evaluation
  delta: int = 4  # compare with the mean this many evaluations earlier
  factor: float = 1.3  # stop when the mean has grown by more than this factor
  start_epoch: int = 10  # no stop whose chosen epoch is before this (0-based)


class EarlyStop(NamedTuple):
  """A decision to stop: at epoch ``epoch`` (0-based) of the evaluations the rule saw, the
  search should have ended at ``stop_epoch``, whose genotype it returns."""
  epoch: int
  stop_epoch: int
  ratio: float  # current mean / mean delta evaluations earlier


def local_means(eigenvalues: Sequence[float], window: int) -> np.ndarray:
  """RobustDARTS's sliding mean: entry j is about evaluation j, the mean of evaluations
  j - window // 2 .. j - window // 2 + window - 1 (cut at the first: the early entries average
  fewer). It exists for the evaluations that have their whole window's later half, so the
  latest entry is ``window - 1 - window // 2`` evaluations behind the latest evaluation."""
  ev = np.asarray(eigenvalues, np.float64)
  lead = window // 2
  ahead = window - 1 - lead
  return np.array([ev[max(0, j - lead):j - lead + window].mean()
                   for j in range(len(ev) - ahead)])


def early_stop(epochs: Sequence[int], eigenvalues: Sequence[float],
               rule: EarlyStopRule = EarlyStopRule()) -> EarlyStop | None:
  """DARTS-ES on the dominant eigenvalues evaluated so far (``eigenvalues[i]`` at epoch
  ``epochs[i]``, 0-based, evenly spaced): stop when the latest sliding mean
  (:func:`local_means`) exceeds ``factor`` times the mean ``delta`` evaluations before it, and
  that earlier mean's epoch is at least ``start_epoch``; the search returns to that epoch.
  With RobustDARTS's settings (an evaluation every 2 epochs, window 5, delta 4) that is 12
  epochs before the last evaluation. None while the rule does not fire."""
  if len(epochs) != len(eigenvalues):
    raise ValueError(f'{len(epochs)} epochs for {len(eigenvalues)} eigenvalues')
  means = local_means(eigenvalues, rule.window)
  if len(means) <= rule.delta:
    return None
  earlier = len(means) - 1 - rule.delta  # the evaluation the earlier mean is about
  stop_epoch = int(epochs[earlier])
  if stop_epoch < rule.start_epoch:
    return None
  ratio = float(means[-1] / means[earlier])
  return EarlyStop(int(epochs[-1]), stop_epoch, ratio) if ratio > rule.factor else None


def raised_weight_decay(weight_decay: float, factor: float = 10.0, maximum: float = 0.03
                        ) -> float | None:
  """DARTS-ADA's next weight decay of the network weights after an early stop: ``factor``
  times the current, capped at ``maximum``; None once the maximum is in use (the search then
  runs on to its end)."""
  if weight_decay >= maximum * (1 - 1e-6):  # float32 in the state: 0.03 reads 0.0299999993
    return None
  return min(weight_decay * factor, maximum)


# ----------------------------------------------------------------------------------------------
# collapse diagnostics (cheap, every epoch)
# ----------------------------------------------------------------------------------------------


def _edge_rows(mixing: np.ndarray) -> np.ndarray:
  # each edge's weights summing to 1: PC-DARTS's rows are weighted by the edge's beta
  p = np.asarray(mixing, np.float64)
  return p / p.sum(axis=-1, keepdims=True)


def edge_entropy(mixing: np.ndarray) -> np.ndarray:
  """-sum_o p_o log p_o of each edge's (row's) mixing weights, in nats (0 for a one-hot edge,
  log(ops) for a uniform one). Rows that do not sum to 1 (PC-DARTS's beta-weighted rows) are
  normalised first."""
  p = _edge_rows(mixing)
  return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def edge_margin(mixing: np.ndarray) -> np.ndarray:
  """The strongest op's weight minus the second's, per edge (rows normalised as
  :func:`edge_entropy`)."""
  p = np.sort(_edge_rows(mixing), axis=-1)
  return p[..., -1] - p[..., -2]


def genotype_ops(genotype: Mapping[str, Any]) -> dict[str, list[str]]:
  """The chosen ops of each cell of a genotype's ``to_dict()`` form (its lists of
  (op, input) pairs), whatever the space."""
  out = {}
  for cell, value in genotype.items():
    if (isinstance(value, (list, tuple)) and value
        and all(isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], str)
                for p in value)):
      out[cell] = [p[0] for p in value]
  return out


def collapse_diagnostics(mixing: Mapping[str, np.ndarray], genotype: Mapping[str, Any],
                         parameter_free: Sequence[str]) -> dict[str, float]:
  """One epoch's signs of collapse, per cell kind: how many of the genotype's ops have no
  parameters (skip connections and pooling: the collapsed cell is full of them), the mean
  entropy of the edges' mixing weights and the mean margin between each edge's two strongest
  ops (a collapse drives one op up everywhere)."""
  out = {}
  for cell, ops in genotype_ops(genotype).items():
    out[f'parameter_free_{cell}'] = float(sum(op in parameter_free for op in ops))
  for cell, m in mixing.items():
    out[f'entropy_{cell}'] = float(edge_entropy(m).mean())
    out[f'margin_{cell}'] = float(edge_margin(m).mean())
  return out


def second_order_share(direct_norm_sum, indirect_norm_sum) -> float:
  """The share of the hypergradient's norm in its second-order part over an epoch's steps,
  sum ||indirect|| / sum (||direct|| + ||indirect||): 0 for first order; near 0 when the
  inner step barely moves the validation loss's gradient."""
  total = float(direct_norm_sum) + float(indirect_norm_sum)
  return float(indirect_norm_sum) / total if total > 0 else 0.0
