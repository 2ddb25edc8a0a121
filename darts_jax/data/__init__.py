"""Datasets and the input pipeline: CIFAR-10 and CIFAR-100 from their official archives, MNIST
and Fashion-MNIST from their official IDX files, images in class folders (ImageNet's layout, or
a user's own data), TFDS when installed, scikit-learn's digits for download-free demos, and the
DARTS split, batching and augmentation functions.

Small sets are decoded into memory (a :class:`Dataset`) and augmented on the device; ImageNet is
decoded image by image as it trains (:mod:`darts_jax.data.imagenet`).
"""

from __future__ import annotations

import os
import pathlib

from darts_jax.data import cifar10, imagenet, mnist
from darts_jax.data.cifar10 import load_cifar, load_cifar10
from darts_jax.data.digits import load_digits
from darts_jax.data.folder import load_folder
from darts_jax.data.mnist import load_idx_dataset
from darts_jax.data.pipeline import (AUGMENTATIONS, DataError, Dataset, augment, cutout,
                                     cutout_mask, dataset_augmentation, epoch_order, normalize,
                                     search_split, steps_per_epoch, subset, train_transform)

__all__ = [
    'AUGMENTATIONS', 'DATASETS', 'DataError', 'Dataset', 'SOURCES', 'augment', 'cutout',
    'cutout_mask', 'data_source', 'dataset_augmentation', 'default_data_dir', 'epoch_order',
    'folder_root',
    'load_cifar', 'load_cifar10', 'load_dataset', 'load_digits', 'load_folder',
    'load_idx_dataset', 'normalize', 'search_split', 'steps_per_epoch', 'subset',
    'train_transform',
]

DATASETS = ('cifar10', 'cifar100', 'mnist', 'fashion_mnist', 'imagenet', 'folder', 'digits')
# where the files come from: the official archives read by our numpy readers (the default for
# the small sets), images in class folders, or tensorflow-datasets (an optional extra)
SOURCES = ('archive', 'folder', 'tfds')
# the source a dataset is read from when --config.data_source is ''
_DEFAULT_SOURCE = {'imagenet': 'folder', 'folder': 'folder'}
# known datasets' normalisation constants, for their folder or TFDS copies: where each reader
# keeps them
_CONSTANTS = {**{name: (a.mean, a.std) for name, a in cifar10.ARCHIVES.items()},
              **{name: (s.mean, s.std) for name, s in mnist.SOURCES.items()},
              'imagenet': (imagenet.MEAN, imagenet.STD)}
DATA_DIR_ENV = 'DARTS_JAX_DATA_DIR'


def default_data_dir() -> pathlib.Path:
  """``$DARTS_JAX_DATA_DIR`` if set, else ``~/.cache/darts_jax``."""
  env = os.environ.get(DATA_DIR_ENV)
  return pathlib.Path(env).expanduser() if env else pathlib.Path('~/.cache/darts_jax').expanduser()


def data_source(dataset: str, source: str = '') -> str:
  """The source ``dataset`` is read from: ``source``, or when it is '' the dataset's own
  (folder for imagenet and folder, the official archive for the rest); a one-line error for a
  pair that cannot go together."""
  if dataset not in DATASETS:
    raise ValueError(f'dataset={dataset!r} is unknown; allowed: {", ".join(DATASETS)}')
  if source and source not in SOURCES:
    raise ValueError(f'data_source={source!r} is unknown; allowed: {", ".join(SOURCES)} (or '
                     "'': the dataset's own)")
  source = source or _DEFAULT_SOURCE.get(dataset, 'archive')
  if dataset == 'digits' and source != 'archive':
    raise ValueError(f"data_source={source!r}: digits come only from scikit-learn's copy "
                     "(data_source='archive')")
  if dataset in ('imagenet', 'folder') and source == 'archive':
    raise ValueError(f"data_source='archive': {dataset} has no archive reader; allowed: folder"
                     + (', tfds' if dataset == 'imagenet' else ''))
  if dataset == 'folder' and source == 'tfds':
    raise ValueError("data_source='tfds' needs a TFDS dataset name, not dataset='folder'")
  return source


def folder_root(name: str, data_dir: str | os.PathLike | None) -> pathlib.Path:
  if data_dir:
    return pathlib.Path(data_dir).expanduser()
  if name == 'folder':
    raise ValueError("dataset='folder' needs --config.data_dir=DIR, the folder of class "
                     'sub-folders (DIR/train/<class>/*, DIR/val/<class>/*, or DIR/<class>/*)')
  return default_data_dir() / name


def load_dataset(name: str, split: str, data_dir: str | os.PathLike | None = None,
                 download: bool = True, source: str = '', image_size: int = 0,
                 limit: int = 0) -> Dataset:
  """One split of a named dataset, decoded into memory.

  ``source`` (:data:`SOURCES`, '' for the dataset's own) says where from. The archives are
  read from ``data_dir`` (downloaded there when missing and ``download``); a folder dataset is
  the folder ``data_dir`` itself (``DIR/train/<class>/*``, ``DIR/val/<class>/*``); a TFDS one
  is prepared in ``data_dir``. ``image_size`` > 0 resizes folder images to that square.
  ``limit`` > 0 keeps the first ``limit`` examples (a folder decodes no more).
  """
  source = data_source(name, source)
  if source == 'folder':
    root = folder_root(name, data_dir)
    if name == 'imagenet' and not image_size:
      raise ValueError('dataset=imagenet read into memory (as the search reads) needs '
                       '--config.image_size=N: its images differ in size')
    mean, std = _CONSTANTS.get(name, (None, None))
    return load_folder(root, split, image_size, name, mean, std, limit)
  if source == 'tfds':
    from darts_jax.data import tfds_source
    mean, std = _CONSTANTS[name]
    return tfds_source.load_tfds(name, split, data_dir or None, download, mean, std,
                                 image_size, limit)
  if image_size:
    raise ValueError(f'image_size={image_size}: {name} is read at its own size from its '
                     "archive; image_size resizes folder and TFDS images (or set it to 0)")
  data_dir = default_data_dir() if data_dir is None or data_dir == '' else data_dir
  if name in ('cifar10', 'cifar100'):
    return subset(load_cifar(name, data_dir, split, download), limit)
  if name in ('mnist', 'fashion_mnist'):
    return subset(load_idx_dataset(name, data_dir, split, download), limit)
  return subset(load_digits(split), limit)
