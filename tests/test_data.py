"""The data layer: CIFAR-10 archive reading (on tiny fake archives in the real format), digits,
the search split, epoch ordering and the augmentation transforms. Never touches the network."""

import collections
import hashlib
import io
import math
import pickle
import sys
import tarfile
import urllib.error
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import data
from darts_jax.data import cifar10
from darts_jax.data.pipeline import DataError, Dataset

ROW = 3 * 32 * 32
# Official member order is not numeric; the reader must order batches by name.
ARCHIVE_ORDER = ('data_batch_4', 'readme.html', 'test_batch', 'data_batch_3', 'batches.meta',
                 'data_batch_2', 'data_batch_5', 'data_batch_1')


def fake_batches(rows=2, seed=0):
  """Per member name: (data (rows, 3072) uint8, labels). Batch i's labels start at i."""
  rng = np.random.default_rng(seed)
  batches = {}
  for i, name in enumerate(['data_batch_1', 'data_batch_2', 'data_batch_3', 'data_batch_4',
                            'data_batch_5', 'test_batch']):
    n = rows + 1 if name == 'test_batch' else rows
    batches[name] = (rng.integers(0, 256, (n, ROW), dtype=np.uint8),
                     [(i + j) % 10 for j in range(n)])
  return batches


def write_archive(path, batches, skip=(), payload=None):
  """A cifar-10-python.tar.gz in the official layout; ``payload`` overrides a member's pickle."""
  payload = payload or {}
  with tarfile.open(path, 'w:gz') as tar:
    for name in ARCHIVE_ORDER:
      if name in skip:
        continue
      if name in payload:
        blob = payload[name]
      elif name in batches:
        array, labels = batches[name]
        blob = pickle.dumps({b'batch_label': b'fake', b'labels': labels, b'data': array,
                             b'filenames': [b'x.png'] * len(labels)}, protocol=2)
      else:
        blob = b'not a batch'
      info = tarfile.TarInfo(f'cifar-10-batches-py/{name}')
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))
  return path


@pytest.fixture
def archive(tmp_path):
  batches = fake_batches()
  return write_archive(tmp_path / 'cifar-10-python.tar.gz', batches), batches


# ---------------------------------------------------------------------------------- CIFAR-10


def test_cifar_layout_and_split_order(archive):
  path, batches = archive
  train = data.load_cifar10(path.parent, 'train', download=False)
  assert train.images.shape == (10, 32, 32, 3) and train.images.dtype == np.uint8
  assert train.labels.dtype == np.int32
  assert train.labels.tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]  # batches 1..5 in order
  rows = np.concatenate([batches[f'data_batch_{i}'][0] for i in range(1, 6)])
  # Pixel (c, h, w) of row n sits at c * 1024 + h * 32 + w and must land at [n, h, w, c].
  for n, c, h, w in [(0, 0, 0, 0), (3, 1, 5, 7), (9, 2, 31, 30), (6, 2, 0, 31)]:
    assert train.images[n, h, w, c] == rows[n, c * 1024 + h * 32 + w]
  np.testing.assert_array_equal(train.images, rows.reshape(10, 3, 32, 32).transpose(0, 2, 3, 1))
  assert train.mean == (0.49139968, 0.48215827, 0.44653124)
  assert train.std == (0.24703233, 0.24348505, 0.26158768)
  assert (train.num_classes, train.name) == (10, 'cifar10')

  test = data.load_dataset('cifar10', 'test', data_dir=path.parent, download=False)
  assert test.images.shape == (3, 32, 32, 3)
  assert test.labels.tolist() == [5, 6, 7]
  np.testing.assert_array_equal(test.images[2, :, :, 1],
                                batches['test_batch'][0][2, 1024:2048].reshape(32, 32))


def test_cifar_single_pixel(tmp_path):
  batches = {name: (np.zeros((1, ROW), np.uint8), [3]) for name in fake_batches(rows=1)}
  batches['data_batch_2'][0][0, 1 * 1024 + 5 * 32 + 7] = 200  # green, row 5, column 7
  write_archive(tmp_path / 'cifar-10-python.tar.gz', batches)
  images = data.load_cifar10(tmp_path, 'train', download=False).images
  assert images[1, 5, 7, 1] == 200
  assert images.sum() == 200


