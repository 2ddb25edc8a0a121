"""Search spaces as plug-ins: the contract a search run needs from a space.

A space is a :class:`SearchSpace`, a record of pure functions over three separate pytrees,
the network ``weights``, the ``architecture`` (DARTS's alphas; a variant may add more, e.g.
PC-DARTS's edge betas, and every estimator then differentiates all of it; the search state
keeps it in its ``alphas`` field) and ``batch_stats`` (BatchNorm running statistics; ``{}`` for a
space without):

- ``loss(weights, architecture, batch_stats, batch) -> (loss, LossAux(batch_stats, logits))`` is
  all the search step and every hypergradient estimator see;
- ``genotype(architecture)`` is the discretisation rule; a genotype has ``to_string``,
  ``to_json`` and ``to_dict``, and ``genotype_from_dict`` reads the last back;
- ``mixing(architecture)`` is what logs and plots show, ``draw`` the plots.

A space whose network takes its mixing weights as an argument also gives
``make_mixing_loss`` and its ``architecture_mixing`` rule: the seam where a search method
(``darts_jax.methods``: GDAS, DrNAS, SDARTS, DARTS-) puts its own rule. A method whose loss
depends on the step (a draw, an annealed temperature) sets ``make_step_loss``; the search step
then binds it to its :class:`StepContext`.

A reference file of the original code is checked by the space's :class:`ReferenceFormat`
(``darts_jax.reference`` tells the format from the file's keys).

The CNN space of the paper is ``darts_jax.spaces.cnn``, NAS-Bench-201's
``darts_jax.spaces.nas_bench_201``. A new space is a new module here that
builds a ``SearchSpace`` (and a ``ReferenceFormat`` for its reference files); the run loop, the
search step and the estimators stay as they are.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import numpy as np

Pytree = Any


class StepContext(NamedTuple):
  """What a search method's loss may depend on besides its arguments, fixed for one step."""
  key: Any  # the step's draws (search.step_context); None: no draw, the method's deterministic
  # network (evaluation)
  epoch: Any  # the current epoch, from 0, for annealed settings (an integer array in a step)
  epochs: int


class StepLoss(NamedTuple):
  """A step's losses: ``loss`` is what every estimator differentiates (and what the weight step
  takes, unless ``weight_loss``: SDARTS perturbs the architecture in the weight step only)."""
  loss: Callable
  weight_loss: Callable | None = None

  @property
  def for_weights(self) -> Callable:
    """The loss the weight step differentiates."""
    return self.weight_loss or self.loss


class SearchSpace(NamedTuple):
  """What a search run needs from a search space (see the module docstring)."""
  name: str
  summary: str  # for the log, e.g. '8 cells, C=16'
  choices: tuple[str, ...]  # the candidate ops: the columns of each `mixing` matrix
  # (key, input shape with a batch axis, dtype) -> (weights, batch_stats); raises a one-line
  # ValueError for inputs the space cannot take
  init: Callable[[jax.Array, tuple[int, ...], Any], tuple[Pytree, Pytree]]
  init_architecture: Callable[[jax.Array, Any], Pytree]  # (key, dtype) -> architecture
  # (train, compute_dtype) -> loss(weights, architecture, batch_stats, batch) -> (loss, LossAux)
  make_loss: Callable[..., Callable]
  genotype: Callable[[Pytree], Any]  # architecture -> genotype (the discretisation rule)
  genotype_from_dict: Callable[[Mapping], Any]
  mixing: Callable[[Pytree], dict[str, np.ndarray]]  # architecture -> what the log shows
  # (directory, epoch, genotype, history of `mixing`) -> pictures; ImportError without the
  # plotting packages
  draw: Callable[[str, int, Any, list], None]
  # (train, compute_dtype) -> loss(weights, mixing, batch_stats, batch): the network at given
  # mixing weights; None for a space without that seam
  make_mixing_loss: Callable[..., Callable] | None = None
  # (architecture, compute dtype) -> mixing: the space's own rule (DARTS: softmax(alpha))
  architecture_mixing: Callable[[Pytree, Any], Any] | None = None
  # (train, compute_dtype) -> (StepContext -> StepLoss) for a loss that depends on the step;
  # None: make_loss serves every step
  make_step_loss: Callable[..., Callable[[StepContext], StepLoss]] | None = None
  # the choices without parameters of their own (skip, pooling): the health report counts them
  # in each derived genotype, where a collapsed search piles them up
  parameter_free: tuple[str, ...] = ()
  # the genotype rule of a method that draws one op per edge (GDAS), where the space has one of
  # its own (the DARTS cell's top-2 edges by their strongest op alone); None: ``genotype``
  one_hot_genotype: Callable[[Pytree], Any] | None = None


class ReferenceFormat(NamedTuple):
  """How ``darts_jax.reference`` recognises and checks a space's reference files."""
  name: str
  detect: Callable[[Mapping], bool]  # the file's meta -> is it this format's
  # (arrays by key, meta, report) -> fills report via report.check(...)
  verify: Callable[[Mapping[str, np.ndarray], Mapping, Any], None]


def verify_sections(search: Callable, evaluation: Callable, genotypes: Callable) -> Callable:
  """A ``ReferenceFormat.verify`` that checks each section a file's meta holds: 'search' (the
  search network and its step), 'eval' (an evaluation network), 'genotypes' (the rule's cases);
  each section check takes (arrays by key, meta, report)."""
  def verify(ref: Mapping[str, np.ndarray], meta: Mapping, report) -> None:
    if 'search' in meta:
      search(ref, meta, report)
    if 'eval' in meta:
      evaluation(ref, meta, report)
    if meta.get('genotypes'):
      genotypes(ref, meta, report)
  return verify
