"""ImageNet (a folder of JPEGs, or TFDS's ``imagenet2012``) decoded while it trains: the
original's ``train_imagenet.py`` input pipeline, made a function of (seed, epoch, position).

The host does what needs the file: decode, the random-resized crop to ``image_size`` and the
flip (training), or the resize of the shorter side to ``resize_size`` and the centre crop
(evaluation), and hands uint8 batches on. Colour jitter and normalisation run on the device
inside the jitted step (:func:`color_jitter`), where they cost nothing next to the network.

Every example's randomness is drawn from ``(seed, epoch, position in the epoch)``, so a batch is
the same whichever worker decodes it, and a run resumed at step ``t`` rebuilds its loader at
``t``: that is the loader's whole position. In a multi-process run each process decodes only its
own rows of each global batch. Grain spreads the decoding over threads (Pillow releases the GIL
while it decodes and resamples) and, with ``workers`` > 0, over processes, and reads ahead.
"""

from __future__ import annotations

import functools
import math
from typing import Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from darts_jax.data import folder as folder_lib
from darts_jax.data import tfds_source
from darts_jax.data.pipeline import standardize

# the torchvision constants the original normalises with
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# RandomResizedCrop's defaults and ColorJitter(0.4, 0.4, 0.4, 0.2), as train_imagenet.py
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
JITTER = (0.4, 0.4, 0.4, 0.2)  # brightness, contrast, saturation, hue


class StreamingSet(NamedTuple):
  """A dataset read image by image, from a folder or TFDS: what a run needs to know without
  decoding it."""
  files: folder_lib.ImageFiles | tfds_source.TfdsImages
  image_size: int  # the side of the square images the network sees
  resize_size: int  # evaluation: the shorter side before the centre crop
  train: bool  # random-resized crop and flip, or resize and centre crop
  mean: tuple[float, ...]
  std: tuple[float, ...]
  name: str
  workers: int = 0  # decoding processes besides this one (0: threads of this process only)
  threads: int = 8

  @property
  def num_examples(self) -> int:
    if isinstance(self.files, tfds_source.TfdsImages):
      return len(self.files)
    return len(self.files.paths)

  @property
  def num_classes(self) -> int:
    return len(self.files.classes)

  @property
  def classes(self) -> tuple[str, ...]:
    return self.files.classes

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.image_size, self.image_size, 3)


def load_streaming(root, split: str, image_size: int = 224, resize_size: int = 256,
                   name: str = 'imagenet', workers: int = 0, threads: int = 8) -> StreamingSet:
  """``split`` ('train' or 'test', which reads ``val/``) of the folder at ``root``, listed."""
  _check_sizes(image_size, resize_size)
  return StreamingSet(folder_lib.list_split(root, split), image_size, resize_size,
                      split == 'train', MEAN, STD, name, workers, threads)


def load_streaming_tfds(data_dir, split: str, image_size: int = 224, resize_size: int = 256,
                        download: bool = True, workers: int = 0,
                        threads: int = 8) -> StreamingSet:
  """``split`` of TFDS's ``imagenet2012`` ('test' reads its validation split), opened."""
  _check_sizes(image_size, resize_size)
  return StreamingSet(tfds_source.list_tfds_images('imagenet', split, data_dir or None, download),
                      image_size, resize_size, split == 'train', MEAN, STD, 'imagenet', workers,
                      threads)


def _check_sizes(image_size: int, resize_size: int) -> None:
  if not 0 < image_size <= resize_size:
    raise ValueError(f'image_size={image_size}, resize_size={resize_size}: need 0 < image_size '
                     '<= resize_size (the evaluation crop lies inside the resized image)')


def subset(data: StreamingSet, n: int) -> StreamingSet:
  """The first ``n`` images (0: all)."""
  if not n:
    return data
  files = data.files
  if isinstance(files, tfds_source.TfdsImages):
    return data._replace(files=files.head(n))
  return data._replace(files=files._replace(paths=files.paths[:n], labels=files.labels[:n]))


def _read(files, i: int):
  """Example ``i``: (a file's path or a decoded image, its label)."""
  if isinstance(files, tfds_source.TfdsImages):
    return files.read(i)
  return files.paths[i], int(files.labels[i])


def random_resized_crop_box(rng: np.random.Generator, width: int, height: int,
                            scale: Sequence[float] = CROP_SCALE,
                            ratio: Sequence[float] = CROP_RATIO) -> tuple[int, int, int, int]:
  """``(left, top, crop_width, crop_height)`` as torchvision's ``RandomResizedCrop`` draws it:
  up to 10 tries of an area fraction ~ U(scale) and a log-uniform aspect ratio that fit the
  image, else the centre crop of the whole image clamped to ``ratio``."""
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
  aspect = width / height
  if aspect < min(ratio):
    w, h = width, round(width / min(ratio))
  elif aspect > max(ratio):
    w, h = round(height * max(ratio)), height
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


