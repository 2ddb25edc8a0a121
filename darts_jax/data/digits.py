"""scikit-learn's bundled handwritten digits: a real, download-free dataset for demos and CI.

1,797 8x8 grey images with values 0..16, rescaled to uint8 0..255 so they flow through the same
uint8 NHWC pipeline as CIFAR-10.
"""

from __future__ import annotations

import numpy as np

from darts_jax.data.pipeline import DataError, Dataset

NUM_CLASSES = 10
NUM_TRAIN = 1500  # the first 1,500 train, the remaining 297 test: fixed, no shuffling
_SPLITS = ('train', 'test')


def _raw() -> tuple[np.ndarray, np.ndarray]:
  try:
    from sklearn import datasets
  except ImportError:
    raise DataError("the digits dataset needs scikit-learn: pip install 'darts_jax[demo]'") from None
  bunch = datasets.load_digits()
  # Values are integers 0..16; v * 255 / 16 is exact except v = 8 (127.5 -> 128).
  images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  return images, bunch.target.astype(np.int32)


def load_digits(split: str) -> Dataset:
  """``'train'`` (first 1,500 images) or ``'test'`` (last 297), shape (N, 8, 8, 1) uint8.

  ``mean``/``std`` are the train images' statistics on the [0, 1] scale, for both splits, as
  CIFAR's constants are.
  """
  if split not in _SPLITS:
    raise ValueError(f'digits split {split!r}: expected one of {_SPLITS}')
  images, labels = _raw()
  scaled = images[:NUM_TRAIN].astype(np.float64) / 255.0
  mean, std = (float(scaled.mean()),), (float(scaled.std()),)
  index = slice(0, NUM_TRAIN) if split == 'train' else slice(NUM_TRAIN, None)
  return Dataset(images=np.ascontiguousarray(images[index]), labels=labels[index], mean=mean,
                 std=std, num_classes=NUM_CLASSES, name='digits')
