"""Perplexity of a trained recurrent network: a ``ptb_train`` run's best weights on the
validation and test splits of its corpus.

  python -m experiments.ptb_eval --workdir=runs/ptb_train
  python -m experiments.ptb_eval --workdir=runs/wt2_train --test_batch_size=10

The network, the corpus and the batch sizes are the run's own (its ``config.json``);
``--data_dir`` says where the corpus is when it has moved.
"""

import argparse
import sys

from experiments import cli


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True, help='a ptb_train run')
  parser.add_argument('--data_dir', default='', help="where the run's corpus is now")
  parser.add_argument('--eval_batch_size', type=int, default=0,
                      help="validation batch size (0: the run's, 10 in the paper)")
  parser.add_argument('--test_batch_size', type=int, default=0,
                      help="test batch size (0: the run's, 1 in the paper)")
  cli.add_compile_cache_flag(parser)
  args = parser.parse_args(argv)
  from darts_jax import compile_cache
  from darts_jax.data import DataError
  compile_cache.configure(not args.no_compile_cache)
  from darts_jax.recurrent_train_loop import evaluate_run
  sizes = {k: v for k, v in (('valid', args.eval_batch_size), ('test', args.test_batch_size))
           if v}
  for name, size in sizes.items():
    if size < 0:
      print(f'error: --{"eval" if name == "valid" else "test"}_batch_size={size}: must be >= 1',
            file=sys.stderr)
      return 2
  try:
    evaluate_run(args.workdir, args.data_dir or None, sizes)
  except (ValueError, DataError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
