"""Configuration of ``python -m experiments.cifar_train`` (and ``experiments.cifar_eval``).

Pick a preset after the file name and override any key on the command line:

  python -m experiments.cifar_train --config=experiments/configs/train.py:tiny \
      --config.genotype=DARTS_V1 --workdir=/tmp/train_tiny

Presets: ``paper`` (the default: the paper's CIFAR-10 evaluation, 600 epochs of the 20-cell,
C=36 network), ``tiny`` (a CPU smoke test on CIFAR-10: 3 cells, C=4, 64 images, 2 epochs) and
``demo`` (the demo search's genotype trained on scikit-learn's bundled digits: real data, no
download, a few minutes on 2 CPU cores).
"""

import ml_collections

from darts_jax.train import TrainHParams
from experiments.configs.scale_out import add_scale_out_keys

PRESETS = ('paper', 'tiny', 'demo')


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
  c.dataset = 'cifar10'
  c.data_dir = ''  # '' -> $DARTS_JAX_DATA_DIR or ~/.cache/darts_jax
  c.download = True
  c.max_examples = 0  # use only the first N training images (0: all)
  c.max_test_examples = 0  # evaluate only the first N test images (0: all)
  c.crop_padding = 4
  c.flip = True
  c.cutout_length = 16  # 0: no cutout
  c.seed = 0
  c.dtype = 'float32'

  add_scale_out_keys(c, base_batch=96)  # devices, hosts, BN semantics, bf16, lr scaling

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
  c.grad_clip = paper.grad_clip

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