@pytest.mark.parametrize('damage', ['truncated', 'random_bytes'])
def test_cifar_damaged_archive(archive, damage):
  path, _ = archive
  blob = path.read_bytes()
  if damage == 'truncated':
    path.write_bytes(blob[:len(blob) // 2])
  else:
    path.write_bytes(np.random.default_rng(1).integers(0, 256, len(blob), np.uint8).tobytes())
  with pytest.raises(DataError, match='truncated or corrupt') as info:
    data.load_cifar10(path.parent, 'train', download=False)
  assert str(path) in str(info.value)


def test_cifar_missing_member(tmp_path):
  path = write_archive(tmp_path / 'cifar-10-python.tar.gz', fake_batches(), skip=('data_batch_3',))
  with pytest.raises(DataError, match='data_batch_3') as info:
    data.load_cifar10(tmp_path, 'train', download=False)
  assert str(path) in str(info.value)
  # The test split does not need the missing member.
  assert data.load_cifar10(tmp_path, 'test', download=False).images.shape == (3, 32, 32, 3)


@pytest.mark.parametrize('member, content, message', [
    ('data_batch_2', {b'data': np.zeros((2, 3000), np.uint8), b'labels': [0, 1]}, r'\(n, 3072\)'),
    ('data_batch_2', {b'data': np.zeros((2, ROW), np.uint8), b'labels': [0]}, 'one per row'),
    ('data_batch_5', {b'data': np.zeros((2, ROW), np.uint8), b'labels': [0, 10]}, r'0\.\.9'),
    ('data_batch_1', {b'labels': [0]}, "b'data'"),
    ('data_batch_1', {b'data': collections.OrderedDict(), b'labels': []}, 'refusing global'),
])
def test_cifar_bad_batch(tmp_path, member, content, message):
  path = write_archive(tmp_path / 'cifar-10-python.tar.gz', fake_batches(),
                       payload={member: pickle.dumps(content)})
  with pytest.raises(DataError, match=message) as info:
    data.load_cifar10(tmp_path, 'train', download=False)
  assert str(path) in str(info.value) and member in str(info.value)


def test_cifar_download_failure_leaves_nothing(tmp_path, monkeypatch):
  def offline(*args, **kwargs):
    raise urllib.error.URLError('no network')
  monkeypatch.setattr(urllib.request, 'urlopen', offline)
  data_dir = tmp_path / 'cache'
  with pytest.raises(DataError) as info:
    data.load_dataset('cifar10', 'train', data_dir=data_dir)
  message = str(info.value)
  assert str(data_dir / 'cifar-10-python.tar.gz') in message
  assert 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz' in message
  assert '\n' not in message
  assert list(data_dir.iterdir()) == []


def test_cifar_missing_without_download(tmp_path, monkeypatch):
  monkeypatch.setattr(urllib.request, 'urlopen', lambda *a, **k: pytest.fail('network used'))
  with pytest.raises(DataError) as info:
    data.load_cifar10(tmp_path, 'test', download=False)
  assert str(tmp_path / 'cifar-10-python.tar.gz') in str(info.value)
  assert cifar10.URL in str(info.value)


class FakeResponse(io.BytesIO):
  def __init__(self, blob):
    super().__init__(blob)
    self.headers = {'Content-Length': str(len(blob))}


@pytest.mark.parametrize('good_md5', [True, False])
def test_cifar_download(tmp_path, monkeypatch, good_md5):
  source = write_archive(tmp_path / 'source.tar.gz', fake_batches())
  blob = source.read_bytes()
  monkeypatch.setattr(urllib.request, 'urlopen', lambda url, timeout: FakeResponse(blob))
  md5 = hashlib.md5(blob).hexdigest() if good_md5 else '0' * 32
  monkeypatch.setitem(cifar10.ARCHIVES, 'cifar10', cifar10.CIFAR10._replace(md5=md5))
  data_dir = tmp_path / 'cache'
  if good_md5:
    test = data.load_cifar10(data_dir, 'test')
    assert test.labels.tolist() == [5, 6, 7]
    assert [p.name for p in data_dir.iterdir()] == ['cifar-10-python.tar.gz']
  else:
    with pytest.raises(DataError, match='md5'):
      data.load_cifar10(data_dir, 'test')
    assert list(data_dir.iterdir()) == []


def test_load_dataset_names_and_dirs(monkeypatch, tmp_path):
  with pytest.raises(ValueError, match=r"dataset='svhn' is unknown; allowed: cifar10, cifar100, "
                     r"mnist, fashion_mnist, imagenet, folder, digits"):
    data.load_dataset('svhn', 'train')
  with pytest.raises(ValueError, match="'val'"):
    data.load_cifar10(tmp_path, 'val')
  monkeypatch.setenv('DARTS_JAX_DATA_DIR', str(tmp_path))
  assert data.default_data_dir() == tmp_path
  monkeypatch.delenv('DARTS_JAX_DATA_DIR')
  assert str(data.default_data_dir()).endswith('.cache/darts_jax')


def write_cifar100(path, rows=4, seed=0):
  """A cifar-100-python.tar.gz in the official layout: one pickle per split, fine and coarse
  labels."""
  rng = np.random.default_rng(seed)
  written = {}
  with tarfile.open(path, 'w:gz') as tar:
    for split, n in (('test', rows + 1), ('train', rows), ('meta', 0)):
      array = rng.integers(0, 256, (n, ROW), dtype=np.uint8)
      fine = [(97 + 3 * j) % 100 for j in range(n)]
      written[split] = (array, fine)
      blob = pickle.dumps({b'filenames': [b'x.png'] * n, b'batch_label': b'fake',
                           b'fine_labels': fine, b'coarse_labels': [f // 5 for f in fine],
                           b'data': array}, protocol=2)
      info = tarfile.TarInfo(f'cifar-100-python/{split}')
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))
  return written


def test_cifar100_reads_the_fine_labels(tmp_path, monkeypatch):
  monkeypatch.setattr(urllib.request, 'urlopen', lambda *a, **k: pytest.fail('network used'))
  written = write_cifar100(tmp_path / 'cifar-100-python.tar.gz')
  for split in ('train', 'test'):
    ds = data.load_dataset('cifar100', split, tmp_path, download=False)
    array, fine = written[split]
    # rows are channel-major 32x32 planes, as in CIFAR-10
    np.testing.assert_array_equal(ds.images, array.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert ds.labels.tolist() == fine and ds.num_classes == 100 and ds.name == 'cifar100'
    assert ds.mean == (0.5071, 0.4865, 0.4409) and ds.std == (0.2673, 0.2564, 0.2762)
  with pytest.raises(DataError) as info:
    data.load_dataset('cifar100', 'test', tmp_path / 'empty', download=False)
  assert 'cifar-100-python.tar.gz' in str(info.value) and '\n' not in str(info.value)
  assert 'https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz' in str(info.value)
  # a CIFAR-10 archive under CIFAR-100's name: the missing members are named
  (tmp_path / 'ten').mkdir()
  write_archive(tmp_path / 'ten' / 'cifar-100-python.tar.gz', fake_batches())
  with pytest.raises(DataError, match=r'CIFAR-100 archive .* lacks member\(s\) '
                                      r'cifar-100-python/train'):
    data.load_dataset('cifar100', 'train', tmp_path / 'ten', download=False)


def test_cifar100_download_checks_its_md5(tmp_path, monkeypatch):
  write_cifar100(tmp_path / 'source.tar.gz')
  blob = (tmp_path / 'source.tar.gz').read_bytes()
  urls = []
  monkeypatch.setattr(urllib.request, 'urlopen',
                      lambda url, timeout: urls.append(url) or FakeResponse(blob))
  with pytest.raises(DataError, match='md5 .*, expected eb9058c3a382ffc7106e4002c42a8d85'):
    data.load_dataset('cifar100', 'test', tmp_path / 'cache')
  assert urls == ['https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz']
  monkeypatch.setitem(cifar10.ARCHIVES, 'cifar100',
                      cifar10.CIFAR100._replace(md5=hashlib.md5(blob).hexdigest()))
  assert len(data.load_dataset('cifar100', 'test', tmp_path / 'cache').labels) == 5


# ------------------------------------------------------------------------- MNIST, Fashion-MNIST


def write_idx(path, array, type_code=0x08):
  """A gzipped IDX file of ``array`` (unsigned bytes), as the official files are written."""
  import gzip
  header = bytes([0, 0, type_code, array.ndim]) + b''.join(
      int(n).to_bytes(4, 'big') for n in array.shape)
  path.parent.mkdir(parents=True, exist_ok=True)
  with gzip.open(path, 'wb') as f:
    f.write(header + np.asarray(array, np.uint8).tobytes())
  return path


def write_idx_set(folder, n_train=5, n_test=3, seed=0):
  rng = np.random.default_rng(seed)
  out = {}
  for prefix, n in (('train', n_train), ('t10k', n_test)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    write_idx(folder / f'{prefix}-images-idx3-ubyte.gz', images)
    write_idx(folder / f'{prefix}-labels-idx1-ubyte.gz', labels)
    out[prefix] = (images, labels)
  return out


@pytest.mark.parametrize('name', ['mnist', 'fashion_mnist'])
def test_idx_datasets_read_the_official_layout(tmp_path, monkeypatch, name):
  monkeypatch.setattr(urllib.request, 'urlopen', lambda *a, **k: pytest.fail('network used'))
  written = write_idx_set(tmp_path / name)
  for split, prefix in (('train', 'train'), ('test', 't10k')):
    ds = data.load_dataset(name, split, tmp_path, download=False)
    images, labels = written[prefix]
    assert ds.images.shape == (len(labels), 28, 28, 1) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.images[..., 0], images)
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.labels.dtype == np.int32 and ds.num_classes == 10 and ds.name == name
    # pt.darts's constants, the training images' statistics on the [0, 1] scale
    assert (ds.mean, ds.std) == {'mnist': ((0.1307,), (0.3081,)),
                                 'fashion_mnist': ((0.2860,), (0.3530,))}[name]


def test_idx_errors_name_the_file(tmp_path):
  folder = tmp_path / 'mnist'
  write_idx_set(folder)
  # a float type code, a wrong dimension count, a truncated body, not gzip, unequal counts
  bad = folder / 'train-images-idx3-ubyte.gz'
  write_idx(bad, np.zeros((2, 28, 28), np.uint8), type_code=0x0D)
  with pytest.raises(DataError, match=r'train-images-idx3-ubyte.gz: not an IDX file of unsigned '
                                      r'bytes with 3 dimensions \(header 00000d03'):
    data.load_dataset('mnist', 'train', tmp_path, download=False)
  write_idx(bad, np.zeros((2, 28), np.uint8))
  with pytest.raises(DataError, match='with 3 dimensions'):
    data.load_dataset('mnist', 'train', tmp_path, download=False)
  import gzip
  with gzip.open(bad, 'wb') as f:
    f.write(bytes([0, 0, 8, 3]) + (4).to_bytes(4, 'big') + (28).to_bytes(4, 'big') * 2 + b'x')
  with pytest.raises(DataError, match=r'header gives shape \(4, 28, 28\) \(3136 bytes\), the '
                                      r'file holds 1'):
    data.load_dataset('mnist', 'train', tmp_path, download=False)
  bad.write_bytes(b'not gzip')
  with pytest.raises(DataError, match='train-images-idx3-ubyte.gz: not a readable gzip file'):
    data.load_dataset('mnist', 'train', tmp_path, download=False)
  write_idx(bad, np.zeros((4, 28, 28), np.uint8))
  with pytest.raises(DataError, match='holds 4 images, .* 5 labels'):
    data.load_dataset('mnist', 'train', tmp_path, download=False)


def test_idx_missing_files_download_or_fail_in_one_line(tmp_path, monkeypatch):
  from darts_jax.data import mnist
  with pytest.raises(DataError) as info:
    data.load_dataset('fashion_mnist', 'test', tmp_path, download=False)
  message = str(info.value)
  assert str(tmp_path / 'fashion_mnist' / 't10k-images-idx3-ubyte.gz') in message
  assert mnist.SOURCES['fashion_mnist'].url + 't10k-images-idx3-ubyte.gz' in message
  assert '\n' not in message
  # downloaded: each missing file fetched from its URL, checked against its md5
  source = write_idx_set(tmp_path / 'source')
  blobs = {p.name: p.read_bytes() for p in (tmp_path / 'source').iterdir()}
  fetched = []

  def urlopen(url, timeout):
    fetched.append(url.rsplit('/', 1)[1])
    return FakeResponse(blobs[fetched[-1]])

  monkeypatch.setattr(urllib.request, 'urlopen', urlopen)
  md5 = {k: hashlib.md5(v).hexdigest() for k, v in blobs.items()}
  monkeypatch.setitem(mnist.SOURCES, 'mnist', mnist.SOURCES['mnist']._replace(md5=md5))
  test = data.load_dataset('mnist', 'test', tmp_path / 'cache')
  assert sorted(fetched) == ['t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz']
  np.testing.assert_array_equal(test.labels, source['t10k'][1])
  bad_md5 = dict(md5, **{'train-images-idx3-ubyte.gz': '0' * 32})
  monkeypatch.setitem(mnist.SOURCES, 'mnist', mnist.SOURCES['mnist']._replace(md5=bad_md5))
  with pytest.raises(DataError, match='md5'):
    data.load_dataset('mnist', 'train', tmp_path / 'cache')
  assert not (tmp_path / 'cache' / 'mnist' / 'train-images-idx3-ubyte.gz').exists()


# ------------------------------------------------------------------------------------ digits


def test_digits():
  sklearn_datasets = pytest.importorskip('sklearn.datasets')
  train, test = data.load_digits('train'), data.load_dataset('digits', 'test')
  assert train.images.shape == (1500, 8, 8, 1) and test.images.shape == (297, 8, 8, 1)
  assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
  assert train.images.min() == 0 and train.images.max() == 255
  assert sorted(set(train.labels.tolist())) == list(range(10))
  assert set(test.labels.tolist()) <= set(range(10))
  raw = sklearn_datasets.load_digits()
  np.testing.assert_array_equal(test.labels, raw.target[1500:])
  # 0 -> 0, 8 -> 127.5 -> 128, 16 -> 255 (value * 255 / 16, rounded).
  for v, expected in [(0, 0), (8, 128), (16, 255)]:
    n, h, w = np.argwhere(raw.images == v)[0]
    assert (train if n < 1500 else test).images[n % 1500, h, w, 0] == expected
  scaled = train.images / 255.0
  assert train.mean == pytest.approx((scaled.mean(),)) and test.mean == train.mean
  assert train.std == pytest.approx((scaled.std(),)) and 0.2 < train.std[0] < 0.5
  assert (train.num_classes, train.name) == (10, 'digits')


def test_digits_without_sklearn(monkeypatch):
  monkeypatch.setitem(sys.modules, 'sklearn', None)
  with pytest.raises(DataError, match=r"pip install 'darts_jax\[demo\]'"):
    data.load_digits('train')


# ---------------------------------------------------------------------- split and ordering


def tiny_dataset(n):
  return Dataset(images=np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1),
                 labels=np.arange(n, dtype=np.int32), mean=(0.5,), std=(0.25,), num_classes=10,
                 name='tiny')


def test_search_split():
  train, val = data.search_split(tiny_dataset(10))
  assert train.labels.tolist() == [0, 1, 2, 3, 4] and val.labels.tolist() == [5, 6, 7, 8, 9]
  assert train.images[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4]
  assert (train.mean, val.std, val.name) == ((0.5,), (0.25,), 'tiny')
  train, val = data.search_split(tiny_dataset(10), portion=0.35)  # floor(3.5) = 3
  assert train.labels.tolist() == [0, 1, 2] and len(val.labels) == 7
  for bad in (0.0, 1.0, -0.1, 1.5):
    with pytest.raises(ValueError, match='portion'):
      data.search_split(tiny_dataset(10), bad)


def test_epoch_order():
  order = data.epoch_order(10, 4, seed=3, epoch=0)
  assert order.shape == (3, 4) == (math.ceil(10 / 4), 4)
  assert data.steps_per_epoch(10, 4) == 3 and data.steps_per_epoch(8, 4) == 2
  np.testing.assert_array_equal(order, data.epoch_order(10, 4, seed=3, epoch=0))
  assert not np.array_equal(order, data.epoch_order(10, 4, seed=3, epoch=1))
  assert not np.array_equal(order, data.epoch_order(10, 4, seed=4, epoch=0))
  flat = order.ravel()
  assert sorted(flat[:10].tolist()) == list(range(10))  # a permutation, then the fill
  np.testing.assert_array_equal(flat[10:], flat[:2])
  assert data.epoch_order(8, 4, seed=0, epoch=0).shape == (2, 4)
  with pytest.raises(ValueError, match='batch_size=11.*num_examples=10'):
    data.epoch_order(10, 11, seed=0, epoch=0)


# ---------------------------------------------------------------------------- augmentation

MEAN, STD = (0.4, 0.5), (0.2, 0.3)


def normalize_np(images):
  return (images.astype(np.float32) / 255.0 - np.float32(MEAN)) / np.float32(STD)


def test_normalize_and_identity_augment():
  images = np.random.default_rng(0).integers(0, 256, (3, 4, 5, 2), dtype=np.uint8)
  out = data.normalize(images, MEAN, STD)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, normalize_np(images), rtol=1e-6, atol=1e-6)
  assert float(out[0, 1, 2, 1]) == pytest.approx((images[0, 1, 2, 1] / 255 - 0.5) / 0.3, abs=1e-5)
  plain = data.augment(jax.random.key(0), images, MEAN, STD, crop_padding=0, flip=False)
  np.testing.assert_array_equal(plain, out)
  with pytest.raises(TypeError, match='uint8'):
    data.normalize(images.astype(np.float32), MEAN, STD)


