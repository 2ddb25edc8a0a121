"""The DARTS search (Liu et al., 2019, Algorithm 1) on CIFAR-10, or on the offline digits demo.

  python -m experiments.cifar_search --workdir=runs/search              # the paper's search
  python -m experiments.cifar_search --config=experiments/configs/search.py:demo --workdir=/tmp/demo
  python -m experiments.cifar_search --config=experiments/configs/search.py:tiny \
      --config.estimator=first_order --workdir=/tmp/tiny

Rerunning a command on the same --workdir resumes it from its last checkpoint.
"""

import os
import sys

from experiments import cli

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs', 'search.py')


def run(config: dict, workdir: str) -> None:
  from darts_jax.run_loop import NonFiniteError
  from darts_jax.search_loop import run_search
  try:
    run_search(config, workdir)
  except NonFiniteError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  sys.exit(cli.main(run, DEFAULT_CONFIG))