def _decode(source, plan, draft: bool = True):
  """An RGB Pillow image, the box to keep in its pixels and the size to resample it to, from
  ``plan(width, height) -> (box, size)``. ``source`` is a file's path or a decoded (H, W, 3)
  image. With ``draft``, a JPEG file is decoded at the smallest 1/2^k scale (Pillow's
  ``draft``) that keeps the box at least that size, and the box is scaled with it: training
  views only, since the pixels then differ from a full decode's (evaluation decodes in full, as
  torchvision does)."""
  if isinstance(source, np.ndarray):
    from PIL import Image
    image = Image.fromarray(source)
    box, size = plan(*image.size)
    return image, (box[0], box[1], box[0] + box[2], box[1] + box[3]), size
  with folder_lib.opened(source) as image:
    width, height = image.size
    (left, top, w, h), (out_w, out_h) = plan(width, height)
    if draft:  # shrinks by 1/2^k, never below the size asked for
      image.draft('RGB', (math.ceil(width * out_w / w), math.ceil(height * out_h / h)))
    image.load()
    # the decoded size is ceil(size / 2^k): the box scales by 1 / 2^k exactly
    shrink = 2.0 ** round(math.log2(width / image.size[0]))
    image = image.convert('RGB') if image.mode != 'RGB' else image.copy()
  box = tuple(v / shrink for v in (left, top, left + w, top + h))
  return image, box, (out_w, out_h)


def train_image(source, rng: np.random.Generator, size: int) -> np.ndarray:
  """The training view of one image (a file's path or a decoded image): ``RandomResizedCrop(
  size)`` (bilinear) then ``RandomHorizontalFlip()``, (size, size, 3) uint8."""
  from PIL import Image
  image, box, _ = _decode(source, lambda width, height: (
      random_resized_crop_box(rng, width, height), (size, size)))
  image = image.resize((size, size), Image.BILINEAR, box=box)
  if rng.random() < 0.5:
    image = image.transpose(Image.FLIP_LEFT_RIGHT)
  return np.asarray(image, np.uint8)


def eval_image(source, size: int, resize_size: int) -> np.ndarray:
  """The evaluation view: ``Resize(resize_size)`` of the shorter side, ``CenterCrop(size)``."""
  from PIL import Image

  def plan(width, height):
    # torchvision's Resize(int): the shorter side to resize_size, the longer truncated
    if width <= height:
      return (0, 0, width, height), (resize_size, int(resize_size * height / width))
    return (0, 0, width, height), (int(resize_size * width / height), resize_size)

  image, box, (width, height) = _decode(source, plan, draft=False)
  image = image.resize((width, height), Image.BILINEAR, box=box)
  left, top = int(round((width - size) / 2)), int(round((height - size) / 2))
  return np.asarray(image.crop((left, top, left + size, top + size)), np.uint8)


def example_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
  """The one generator an example's augmentation draws from. The last word tells it from the
  epoch order's ``default_rng([seed, epoch])``, which SeedSequence would pad with zeros to the
  same stream as example 0's."""
  return np.random.default_rng([seed, epoch, position, 1])


class _Example:
  """``position -> (image, label)`` for one epoch's positions; a picklable callable, so that
  grain's worker processes can run it."""

  def __init__(self, data: StreamingSet, index: np.ndarray, seed: int, epoch: int,
               positions: np.ndarray):
    self.data, self.index, self.seed, self.epoch = data, index, seed, epoch
    self.positions = positions

  def __call__(self, j: int):
    source, label = _read(self.data.files, int(self.index[j]))
    if self.data.train:
      image = train_image(source, example_rng(self.seed, self.epoch, int(self.positions[j])),
                          self.data.image_size)
    else:
      image = eval_image(source, self.data.image_size, self.data.resize_size)
    return image, label


def _stack(examples):
  return (np.stack([e[0] for e in examples]), np.asarray([e[1] for e in examples], np.int32))


class _Batch:
  """``step -> a whole batch``, decoded one example after another: the element a worker process
  produces (grain gives worker w the steps w, w + W, ...; a batch never spans processes)."""

  def __init__(self, example: _Example, per_step: int):
    self.example, self.per_step = example, per_step

  def __call__(self, t: int):
    return _stack([self.example(t * self.per_step + k) for k in range(self.per_step)])


def local_batches(data: StreamingSet, order: np.ndarray, rows: slice, seed: int, epoch: int,
                  start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """This process's rows of the global batches ``order[start:]`` ((steps, global batch) example
  indices), decoded: ``(images (rows, S, S, 3) uint8, labels (rows,) int32)`` per step.

  Example ``order[t, r]`` draws its augmentation from ``(seed, epoch, t * global batch + r)``,
  whoever decodes it. Without worker processes, ``threads`` threads decode single images, about
  two batches ahead; with them, each process decodes whole batches, ``threads`` at a time."""
  import grain
  steps, global_batch = order.shape
  local = order[start:, rows]
  per_step = local.shape[1]
  positions = (np.arange(start, steps)[:, None] * global_batch
               + np.arange(global_batch)[rows][None, :]).reshape(-1)
  example = _Example(data, local.reshape(-1), seed, epoch, positions)
  threads = max(1, data.threads)
  if data.workers == 0:
    return iter(grain.MapDataset.range(0, local.size).map(example)
                .to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                   prefetch_buffer_size=2 * per_step))
                .batch(per_step, batch_fn=_stack))
  # grain's worker processes read its settings from absl's global flags, which are parsed only
  # under absl.app.run; our commands parse their own flag set, so the defaults stand
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return iter(grain.MapDataset.range(0, local.shape[0]).map(_Batch(example, per_step))
              .to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                 prefetch_buffer_size=threads))
              .mp_prefetch(grain.MultiprocessingOptions(num_workers=data.workers)))


