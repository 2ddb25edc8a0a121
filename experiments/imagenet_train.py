"""Train a searched (or published) cell on ImageNet in the mobile setting, and test it: the
original's ``train_imagenet.py`` (Liu et al., 2019, section 3.3: 26.7 % top-1 error, 4.7M
parameters, under 600M multiply-adds).

  python -m experiments.imagenet_train --config.data_dir=/data/imagenet --workdir=runs/imagenet
  python -m experiments.imagenet_train --config=experiments/configs/imagenet.py:tiny \
      --config.data_dir=DIR --workdir=/tmp/imagenet_tiny

``DIR`` holds ``train/<class>/*.JPEG`` and ``val/<class>/*.JPEG``. ``--config.genotype`` takes
what ``experiments.cifar_train`` takes. Rerunning a command on the same --workdir resumes it,
the loader included, from its last checkpoint.
"""

import os
import sys

from experiments import cifar_train, cli

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs',
                              'imagenet.py')

if __name__ == '__main__':
  sys.exit(cli.main(cifar_train.run, DEFAULT_CONFIG))
