"""Compile time of the supernet's loss and of its gradient (weights and alphas).

  python -m benchmarks.compile_time [--preset small|paper|all] [--depthwise_impl auto|taps|xla]

Prints a table and a JSON line per preset: trace+lower and XLA compile seconds for the loss
(forward) and for value_and_grad(loss) w.r.t. (weights, alphas), plus the gradient's median run
time over a few calls and the peak RSS of the process.
"""

import argparse
import json
import resource
import statistics
import time

import jax
import jax.numpy as jnp

from darts_jax.ops import kernels
from darts_jax.supernet import SupernetConfig, init_alphas, init_supernet, make_loss

PRESETS = {'small': dict(layers=5, C=8, batch=16), 'paper': dict(layers=8, C=16, batch=64)}


def _compile(fn, *args):
  t0 = time.perf_counter()
  lowered = jax.jit(fn).lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  return compiled, t1 - t0, t2 - t1


def measure(preset: str, impl: str, runs: int = 3) -> dict:
  p = PRESETS[preset]
  config = SupernetConfig(C=p['C'], layers=p['layers'], depthwise_impl=impl)
  variables = init_supernet(jax.random.PRNGKey(0), config)
  alphas = init_alphas(jax.random.PRNGKey(1), config)
  batch = (jax.random.normal(jax.random.PRNGKey(2), (p['batch'], 32, 32, 3)),
           jnp.arange(p['batch']) % 10)
  loss = make_loss(config)
  args = (variables.weights, alphas, variables.batch_stats, batch)
  _, fwd_lower, fwd_compile = _compile(loss, *args)
  grad_fn, grad_lower, grad_compile = _compile(
      jax.value_and_grad(loss, argnums=(0, 1), has_aux=True), *args)
  jax.block_until_ready(grad_fn(*args))
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    jax.block_until_ready(grad_fn(*args))
    times.append(time.perf_counter() - t0)
  return {'preset': preset, **p, 'depthwise_impl': impl, 'backend': jax.default_backend(),
          'jax': jax.__version__, 'loss_lower_s': round(fwd_lower, 2),
          'loss_compile_s': round(fwd_compile, 2), 'grad_lower_s': round(grad_lower, 2),
          'grad_compile_s': round(grad_compile, 2),
          'grad_step_median_s': round(statistics.median(times), 3),
          'peak_rss_gb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m benchmarks.compile_time')
  parser.add_argument('--preset', choices=[*PRESETS, 'all'], default='all')
  parser.add_argument('--depthwise_impl', choices=kernels.DEPTHWISE_IMPLS, default='auto')
  args = parser.parse_args(argv)
  presets = list(PRESETS) if args.preset == 'all' else [args.preset]
  print(f'{"preset":8} {"loss lower+compile":>20} {"grad lower+compile":>20} {"grad step":>10}')
  for preset in presets:
    r = measure(preset, args.depthwise_impl)
    print(f'{preset:8} {r["loss_lower_s"]:>9.1f} + {r["loss_compile_s"]:>6.1f} s '
          f'{r["grad_lower_s"]:>9.1f} + {r["grad_compile_s"]:>6.1f} s '
          f'{r["grad_step_median_s"]:>8.2f} s', flush=True)
    print(json.dumps(r), flush=True)


if __name__ == '__main__':
  main()
