"""Dataset container, the DARTS search split, epoch ordering and on-device augmentation.

Host side (NumPy) stays deterministic and shape-static: every batch an epoch yields has the same
shape, so a jitted step compiles once. Device side (JAX) does the per-image randomness, keyed
per image, so augmentation runs inside the training step instead of in a Python loader.

The transforms reproduce the original DARTS CIFAR pipeline (torchvision ``RandomCrop(32,
padding=4)``, ``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize(mean, std)`` and, for final
training, ``Cutout``) on NHWC uint8 batches, and pt.darts's policies for the other small sets
(:data:`AUGMENTATIONS`).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np


class DataError(Exception):
  """A dataset cannot be read or fetched; the message says which file and what to do."""


class Dataset(NamedTuple):
  """One split of a dataset, held in host memory.

  ``mean``/``std`` are per-channel statistics on the [0, 1] scale: the constants the transforms
  normalise with, not necessarily the statistics of this split.
  """
  images: np.ndarray  # (N, H, W, C) uint8
  labels: np.ndarray  # (N,) int32
  mean: tuple[float, ...]
  std: tuple[float, ...]
  num_classes: int
  name: str
  classes: tuple[str, ...] = ()  # the class names in label order, where the data name them


def _take(dataset: Dataset, index: slice) -> Dataset:
  return dataset._replace(images=dataset.images[index], labels=dataset.labels[index])


def subset(dataset: Dataset, n: int) -> Dataset:
  """The first ``n`` examples (0: all)."""
  return _take(dataset, slice(0, n)) if n else dataset


def search_split(dataset: Dataset, portion: float = 0.5) -> tuple[Dataset, Dataset]:
  """The original DARTS search split: the first ``floor(portion * N)`` examples train the
  weights, the rest the architecture. No shuffling, as in the original ``train_search.py``,
  so the two halves are the same on every run and every machine.
  """
  if not 0.0 < portion < 1.0:
    raise ValueError(f'search_split: portion={portion!r} must lie strictly between 0 and 1')
  n = len(dataset.labels)
  split = int(math.floor(portion * n))
  if split == 0 or split == n:
    raise ValueError(f'search_split: portion={portion} of {n} examples leaves one side empty')
  return _take(dataset, slice(0, split)), _take(dataset, slice(split, n))


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Batches per epoch when the last short batch is padded (see :func:`epoch_order`)."""
  _check_sizes(num_examples, batch_size)
  return -(-num_examples // batch_size)


def _check_sizes(num_examples: int, batch_size: int) -> None:
  if num_examples < 1:
    raise ValueError(f'num_examples={num_examples}: need at least one example')
  if batch_size < 1:
    raise ValueError(f'batch_size={batch_size}: must be a positive integer')
  if batch_size > num_examples:
    raise ValueError(f'batch_size={batch_size} exceeds num_examples={num_examples}: a batch '
                     'would have to repeat examples')


def epoch_order(num_examples: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
  """Example indices for one epoch, shape ``(steps, batch_size)``.

  The permutation depends only on ``(seed, epoch)``, so a resumed run replays the same order.
  A short last batch is filled with the permutation's first indices: batches keep one static
  shape (one compilation) and every example is still seen at least once per epoch.
  """
  steps = steps_per_epoch(num_examples, batch_size)
  if seed < 0 or epoch < 0:
    raise ValueError(f'epoch_order: seed={seed} and epoch={epoch} must be non-negative')
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
  fill = steps * batch_size - num_examples
  return np.concatenate([perm, perm[:fill]]).reshape(steps, batch_size)


def _check_batch(images: jax.Array, where: str) -> None:
  if images.ndim != 4:
    raise ValueError(f'{where}: expected an NHWC batch (B, H, W, C), got shape {images.shape}')
  # The transforms divide by 255; a float batch here would be scaled twice without complaint.
  if images.dtype != jnp.uint8:
    raise TypeError(f'{where}: expected uint8 pixels, got {images.dtype}')


def standardize(x: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """``(x - mean) / std`` per channel of an NHWC float batch on the [0, 1] scale."""
  mean = jnp.asarray(mean, jnp.float32).reshape(1, 1, 1, -1)
  std = jnp.asarray(std, jnp.float32).reshape(1, 1, 1, -1)
  return (x - mean) / std


def _normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  return standardize(images.astype(jnp.float32) / 255.0, mean, std)


@jax.jit
def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """The eval-time transform ``(x / 255 - mean) / std`` of a uint8 NHWC batch, as float32."""
  _check_batch(images, 'normalize')
  return _normalize(images, mean, std)


@functools.partial(jax.jit, static_argnames=('crop_padding', 'flip'))
def augment(key: jax.Array, images: jax.Array, mean: Sequence[float], std: Sequence[float],
            crop_padding: int = 4, flip: bool = True) -> jax.Array:
  """Random crop with zero padding, random horizontal flip, then normalisation (float32).

  Padding uses pixel value 0 before normalisation, as torchvision's ``RandomCrop(padding=4)``
  does on the PIL image, so padded pixels come out as ``-mean / std``. Each image draws its own
  crop offset and flip from its own subkey of ``key``. ``crop_padding=0, flip=False`` is
  :func:`normalize`.
  """
  _check_batch(images, 'augment')
  if crop_padding < 0:
    raise ValueError(f'augment: crop_padding={crop_padding} must be non-negative')
  if crop_padding == 0 and not flip:
    return _normalize(images, mean, std)
  batch, height, width, channels = images.shape
  p = crop_padding
  padded = jnp.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))

  def one(k, image):
    k_crop, k_flip = jax.random.split(k)
    offset = jax.random.randint(k_crop, (2,), 0, 2 * p + 1)
    out = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))
    if flip:
      out = jnp.where(jax.random.bernoulli(k_flip), out[:, ::-1], out)
    return out

  return _normalize(jax.vmap(one)(jax.random.split(key, batch), padded), mean, std)


