"""CIFAR-10 and CIFAR-100 read straight from their official python archives
(``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``).

Nothing is extracted or cached: the archive is the only file on disk, and each load streams it
once. The batches are Python pickles; they are unpickled with an allow-list of the NumPy
reconstructors they need, so a foreign archive cannot run code on load.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib
import os
import pathlib
import pickle
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from typing import Any, NamedTuple

import numpy as np

from darts_jax.data.pipeline import DataError, Dataset

URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz'
MD5 = 'c58f30108f718f92721af3b95e74349a'

# The original DARTS constants (train-set statistics on the [0, 1] scale).
MEAN = (0.49139968, 0.48215827, 0.44653124)
STD = (0.24703233, 0.24348505, 0.26158768)

NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
_ROW_SIZE = 32 * 32 * 3


class Archive(NamedTuple):
  """One of the two official python archives: where it comes from, its members per split, the
  pickles' label key, and the normalisation constants."""
  name: str  # the dataset's name in this project
  title: str
  url: str
  md5: str
  members: dict[str, tuple[str, ...]]
  label_key: bytes
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]

  @property
  def file_name(self) -> str:
    return self.url.rsplit('/', 1)[1]


CIFAR10 = Archive('cifar10', 'CIFAR-10', URL, MD5, {
    'train': tuple(f'cifar-10-batches-py/data_batch_{i}' for i in range(1, 6)),
    'test': ('cifar-10-batches-py/test_batch',)}, b'labels', NUM_CLASSES, MEAN, STD)
