"""The paper's Fig. 2: DARTS's alternating scheme on a toy bilevel problem, for several xi.

  python -m experiments.toy_bilevel [--out DIR] [--xi 0,0.3,0.5,0.7] [--steps 2000]

Writes DIR/toy_bilevel.png (trajectories over the contours of L_val, the feasible line
w = alpha and the optimum (1, 1)) and DIR/endpoints.json ({"<xi>": [alpha, w]}), and prints the
end points beside the analytic fixed point w = alpha = 2 / (1 + 2 xi). Plotting needs
matplotlib (pip install -e '.[viz]').
"""

import argparse
import json
import os
import sys

import numpy as np

from darts_jax import compile_cache
from darts_jax.toy import fixed_point, run_toy
from experiments import cli


def plot(trajectories, path):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  a, w = np.meshgrid(np.linspace(-0.5, 3, 200), np.linspace(-2.5, 3, 200))
  fig, ax = plt.subplots(figsize=(6, 5))
  cs = ax.contour(a, w, a * w - 2 * a + 1, levels=20, cmap='Greys', linewidths=0.7)
  ax.clabel(cs, fontsize=6)
  ax.plot([-0.5, 3], [-0.5, 3], 'k--', lw=1, label='w = alpha (inner optimum)')
  ax.plot([1], [1], 'r*', ms=14, label='optimum (1, 1)')
  for xi, t in trajectories.items():
    ax.plot(t.alpha, t.w, lw=1.5, label=f'xi = {xi:g}' + (' (first order)' if xi == 0 else ''))
  ax.set_xlabel('alpha')
  ax.set_ylabel('w')
  ax.set_title('L_val = alpha w - 2 alpha + 1,  L_train = w^2 - 2 alpha w + alpha^2', fontsize=9)
  ax.legend(fontsize=7, loc='lower right')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m experiments.toy_bilevel')
  parser.add_argument('--out', default='.', help='folder for toy_bilevel.png and endpoints.json')
  parser.add_argument('--xi', default='0,0.3,0.5,0.7', help='comma-separated xi values >= 0')
  parser.add_argument('--steps', type=int, default=2000)
  cli.add_compile_cache_flag(parser)
  args = parser.parse_args(argv)
  compile_cache.configure(not args.no_compile_cache)
  try:
    xis = [float(x) for x in args.xi.split(',')]
  except ValueError:
    print(f'error: --xi={args.xi!r} must be comma-separated numbers', file=sys.stderr)
    return 2
  if any(x < 0 for x in xis) or args.steps < 1:
    print('error: every xi must be >= 0 and --steps >= 1', file=sys.stderr)
    return 2
  trajectories = {xi: run_toy(xi, args.steps) for xi in xis}
  endpoints = {f'{xi:g}': [float(t.alpha[-1]), float(t.w[-1])] for xi, t in trajectories.items()}
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'endpoints.json'), 'w') as f:
    json.dump(endpoints, f, indent=2)
  print(f'{"xi":>5} {"alpha":>9} {"w":>9}   analytic 2/(1+2xi)')
  for xi, (a, w) in zip(xis, endpoints.values()):
    print(f'{xi:>5g} {a:>9.5f} {w:>9.5f}   {fixed_point(xi):.5f}')
  try:
    plot(trajectories, os.path.join(args.out, 'toy_bilevel.png'))
  except ImportError:
    print('matplotlib is not installed: no PNG written (pip install matplotlib)', file=sys.stderr)
  return 0


if __name__ == '__main__':
  sys.exit(main())
