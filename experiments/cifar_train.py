"""Train a searched (or published) architecture from scratch and test it: the original's
``train.py`` (Liu et al., 2019, section 3.2: 600 epochs, cutout, drop path, auxiliary head).

  python -m experiments.cifar_train --workdir=runs/train                  # DARTS_V2, the paper's
  python -m experiments.cifar_train --config.genotype=runs/search --workdir=runs/train_mine
  python -m experiments.cifar_train --config=experiments/configs/train.py:demo --workdir=/tmp/t

``--config.genotype`` takes a published name (DARTS_V1, DARTS_V2), the original's string form,
genotype JSON, or the path of a search workdir or its genotype.json. Rerunning a command on the
same --workdir resumes it from its last checkpoint.
"""

import os
import sys

from experiments import cli

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs', 'train.py')


def run(config: dict, workdir: str) -> None:
  from darts_jax.run_loop import NonFiniteError
  from darts_jax.train_loop import run_train
  try:
    run_train(config, workdir)
  except NonFiniteError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  sys.exit(cli.main(run, DEFAULT_CONFIG))
