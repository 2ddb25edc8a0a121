"""The datasets beyond CIFAR-10: pt.darts's augmentation per dataset (closed forms of the affine
warp), image folders (generated PNGs and JPEGs in ImageNet's layout), the data_source choice and
TFDS through its mock data. Never touches the network."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import data
from darts_jax.data import folder as folder_lib
from darts_jax.data import pipeline
from darts_jax.data.pipeline import DataError


def write_folder(root, classes=('b_dog', 'a_cat', 'c_owl'), per_class=(4, 2), size=(12, 10),
                 suffix='.png', mode='RGB', layout='splits', seed=0):
  """Images of random pixels in class folders: ``layout='splits'`` writes ROOT/train/<class>/
  and ROOT/val/<class>/ (``per_class`` images each), 'bare' writes ROOT/<class>/ alone. Returns
  {split: [(path, class name, pixels)]}."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  root = pathlib.Path(root)
  splits = {'train': per_class[0], 'val': per_class[1]} if layout == 'splits' else {
      '': per_class[0]}
  written = {}
  for split, n in splits.items():
    written[split or 'train'] = []
    for name in classes:
      folder = root / split / name if split else root / name
      folder.mkdir(parents=True, exist_ok=True)
      for i in range(n):
        shape = (size[0], size[1]) if mode == 'L' else (size[0], size[1], 3)
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        path = folder / f'{i:03d}{suffix}'
        Image.fromarray(pixels).save(path, **({'quality': 95} if suffix != '.png' else {}))
        written[split or 'train'].append((str(path), name, pixels))
  return written


# ------------------------------------------------------------------ augmentation per dataset


def test_each_dataset_gets_pt_darts_augmentation():
  assert data.dataset_augmentation('mnist') == 'affine'
  assert data.dataset_augmentation('fashion_mnist') == 'affine_vflip'
  for name in ('cifar10', 'cifar100', 'folder', 'digits'):
    assert data.dataset_augmentation(name) == 'crop_flip'
  assert data.dataset_augmentation('imagenet', streamed=True) == 'imagenet'
  assert data.dataset_augmentation('mnist', 'none') == 'none'
  with pytest.raises(ValueError, match="augmentation='rotate' is unknown; allowed: crop_flip, "
                                       "affine, affine_vflip, none, imagenet"):
    data.dataset_augmentation('mnist', 'rotate')
  with pytest.raises(ValueError, match="'imagenet' is ImageNet training's streamed pipeline; "
                                       "cifar10 in memory takes crop_flip, affine"):
    data.dataset_augmentation('cifar10', 'imagenet')
  with pytest.raises(ValueError, match="augmentation='affine': ImageNet takes imagenet"):
    data.dataset_augmentation('imagenet', 'affine', streamed=True)


def _square(n=7, channels=1, seed=0):
  return np.random.default_rng(seed).integers(1, 256, (n, n, channels), dtype=np.uint8)


@pytest.mark.parametrize('n', [7, 8])
def test_affine_warp_closed_forms(n):
  image = _square(n)

  def warp(angle, shift=(0, 0), scale=1.0, shear=0.0):
    return np.asarray(pipeline.affine_warp(
        jnp.asarray(image), jnp.float32(angle), jnp.asarray(shift, jnp.float32),
        jnp.float32(scale), jnp.float32(shear)))

  np.testing.assert_array_equal(warp(0), image)
  # a quarter turn anticlockwise on screen, about the centre: np.rot90
  np.testing.assert_array_equal(warp(90), np.rot90(image, 1))
  np.testing.assert_array_equal(warp(-90), np.rot90(image, -1))
  np.testing.assert_array_equal(warp(180), image[::-1, ::-1])
  # a whole-pixel shift (x right 2, y down 1), zeros where nothing maps
  shifted = np.zeros_like(image)
  shifted[1:, 2:] = image[:-1, :-2]
  np.testing.assert_array_equal(warp(0, (2, 1)), shifted)


def test_random_affine_draws_within_torchvisions_ranges():
  # a bright 3x3 block at the centre of 29x29: rotation, scale and shear about the centre keep
  # it there; the shift moves it by whole pixels, at most round(0.1 * 29) = 3
  image = np.zeros((29, 29, 1), np.uint8)
  image[13:16, 13:16] = 255
  images = jnp.asarray(np.repeat(image[None], 200, 0))
  out = np.asarray(pipeline.random_affine(jax.random.PRNGKey(0), images))
  assert out.shape == images.shape and out.dtype == np.uint8
  ys, xs = np.mgrid[:29, :29]
  mass = out[..., 0].astype(np.float64)
  shift_y = (mass * ys).sum((1, 2)) / mass.sum((1, 2)) - 14
  shift_x = (mass * xs).sum((1, 2)) / mass.sum((1, 2)) - 14
  for shift in (shift_x, shift_y):
    assert np.abs(shift).max() <= 3.5 and shift.min() < -1.5 and shift.max() > 1.5
  # without the shift the block stays centred; degrees=0, translate=0, scale 1, no shear is the
  # identity
  still = np.asarray(pipeline.random_affine(jax.random.PRNGKey(1), images, translate=0.0))
  assert (still[:, 14, 14, 0] == 255).all()
  noise = jnp.asarray(np.stack([_square(28, seed=s) for s in range(8)]))
  same = pipeline.random_affine(jax.random.PRNGKey(1), noise, 0.0, 0.0, (1.0, 1.0), 0.0)
  np.testing.assert_array_equal(np.asarray(same), np.asarray(noise))


