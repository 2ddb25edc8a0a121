"""Datasets and the input pipeline: CIFAR-10 from its official archive, scikit-learn's digits
for download-free demos, and the DARTS split, batching and augmentation functions.
"""

from __future__ import annotations

import os
import pathlib

from darts_jax.data.cifar10 import load_cifar10
from darts_jax.data.digits import load_digits
from darts_jax.data.pipeline import (DataError, Dataset, augment, cutout, cutout_mask,
                                     epoch_order, normalize, search_split, steps_per_epoch,
                                     subset)

__all__ = [
    'DataError', 'Dataset', 'augment', 'cutout', 'cutout_mask', 'default_data_dir',
    'epoch_order', 'load_cifar10', 'load_dataset', 'load_digits', 'normalize', 'search_split',
    'steps_per_epoch', 'subset', 'DATASETS',
]

DATASETS = ('cifar10', 'digits')
DATA_DIR_ENV = 'DARTS_JAX_DATA_DIR'


def default_data_dir() -> pathlib.Path:
  """``$DARTS_JAX_DATA_DIR`` if set, else ``~/.cache/darts_jax``."""
  env = os.environ.get(DATA_DIR_ENV)
  return pathlib.Path(env).expanduser() if env else pathlib.Path('~/.cache/darts_jax').expanduser()


def load_dataset(name: str, split: str, data_dir: str | os.PathLike | None = None,
                 download: bool = True) -> Dataset:
  """One split of a named dataset. ``data_dir``/``download`` only matter for CIFAR-10."""
  if name == 'cifar10':
    return load_cifar10(default_data_dir() if data_dir is None else data_dir, split, download)
  if name == 'digits':
    return load_digits(split)
  raise ValueError(f'unknown dataset {name!r}: expected one of {DATASETS}')
