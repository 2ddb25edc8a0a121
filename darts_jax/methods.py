"""Search methods: the DARTS family as transformations of a search space.

A method has two seams. ``configure`` rewrites the run config from which the space is built:
PC-DARTS turns on partial channels and edge normalisation, which change the supernet itself (its
architecture pytree gains the edge betas beside the alphas; the estimators then differentiate
both, and the genotype rule weighs edges by them). ``transform`` maps the built
:class:`~darts_jax.spaces.SearchSpace` to another one: it may wrap the space's loss (SDARTS
perturbs the mixing weights, DARTS- adds an auxiliary skip connection) or replace its genotype
rule (DrNAS reads the concentration mean). The search step, the estimators and the run loop see
only the resulting space, so every method works with every estimator, on the device mesh and
with resume.

DARTS itself changes nothing. A new method is a :class:`Method` here and one entry in
:data:`METHODS`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

from darts_jax.spaces import SearchSpace


class Method(NamedTuple):
  """One member of the DARTS family (see the module docstring)."""
  name: str
  summary: str  # one line for the log and the README's table
  configure: Callable[[Mapping[str, Any]], dict]  # run config -> the config the space is built from
  transform: Callable[[SearchSpace], SearchSpace]  # the built space -> the space searched


def _unchanged(x):
  return x


DARTS = Method('darts', 'DARTS (Liu et al., 2019): softmax(alpha)-mixed ops on every edge, eq. 2',
               lambda cfg: {**cfg, 'partial_channels': 1, 'edge_normalization': False},
               _unchanged)


def _pc_darts_config(cfg: Mapping[str, Any]) -> dict:
  # PC-DARTS eq. 2 with K = cfg['partial_channels'] (the paper's 4), and its eq. 4: the edge
  # betas, always on with it
  return {**cfg, 'partial_channels': cfg.get('partial_channels', 4), 'edge_normalization': True}


PC_DARTS = Method('pc_darts', 'PC-DARTS (Xu et al., 2020): 1/K of the channels through each '
                  'mixed op, channel shuffle, softmax(beta) edge normalisation',
                  _pc_darts_config, _unchanged)

METHODS: Mapping[str, Method] = {m.name: m for m in (DARTS, PC_DARTS)}


def get(name: str) -> Method:
  """The method ``name``; a one-line ValueError naming the allowed ones otherwise."""
  if name not in METHODS:
    raise ValueError(f'method={name!r} is unknown; allowed: {", ".join(METHODS)}')
  return METHODS[name]


def build(name: str, cfg: Mapping[str, Any], space_from_run: Callable[..., SearchSpace],
          *args) -> SearchSpace:
  """The space the method ``name`` searches: ``space_from_run(configure(cfg), *args)``,
  transformed."""
  method = get(name)
  return method.transform(space_from_run(method.configure(cfg), *args))
