"""The recurrent cell search (Liu et al., 2019, section 3.1.2) on Penn Treebank, or offline on
Python's own help text.

  python -m experiments.ptb_search --workdir=runs/ptb_search            # the paper's search
  python -m experiments.ptb_search --config=experiments/configs/ptb_search.py:demo \
      --workdir=/tmp/ptb_demo

Each epoch writes genotype.txt, genotype.json and alphas.npz in the workdir (plots/ holds the
cell's graph and the perplexity curve). Rerunning a command on the same --workdir resumes it.
"""

import os
import sys

from experiments import cli

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs',
                              'ptb_search.py')


def run(config: dict, workdir: str) -> None:
  from darts_jax.recurrent_search_loop import run_recurrent_search
  from darts_jax.run_loop import NonFiniteError
  try:
    run_recurrent_search(config, workdir)
  except NonFiniteError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  sys.exit(cli.main(run, DEFAULT_CONFIG))