def test_train_transform_per_policy():
  images = jnp.asarray(np.stack([_square(8, 3, seed=s) for s in range(40)]))
  mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
  key = jax.random.PRNGKey(3)
  plain = np.asarray(data.normalize(images, mean, std))
  np.testing.assert_allclose(np.asarray(data.train_transform(key, images, mean, std, 'none')),
                             plain)
  np.testing.assert_array_equal(
      np.asarray(data.train_transform(key, images, mean, std, 'crop_flip', 4, True)),
      np.asarray(data.augment(key, images, mean, std, 4, True)))
  # affine_vflip = the same affine draw, then about half the images upside down
  k_affine, k_flip = jax.random.split(key)
  warped = np.asarray(pipeline.random_affine(k_affine, images))
  out = np.asarray(data.train_transform(key, images, mean, std, 'affine_vflip'))
  flipped = [np.allclose(o, np.asarray(data.normalize(w[None, ::-1], mean, std))[0])
             for o, w in zip(out, warped)]
  kept = [np.allclose(o, np.asarray(data.normalize(w[None], mean, std))[0])
          for o, w in zip(out, warped)]
  assert all(f or k for f, k in zip(flipped, kept)) and 5 < sum(flipped) < 35
  with pytest.raises(ValueError, match="'imagenet' is not an in-memory transform"):
    data.train_transform(key, images, mean, std, 'imagenet')


# --------------------------------------------------------------------------------- folders


def test_folder_layout_labels_and_classes_file(tmp_path):
  written = write_folder(tmp_path / 'set')
  train = data.load_dataset('folder', 'train', tmp_path / 'set')
  test = data.load_dataset('folder', 'test', tmp_path / 'set')
  # classes are the sorted folder names; their place is the label
  assert train.classes == test.classes == ('a_cat', 'b_dog', 'c_owl')
  assert train.num_classes == 3 and train.images.shape == (12, 12, 10, 3)
  by_pixels = {p.tobytes(): train.classes.index(c) for split in written.values()
               for _, c, p in split}
  for ds, n in ((train, 12), (test, 6)):
    assert len(ds.labels) == n
    assert [by_pixels[im.tobytes()] for im in ds.images] == ds.labels.tolist()
  # the test split in sorted order; the training split in one fixed shuffled order, so the
  # search's halves both hold every class
  assert test.labels.tolist() == [0, 0, 1, 1, 2, 2]
  assert set(train.labels[:6]) == set(train.labels[6:]) == {0, 1, 2}
  again = data.load_dataset('folder', 'train', tmp_path / 'set')
  np.testing.assert_array_equal(again.images, train.images)
  # mean and std: the training images' own statistics on the [0, 1] scale
  pixels = np.stack([p for _, _, p in written['train']]).reshape(-1, 3) / 255.0
  np.testing.assert_allclose(train.mean, pixels.mean(0), rtol=1e-9)
  np.testing.assert_allclose(train.std, pixels.std(0), rtol=1e-9)
  assert test.mean == train.mean
  path = folder_lib.write_classes(train.classes, tmp_path)
  assert path.read_text() == 'a_cat\nb_dog\nc_owl\n'


def test_bare_folder_is_the_training_split_and_greyscale_has_one_channel(tmp_path):
  write_folder(tmp_path / 'bare', per_class=(3,), layout='bare', mode='L', suffix='.png')
  train = data.load_dataset('folder', 'train', tmp_path / 'bare')
  assert train.images.shape == (9, 12, 10, 1) and len(train.mean) == 1
  with pytest.raises(DataError, match=r'has no val or test/ folder for the test split'):
    data.load_dataset('folder', 'test', tmp_path / 'bare')
  resized = data.load_dataset('folder', 'train', tmp_path / 'bare', image_size=6)
  assert resized.images.shape == (9, 6, 6, 1)


