"""Images in class sub-folders: ImageNet's layout, and the answer to "how do I run it on my own
dataset?".

``DIR/train/<class>/*`` is the training split and ``DIR/val/<class>/*`` (or ``DIR/test/``) the
test split; a bare ``DIR/<class>/*`` is taken as the training split alone. Classes are the
sorted sub-folder names, their index the label, as torchvision's ``ImageFolder`` numbers them
(so the original's ImageNet labels come out the same). JPEG and PNG files are decoded by Pillow.

Two readers share the listing: :func:`load_folder` decodes a small set into memory (a
:class:`~darts_jax.data.pipeline.Dataset`, the search's and CIFAR training's input), and
:mod:`darts_jax.data.imagenet` decodes a large one image by image while it trains.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from typing import NamedTuple

import numpy as np

from darts_jax.data.pipeline import DataError, Dataset

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
# the folders each split may live in, the first one found wins
SPLIT_FOLDERS = {'train': ('train',), 'test': ('val', 'test')}
CLASSES_FILE = 'classes.txt'


class ImageFiles(NamedTuple):
  """One split of a folder dataset, listed but not read."""
  paths: tuple[str, ...]
  labels: np.ndarray  # (N,) int32, an index into classes
  classes: tuple[str, ...]  # sorted class folder names
  root: str  # the folder the class folders are in


def _class_folders(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith('.')),
                key=lambda p: p.name)


def _listing_progress(class_folders: list, folder: pathlib.Path):
  """The class folders, with a progress bar when there are many (ImageNet's 1,000)."""
  if len(class_folders) < 100:
    return class_folders
  from tqdm.auto import tqdm
  return tqdm(class_folders, desc=f'listing {folder}', unit='class', leave=False)


def split_folder(root: str | os.PathLike, split: str) -> pathlib.Path:
  """The folder holding ``split``'s class folders: ``root/train`` or ``root/val`` (or
  ``root/test``), or ``root`` itself for the training split of a bare layout."""
  if split not in SPLIT_FOLDERS:
    raise ValueError(f'folder split {split!r}: expected one of {tuple(SPLIT_FOLDERS)}')
  root = pathlib.Path(root).expanduser()
  if not root.is_dir():
    raise DataError(f'image folder {root} does not exist (expected {root}/train/<class>/*.jpg '
                    f'and {root}/val/<class>/*.jpg, or {root}/<class>/*.png)')
  for name in SPLIT_FOLDERS[split]:
    if (root / name).is_dir():
      return root / name
  has_splits = any((root / n).is_dir() for names in SPLIT_FOLDERS.values() for n in names)
  if split == 'train' and not has_splits:
    return root  # the bare layout: DIR/<class>/*
  raise DataError(f'image folder {root} has no {" or ".join(SPLIT_FOLDERS[split])}/ folder for '
                  f'the {split} split (expected {root}/{SPLIT_FOLDERS[split][0]}/<class>/*)')


def list_images(root: str | os.PathLike, split: str,
                classes: tuple[str, ...] | None = None) -> ImageFiles:
  """Every image of ``split``, labelled by its class folder's place in ``classes`` (default:
  this split's sorted class folders; the test split takes the training split's list, so a
  class missing from it keeps its label)."""
  folder = split_folder(root, split)
  found = _class_folders(folder)
  if not found:
    raise DataError(f'image folder {folder} has no class sub-folders (expected '
                    f'{folder}/<class>/<image>.jpg)')
  if classes is None:
    classes = tuple(p.name for p in found)
  index = {name: i for i, name in enumerate(classes)}
  stray = [p.name for p in found if p.name not in index]
  if stray:
    raise DataError(f'image folder {folder}: class folder(s) {", ".join(stray[:5])} are not '
                    f'among the training split\'s {len(classes)} classes')
  paths, labels = [], []
  for class_folder in _listing_progress(found, folder):
    # scandir's entries know their type without a stat per file (1.28M of them in ImageNet)
    with os.scandir(class_folder) as entries:
      files = sorted(e.path for e in entries
                     if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)
    paths += files
    labels += [index[class_folder.name]] * len(files)
  if not paths:
    raise DataError(f'image folder {folder}: no {"/".join(IMAGE_SUFFIXES)} files in its '
                    f'{len(found)} class folder(s)')
  return ImageFiles(tuple(paths), np.asarray(labels, np.int32), tuple(classes), str(folder))


def list_split(root: str | os.PathLike, split: str) -> ImageFiles:
  """``split``'s images, labelled by the training split's classes.

  The training images come in one fixed shuffled order (``default_rng(0)``'s permutation of the
  sorted listing), as CIFAR's archive comes shuffled: the search's first-half / second-half
  split and ``max_examples`` then see every class, not the first classes' folders alone."""
  if split == 'train':
    files = list_images(root, 'train')
    order = np.random.default_rng(0).permutation(len(files.paths))
    return files._replace(paths=tuple(files.paths[i] for i in order), labels=files.labels[order])
  classes = tuple(p.name for p in _class_folders(split_folder(root, 'train')))
  return list_images(root, split, classes)


@contextlib.contextmanager
def opened(path: str):
  """The Pillow image at ``path``, its header read; an unreadable file, here or while the block
  decodes it, is a one-line DataError that names it."""
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(path) as image:
      yield image
  except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError,
          SyntaxError) as e:
    raise DataError(f'{path}: not a readable image ({type(e).__name__}: {e})') from None


