"""tensorflow-datasets as a source (``--config.data_source=tfds``): the JAX ecosystem's standard
catalogue, read through ``tfds.data_source``, which needs no TensorFlow to read.

An optional extra (``pip install 'darts_jax[tfds]'``). ``data_dir`` is TFDS's data folder ('':
its own default, ``~/tensorflow_datasets``). The set must be prepared in the ``array_record``
format (``download=True`` prepares it so; ``tfds build NAME --file_format=array_record`` does
it elsewhere). ImageNet's ``imagenet2012`` cannot be downloaded: its tars go in
``DATA_DIR/downloads/manual/`` first, as TFDS's catalogue says.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from darts_jax.data.pipeline import DataError, Dataset

# our dataset names -> TFDS's, and our splits -> TFDS's (ImageNet's test split is its validation)
NAMES = {'cifar10': 'cifar10', 'cifar100': 'cifar100', 'mnist': 'mnist',
         'fashion_mnist': 'fashion_mnist', 'imagenet': 'imagenet2012'}
SPLITS = {'train': 'train', 'test': 'test'}
_IMAGENET_SPLITS = {'train': 'train', 'test': 'validation'}


def _tfds():
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise DataError("data_source='tfds' needs tensorflow-datasets: pip install "
                    "'darts_jax[tfds]' (or use data_source='archive' or 'folder')") from None
  return tfds


def _open(name: str, split: str, data_dir: str | os.PathLike | None, download: bool):
  """``(TFDS's name, TFDS's split, the data source, its label feature)``; a one-line DataError
  when the set cannot be read."""
  if name not in NAMES:
    raise ValueError(f"data_source='tfds' has no {name!r}; allowed: {', '.join(NAMES)}")
  if split not in SPLITS:
    raise ValueError(f'split {split!r}: expected one of {tuple(SPLITS)}')
  tfds = _tfds()
  tfds_name = NAMES[name]
  tfds_split = (_IMAGENET_SPLITS if name == 'imagenet' else SPLITS)[split]
  try:
    source = tfds.data_source(tfds_name, split=tfds_split,
                              data_dir=None if data_dir is None else os.fspath(data_dir),
                              download=download)
    label = source.dataset_info.features['label']
  except Exception as e:  # TFDS raises many types for a missing or unprepared set
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    where = data_dir or "TFDS's default data_dir"
    raise DataError(f'TFDS {tfds_name} ({tfds_split}) could not be read from {where} '
                    f'(prepare it with download=True, or tfds build {tfds_name} '
                    f'--file_format=array_record): {first}') from None
  if len(source) == 0:
    raise DataError(f'TFDS {tfds_name} ({tfds_split}) is empty')
  return tfds_name, tfds_split, source, label


class TfdsImages:
  """A TFDS image set read record by record, as ImageNet's ``imagenet2012`` trains: its size,
  class names and ``read(i) -> (image (H, W, 3) uint8, label)``. The data source is opened in
  each process that reads (grain's workers get a copy without it)."""

  def __init__(self, name: str, split: str, data_dir: str | None, size: int,
               classes: tuple[str, ...], source: Any = None):
    self.name, self.split, self.data_dir, self.size = name, split, data_dir, size
    self.classes = classes
    self._source = source

  def __len__(self) -> int:
    return self.size

  def __getstate__(self):
    return {**self.__dict__, '_source': None}

  def head(self, n: int) -> 'TfdsImages':
    """The first ``n`` records (0: all)."""
    size = min(n, self.size) if n else self.size
    return TfdsImages(self.name, self.split, self.data_dir, size, self.classes, self._source)

  def read(self, i: int, channels: int | None = 3) -> tuple[np.ndarray, int]:
    """Record ``i``: its image (greyscale repeated to ``channels`` = 3; None: as stored) and
    its label."""
    if self._source is None:
      self._source = _tfds().data_source(self.name, split=self.split, data_dir=self.data_dir)
    try:
      record = self._source[i]
      image, label = np.asarray(record['image'], np.uint8), int(record['label'])
    except Exception as e:  # a record TFDS cannot decode
      raise DataError(f'TFDS {self.name} ({self.split}) record {i}: not a readable example '
                      f'({type(e).__name__}: {e})') from None
    if channels == 3 and image.shape[-1] == 1:
      image = np.repeat(image, 3, -1)
    return image, label


def list_tfds_images(name: str, split: str, data_dir: str | os.PathLike | None,
                     download: bool) -> TfdsImages:
  """``split`` of TFDS's copy of ``name``, opened but not read."""
  tfds_name, tfds_split, source, label = _open(name, split, data_dir, download)
  return TfdsImages(tfds_name, tfds_split, None if data_dir is None else os.fspath(data_dir),
                    len(source), tuple(label.names), source)


def load_tfds(name: str, split: str, data_dir: str | os.PathLike | None, download: bool,
              mean: tuple[float, ...], std: tuple[float, ...], image_size: int = 0,
              limit: int = 0) -> Dataset:
  """``split`` of TFDS's copy of ``name`` read into memory, uint8 NHWC; images resized to
  ``image_size`` squared when it is > 0 (ImageNet's differ in size, so it needs one); only the
  first ``limit`` records (0: all) are read."""
  if name == 'imagenet' and not image_size:
    raise ValueError('imagenet2012 read into memory needs --config.image_size=N: its images '
                     'differ in size')
  tfds_name, tfds_split, source, label = _open(name, split, data_dir, download)
  records = TfdsImages(tfds_name, tfds_split, None, len(source), (), source)
  num_classes, n = label.num_classes, min(limit, len(source)) if limit else len(source)
  images, labels = None, np.empty(n, np.int32)
  for i in range(n):
    image, labels[i] = records.read(i, channels=None)
    if image_size and image.shape[:2] != (image_size, image_size):
      from PIL import Image
      image = np.asarray(Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
                         .resize((image_size, image_size), Image.BILINEAR), np.uint8)
      image = image[..., None] if image.ndim == 2 else image
    if images is None:
      images = np.empty((n, *image.shape), np.uint8)
    images[i] = image
  return Dataset(images=images, labels=labels, mean=mean, std=std, num_classes=num_classes,
                 name=name)
