"""MNIST and Fashion-MNIST read straight from their official gzipped IDX files.

``data_dir/mnist/`` (or ``data_dir/fashion_mnist/``) holds the four files under their official
names (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``, ``t10k-...``); a missing
one is downloaded, checked against its published md5 and renamed into place atomically, as the
CIFAR-10 archive is. Nothing is extracted. The IDX format (LeCun et al.): a big-endian header of
two zero bytes, a type code (0x08: unsigned bytes), the number of dimensions, then each
dimension's size as a 32-bit integer; the data follow.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import zlib
from typing import NamedTuple

import numpy as np

from darts_jax.data.cifar10 import download_archive
from darts_jax.data.pipeline import DataError, Dataset


class Source(NamedTuple):
  """Where a dataset's files come from, their md5s, and its normalisation constants."""
  title: str
  url: str  # the folder the files are in
  md5: dict[str, str]  # file name -> md5 of the .gz
  mean: tuple[float, ...]
  std: tuple[float, ...]


_FILES = {'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
          'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')}

SOURCES = {
    # the mirror torchvision reads (the original yann.lecun.com folder is often unreachable);
    # the statistics of the training images on the [0, 1] scale, as pt.darts normalises
    'mnist': Source('MNIST', 'https://ossci-datasets.s3.amazonaws.com/mnist/', {
        'train-images-idx3-ubyte.gz': 'f68b3c2dcbeaaa9fbdd348bbdeb94873',
        'train-labels-idx1-ubyte.gz': 'd53e105ee54ea40749a09fcbcd1e9432',
        't10k-images-idx3-ubyte.gz': '9fb629c4189551a2d022fa330f9573f3',
        't10k-labels-idx1-ubyte.gz': 'ec29112dd5afa0611ce80d1b7f02629c'}, (0.1307,), (0.3081,)),
    'fashion_mnist': Source(
        'Fashion-MNIST', 'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/', {
            'train-images-idx3-ubyte.gz': '8d4fb7e6c68d591d4c3dfef9ec88bf0d',
            'train-labels-idx1-ubyte.gz': '25c81989df183df01b3e8a0aad5dffbe',
            't10k-images-idx3-ubyte.gz': 'bef4ecab320f06d8554ea6380940ec79',
            't10k-labels-idx1-ubyte.gz': 'bb300cfdad3c16e7a12a480ee83cd310'},
        (0.2860,), (0.3530,)),
}
NUM_CLASSES = 10


def read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
  """The unsigned-byte array of ``ndim`` dimensions in the gzipped IDX file ``path``; a
  one-line DataError naming the file for anything else."""
  path = pathlib.Path(path)
  try:
    with gzip.open(path, 'rb') as f:
      raw = f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise DataError(f'{path}: not a readable gzip file ({e})') from None
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != ndim:
    raise DataError(f'{path}: not an IDX file of unsigned bytes with {ndim} dimensions (header '
                    f'{raw[:4].hex()}, expected 000008{ndim:02x})')
  shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  start = 4 + 4 * ndim
  if len(raw) != start + int(np.prod(shape)):
    raise DataError(f'{path}: its header gives shape {shape} ({int(np.prod(shape))} bytes), '
                    f'the file holds {len(raw) - start}')
  return np.frombuffer(raw, np.uint8, offset=start).reshape(shape)


def load_idx_dataset(name: str, data_dir: str | os.PathLike, split: str,
                     download: bool = True) -> Dataset:
  """``name`` ('mnist' or 'fashion_mnist'), split ``'train'`` (60,000) or ``'test'``
  (10,000), images (N, 28, 28, 1) uint8, from ``data_dir/name/``."""
  if name not in SOURCES:
    raise ValueError(f'{name!r} is not an IDX dataset; allowed: {", ".join(SOURCES)}')
  if split not in _FILES:
    raise ValueError(f'{name} split {split!r}: expected one of {tuple(_FILES)}')
  source = SOURCES[name]
  folder = pathlib.Path(data_dir).expanduser() / name
  paths = [folder / f for f in _FILES[split]]
  for path in paths:
    if not path.exists():
      if not download:
        raise DataError(f'{source.title} file not found at {path}; get {source.url}{path.name} '
                        'and put it there (or pass download=True)')
      download_archive(path, source.url + path.name, source.md5[path.name], source.title)
  images, labels = read_idx(paths[0], 3), read_idx(paths[1], 1)
  if len(images) != len(labels):
    raise DataError(f'{paths[0]} holds {len(images)} images, {paths[1]} {len(labels)} labels')
  if labels.size and labels.max() >= NUM_CLASSES:
    raise DataError(f'{paths[1]}: labels should lie in 0..{NUM_CLASSES - 1}, got '
                    f'{labels.min()}..{labels.max()}')
  return Dataset(images=np.ascontiguousarray(images[..., None]),
                 labels=labels.astype(np.int32), mean=source.mean, std=source.std,
                 num_classes=NUM_CLASSES, name=name)