def test_folder_errors_are_one_line_and_name_the_file(tmp_path):
  def fails(match, root, split='train', **kw):
    with pytest.raises((DataError, ValueError), match=match) as info:
      data.load_dataset('folder', split, root, **kw)
    assert '\n' not in str(info.value)

  fails('does not exist', tmp_path / 'nowhere')
  (tmp_path / 'flat').mkdir()
  (tmp_path / 'flat' / 'x.png').write_bytes(b'')
  fails('has no class sub-folders', tmp_path / 'flat')
  (tmp_path / 'empty' / 'train' / 'a').mkdir(parents=True)
  fails(r'no .jpg/.jpeg/.png files in its 1 class folder', tmp_path / 'empty')
  with pytest.raises(ValueError, match="dataset='folder' needs --config.data_dir=DIR"):
    data.load_dataset('folder', 'train', '')
  write_folder(tmp_path / 'bad', suffix='.jpg')
  corrupt = tmp_path / 'bad' / 'train' / 'b_dog' / '001.jpg'
  corrupt.write_bytes(corrupt.read_bytes()[:40])  # a truncated JPEG
  fails(rf'{corrupt}: not a readable image', tmp_path / 'bad')
  write_folder(tmp_path / 'sizes')
  odd = tmp_path / 'sizes' / 'train' / 'c_owl' / '002.png'
  from PIL import Image
  Image.fromarray(np.zeros((5, 9, 3), np.uint8)).save(odd)
  fails(rf'{odd} is 9x5, .* 10x12: images of one folder dataset must share a size, or set '
        r'--config.image_size=N', tmp_path / 'sizes')
  write_folder(tmp_path / 'extra')
  (tmp_path / 'extra' / 'val' / 'zebra').mkdir()
  fails(r"class folder\(s\) zebra are not among the training split's 3 classes",
        tmp_path / 'extra', 'test')


# ----------------------------------------------------------------------------- data sources


def test_data_source_pairs():
  assert data.data_source('cifar10') == 'archive' and data.data_source('imagenet') == 'folder'
  assert data.data_source('folder') == 'folder' and data.data_source('cifar100', 'tfds') == 'tfds'
  with pytest.raises(ValueError, match="data_source='s3' is unknown; allowed: archive, folder, "
                                       "tfds"):
    data.data_source('cifar10', 's3')
  with pytest.raises(ValueError, match="data_source='archive': imagenet has no archive reader"):
    data.data_source('imagenet', 'archive')
  with pytest.raises(ValueError, match="digits come only from scikit-learn's copy"):
    data.data_source('digits', 'folder')


def test_a_known_dataset_from_a_folder_keeps_its_constants(tmp_path):
  write_folder(tmp_path / 'c10', classes=tuple('0123456789'), per_class=(2, 1), size=(32, 32))
  ds = data.load_dataset('cifar10', 'train', tmp_path / 'c10', source='folder')
  assert ds.mean == data.cifar10.MEAN and ds.num_classes == 10 and ds.name == 'cifar10'
  with pytest.raises(ValueError, match='needs --config.image_size=N'):
    data.load_dataset('imagenet', 'train', tmp_path / 'c10')
  small = data.load_dataset('imagenet', 'train', tmp_path / 'c10', image_size=8)
  assert small.images.shape == (20, 8, 8, 3) and small.mean == (0.485, 0.456, 0.406)


def test_tfds_mock_data_reads_without_tensorflow():
  tfds = pytest.importorskip('tensorflow_datasets')
  import sys
  with tfds.testing.mock_data(num_examples=6):
    for name, shape, classes in (('mnist', (28, 28, 1), 10), ('fashion_mnist', (28, 28, 1), 10),
                                 ('cifar10', (32, 32, 3), 10), ('cifar100', (32, 32, 3), 100)):
      ds = data.load_dataset(name, 'test', source='tfds', download=False)
      assert ds.images.shape == (6, *shape) and ds.images.dtype == np.uint8
      assert ds.num_classes == classes and ds.labels.max() < classes and ds.name == name
    # ImageNet's images differ in size: read into memory at image_size
    ds = data.load_dataset('imagenet', 'test', source='tfds', download=False, image_size=16)
    assert ds.images.shape == (6, 16, 16, 3) and ds.num_classes == 1000
  assert 'tensorflow' not in sys.modules


def test_tfds_missing_set_is_a_one_line_error(tmp_path):
  pytest.importorskip('tensorflow_datasets')
  with pytest.raises(DataError) as info:
    data.load_dataset('mnist', 'train', tmp_path, download=False, source='tfds')
  assert f'TFDS mnist (train) could not be read from {tmp_path}' in str(info.value)
  assert 'tfds build mnist --file_format=array_record' in str(info.value)
  assert '\n' not in str(info.value)


def test_runs_store_the_resolved_source_and_augmentation(tmp_path):
  """A new run stores what '' resolved to; a run from before these keys resumes with crop and
  flip from its archive, what it did then, whatever the dataset's own augmentation is now."""
  from darts_jax import train_loop
  from experiments.configs.train import get_config
  from test_data import write_idx_set
  write_idx_set(tmp_path / 'mnist', n_train=8, n_test=4)
  config = get_config('tiny').to_dict()
  config.update(dataset='mnist', data_dir=str(tmp_path), download=False, batch_size=4,
                auxiliary=False, max_examples=0, max_test_examples=0)
  setup = train_loop._setup(config)
  assert (setup.cfg['data_source'], setup.cfg['augmentation']) == ('archive', 'affine')
  old = {k: v for k, v in config.items() if k not in ('data_source', 'augmentation')}
  assert train_loop._setup(old).cfg['augmentation'] == 'crop_flip'
  with pytest.raises(ValueError, match=r'image_size=16: mnist is read at its own size'):
    train_loop._setup({**config, 'image_size': 16})
