"""CIFAR-10 read straight from the official ``cifar-10-python.tar.gz`` archive.

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
from typing import Any

import numpy as np

from darts_jax.data.pipeline import DataError, Dataset

URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz'
MD5 = 'c58f30108f718f92721af3b95e74349a'
ARCHIVE_NAME = 'cifar-10-python.tar.gz'

# The original DARTS constants (train-set statistics on the [0, 1] scale).
MEAN = (0.49139968, 0.48215827, 0.44653124)
STD = (0.24703233, 0.24348505, 0.26158768)

NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
_ROW_SIZE = 32 * 32 * 3

_FOLDER = 'cifar-10-batches-py'
_MEMBERS = {
    'train': tuple(f'{_FOLDER}/data_batch_{i}' for i in range(1, 6)),
    'test': (f'{_FOLDER}/test_batch',),
}


def archive_path(data_dir: str | os.PathLike) -> pathlib.Path:
  """Where :func:`load_cifar10` expects (and downloads) the archive."""
  return pathlib.Path(data_dir).expanduser() / ARCHIVE_NAME


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
    raise pickle.UnpicklingError(f'refusing global {module}.{name}: not a CIFAR-10 batch')


def _member_name(name: str) -> str:
  # Repacked archives sometimes store './cifar-10-batches-py/...'.
  return name[2:] if name.startswith('./') else name


def _read_pickles(path: pathlib.Path, wanted: tuple[str, ...]) -> dict[str, Any]:
  """Unpickles the ``wanted`` members in one forward pass over the gzip stream."""
  found = {}
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
          raise DataError(f'CIFAR-10 archive {path}: member {name} is not a regular file')
        with f:
          try:
            found[name] = _BatchUnpickler(f, encoding='bytes').load()
          except (tarfile.TarError, EOFError, OSError, zlib.error):
            raise
          except Exception as e:  # garbage can make pickle raise almost any type
            raise DataError(f'CIFAR-10 archive {path}: member {name} is not a valid batch '
                            f'pickle ({type(e).__name__}: {e})') from None
  except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
    raise DataError(f'CIFAR-10 archive {path} is unreadable, truncated or corrupt '
                    f'({type(e).__name__}: {e}); replace it with a fresh copy of {URL}') from None
  missing = [name for name in wanted if name not in found]
  if missing:
    raise DataError(f'CIFAR-10 archive {path} lacks member(s) {", ".join(missing)}: is it the '
                    f'python version of the archive ({URL})?')
  return found


def _batch_arrays(batch: Any, path: pathlib.Path, name: str) -> tuple[np.ndarray, np.ndarray]:
  """Validates one unpickled batch; returns NHWC uint8 images and int32 labels."""
  where = f'CIFAR-10 archive {path}: member {name}'
  if not isinstance(batch, dict) or b'data' not in batch or b'labels' not in batch:
    keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
    raise DataError(f"{where} should be a dict with b'data' and b'labels', got {keys}")
  data, labels = batch[b'data'], batch[b'labels']
  if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
      or data.shape[1] != _ROW_SIZE:
    desc = (f'{data.dtype} array of shape {data.shape}' if isinstance(data, np.ndarray)
            else type(data).__name__)
    raise DataError(f"{where}: b'data' should be a uint8 array (n, {_ROW_SIZE}), got {desc}")
  labels = np.asarray(labels)
  if labels.shape != (data.shape[0],) or (labels.size and labels.dtype.kind not in 'iu'):
    raise DataError(f"{where}: b'labels' should be {data.shape[0]} integers (one per row), got "
                    f'{labels.dtype} array of shape {labels.shape}')
  if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
    raise DataError(f"{where}: b'labels' should lie in 0..{NUM_CLASSES - 1}, got "
                    f'{labels.min()}..{labels.max()}')
  # Rows are channel-major (1024 red, 1024 green, 1024 blue, each row-major 32x32).
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels.astype(np.int32)


def read_archive(path: str | os.PathLike, split: str) -> Dataset:
  """Reads one split from a ``cifar-10-python.tar.gz`` at ``path``.

  Any number of rows per batch is accepted (the official batches have 10,000), so tests can
  write tiny archives. The md5 is not checked here: a repacked archive is fine if its batches
  have the right shapes and labels.
  """
  path = pathlib.Path(path)
  _check_split(split)
  wanted = _MEMBERS[split]
  pickles = _read_pickles(path, wanted)
  parts = [_batch_arrays(pickles[name], path, name) for name in wanted]
  return Dataset(images=np.concatenate([p[0] for p in parts]),
                 labels=np.concatenate([p[1] for p in parts]),
                 mean=MEAN, std=STD, num_classes=NUM_CLASSES, name='cifar10')


def _check_split(split: str) -> None:
  if split not in _MEMBERS:
    raise ValueError(f'CIFAR-10 split {split!r}: expected one of {tuple(_MEMBERS)}')


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


def load_cifar10(data_dir: str | os.PathLike, split: str, download: bool = True) -> Dataset:
  """CIFAR-10 ``'train'`` (the five data batches in order, 50,000) or ``'test'`` (10,000).

  Reads ``data_dir/cifar-10-python.tar.gz``, downloading it first if it is missing and
  ``download`` is true.
  """
  _check_split(split)
  path = archive_path(data_dir)
  if not path.exists():
    if not download:
      raise DataError(f'CIFAR-10 archive not found at {path}; get it from {URL} and put it there '
                      '(or pass download=True)')
    download_archive(path)
  return read_archive(path, split)