def decode(path: str, mode: str = 'RGB'):
  """The Pillow image at ``path`` converted to ``mode`` ('RGB' or 'L'), loaded."""
  with opened(path) as image:
    image.load()
    return image.convert(mode) if image.mode != mode else image.copy()


def _image_mode(path: str) -> str:
  with opened(path) as image:
    return image.mode


STATISTICS_IMAGES = 10_000  # the training images a folder set's mean and std are taken from


def load_folder(root: str | os.PathLike, split: str, image_size: int = 0,
                name: str = 'folder', mean: tuple[float, ...] | None = None,
                std: tuple[float, ...] | None = None, limit: int = 0) -> Dataset:
  """``split`` of the folder dataset at ``root`` decoded into memory, uint8 NHWC; only its first
  ``limit`` images (0: all) are decoded.

  Images keep their size unless ``image_size`` > 0 resizes each to ``image_size`` squared
  (bilinear); without it, images of different sizes are a one-line error naming one. A set
  whose training images are all greyscale has one channel, any other three (RGB). ``mean``
  and ``std`` default to the per-channel statistics, on the [0, 1] scale, of the first
  :data:`STATISTICS_IMAGES` training images (the same for every split and every ``limit``).
  """
  files = list_split(root, split)
  train = files if split == 'train' else list_split(root, 'train')
  mode = 'L' if all(_image_mode(p) in ('L', '1') for p in train.paths[:256]) else 'RGB'
  paths = files.paths[:limit] if limit else files.paths
  images = _decode_all(paths, mode, image_size)
  if mean is None or std is None:
    sample = train.paths[:STATISTICS_IMAGES]
    pixels = images if paths == sample else _decode_all(sample, mode, image_size)
    scaled = pixels.reshape(-1, pixels.shape[-1]).astype(np.float64) / 255.0
    mean = tuple(float(m) for m in scaled.mean(0))
    std = tuple(float(max(s, 1e-3)) for s in scaled.std(0))
  return Dataset(images=images, labels=files.labels[:len(paths)], mean=tuple(mean),
                 std=tuple(std), num_classes=len(files.classes), name=name,
                 classes=files.classes)


def _decode_all(paths: tuple[str, ...], mode: str, image_size: int) -> np.ndarray:
  from PIL import Image
  first = None
  out = None
  for i, path in enumerate(paths):
    image = decode(path, mode)
    if image_size:
      image = image.resize((image_size, image_size), Image.BILINEAR)
    array = np.asarray(image, np.uint8)
    array = array[..., None] if array.ndim == 2 else array
    if out is None:
      first = path
      out = np.empty((len(paths), *array.shape), np.uint8)
    elif array.shape != out.shape[1:]:
      raise DataError(f'{path} is {array.shape[1]}x{array.shape[0]}, {first} '
                      f'{out.shape[2]}x{out.shape[1]}: images of one folder dataset must share a '
                      'size, or set --config.image_size=N to resize them to NxN')
    out[i] = array
  return out


def write_classes(classes: tuple[str, ...], workdir: str | os.PathLike) -> pathlib.Path:
  """``workdir/classes.txt``: the class names in label order, one per line."""
  path = pathlib.Path(workdir) / CLASSES_FILE
  from darts_jax.checkpoint import write_atomic
  write_atomic(str(path), ''.join(f'{c}\n' for c in classes))
  return path
