"""Every dataset and source runs the search and the training from the command line on small data
in its real format, the input channels, image size and class count taken from the data (as the
run prints them). All in the extended tier (the suite trains on ImageNet-shaped JPEGs from the
command line in test_imagenet.py)."""

import contextlib
import json

import numpy as np
import pytest

from darts_jax import data as data_lib
from experiments import cifar_search, cifar_train, cli
from test_data import fake_batches, write_archive, write_cifar100, write_idx_set
from test_datasets import write_folder

SEARCH = ['--config=experiments/configs/search.py:tiny', '--config.layers=2',
          '--config.init_channels=2', '--config.nodes=2', '--config.multiplier=2',
          '--config.batch_size=4', '--config.epochs=1', '--config.estimator=first_order',
          '--config.progress=False', '--config.plots=False', '--config.download=False']
TRAIN = ['--config=experiments/configs/train.py:tiny', '--config.layers=3',
         '--config.init_channels=2', '--config.batch_size=4', '--config.epochs=1',
         '--config.auxiliary=False', '--config.cutout_length=0', '--config.progress=False',
         '--config.download=False', '--config.max_examples=8', '--config.max_test_examples=4']


def _dataset(name, root):
  """Writes ``name``'s small copy under ``root``; returns (its command-line keys, the image
  shape and class count the runs must take from it, a context to run in)."""
  root.mkdir(parents=True, exist_ok=True)
  if name == 'cifar100':
    write_cifar100(root / 'cifar-100-python.tar.gz', rows=16)
  elif name in ('mnist', 'fashion_mnist'):
    write_idx_set(root / name, n_train=16, n_test=8)
  elif name == 'cifar10':
    write_archive(root / 'cifar-10-python.tar.gz', fake_batches(rows=4))
  elif name in ('folder', 'imagenet'):
    write_folder(root, classes=('a', 'b', 'c'), per_class=(6, 2), size=(16, 16),
                 suffix='.png' if name == 'folder' else '.JPEG')
  keys = [f'--config.dataset={name}', f'--config.data_dir={root}']
  shape, classes = {'cifar10': ((32, 32, 3), 10), 'cifar100': ((32, 32, 3), 100),
                    'mnist': ((28, 28, 1), 10), 'fashion_mnist': ((28, 28, 1), 10),
                    'folder': ((16, 16, 3), 3), 'imagenet': ((16, 16, 3), 3)}[name]
  if name == 'imagenet':
    keys.append('--config.image_size=16')
  return keys, shape, classes, contextlib.nullcontext()


def _tfds_mnist():
  tfds = pytest.importorskip('tensorflow_datasets')
  return (['--config.dataset=mnist', '--config.data_source=tfds'], (28, 28, 1), 10,
          tfds.testing.mock_data(num_examples=16))


def _run(kind, keys, workdir, context, capsys):
  main, config = ((cifar_search.run, cifar_search.DEFAULT_CONFIG) if kind == 'search'
                  else (cifar_train.run, cifar_train.DEFAULT_CONFIG))
  with context:
    status = cli.main(main, config, ['prog', *(SEARCH if kind == 'search' else TRAIN), *keys,
                                     f'--workdir={workdir}'])
  out, err = capsys.readouterr()
  assert status == 0, err
  return out


def _check(kind, out, workdir, shape, classes):
  config = json.loads((workdir / 'config.json').read_text())
  assert config['dataset'] in data_lib.DATASETS
  shown = f'{tuple(shape[:2])}' if kind == 'search' else f'{tuple(shape)}'
  assert shown in out, out
  if kind == 'train':
    assert f'{classes} classes' in out
  records = [json.loads(l) for l in open(workdir / 'metrics.jsonl')]
  assert any(r['kind'] == 'epoch' and np.isfinite(r['train_loss']) for r in records)


@pytest.mark.slow
@pytest.mark.extended
@pytest.mark.parametrize('kind,name', [
    ('search', 'folder'), ('train', 'fashion_mnist'), ('search', 'cifar100'), ('train', 'cifar100'), ('search', 'mnist'), ('train', 'mnist'),
    ('search', 'fashion_mnist'), ('train', 'folder'), ('search', 'imagenet'),
    ('search', 'tfds'), ('train', 'tfds')])
def test_every_dataset_and_source_runs(kind, name, tmp_path, capsys):
  keys, shape, classes, context = (_tfds_mnist() if name == 'tfds'
                                   else _dataset(name, tmp_path / 'data'))
  out = _run(kind, keys, tmp_path / 'run', context, capsys)
  _check(kind, out, tmp_path / 'run', shape, classes)
  if name == 'folder':  # the labels' folders, in label order
    assert (tmp_path / 'run' / 'classes.txt').read_text() == 'a\nb\nc\n'


@pytest.mark.slow
@pytest.mark.extended
def test_the_readme_demo_search_on_a_folder_of_pngs(tmp_path, capsys):
  """README's example as written: the demo preset on a folder of class sub-folders of PNGs
  (one epoch here)."""
  write_folder(tmp_path / 'pngs', classes=('cat', 'dog', 'owl', 'yak'), per_class=(30,),
               size=(8, 8), layout='bare')
  status = cli.main(cifar_search.run, cifar_search.DEFAULT_CONFIG, [
      'prog', '--config=experiments/configs/search.py:demo', '--config.dataset=folder',
      f'--config.data_dir={tmp_path / "pngs"}', '--config.epochs=1', '--config.progress=False',
      f'--workdir={tmp_path / "run"}'])
  out, err = capsys.readouterr()
  assert status == 0, err
  assert 'search: folder (8, 8), 60 + 60 examples' in out
  assert (tmp_path / 'run' / 'classes.txt').read_text() == 'cat\ndog\nowl\nyak\n'
  assert (tmp_path / 'run' / 'genotype.txt').exists()
