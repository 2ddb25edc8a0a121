"""Test a network trained on ImageNet: top-1 and top-5 on the validation folder's centre crops
(the 224 centre of the 256 resize), from a run's best or last checkpoint, or from the original's
released weights converted to ``.npz``.

  python -m experiments.imagenet_eval --workdir=runs/imagenet [--checkpoint=last]
  python -m experiments.imagenet_eval --weights=imagenet_model.npz --config.data_dir=DIR

With ``--workdir`` the network and data are those of the run; ``--config.data_dir``, the
devices and ``compute_dtype`` may change (as ``experiments.cifar_eval``).
"""

import os
import sys

from experiments import cifar_eval, cli

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs',
                              'imagenet.py')


def run(config: dict, workdir: str | None, extra: dict) -> None:
  from experiments.configs.imagenet import get_config
  cifar_eval.run(config, workdir, extra, get_config)


if __name__ == '__main__':
  sys.exit(cli.main(run, DEFAULT_CONFIG, extra=cifar_eval.eval_flags, workdir_required=False))