class EpochFeed:
  """Step ``i -> (images, labels)`` of one epoch for a run's ``batches(epoch)``: reads ahead
  from the step asked for, and rebuilds its reader when asked for a step out of order (a
  resumed run, or the compile's look at a first batch)."""

  def __init__(self, data: StreamingSet, order: np.ndarray, rows: slice, seed: int, epoch: int):
    self.data, self.order, self.rows, self.seed, self.epoch = data, order, rows, seed, epoch
    self._next, self._iterator, self._last = None, None, None

  def __call__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    if self._last is not None and self._last[0] == i:
      return self._last[1]
    if self._next != i:
      self.close()
      self._iterator = local_batches(self.data, self.order, self.rows, self.seed, self.epoch, i)
    batch = next(self._iterator)
    self._next, self._last = i + 1, (i, batch)
    return batch

  def close(self) -> None:
    """Stops the reader's threads and worker processes."""
    close = getattr(self._iterator, 'close', None)
    if close is not None:
      close()
    self._iterator = self._next = None


# -------------------------------------------------------------------------------- on device


def grayscale(images: jax.Array) -> jax.Array:
  """ITU-R 601 luma of an RGB batch in [0, 1], as torchvision's ``rgb_to_grayscale``."""
  weights = jnp.asarray([0.299, 0.587, 0.114], images.dtype)
  return jnp.einsum('...c,c->...', images, weights)[..., None]


def _blend(a: jax.Array, b: jax.Array, factor: jax.Array) -> jax.Array:
  return jnp.clip(factor * a + (1.0 - factor) * b, 0.0, 1.0)


def adjust_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
  return _blend(image, jnp.zeros_like(image), factor)


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
  # towards the mean grey level of the image
  return _blend(image, jnp.mean(grayscale(image)), factor)


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
  return _blend(image, grayscale(image), factor)


def adjust_hue(image: jax.Array, shift: jax.Array) -> jax.Array:
  """The hue turned by ``shift`` (a fraction of the circle) in HSV, value and saturation
  kept."""
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  value = jnp.max(image, -1)
  chroma = value - jnp.min(image, -1)
  safe = jnp.where(chroma > 0, chroma, 1.0)
  # the hexcone's sector and the place in it, in sixths of a turn
  hue = jnp.where(value == r, (g - b) / safe,
                  jnp.where(value == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
  hue = jnp.where(chroma > 0, hue / 6.0, 0.0)
  hue = jnp.mod(hue + shift, 1.0)
  # back to RGB: f(n) = V - C * clip(min(k, 4 - k), 0, 1), k = (n + 6 H) mod 6
  channel = lambda n: value - chroma * jnp.clip(  # noqa: E731
      jnp.minimum(jnp.mod(n + 6.0 * hue, 6.0), 4.0 - jnp.mod(n + 6.0 * hue, 6.0)), 0.0, 1.0)
  return jnp.stack([channel(5.0), channel(3.0), channel(1.0)], -1)


@functools.partial(jax.jit, static_argnames=('strength',))
def color_jitter(key: jax.Array, images: jax.Array,
                 strength: tuple[float, float, float, float] = JITTER) -> jax.Array:
  """torchvision's ``ColorJitter(brightness, contrast, saturation, hue)`` on a float batch in
  [0, 1]: per image, factors ~ U(1 - s, 1 + s) and a hue shift ~ U(-h, h), applied in a random
  order of the four."""
  brightness, contrast, saturation, hue = strength

  def one(k, image):
    k_order, k_b, k_c, k_s, k_h = jax.random.split(k, 5)
    factor = lambda kk, s: jax.random.uniform(kk, (), minval=max(0.0, 1 - s),  # noqa: E731
                                              maxval=1 + s)
    b, c, s = factor(k_b, brightness), factor(k_c, contrast), factor(k_s, saturation)
    h = jax.random.uniform(k_h, (), minval=-hue, maxval=hue)
    ops = (lambda x: adjust_brightness(x, b), lambda x: adjust_contrast(x, c),
           lambda x: adjust_saturation(x, s), lambda x: adjust_hue(x, h))
    for op in jax.random.permutation(k_order, 4):
      image = jax.lax.switch(op, ops, image)
    return image

  return jax.vmap(one)(jax.random.split(key, images.shape[0]), images)


def train_preprocess(key: jax.Array, images: jax.Array, mean: Sequence[float],
                     std: Sequence[float], jitter: bool = True) -> jax.Array:
  """The device half of the training transform: colour jitter, then normalisation."""
  x = images.astype(jnp.float32) / 255.0
  return standardize(color_jitter(key, x) if jitter else x, mean, std)
