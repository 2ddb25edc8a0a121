"""The health report's cost: the architecture Hessian of the CNN supernet, dense and by Lanczos.

  python -m benchmarks.hessian [--preset small|paper] [--rows hvp,lanczos,dense] [--batch 64]

One row per computation, each compiled and timed in this process (``--steps`` timed calls after
one warm-up; the median), with XLA's planned memory:

- ``hvp``: one Hessian-vector product in alpha, forward over reverse (the unit of both others);
- ``lanczos``: ``--lanczos_steps`` Lanczos steps (the dominant eigenvalue);
- ``dense``: the n x n Hessian, one column per product (n = 224 at the paper's 8 ops).

The eigenvalue solves on the host (numpy, 224 x 224) take milliseconds and are not counted.
Results go to ``--out`` as JSON; README "Search health" quotes them.
"""

from __future__ import annotations

import argparse
import sys

from benchmarks import common

PRESETS = {'tiny': dict(layers=3, C=4), 'small': dict(layers=5, C=8),
           'paper': dict(layers=8, C=16)}
ROWS = ('hvp', 'lanczos', 'dense')


def measure(preset: str, rows, batch: int, steps: int, lanczos_steps: int,
            out_path: str | None = None) -> list[dict]:
  """The rows, each written to ``out_path`` as soon as it is measured (a dense row on a CPU
  may take longer than the patience of whoever runs it)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.flatten_util import ravel_pytree

  from darts_jax import health
  from darts_jax.supernet import SupernetConfig, init_alphas, init_supernet, make_loss

  p = PRESETS[preset]
  net = SupernetConfig(C=p['C'], layers=p['layers'], remat_cells=preset == 'paper')
  variables = init_supernet(jax.random.PRNGKey(0), net)
  alphas = init_alphas(jax.random.PRNGKey(1), net)
  rng = np.random.default_rng(0)
  data = (jnp.asarray(rng.normal(size=(batch, 32, 32, 3)), jnp.float32),
          jnp.asarray(rng.integers(0, 10, batch), jnp.int32))
  loss_fn = make_loss(net, train=True)  # RobustDARTS: training-mode BatchNorm
  n = ravel_pytree(alphas)[0].shape[0]

  def bound(weights, stats, batch_):
    return lambda a: loss_fn(weights, a, stats, batch_)[0]

  programs = {
      'hvp': lambda w, a, st, b, v: health.architecture_hvp(bound(w, st, b), a)[1](v),
      'lanczos': lambda w, a, st, b, v: health.architecture_lanczos(
          bound(w, st, b), a, lanczos_steps, jax.random.PRNGKey(3), 1e-3),
      'dense': lambda w, a, st, b, v: health.architecture_hessian(bound(w, st, b), a, 1e-3,
                                                                  chunk=1)}
  out = []
  for row in rows:
    args = (variables.weights, alphas, variables.batch_stats, data, jnp.ones((n,), jnp.float32))
    result, value = common.time_step(jax.jit(programs[row]), args, steps, lambda o, a: a)
    extra = {}
    if row == 'lanczos':
      extra['dominant_eigenvalue'] = float(health.ritz_values(jax.device_get(value))[-1])
    if row == 'dense':
      extra['dominant_eigenvalue'] = float(health.dense_eigenvalues(value)[-1])
    out.append({'preset': preset, **p, 'batch': batch, 'row': row, 'n': n,
                'lanczos_steps': lanczos_steps if row == 'lanczos' else None, **result, **extra})
    print(f"{preset:6s} {row:8s} n={n} compile {result['compile_s']:7.1f} s  "
          f"{result['step_median_s']:9.4f} s  step {result.get('step_memory_gb', float('nan')):.2f}"
          f" GB {extra}", flush=True)
    if out_path:
      common.write_json(out_path, {'preset': preset, 'rows': out})
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--preset', choices=list(PRESETS), default='small')
  parser.add_argument('--rows', default='hvp,lanczos,dense')
  parser.add_argument('--batch', type=int, default=64, help='RobustDARTS: 64 images')
  parser.add_argument('--steps', type=int, default=3, help='timed calls after one warm-up')
  parser.add_argument('--lanczos_steps', type=int, default=20)
  parser.add_argument('--out', default=None, help='write the rows as JSON here')
  args = parser.parse_args(argv)
  rows = [r for r in args.rows.split(',') if r]
  bad = [r for r in rows if r not in ROWS]
  if bad or args.steps < 1 or args.batch < 1:
    print(f'error: rows {bad} unknown (allowed: {", ".join(ROWS)}), or --steps / --batch < 1',
          file=sys.stderr)
    return 2
  measure(args.preset, rows, args.batch, args.steps, args.lanczos_steps, args.out)
  return 0


if __name__ == '__main__':
  sys.exit(main())
