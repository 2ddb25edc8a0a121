"""NAS-Bench-201's search space as a :class:`~darts_jax.spaces.SearchSpace`: the benchmark's
DARTS supernet (``darts_jax.nas_bench_201``; 5 ops on the 6 edges of one cell shared by all 15
cells), the architecture ``{'cell': (6, 5)}`` (plus PC-DARTS's ``'betas_cell'``), and the
benchmark's rule, the argmax op of every edge. Its genotype is a
:class:`~darts_jax.nas_bench_201.Structure`, written in the benchmark's string form.

The cell and skeleton are fixed by the benchmark: of a search config's network keys only
``init_channels`` (C, 16) and ``cells_per_stage`` (N, 5) apply, and ``primitives`` (a subset of
the 5 ops; () for all).
"""

from __future__ import annotations

import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from darts_jax import nas_bench_201 as nb201
from darts_jax.spaces import SearchSpace

NAME = 'nas_bench_201'


def make_space(config: nb201.NB201Config) -> SearchSpace:
  """The NAS-Bench-201 search space of the network ``config``."""

  def init(key, input_shape, dtype):
    nb201.check_images(jax.ShapeDtypeStruct(tuple(input_shape), dtype), config.in_channels,
                       'NAS-Bench-201 search network')
    return nb201.init_search_network(key, config, tuple(input_shape[1:3]), dtype)

  def draw(directory, epoch, genotype, history):
    from darts_jax import viz
    os.makedirs(directory, exist_ok=True)
    viz.plot_alpha_heatmaps(history[-1], config.primitives,
                            os.path.join(directory, f'alphas_epoch{epoch:03d}.png'),
                            title=f'softmax(alpha), epoch {epoch}\n{genotype.to_string()}',
                            layout=viz.NB201_LAYOUT)
    viz.plot_alpha_evolution(history, config.primitives,
                             os.path.join(directory, 'alpha_evolution.png'),
                             layout=viz.NB201_LAYOUT)

  return SearchSpace(
      name=NAME,
      summary=(f'NAS-Bench-201 cells, C={config.C}, N={config.cells_per_stage} '
               f'({3 * config.cells_per_stage} cells, 2 residual blocks)'),
      choices=config.primitives,
      init=init,
      init_architecture=lambda key, dtype: nb201.init_architecture(key, config, dtype),
      make_loss=lambda train=True, compute_dtype=None: nb201.make_loss(config, train,
                                                                      compute_dtype),
      genotype=lambda architecture: nb201.derive_structure(architecture, config.primitives,
                                                           config.max_nodes),
      genotype_from_dict=nb201.Structure.from_dict,
      mixing=lambda architecture: _mixing(architecture, config),
      draw=draw,
      make_mixing_loss=lambda train=True, compute_dtype=None: nb201.make_mixing_loss(
          config, train, compute_dtype),
      architecture_mixing=lambda architecture, dtype: nb201.architecture_mixing(
          architecture, dtype, config),
      parameter_free=tuple(op for op in config.primitives if op in nb201.PARAMETER_FREE))


def _mixing(architecture, config: nb201.NB201Config) -> dict[str, np.ndarray]:
  # eq. 2's softmax as the network mixes it; with PC-DARTS's betas each row is weighted by its
  # edge's normalised beta, as the logs of the DARTS space show it
  m = nb201.architecture_mixing({k: jnp.asarray(v, jnp.float32) for k, v in
                                 architecture.items()}, jnp.float32, config)['cell']
  return {'cell': np.asarray(m.ops if m.edges is None else m.ops * m.edges[:, None])}


def config_from_run(cfg: Mapping, num_classes: int, in_channels: int) -> nb201.NB201Config:
  """The network a search config describes (``experiments/configs/search.py``)."""
  return nb201.NB201Config(C=cfg['init_channels'], cells_per_stage=cfg['cells_per_stage'],
                           num_classes=num_classes, in_channels=in_channels,
                           primitives=tuple(cfg.get('primitives') or ()) or nb201.PRIMITIVES,
                           partial_channels=cfg.get('partial_channels', 1),
                           edge_normalization=bool(cfg.get('edge_normalization', False)),
                           auxiliary_skip=bool(cfg.get('auxiliary_skip', False)))


def space_from_run(cfg: Mapping, num_classes: int, in_channels: int) -> SearchSpace:
  return make_space(config_from_run(cfg, num_classes, in_channels))