# --config.augmentation: pt.darts's preproc.data_transforms per dataset. 'crop_flip' is the
# CIFAR recipe above (crop_padding, flip); 'affine' is MNIST's RandomAffine(degrees=15,
# translate=(0.1, 0.1), scale=(0.9, 1.1), shear=0.1); 'affine_vflip' is Fashion-MNIST's, the same
# plus RandomVerticalFlip(); 'none' only normalises. 'imagenet' is the original's ImageNet
# training transform (random-resized crop, flip, colour jitter), for ImageNet's streamed images.
AUGMENTATIONS = ('crop_flip', 'affine', 'affine_vflip', 'none', 'imagenet')
_DATASET_AUGMENTATION = {'mnist': 'affine', 'fashion_mnist': 'affine_vflip'}


def dataset_augmentation(dataset: str, augmentation: str = '', streamed: bool = False) -> str:
  """``augmentation``, or when it is '' the dataset's own (pt.darts): affine for MNIST, affine
  and vertical flip for Fashion-MNIST, ImageNet's for ImageNet ``streamed`` as it trains, crop
  and flip for the rest; a one-line error for one the data cannot take ('imagenet' needs the
  streamed images, which take only it or 'none')."""
  if augmentation and augmentation not in AUGMENTATIONS:
    raise ValueError(f'augmentation={augmentation!r} is unknown; allowed: '
                     f'{", ".join(AUGMENTATIONS)} (or \'\': the dataset\'s own)')
  if streamed:
    if augmentation not in ('', 'imagenet', 'none'):
      raise ValueError(f'augmentation={augmentation!r}: ImageNet takes imagenet (random-resized '
                       'crop, flip, colour jitter) or none')
    return augmentation or 'imagenet'
  if augmentation == 'imagenet':
    raise ValueError(f"augmentation='imagenet' is ImageNet training's streamed pipeline; "
                     f'{dataset} in memory takes {", ".join(AUGMENTATIONS[:-1])}')
  return augmentation or _DATASET_AUGMENTATION.get(dataset, 'crop_flip')


def affine_warp(image: jax.Array, angle: jax.Array, translate: jax.Array, scale: jax.Array,
                shear: jax.Array) -> jax.Array:
  """One (H, W, C) image moved by ``p' = c + t + scale * R(angle) S(shear) (p - c)`` about its
  centre ``c`` (degrees; rows down, so a positive angle turns it anticlockwise on screen), read
  back by nearest neighbour with 0 outside, as torchvision's ``affine`` (NEAREST, fill 0).

  Each output pixel ``p'`` takes the input at the inverse map ``c + S^-1 R^-1 (p' - c - t) /
  scale``, so no pixel is left unwritten.
  """
  height, width = image.shape[:2]
  theta, phi = jnp.deg2rad(angle), jnp.deg2rad(shear)
  cos, sin, tan = jnp.cos(theta), jnp.sin(theta), jnp.tan(phi)
  cy, cx = (height - 1) / 2, (width - 1) / 2
  ys, xs = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                        jnp.arange(width, dtype=jnp.float32), indexing='ij')
  # R^-1 = R^T of R = [[cos, sin], [-sin, cos]] in (x, y-down); S^-1 = [[1, tan], [0, 1]]
  u = (xs - cx - translate[0]) / scale
  v = (ys - cy - translate[1]) / scale
  ru, rv = cos * u - sin * v, sin * u + cos * v
  src_x, src_y = jnp.round(ru + tan * rv + cx), jnp.round(rv + cy)
  inside = (src_x >= 0) & (src_x <= width - 1) & (src_y >= 0) & (src_y <= height - 1)
  xi = jnp.clip(src_x, 0, width - 1).astype(jnp.int32)
  yi = jnp.clip(src_y, 0, height - 1).astype(jnp.int32)
  return jnp.where(inside[..., None], image[yi, xi], jnp.zeros((), image.dtype))


