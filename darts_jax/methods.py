"""Search methods: the DARTS family as transformations of a search space.

A method maps a :class:`~darts_jax.spaces.SearchSpace` to another one: it may wrap the space's
loss (SDARTS perturbs the mixing weights, DARTS- adds an auxiliary skip connection), extend
its architecture pytree (PC-DARTS adds edge betas beside the alphas; the estimators then
differentiate both) or replace its genotype rule (DrNAS reads the concentration mean). The search
step, the estimators and the run loop see only the transformed space, so every method works
with every estimator, on the device mesh and with resume.

DARTS itself is the identity. A new method is one function here and one entry in
:data:`METHODS`.
"""

from __future__ import annotations

from typing import Callable, Mapping

from darts_jax.spaces import SearchSpace

Method = Callable[[SearchSpace], SearchSpace]


def darts(space: SearchSpace) -> SearchSpace:
  """DARTS (Liu et al., 2019): the space's own continuous relaxation, eq. (2)."""
  return space


METHODS: Mapping[str, Method] = {'darts': darts}


def apply(name: str, space: SearchSpace) -> SearchSpace:
  """``space`` as the method ``name`` searches it."""
  if name not in METHODS:
    raise ValueError(f'method={name!r} is unknown; allowed: {", ".join(METHODS)}')
  return METHODS[name](space)
