"""Configuration of ``python -m experiments.cifar_train`` (and ``experiments.cifar_eval``).

Pick a preset after the file name and override any key on the command line:

  python -m experiments.cifar_train --config=experiments/configs/train.py:tiny \
      --config.genotype=DARTS_V1 --workdir=/tmp/train_tiny

Presets: ``paper`` (the default: the paper's CIFAR-10 evaluation, 600 epochs of the 20-cell,
C=36 network), ``tiny`` (a CPU smoke test on CIFAR-10: 3 cells, C=4, 64 images, 2 epochs) and
``demo`` (the demo search's genotype trained on scikit-learn's bundled digits: real data, no
download, a few minutes on 2 CPU cores) and ``nas_bench_201`` (a NAS-Bench-201 architecture
trained as the benchmark trained its table's networks: 200 epochs, batch 256, SGD 0.1 Nesterov
cosine to 0, weight decay 5e-4, no clipping, no auxiliary head, drop path or cutout). Its
``genotype`` is an architecture's string form or a NAS-Bench-201 search's workdir, e.g.

  python -m experiments.cifar_train --config=experiments/configs/train.py:nas_bench_201 \
      --config.genotype=runs/nb201_search --workdir=runs/nb201_train
"""

import ml_collections

from darts_jax.train import TrainHParams
from experiments.configs.scale_out import add_scale_out_keys

PRESETS = ('paper', 'tiny', 'demo', 'nas_bench_201')
# the benchmark's architecture 9930 (its table: 1.289 MB of parameters on CIFAR-10)
NB201_ARCH_9930 = ('|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+'
                   '|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|')


def get_config(preset: str = 'paper') -> ml_collections.ConfigDict:
  preset = preset or 'paper'
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r}; allowed: {", ".join(PRESETS)}')
  # the paper's optimisation values are set once, in the library's dataclass
  paper = TrainHParams()
  c = ml_collections.ConfigDict()
  c.preset = preset
  # a published name (DARTS_V1, DARTS_V2), the original's string form, genotype JSON, or the
  # path of a search workdir / its genotype.json
  c.genotype = 'DARTS_V2'

  # data: training on the whole training set, evaluation on the test set (as the original)
  # cifar10, cifar100, mnist, fashion_mnist (official archives in DATA_DIR), folder (DATA_DIR is
  # a folder of class sub-folders: DIR/train/<class>/*, DIR/val/<class>/*), imagenet (the same
  # layout, decoded as it trains: experiments/configs/imagenet.py), digits (no download)
  c.dataset = 'cifar10'
  c.data_source = ''  # archive, folder or tfds ('': the dataset's own; README: Datasets)
  c.data_dir = ''  # '' -> $DARTS_JAX_DATA_DIR or ~/.cache/darts_jax
  c.download = True
  c.image_size = 0  # folder images resized to NxN (0: as stored); ImageNet's crop (0: 224)
  c.max_examples = 0  # use only the first N training images (0: all)
  c.max_test_examples = 0  # evaluate only the first N test images (0: all)
  # '' (the dataset's own, as pt.darts: crop_flip; mnist affine; fashion_mnist affine_vflip),
  # crop_flip, affine, affine_vflip, none
  c.augmentation = ''
  c.crop_padding = 4
  c.flip = True
  c.cutout_length = 16  # 0: no cutout
  # ImageNet's loader: the evaluation resize before the centre crop, decoding processes
  # (0: threads of the training process only) and threads
  c.resize_size = 256
  c.loader_workers = 0
  c.loader_threads = 8
  c.seed = 0
  c.dtype = 'float32'

  add_scale_out_keys(c, base_batch=96)  # devices, hosts, BN semantics, bf16, lr scaling

  # the networks of which search space: darts_cnn (NetworkCIFAR around a DARTS genotype) or
  # nas_bench_201 (the benchmark's skeleton around one of its cells: init_channels and
  # cells_per_stage apply; genotype is its string form |op~0|+|...| or a search workdir)
  c.search_space = 'darts_cnn'
  c.cells_per_stage = 5  # NAS-Bench-201's N

  # the evaluation network (NetworkCIFAR)
  c.init_channels = 36
  c.layers = 20
  c.stem_multiplier = 3
  c.auxiliary = True
  c.auxiliary_weight = paper.auxiliary_weight
  c.drop_path_prob = paper.drop_path_prob  # reached linearly at the last epoch

  # optimisation (the original's train.py: 600 epochs, batch 96, SGD 0.025 cosine to 0,
  # momentum 0.9, weight decay 3e-4, clip 5)
  c.epochs = paper.epochs
  c.batch_size = 96
  c.lr = paper.lr
  c.lr_min = paper.lr_min
  c.momentum = paper.momentum
  c.weight_decay = paper.weight_decay
  c.grad_clip = paper.grad_clip  # 0: no clipping
  c.nesterov = paper.nesterov
  c.lr_schedule = paper.lr_schedule  # cosine (to lr_min) or exponential (lr * lr_gamma^epoch)
  c.lr_gamma = paper.lr_gamma
  c.label_smoothing = paper.label_smoothing

  # what the run shows and keeps
  c.eval_every = 1  # epochs between test-set evaluations (the last epoch is always evaluated)
  c.log_every = 50
  c.checkpoint_every = 1000  # steps, besides every epoch's end (0: epoch ends only)
  c.keep_checkpoints = 2
  c.tensorboard = True
  c.progress = True

  if preset == 'tiny':
    c.max_examples = 64
    c.max_test_examples = 32
    c.layers = 3
    c.init_channels = 4
    c.epochs = 2
    c.batch_size = 16
    c.log_every = 2
    c.checkpoint_every = 2
  elif preset == 'nas_bench_201':
    # AutoDL-Projects configs/nas-benchmark/hyper-opts/200E.config, the benchmark's C=16, N=5
    c.search_space = 'nas_bench_201'
    c.genotype = NB201_ARCH_9930
    c.init_channels = 16
    c.cutout_length = 0
    c.auxiliary = False
    c.drop_path_prob = 0.0
    c.epochs = 200
    c.batch_size = 256
    c.lr_base_batch = 256
    c.lr = 0.1
    c.lr_min = 0.0
    c.momentum = 0.9
    c.nesterov = True
    c.weight_decay = 5e-4
    c.grad_clip = 0.0
  elif preset == 'demo':
    c.genotype = 'runs/demo'  # the workdir of the README's demo search
    c.dataset = 'digits'
    c.crop_padding = 1
    c.flip = False  # digits are not mirror-symmetric
    c.cutout_length = 4  # a quarter of the side, as 16 is of CIFAR's 32
    c.auxiliary = False  # the head needs 32x32 inputs; digits are 8x8
    c.layers = 6
    c.init_channels = 16
    c.epochs = 20
    c.batch_size = 50
    c.lr = 0.05
    c.drop_path_prob = 0.1
    c.log_every = 10
    c.checkpoint_every = 0
  return c