@functools.partial(jax.jit, static_argnames=('degrees', 'translate', 'scale', 'shear'))
def random_affine(key: jax.Array, images: jax.Array, degrees: float = 15.0,
                  translate: float = 0.1, scale: tuple[float, float] = (0.9, 1.1),
                  shear: float = 0.1) -> jax.Array:
  """torchvision's ``RandomAffine(degrees, (translate, translate), scale, shear)`` on a uint8
  NHWC batch, one draw per image: angle ~ U(-degrees, degrees), a whole-pixel shift
  ``round(U(-translate * size, translate * size))`` per axis, scale ~ U(*scale), x-shear ~
  U(-shear, shear) degrees."""
  _check_batch(images, 'random_affine')
  height, width = images.shape[1:3]
  limit = jnp.asarray([translate * width, translate * height], jnp.float32)

  def one(k, image):
    k_angle, k_shift, k_scale, k_shear = jax.random.split(k, 4)
    angle = jax.random.uniform(k_angle, (), minval=-degrees, maxval=degrees)
    shift = jnp.round(jax.random.uniform(k_shift, (2,), minval=-limit, maxval=limit))
    factor = jax.random.uniform(k_scale, (), minval=scale[0], maxval=scale[1])
    shear_x = jax.random.uniform(k_shear, (), minval=-shear, maxval=shear)
    return affine_warp(image, angle, shift, factor, shear_x)

  return jax.vmap(one)(jax.random.split(key, images.shape[0]), images)


@jax.jit
def random_vertical_flip(key: jax.Array, images: jax.Array) -> jax.Array:
  """torchvision's ``RandomVerticalFlip()``: each image upside down with probability 1/2."""
  flips = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
  return jnp.where(flips, images[:, ::-1], images)


def train_transform(key: jax.Array, images: jax.Array, mean: Sequence[float],
                    std: Sequence[float], augmentation: str, crop_padding: int = 4,
                    flip: bool = True) -> jax.Array:
  """A uint8 training batch augmented as ``augmentation`` (:data:`AUGMENTATIONS`) says, then
  normalised to float32 (pt.darts's order: the random transforms, ToTensor, Normalize)."""
  if augmentation == 'crop_flip':
    return augment(key, images, mean, std, crop_padding, flip)
  if augmentation == 'none':
    return normalize(images, mean, std)
  if augmentation not in ('affine', 'affine_vflip'):
    raise ValueError(f'augmentation={augmentation!r} is not an in-memory transform; allowed: '
                     f'{", ".join(AUGMENTATIONS[:-1])}')
  k_affine, k_flip = jax.random.split(key)
  images = random_affine(k_affine, images)
  if augmentation == 'affine_vflip':
    images = random_vertical_flip(k_flip, images)
  return normalize(images, mean, std)


def cutout_mask(center_y: jax.Array, center_x: jax.Array, height: int, width: int,
                length: int) -> jax.Array:
  """(height, width) float32 mask: 0 inside the cutout square, 1 elsewhere.

  The square is rows ``[y - length // 2, y + length // 2)`` and the same for columns, clipped
  at the borders, as the original DARTS ``Cutout`` (so an odd ``length`` cuts ``length - 1``).
  Built from iota comparisons, so the centre may be traced while the shape stays static.
  """
  half = length // 2
  rows = jax.lax.broadcasted_iota(jnp.int32, (height, width), 0)
  cols = jax.lax.broadcasted_iota(jnp.int32, (height, width), 1)
  inside = ((rows >= center_y - half) & (rows < center_y + half)
            & (cols >= center_x - half) & (cols < center_x + half))
  return jnp.where(inside, 0.0, 1.0).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=('length',))
def cutout(key: jax.Array, images: jax.Array, length: int) -> jax.Array:
  """Zero one ``length`` x ``length`` square per image of a normalised NHWC batch.

  The centre is uniform over all pixels (so squares near a border are clipped), one draw per
  image from its own subkey. ``length=0`` returns the batch unchanged.
  """
  if images.ndim != 4:
    raise ValueError(f'cutout: expected an NHWC batch (B, H, W, C), got shape {images.shape}')
  if length < 0:
    raise ValueError(f'cutout: length={length} must be non-negative')
  if length == 0:
    return images
  batch, height, width, _ = images.shape

  def one(k):
    k_y, k_x = jax.random.split(k)
    y = jax.random.randint(k_y, (), 0, height)
    x = jax.random.randint(k_x, (), 0, width)
    return cutout_mask(y, x, height, width, length)

  masks = jax.vmap(one)(jax.random.split(key, batch))
  return images * masks[..., None].astype(images.dtype)
