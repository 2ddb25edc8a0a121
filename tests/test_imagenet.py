"""ImageNet in the mobile setting: the decoded views against Pillow by hand, the random-resized
crop's fallback in closed form, colour jitter's four adjustments in closed form, the loader's
determinism (threads, processes, a start step, this process's rows), label smoothing and the
exponential schedule against their formulas, multiply-adds against a hand count and the paper's
bound, and an ImageNet-shaped training on generated JPEGs: from the command line, resumed bit
for bit, evaluated, and stopped by a corrupt file with one line."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import cost
from darts_jax import train as train_lib
from darts_jax.data import imagenet
from darts_jax.genotypes import DARTS_V2
from darts_jax.networks import NetworkImageNet
from experiments import cifar_train, cli, imagenet_eval, imagenet_train
from run_helpers import interrupt_after, leaves
from test_datasets import write_folder


def _image(path, width, height, seed=0):
  from PIL import Image
  pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(path)
  return pixels


# ------------------------------------------------------------------------------- host views


def test_random_resized_crop_box_tries_then_falls_back_to_the_centre():
  rng = np.random.default_rng(0)
  for _ in range(200):
    left, top, w, h = imagenet.random_resized_crop_box(rng, 300, 200)
    assert 0 <= left and left + w <= 300 and 0 <= top and top + h <= 200
    # a try that fits: area fraction in [0.08, 1], aspect in [3/4, 4/3] up to rounding
    assert 0.08 * 60000 * 0.9 <= w * h <= 60000 and 0.7 <= w / h <= 1.45
  # 1000x10: no try fits, so the whole height at the widest allowed aspect, centred
  assert imagenet.random_resized_crop_box(rng, 1000, 10) == ((1000 - 13) // 2, 0, 13, 10)
  assert imagenet.random_resized_crop_box(rng, 10, 1000) == (0, (1000 - 13) // 2, 10, 13)


def test_eval_view_is_the_centre_crop_of_the_resize(tmp_path):
  # the shorter side is already 256: no resampling, the crop is exact
  pixels = _image(tmp_path / 'wide.png', 512, 256)
  view = imagenet.eval_image(str(tmp_path / 'wide.png'), 224, 256)
  np.testing.assert_array_equal(view, pixels[16:240, 144:368])
  # a smaller image is resized up first (PIL's bilinear), then cropped
  from PIL import Image
  small = _image(tmp_path / 'small.png', 64, 48, seed=1)
  view = imagenet.eval_image(str(tmp_path / 'small.png'), 32, 40)
  resized = np.asarray(Image.fromarray(small).resize((53, 40), Image.BILINEAR))
  np.testing.assert_array_equal(view, resized[4:36, 10:42])


def test_train_view_is_pillows_crop_resize_and_flip(tmp_path):
  from PIL import Image
  pixels = _image(tmp_path / 'a.png', 90, 70)
  flips = 0
  for seed in range(12):
    view = imagenet.train_image(str(tmp_path / 'a.png'), np.random.default_rng(seed), 24)
    rng = np.random.default_rng(seed)
    left, top, w, h = imagenet.random_resized_crop_box(rng, 90, 70)
    expect = np.asarray(Image.fromarray(pixels).resize(
        (24, 24), Image.BILINEAR, box=(left, top, left + w, top + h)))
    flipped = rng.random() < 0.5
    flips += flipped
    np.testing.assert_array_equal(view, expect[:, ::-1] if flipped else expect)
  assert 0 < flips < 12


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_without_losing_the_crop(tmp_path):
  from PIL import Image
  rows = np.linspace(0, 255, 800)[:, None, None] * np.ones((1, 1200, 3))
  Image.fromarray(rows.astype(np.uint8)).save(tmp_path / 'big.jpg', quality=95)
  view = imagenet.eval_image(str(tmp_path / 'big.jpg'), 64, 72)
  # a vertical ramp stays a ramp: the centre 64 of 72 rows spans about 64/72 of 0..255
  column = view[:, 32, 0].astype(float)
  assert np.all(np.diff(column) >= -2) and 200 < column[-1] - column[0] < 245


# ----------------------------------------------------------------------- colour jitter, device


def test_colour_adjustments_closed_forms():
  rgb = jnp.asarray([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.2, 0.4, 0.6]]])
  np.testing.assert_allclose(imagenet.adjust_brightness(rgb, 0.5), rgb * 0.5)
  grey = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
  np.testing.assert_allclose(imagenet.adjust_saturation(rgb, 0.0),
                             jnp.repeat(grey[..., None], 3, -1), atol=1e-6)
  np.testing.assert_allclose(imagenet.adjust_contrast(rgb, 0.0),
                             jnp.full_like(rgb, grey.mean()), atol=1e-6)
  # a third of a turn: red -> green -> blue; no turn: unchanged
  turned = imagenet.adjust_hue(rgb, 1 / 3)
  np.testing.assert_allclose(turned[0, :2], [[0, 1, 0], [0, 0, 1]], atol=1e-6)
  np.testing.assert_allclose(imagenet.adjust_hue(rgb, 0.0), rgb, atol=1e-6)
  # (0.2, 0.4, 0.6) is at hue 7/12; +1/4 -> 5/6 (magenta side): (0.6, 0.2, 0.6)
  np.testing.assert_allclose(turned[0, 2], imagenet.adjust_hue(rgb, 1 / 3)[0, 2])
  np.testing.assert_allclose(imagenet.adjust_hue(rgb, 0.25)[0, 2], [0.6, 0.2, 0.6], atol=1e-6)


def test_colour_jitter_draws_and_zero_strength_is_the_identity():
  images = jax.random.uniform(jax.random.PRNGKey(0), (16, 5, 5, 3))
  out = imagenet.color_jitter(jax.random.PRNGKey(1), images)
  assert out.shape == images.shape and float(out.min()) >= 0 and float(out.max()) <= 1
  assert float(jnp.abs(out - images).max()) > 0.05
  same = imagenet.color_jitter(jax.random.PRNGKey(1), images, (0.0, 0.0, 0.0, 0.0))
  np.testing.assert_allclose(same, images, atol=1e-5)


# ---------------------------------------------------------------------------------- loader


@pytest.fixture(scope='module')
def jpegs(tmp_path_factory):
  root = tmp_path_factory.mktemp('imagenet')
  write_folder(root, classes=('n01', 'n02', 'n03'), per_class=(6, 2), size=(40, 52),
               suffix='.JPEG')
  return root


def test_batches_do_not_depend_on_who_decodes_them_or_where_the_epoch_starts(jpegs):
  data = imagenet.load_streaming(jpegs, 'train', image_size=16, resize_size=20, threads=1)
  order = np.arange(18).reshape(3, 6)
  whole = list(imagenet.local_batches(data, order, slice(0, 6), seed=5, epoch=2))
  assert [b[0].shape for b in whole] == [(6, 16, 16, 3)] * 3
  np.testing.assert_array_equal(np.concatenate([b[1] for b in whole]), data.files.labels[:18])
  for other in (data._replace(threads=4), data._replace(workers=2)):
    for a, b in zip(imagenet.local_batches(other, order, slice(0, 6), 5, 2), whole):
      np.testing.assert_array_equal(a[0], b[0])
  # from step 1, and this process's rows 2..3 (of a two-process run's batch 6 = 2 x 3 rows)
  later = list(imagenet.local_batches(data, order, slice(3, 6), 5, 2, start=1))
  assert len(later) == 2
  for a, b in zip(later, whole[1:]):
    np.testing.assert_array_equal(a[0], b[0][3:6])
  # another epoch draws other crops
  other_epoch = next(imagenet.local_batches(data, order, slice(0, 6), 5, 3))
  assert not np.array_equal(other_epoch[0], whole[0][0])
  # the epoch feed: in order, out of order, the same step twice
  feed = imagenet.EpochFeed(data, order, slice(0, 6), 5, 2)
  for i in (0, 1, 1, 2, 0):
    np.testing.assert_array_equal(feed(i)[0], whole[i][0])


# ------------------------------------------------------------------------ loss and schedule


def test_label_smoothing_and_the_exponential_schedule_follow_their_formulas():
  logits = jax.random.normal(jax.random.PRNGKey(0), (4, 5))
  labels = jnp.asarray([0, 3, 4, 1])
  z = np.asarray(logits, np.float64)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  eps = 0.1
  # CrossEntropyLabelSmooth: -sum((1 - eps) onehot + eps / K) log p, averaged over the batch
  expect = np.mean([-(1 - eps) * logp[i, labels[i]] - eps / 5 * logp[i].sum() for i in range(4)])
  assert float(train_lib.smoothed_cross_entropy(logits, labels, eps)) == pytest.approx(
      expect, rel=1e-6)
  assert float(train_lib.smoothed_cross_entropy(logits, labels, 0.0)) == pytest.approx(
      -logp[np.arange(4), labels].mean(), rel=1e-6)
  hp = train_lib.TrainHParams(epochs=250, steps_per_epoch=10, lr=0.1,
                              lr_schedule='exponential', lr_gamma=0.97)
  schedule = train_lib.learning_rate(hp)
  for step, epoch in ((0, 0), (9, 0), (10, 1), (2495, 249)):
    assert float(schedule(step)) == pytest.approx(0.1 * 0.97 ** epoch, rel=1e-6)
  with pytest.raises(ValueError, match="lr_schedule='step' is unknown; allowed: cosine, "
                                       "exponential"):
    train_lib.TrainHParams(lr_schedule='step')


# ---------------------------------------------------------------------------- multiply-adds


def test_multiply_adds_count_by_hand():
  def net(x, w_conv, w_depthwise, w_dense):
    y = jax.lax.conv_general_dilated(x, w_conv, (2, 2), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    y = jax.lax.conv_general_dilated(y, w_depthwise, (1, 1), 'SAME', feature_group_count=8,
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return jnp.mean(y, (1, 2)) @ w_dense
  shapes = [jax.ShapeDtypeStruct(s, jnp.float32) for s in
            ((1, 16, 16, 3), (3, 3, 3, 8), (5, 5, 1, 8), (8, 10))]
  # 8x8x8 outputs of a 3x3x3 window; 8x8x8 of a 5x5x1 window; 10 of 8
  assert cost.multiply_adds(net, *shapes) == 512 * 27 + 512 * 25 + 80


def test_darts_v2_on_imagenet_is_in_the_mobile_setting():
  model = NetworkImageNet(48, 1000, 14, False, DARTS_V2)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                jnp.zeros((1, 224, 224, 3)), False))
  madds = cost.network_multiply_adds(model, variables, (224, 224, 3))
  # the paper: "less than 600M" (it reports 574M); the convolutions and the classifier: 530M
  assert madds == 529_911_552 and madds < 600e6


# ----------------------------------------------------------------------------- end to end


def _args(jpegs, workdir, *more):
  return ['imagenet_train', '--config=experiments/configs/imagenet.py:tiny',
          f'--config.data_dir={jpegs}', f'--workdir={workdir}', '--config.progress=False',
          '--config.batch_size=6', '--config.image_size=32', '--config.resize_size=36',
          '--config.init_channels=4', '--config.layers=3', *more]


@pytest.mark.slow
def test_tiny_imagenet_trains_resumes_bitwise_and_evaluates(jpegs, tmp_path, monkeypatch, capsys):
  from darts_jax import train_loop
  states = {}
  real = train_loop.run_train

  def keep(config, workdir, **kw):
    states[workdir] = real(config, workdir, **kw)
    return states[workdir]

  monkeypatch.setattr(train_loop, 'run_train', keep)
  full = tmp_path / 'full'
  assert cli.main(cifar_train.run, imagenet_train.DEFAULT_CONFIG, _args(jpegs, full)) == 0
  out = capsys.readouterr().out
  assert 'on imagenet (32, 32, 3): 18 training, 6 test examples, 3 classes' in out
  assert 'lr 0.1 x 0.97 per epoch, label smoothing 0.1' in out and 'multiply-adds per image' in out
  assert (full / 'classes.txt').read_text() == 'n01\nn02\nn03\n'
  records = [json.loads(l) for l in open(full / 'metrics.jsonl')]
  epochs = [r for r in records if r['kind'] == 'epoch']
  assert [r['lr'] for r in epochs] == pytest.approx([0.1, 0.097])
  assert all(0 <= r['test_top1'] <= r['test_top5'] == 1.0 for r in epochs)  # 3 classes < 5

  # interrupted in the second epoch's second step, then resumed: the same final state
  part = tmp_path / 'part'

  def interrupted():  # the command returns 130 on Ctrl-C; the helper expects it raised
    if cli.main(cifar_train.run, imagenet_train.DEFAULT_CONFIG, _args(jpegs, part)) == 130:
      raise KeyboardInterrupt

  interrupt_after(4, interrupted, monkeypatch)
  assert cli.main(cifar_train.run, imagenet_train.DEFAULT_CONFIG, _args(jpegs, part)) == 0
  for a, b in zip(leaves(states[str(full)].state), leaves(states[str(part)].state)):
    np.testing.assert_array_equal(a, b)

  # the evaluation command reads the same validation crops
  capsys.readouterr()
  assert cli.main(imagenet_eval.run, imagenet_eval.DEFAULT_CONFIG,
                  ['imagenet_eval', f'--workdir={full}', '--checkpoint=last'],
                  extra=cifar_eval_flags(), workdir_required=False) == 0
  line = capsys.readouterr().out.strip().splitlines()[-1]
  assert f'test loss {epochs[-1]["test_loss"]:.4f}' in line and '(6 imagenet test images)' in line


def cifar_eval_flags():
  from experiments import cifar_eval
  return cifar_eval.eval_flags


def test_a_corrupt_jpeg_stops_training_with_one_line_naming_it(jpegs, tmp_path, capsys):
  import shutil
  root = tmp_path / 'copy'
  shutil.copytree(jpegs, root)
  # a whole class corrupt: the first batch holds one of them, so the error comes before the
  # step compiles, and names the first such file of the batch
  bad = sorted((root / 'train' / 'n02').iterdir())
  for path in bad:
    path.write_bytes(b'\xff\xd8 not really a jpeg')
  status = cli.main(cifar_train.run, imagenet_train.DEFAULT_CONFIG,
                    _args(root, tmp_path / 'run', '--config.epochs=1'))
  err = capsys.readouterr().err.strip()
  assert status == 2 and '\n' not in err, err
  named = err.removeprefix('error: ').split(': not a readable image (', 1)[0]
  assert err.startswith('error: ') and named in {str(p) for p in bad}, err


def test_imagenet_config_errors(tmp_path, jpegs, capsys):
  for args, message in (
      (['--config.data_source=archive'], "data_source='archive': imagenet has no archive reader"),
      (['--config.augmentation=affine'], "augmentation='affine': ImageNet takes imagenet"),
      (['--config.auxiliary=True'], 'auxiliary=True needs 224x224 images'),
      (['--config.image_size=40', '--config.resize_size=36'], 'image_size=40, resize_size=36'),
      (['--config.lr_gamma=1.5'], 'lr_gamma=1.5: must be in (0, 1]')):
    assert cli.main(cifar_train.run, imagenet_train.DEFAULT_CONFIG,
                    _args(jpegs, tmp_path / 'run', *args)) == 2
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err, err
    assert not (tmp_path / 'run' / 'checkpoints').exists()


def test_imagenet2012_from_tfds_streams_record_by_record():
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=12):
    train = imagenet.load_streaming_tfds(None, 'train', 24, 28, download=False, threads=2)
    test = imagenet.load_streaming_tfds(None, 'test', 24, 28, download=False)
    assert (train.num_examples, train.num_classes, train.classes[0]) == (12, 1000, 'n01440764')
    assert test.files.split == 'validation' and imagenet.subset(train, 5).num_examples == 5
    order = np.arange(12).reshape(2, 6)
    batches = list(imagenet.local_batches(train, order, slice(0, 6), seed=0, epoch=0))
    records = [train.files.read(i) for i in range(12)]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]),
                                  [label for _, label in records])
    # each view is the same crop of the decoded record a file would give
    for j in (0, 7):
      expect = imagenet.train_image(records[j][0], imagenet.example_rng(0, 0, j), 24)
      np.testing.assert_array_equal(batches[j // 6][0][j % 6], expect)
    view = next(imagenet.local_batches(test, order, slice(0, 6), 0, 0))[0][0]
    np.testing.assert_array_equal(view, imagenet.eval_image(test.files.read(0)[0], 24, 28))


@pytest.mark.slow
@pytest.mark.extended
def test_tiny_imagenet_trains_from_tfds(tmp_path, capsys):
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=12):
    args = _args('', tmp_path / 'run', '--config.data_source=tfds', '--config.epochs=1',
                 '--config.download=False')
    status = cli.main(cifar_train.run, imagenet_train.DEFAULT_CONFIG,
                      [a for a in args if not a.startswith('--config.data_dir')])
  out, err = capsys.readouterr()
  assert status == 0, err
  assert 'on imagenet (32, 32, 3): 12 training, 12 test examples, 1000 classes' in out
  assert (tmp_path / 'run' / 'classes.txt').read_text().splitlines()[0] == 'n01440764'


def test_augmentation_none_trains_on_the_evaluation_view(jpegs):
  from darts_jax import train_loop
  from experiments.configs.imagenet import get_config
  config = get_config('tiny').to_dict()
  config.update(data_dir=str(jpegs), batch_size=6, image_size=32, resize_size=36)
  assert train_loop._setup(config).train_set.train
  plain = train_loop._setup({**config, 'augmentation': 'none'})
  assert not plain.train_set.train and plain.cfg['augmentation'] == 'none'
  order = np.arange(6)[None]
  batch = next(imagenet.local_batches(plain.train_set, order, slice(0, 6), 0, 0))[0]
  for k in range(6):
    np.testing.assert_array_equal(
        batch[k], imagenet.eval_image(plain.train_set.files.paths[k], 32, 36))