def test_augment_is_crop_of_padded_image():
  batch, height, width, pad = 16, 5, 6, 2
  images = np.random.default_rng(1).integers(1, 256, (batch, height, width, 2), dtype=np.uint8)
  out = np.asarray(data.augment(jax.random.key(7), images, MEAN, STD, crop_padding=pad))
  assert out.shape == images.shape and out.dtype == np.float32
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  seen = set()
  for i in range(batch):
    matches = []
    for oy in range(2 * pad + 1):
      for ox in range(2 * pad + 1):
        crop = padded[i, oy:oy + height, ox:ox + width]
        for flipped in (False, True):
          candidate = normalize_np(crop[:, ::-1] if flipped else crop)
          if np.allclose(out[i], candidate, atol=1e-5):
            matches.append((oy, ox, flipped))
    assert len(matches) == 1, (i, matches)  # pixels are distinct enough to pin the crop down
    seen.add(matches[0])
  # Per-image randomness: several offsets and both flip states occur in one batch.
  assert len({(oy, ox) for oy, ox, _ in seen}) > 3
  assert {flipped for *_, flipped in seen} == {False, True}
  # Same key, same batch: same output.
  np.testing.assert_array_equal(
      out, data.augment(jax.random.key(7), images, MEAN, STD, crop_padding=pad))


