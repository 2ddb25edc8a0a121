"""Datasets and the input pipeline: CIFAR-10 from its official archive, MNIST and Fashion-MNIST
from their official IDX files, scikit-learn's digits for download-free demos, and the DARTS
split, batching and augmentation functions.
"""

from __future__ import annotations

import os
import pathlib

from darts_jax.data.cifar10 import load_cifar10
from darts_jax.data.digits import load_digits
from darts_jax.data.mnist import load_idx_dataset
from darts_jax.data.pipeline import (DataError, Dataset, augment, cutout, cutout_mask,
                                     epoch_order, normalize, search_split, steps_per_epoch,
                                     subset)

__all__ = [
    'DataError', 'Dataset', 'augment', 'cutout', 'cutout_mask', 'default_data_dir',
    'epoch_order', 'load_cifar10', 'load_dataset', 'load_digits', 'load_idx_dataset',
    'normalize', 'search_split',
    'steps_per_epoch', 'subset', 'DATASETS',
]

DATASETS = ('cifar10', 'mnist', 'fashion_mnist', 'digits')
DATA_DIR_ENV = 'DARTS_JAX_DATA_DIR'


def default_data_dir() -> pathlib.Path:
  """``$DARTS_JAX_DATA_DIR`` if set, else ``~/.cache/darts_jax``."""
  env = os.environ.get(DATA_DIR_ENV)
  return pathlib.Path(env).expanduser() if env else pathlib.Path('~/.cache/darts_jax').expanduser()


def load_dataset(name: str, split: str, data_dir: str | os.PathLike | None = None,
                 download: bool = True) -> Dataset:
  """One split of a named dataset. ``data_dir``/``download`` matter for the downloaded ones
  (all but digits)."""
  data_dir = default_data_dir() if data_dir is None else data_dir
  if name == 'cifar10':
    return load_cifar10(data_dir, split, download)
  if name in ('mnist', 'fashion_mnist'):
    return load_idx_dataset(name, data_dir, split, download)
  if name == 'digits':
    return load_digits(split)
  raise ValueError(f'unknown dataset {name!r}: expected one of {DATASETS}')
