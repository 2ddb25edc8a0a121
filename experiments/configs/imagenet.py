"""Configuration of ``python -m experiments.imagenet_train`` (and ``experiments.imagenet_eval``):
the DARTS cell transferred to ImageNet in the mobile setting (Liu et al., 2019, section 3.3).

Presets: ``paper`` (the default: the original's ``train_imagenet.py``: NetworkImageNet C=48, 14
cells, auxiliary head 0.4, batch 128, SGD 0.1 momentum 0.9, weight decay 3e-5, 250 epochs, lr
x 0.97 per epoch, label smoothing 0.1, clip 5; random-resized crop 224, flip, colour jitter
(0.4, 0.4, 0.4, 0.2); evaluation on the centre 224 crop of the 256 resize) and ``tiny`` (a CPU
smoke run on a small folder: 32x32 crops, 4 cells, C=8, no auxiliary head, 2 epochs).

``data_dir`` is the folder ``DIR/train/<class>/*.JPEG`` and ``DIR/val/<class>/*.JPEG`` (README,
"ImageNet"). The keys are those of ``experiments/configs/train.py``.
"""

import ml_collections

from experiments.configs import train

PRESETS = ('paper', 'tiny')


def get_config(preset: str = 'paper') -> ml_collections.ConfigDict:
  preset = preset or 'paper'
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r}; allowed: {", ".join(PRESETS)}')
  c = train.get_config('paper')
  c.preset = preset
  c.dataset = 'imagenet'
  c.data_source = 'folder'
  c.image_size = 224
  c.resize_size = 256
  c.augmentation = 'imagenet'  # random-resized crop and flip as decoded, colour jitter on device
  c.cutout_length = 0
  c.loader_workers = 8
  c.loader_threads = 8
  c.init_channels = 48
  c.layers = 14
  c.auxiliary = True
  c.auxiliary_weight = 0.4
  c.drop_path_prob = 0.0
  c.epochs = 250
  c.batch_size = 128
  c.lr_base_batch = 128
  c.lr = 0.1
  c.lr_schedule = 'exponential'
  c.lr_gamma = 0.97
  c.momentum = 0.9
  c.weight_decay = 3e-5
  c.grad_clip = 5.0
  c.label_smoothing = 0.1
  c.log_every = 100
  c.checkpoint_every = 2000
  if preset == 'tiny':
    c.image_size = 32
    c.resize_size = 36
    c.init_channels = 8
    c.layers = 4
    c.auxiliary = False  # the head needs the 7x7 map of a 224x224 image
    c.epochs = 2
    c.batch_size = 8
    c.loader_workers = 0
    c.loader_threads = 2
    c.log_every = 2
    c.checkpoint_every = 2
  return c