# the 100 fine classes; the train-set statistics the CIFAR-100 runs of the DARTS family
# (P-DARTS, PC-DARTS) normalise with
CIFAR100 = Archive('cifar100', 'CIFAR-100',
                   'https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz',
                   'eb9058c3a382ffc7106e4002c42a8d85', {
                       'train': ('cifar-100-python/train',), 'test': ('cifar-100-python/test',)},
                   b'fine_labels', 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
ARCHIVES = {a.name: a for a in (CIFAR10, CIFAR100)}


def archive_path(data_dir: str | os.PathLike, archive: Archive = CIFAR10) -> pathlib.Path:
  """Where :func:`load_cifar` expects (and downloads) ``archive``."""
  return pathlib.Path(data_dir).expanduser() / archive.file_name


def _numpy_reconstruct():
  # NumPy 2 pickles name numpy._core, the official archive (NumPy 1) numpy.core; importing
  # numpy.core under NumPy 2 warns, so resolve both to wherever the function lives now.
  for module in ('numpy._core.multiarray', 'numpy.core.multiarray'):
    try:
      return importlib.import_module(module)._reconstruct
    except (ImportError, AttributeError):
      continue
  raise ImportError('cannot find numpy multiarray._reconstruct')


class _BatchUnpickler(pickle.Unpickler):
  """Unpickles plain containers and NumPy arrays, and refuses every other global."""

  def find_class(self, module: str, name: str) -> Any:
    if name == '_reconstruct' and module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
      return _numpy_reconstruct()
    if module == 'numpy' and name in ('ndarray', 'dtype'):
      return getattr(np, name)
    if (module, name) == ('_codecs', 'encode'):  # how protocol-2 pickles spell bytes
      import codecs
      return codecs.encode
    raise pickle.UnpicklingError(f'refusing global {module}.{name}: not a CIFAR batch')


def _member_name(name: str) -> str:
  # Repacked archives sometimes store './cifar-10-batches-py/...'.
  return name[2:] if name.startswith('./') else name


def _read_pickles(path: pathlib.Path, wanted: tuple[str, ...],
                  archive: Archive) -> dict[str, Any]:
  """Unpickles the ``wanted`` members in one forward pass over the gzip stream."""
  found = {}
  what = f'{archive.title} archive {path}'
  try:
    with tarfile.open(path, 'r:gz') as tar:
      # Iterate instead of getmember(): random access in a gzip stream re-decompresses from the
      # start for every backward seek, and the official member order is not numeric.
      for member in tar:
        name = _member_name(member.name)
        if name not in wanted:
          continue
        f = tar.extractfile(member)
        if f is None:
          raise DataError(f'{what}: member {name} is not a regular file')
        with f:
          try:
            found[name] = _BatchUnpickler(f, encoding='bytes').load()
          except (tarfile.TarError, EOFError, OSError, zlib.error):
            raise
          except Exception as e:  # garbage can make pickle raise almost any type
            raise DataError(f'{what}: member {name} is not a valid batch '
                            f'pickle ({type(e).__name__}: {e})') from None
  except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
    raise DataError(f'{what} is unreadable, truncated or corrupt ({type(e).__name__}: {e}); '
                    f'replace it with a fresh copy of {archive.url}') from None
  missing = [name for name in wanted if name not in found]
  if missing:
    raise DataError(f'{what} lacks member(s) {", ".join(missing)}: is it the python version of '
                    f'the archive ({archive.url})?')
  return found


def _batch_arrays(batch: Any, path: pathlib.Path, name: str,
                  archive: Archive) -> tuple[np.ndarray, np.ndarray]:
  """Validates one unpickled batch; returns NHWC uint8 images and int32 labels."""
  where = f'{archive.title} archive {path}: member {name}'
  key = archive.label_key
  if not isinstance(batch, dict) or b'data' not in batch or key not in batch:
    keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
    raise DataError(f"{where} should be a dict with b'data' and {key!r}, got {keys}")
  data, labels = batch[b'data'], batch[key]
  if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
      or data.shape[1] != _ROW_SIZE:
    desc = (f'{data.dtype} array of shape {data.shape}' if isinstance(data, np.ndarray)
            else type(data).__name__)
    raise DataError(f"{where}: b'data' should be a uint8 array (n, {_ROW_SIZE}), got {desc}")
  labels = np.asarray(labels)
  if labels.shape != (data.shape[0],) or (labels.size and labels.dtype.kind not in 'iu'):
    raise DataError(f"{where}: {key!r} should be {data.shape[0]} integers (one per row), got "
                    f'{labels.dtype} array of shape {labels.shape}')
  if labels.size and (labels.min() < 0 or labels.max() >= archive.num_classes):
    raise DataError(f"{where}: {key!r} should lie in 0..{archive.num_classes - 1}, got "
                    f'{labels.min()}..{labels.max()}')
  # Rows are channel-major (1024 red, 1024 green, 1024 blue, each row-major 32x32).
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels.astype(np.int32)


def read_archive(path: str | os.PathLike, split: str, archive: Archive = CIFAR10) -> Dataset:
  """Reads one split from ``archive``'s python tar.gz at ``path``.

  Any number of rows per batch is accepted (the official batches have 10,000), so tests can
  write tiny archives. The md5 is not checked here: a repacked archive is fine if its batches
  have the right shapes and labels.
  """
  path = pathlib.Path(path)
  _check_split(split, archive)
  wanted = archive.members[split]
  pickles = _read_pickles(path, wanted, archive)
  parts = [_batch_arrays(pickles[name], path, name, archive) for name in wanted]
  return Dataset(images=np.concatenate([p[0] for p in parts]),
                 labels=np.concatenate([p[1] for p in parts]),
                 mean=archive.mean, std=archive.std, num_classes=archive.num_classes,
                 name=archive.name)


def _check_split(split: str, archive: Archive = CIFAR10) -> None:
  if split not in archive.members:
    raise ValueError(f'{archive.title} split {split!r}: expected one of {tuple(archive.members)}')


def _progress(total: int | None, name: str):
  try:
    from tqdm.auto import tqdm
  except ImportError:  # the bar is a nicety; the download works without it
    return None
  return tqdm(total=total, unit='B', unit_scale=True, unit_divisor=1024, desc=name)


def download_archive(dest: pathlib.Path, url: str | None = None, md5: str | None = None,
                     what: str = 'CIFAR-10') -> None:
  """Downloads ``url`` (default :data:`URL`) to ``dest`` via a temp file in the same folder,
  checks the md5 (default :data:`MD5`), then renames atomically: an interrupted or bad download
  never leaves a half archive at ``dest``. ``what`` names the data in errors.
  """
  url = URL if url is None else url
  md5 = MD5 if md5 is None else md5
  dest = pathlib.Path(dest)
  tmp = None
  try:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{dest.name}.', suffix='.part', dir=dest.parent)
    digest = hashlib.md5()
    with os.fdopen(fd, 'wb') as out, urllib.request.urlopen(url, timeout=60) as response:
      length = response.headers.get('Content-Length')
      bar = _progress(int(length) if length and length.isdigit() else None, dest.name)
      try:
        while chunk := response.read(1 << 20):
          out.write(chunk)
          digest.update(chunk)
          if bar is not None:
            bar.update(len(chunk))
      finally:
        if bar is not None:
          bar.close()
    if digest.hexdigest() != md5:
      raise DataError(f'downloaded {url} has md5 {digest.hexdigest()}, expected {md5}; download '
                      f'it again or put a good copy at {dest}')
    os.replace(tmp, dest)
    tmp = None
  except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
    reason = getattr(e, 'reason', None) or e
    raise DataError(f'could not download {what} ({reason}); get {url} yourself and put it at '
                    f'{dest}') from None
  finally:
    if tmp is not None and os.path.exists(tmp):
      os.remove(tmp)


def load_cifar(name: str, data_dir: str | os.PathLike, split: str,
               download: bool = True) -> Dataset:
  """``name`` ('cifar10' or 'cifar100'), split ``'train'`` (50,000) or ``'test'`` (10,000).

  Reads ``data_dir/cifar-10-python.tar.gz`` (or ``cifar-100-python.tar.gz``), downloading it
  first, md5 checked, if it is missing and ``download`` is true.
  """
  if name not in ARCHIVES:
    raise ValueError(f'{name!r} is not a CIFAR archive; allowed: {", ".join(ARCHIVES)}')
  archive = ARCHIVES[name]
  _check_split(split, archive)
  path = archive_path(data_dir, archive)
  if not path.exists():
    if not download:
      raise DataError(f'{archive.title} archive not found at {path}; get it from {archive.url} '
                      'and put it there (or pass download=True)')
    download_archive(path, archive.url, archive.md5, archive.title)
  return read_archive(path, split, archive)


def load_cifar10(data_dir: str | os.PathLike, split: str, download: bool = True) -> Dataset:
  """CIFAR-10 ``'train'`` (the five data batches in order, 50,000) or ``'test'`` (10,000)."""
  return load_cifar('cifar10', data_dir, split, download)
