"""Checks darts_jax against a reference file of the original DARTS code's outputs.

  python -m experiments.verify_reference FILE.npz [--dtype float64|float32] [--out report.json]
      [--no_cross_checks]

Prints a JSON report (relative error per quantity, genotype matches, pass/fail) and exits 0
only when every quantity in the file was computed and passed, 1 otherwise, 2 on bad input.
"""

import argparse
import json
import sys

from darts_jax import compile_cache
from experiments import cli


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m experiments.verify_reference',
                                   description=__doc__.splitlines()[0])
  parser.add_argument('file', help='reference .npz (format: shared/reference/README.md)')
  parser.add_argument('--dtype', choices=['float64', 'float32'], default='float64',
                      help='float64: exact semantics (the default); float32: a backend\'s '
                           'lowering within round-off')
  parser.add_argument('--out', help='also write the JSON report to this path')
  parser.add_argument('--no_cross_checks', action='store_true',
                      help='leave out the checks of our exact hypergradient against jax.grad '
                           'through the whole virtual step (not quantities of the file; about '
                           'a third of the CNN file\'s compile time)')
  cli.add_compile_cache_flag(parser)
  args = parser.parse_args(argv)
  compile_cache.configure(not args.no_compile_cache)

  import jax
  jax.config.update('jax_enable_x64', args.dtype == 'float64')
  from darts_jax.reference import verify

  try:
    report = verify(args.file, args.dtype, cross_checks=not args.no_cross_checks)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  text = json.dumps(report, indent=2)
  print(text)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text + '\n')
  return 0 if report['ok'] else 1


if __name__ == '__main__':
  sys.exit(main())
