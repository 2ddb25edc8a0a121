"""Time one full DARTS search step (alpha step by each estimator, then the weight step).

  python -m benchmarks.search_step [--preset tiny|small|paper] [--estimators first_order,exact]
                                   [--steps 10] [--out results.json]

Each (preset, estimator) runs in its own process, so that peak memory (device memory statistics
on GPU, peak RSS on CPU) belongs to that step alone. Reported per estimator: trace+lower and
compile seconds, median / min / max seconds per step over ``--steps`` device-synchronised steps
after one warm-up step, peak memory, XLA's FLOP count per step and the achieved FLOP/s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

PRESETS = {'tiny': dict(layers=3, C=4, batch=16), 'small': dict(layers=5, C=8, batch=16),
           'paper': dict(layers=8, C=16, batch=64)}
ESTIMATORS = ('first_order', 'exact', 'finite_difference', 'unrolled', 'implicit')


def _peak_memory_gb(jax) -> tuple[float, str]:
  stats = jax.devices()[0].memory_stats() if jax.default_backend() != 'cpu' else None
  if stats and 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2**30, 'device peak'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 'peak RSS'


def measure(preset: str, estimator: str, steps: int) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from darts_jax import search as S
  from darts_jax.supernet import SupernetConfig, init_alphas, init_supernet, make_loss

  p = PRESETS[preset]
  net = SupernetConfig(C=p['C'], layers=p['layers'])
  hp = S.SearchHParams(estimator=estimator, unrolled_steps=2)
  variables = init_supernet(jax.random.PRNGKey(0), net)
  state = S.init_search_state(hp, variables.weights, init_alphas(jax.random.PRNGKey(1), net),
                              variables.batch_stats, jax.random.PRNGKey(2))
  rng = np.random.default_rng(0)
  batch = lambda: (jnp.asarray(rng.normal(size=(p['batch'], 32, 32, 3)), jnp.float32),
                   jnp.asarray(rng.integers(0, 10, p['batch']), jnp.int32))
  train, val = batch(), batch()
  step = S.jit_search_step(hp, make_loss(net), S.make_mesh(1))
  t0 = time.perf_counter()
  lowered = step.lower(state, train, val)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get('flops', float('nan'))) if cost else float('nan')
  state, _ = compiled(state, train, val)
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    state, _ = compiled(state, train, val)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t)
  memory, memory_kind = _peak_memory_gb(jax)
  median = statistics.median(times)
  return {'preset': preset, **p, 'estimator': estimator, 'backend': jax.default_backend(),
          'device': jax.devices()[0].device_kind, 'jax': jax.__version__,
          'lower_s': round(t1 - t0, 2), 'compile_s': round(t2 - t1, 2),
          'step_median_s': round(median, 4), 'step_min_s': round(min(times), 4),
          'step_max_s': round(max(times), 4), 'steps': steps,
          'peak_memory_gb': round(memory, 3), 'memory_kind': memory_kind,
          'gflop_per_step': round(flops / 1e9, 2),
          'achieved_gflops': round(flops / 1e9 / median, 1),
          'finite': bool(int(state.nonfinite_step) < 0)}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m benchmarks.search_step')
  parser.add_argument('--preset', choices=list(PRESETS), default='small')
  parser.add_argument('--estimators', default='first_order,exact,finite_difference')
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--out', help='write the results as JSON here')
  parser.add_argument('--timeout', type=float, default=None,
                      help='seconds allowed per estimator (compile included)')
  parser.add_argument('--one', action='store_true', help=argparse.SUPPRESS)  # child process
  args = parser.parse_args(argv)
  estimators = args.estimators.split(',')
  bad = [e for e in estimators if e not in ESTIMATORS]
  if bad:
    print(f'error: estimator {bad[0]!r} is unknown; allowed: {", ".join(ESTIMATORS)}',
          file=sys.stderr)
    return 2
  if args.steps < 1:
    print(f'error: --steps={args.steps}: must be >= 1', file=sys.stderr)
    return 2
  if args.one:
    print(json.dumps(measure(args.preset, estimators[0], args.steps)))
    return 0
  rows = []
  print(f'{"preset":6} {"estimator":18} {"compile s":>10} {"s/step":>9} {"min":>8} {"max":>8} '
        f'{"memory GB":>10} {"GFLOP":>8} {"GFLOP/s":>8}', flush=True)
  for estimator in estimators:
    try:
      child = subprocess.run([sys.executable, '-m', 'benchmarks.search_step', '--one',
                              '--preset', args.preset, '--estimators', estimator,
                              '--steps', str(args.steps)], capture_output=True, text=True,
                             env=os.environ, timeout=args.timeout)
    except subprocess.TimeoutExpired:
      print(f'{args.preset:6} {estimator:18} did not finish in {args.timeout:g} s', flush=True)
      continue
    if child.returncode:
      # skip a native crash's stack frames: the line that names the failure comes before them
      lines = [l for l in child.stderr.splitlines()
               if l.strip() and not l.startswith(('    @', '***'))]
      print(f'{args.preset:6} {estimator:18} failed: {lines[-1] if lines else child.returncode}',
            flush=True)
      continue
    r = json.loads(child.stdout.strip().splitlines()[-1])
    rows.append(r)
    print(f'{r["preset"]:6} {estimator:18} {r["lower_s"] + r["compile_s"]:>10.1f} '
          f'{r["step_median_s"]:>9.4f} {r["step_min_s"]:>8.4f} {r["step_max_s"]:>8.4f} '
          f'{r["peak_memory_gb"]:>10.2f} {r["gflop_per_step"]:>8.1f} '
          f'{r["achieved_gflops"]:>8.1f}', flush=True)
  by = {r['estimator']: r['step_median_s'] for r in rows}
  ratios = {}
  if 'exact' in by and 'first_order' in by:
    ratios['exact / first_order'] = round(by['exact'] / by['first_order'], 2)
  if 'exact' in by and 'finite_difference' in by:
    ratios['exact / finite_difference'] = round(by['exact'] / by['finite_difference'], 2)
  for k, v in ratios.items():
    print(f'{k}: {v}')
  if args.out:
    with open(args.out, 'w') as f:
      json.dump({'rows': rows, 'ratios': ratios}, f, indent=2)
  return 0


if __name__ == '__main__':
  sys.exit(main())
