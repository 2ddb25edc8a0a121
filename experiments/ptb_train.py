"""Training a recurrent cell (Liu et al., 2019, section 3.2: DARTS_V2 on Penn Treebank, test
perplexity 55.7; on WikiText-2 with --config.dataset=wikitext2), or offline on Python's own help
text.

  python -m experiments.ptb_train --workdir=runs/ptb_train            # the paper's training
  python -m experiments.ptb_train --config=experiments/configs/ptb_train.py:demo \
      --config.genotype=/tmp/ptb_demo/genotype.txt --workdir=/tmp/ptb_train_demo

The best evaluated weights (averaged once NT-ASGD is on) are kept in best_weights.npz; at the end
the test split is evaluated with them at batch 1 (results.json). Rerunning a command on the same
--workdir resumes it.
"""

import os
import sys

from experiments import cli

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs',
                              'ptb_train.py')


def run(config: dict, workdir: str) -> None:
  from darts_jax.recurrent_train_loop import run_recurrent_training
  from darts_jax.run_loop import NonFiniteError
  try:
    run_recurrent_training(config, workdir)
  except NonFiniteError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  sys.exit(cli.main(run, DEFAULT_CONFIG))