def test_cutout_mask_areas():
  def cut(y, x, length, height=6, width=6):
    return int((np.asarray(data.cutout_mask(y, x, height, width, length)) == 0).sum())
  assert cut(3, 2, 4) == 16  # rows 1..4, columns 0..3: fully inside
  assert cut(1, 1, 4) == 9  # rows/columns [-1, 3) clipped to 0..2
  assert cut(5, 5, 4) == 9  # rows/columns [3, 7) clipped to 3..5
  assert cut(0, 5, 4, height=6, width=8) == 2 * 4  # rows 0..1, columns 3..6
  assert cut(2, 2, 3) == 4  # odd length: [y - 1, y + 1), as the original
  mask = np.asarray(data.cutout_mask(3, 2, 6, 6, 4))
  assert mask.dtype == np.float32 and set(np.unique(mask)) == {0.0, 1.0}
  np.testing.assert_array_equal(np.argwhere(mask == 0).min(0), [1, 0])
  np.testing.assert_array_equal(np.argwhere(mask == 0).max(0), [4, 3])


def test_cutout_random_squares():
  images = jnp.ones((12, 6, 6, 2), jnp.float32)
  out = np.asarray(data.cutout(jax.random.key(3), images, 4))
  masks = {(y, x): np.asarray(data.cutout_mask(y, x, 6, 6, 4)) for y in range(6) for x in range(6)}
  centres = set()
  for i in range(len(out)):
    np.testing.assert_array_equal(out[i, ..., 0], out[i, ..., 1])  # same square per channel
    hits = [c for c, m in masks.items() if np.array_equal(out[i, ..., 0], m)]
    assert hits, i
    centres.add(hits[0])
  assert len(centres) > 3
  np.testing.assert_array_equal(data.cutout(jax.random.key(3), images * 2, 0), images * 2)


def test_cutout_in_training_cuts_the_expected_area():
  # centre uniform over the 32 rows, side 16 clipped at the borders: the mean cut length per
  # axis is (sum_{y<8} (y+8) + 17 * 16 + sum_{y>24} (40-y)) / 32 = 448 / 32 = 14
  images = jnp.ones((4000, 32, 32, 1))
  cut = np.asarray(data.cutout(jax.random.PRNGKey(0), images, 16))
  area = (cut == 0).sum((1, 2, 3))
  assert area.mean() == pytest.approx(14 ** 2, rel=0.03)
  assert area.max() == 256 and area.min() >= 64  # a full square, or a corner quarter of it
  assert set(np.unique(cut)) == {0.0, 1.0}  # untouched pixels stay as they were
