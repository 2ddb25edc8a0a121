"""What the step benchmarks share: timing a jitted step, memory, FLOPs, one process per row."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

COLUMNS = (('compile s', 'compile_s', 10, '.1f'), ('s/step', 'step_median_s', 9, '.4f'),
           ('min', 'step_min_s', 8, '.4f'), ('max', 'step_max_s', 8, '.4f'),
           ('step GB', 'step_memory_gb', 8, '.2f'), ('compile GB', 'compile_peak_gb', 10, '.2f'),
           ('peak GB', 'peak_memory_gb', 8, '.2f'), ('GFLOP', 'gflop_per_step', 8, '.2f'),
           ('GFLOP/s', 'achieved_gflops', 8, '.1f'))


def peak_memory_gb() -> tuple[float, str]:
  """Device peak bytes in use on an accelerator, else the process's peak RSS."""
  import jax
  if jax.default_backend() != 'cpu':
    stats = jax.devices()[0].memory_stats() or {}
    if 'peak_bytes_in_use' in stats:
      return stats['peak_bytes_in_use'] / 2**30, 'device peak'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 'peak RSS'


def step_memory_bytes(compiled) -> dict:
  """The step's own memory as XLA planned it (``memory_analysis()``): arguments, outputs,
  temporaries, less the outputs that reuse donated arguments. Free of the compiler's own
  footprint, which peak RSS on a CPU includes."""
  m = compiled.memory_analysis()
  if m is None:
    return {}
  sizes = {k: getattr(m, f'{k}_size_in_bytes', 0) for k in ('argument', 'output', 'temp', 'alias')}
  total = sizes['argument'] + sizes['output'] + sizes['temp'] - sizes['alias']
  return {'step_memory_gb': round(total / 2**30, 3),
          **{f'{k}_gb': round(v / 2**30, 3) for k, v in sizes.items()}}


def flops(cost) -> float:
  """The FLOP count of an XLA cost analysis (a dict, or a list of one in some jax versions)."""
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', float('nan'))) if cost else float('nan')


def time_step(jitted, args: tuple, steps: int, advance: Callable[[Any, tuple], tuple],
              flops_of: Callable[[], float] | None = None) -> tuple[dict, Any]:
  """Lowers and compiles ``jitted`` for ``args``, runs one warm-up step, then times ``steps``
  device-synchronised steps; returns (the row, the last output). ``advance(output, args)`` gives
  the next call's arguments (the state is donated: each call takes the previous call's output).
  ``compile_s`` counts tracing, lowering and XLA compilation; ``lower_s`` the first two.
  FLOPs are XLA's count for the compiled step, or ``flops_of()`` (called after the timing)."""
  import jax
  t0 = time.perf_counter()
  lowered = jitted.lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  compile_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  from darts_jax.compile_cache import release_compiler_memory
  release_compiler_memory()  # as the runs do (run_loop.compile_ahead)
  step_memory = step_memory_bytes(compiled)
  step_flops = flops(compiled.cost_analysis())
  if steps == 0:  # compile only (the cached-compile child of run_row)
    return {'lower_s': round(t1 - t0, 2), 'compile_s': round(t2 - t0, 2)}, None
  out = compiled(*args)
  jax.block_until_ready(out)
  times = []
  for _ in range(steps):
    args = advance(out, args)
    t = time.perf_counter()
    out = compiled(*args)
    jax.block_until_ready(out)
    times.append(time.perf_counter() - t)
  memory, memory_kind = peak_memory_gb()
  median = statistics.median(times)
  if flops_of is not None:
    step_flops = flops_of()
  return {'backend': jax.default_backend(), 'device': jax.devices()[0].device_kind,
          'jax': jax.__version__, 'python': platform.python_version(),
          'lower_s': round(t1 - t0, 2), 'compile_s': round(t2 - t0, 2),
          'step_median_s': round(median, 4), 'step_min_s': round(min(times), 4),
          'step_max_s': round(max(times), 4), 'steps': steps,
          'peak_memory_gb': round(memory, 3), 'memory_kind': memory_kind,
          'compile_peak_gb': round(compile_peak, 3), **step_memory,
          'gflop_per_step': round(step_flops / 1e9, 3),
          'achieved_gflops': round(step_flops / 1e9 / median, 2)}, out


def add_run_flags(parser, timeout_help: str) -> None:
  """The flags both step benchmarks take: timed steps, depthwise lowering, compute dtype,
  timeout, and the
  hidden ``--one`` that makes a process measure one row (the parent runs one child per row)."""
  parser.add_argument('--steps', type=int, default=10, help='timed steps after one warm-up')
  parser.add_argument('--depthwise_impl', choices=['auto', 'taps', 'xla'], default='auto')
  parser.add_argument('--compute_dtype', choices=['float32', 'bfloat16'], default='float32',
                      help='bfloat16: mixed precision (float32 master weights, BN, loss)')
  parser.add_argument('--timeout', type=float, default=None, help=timeout_help)
  parser.add_argument('--cache_check', action='store_true',
                      help='after each row, compile it again in a new process from a fresh '
                           'persistent cache the row filled: the compile time of a repeated '
                           'or resumed run (column cached_compile_s)')
  parser.add_argument('--one', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--compile_cache', default=None, help=argparse.SUPPRESS)


def use_compile_cache(directory: str | None) -> None:
  """Rows measure a cold compile unless given a cache directory (``--cache_check``)."""
  from darts_jax import compile_cache
  compile_cache.configure(directory is not None, directory)


def run_row(module: str, args: list[str], flags) -> tuple[dict | None, str]:
  """One row in its own process; with ``--cache_check``, a second process then compiles the
  same step from the persistent cache the first one filled, and the row gets its times."""
  if not flags.cache_check:
    return run_child(module, [*args, '--steps', str(flags.steps)], flags.timeout)
  import tempfile
  with tempfile.TemporaryDirectory() as cache:
    row, why = run_child(module, [*args, '--steps', str(flags.steps), '--compile_cache', cache],
                         flags.timeout)
    if row is None:
      return row, why
    again, why = run_child(module, [*args, '--steps', '0', '--compile_cache', cache],
                           flags.timeout)
  if again is None:  # the row stands; the column says why it has no cached times
    row.update(cached_error=why)
  else:
    row.update(cached_compile_s=again['compile_s'], cached_lower_s=again['lower_s'])
  return row, ''


def steps_error(steps: int) -> str | None:
  return f'error: --steps={steps}: must be >= 1' if steps < 1 else None


def header(first: str) -> str:
  return f'{first:22}' + ''.join(f' {name:>{width}}' for name, _, width, _ in COLUMNS)


def row_line(first: str, row: dict) -> str:
  return f'{first:22}' + ''.join(f' {row.get(key, float("nan")):>{width}{fmt}}'
                                 for _, key, width, fmt in COLUMNS)


def run_child(module: str, args: list[str], timeout: float | None) -> tuple[dict | None, str]:
  """Runs ``python -m module --one ARGS`` and returns (its JSON row, '') or (None, why)."""
  try:
    child = subprocess.run([sys.executable, '-m', module, '--one', *args], capture_output=True,
                           text=True, env=os.environ, timeout=timeout)
  except subprocess.TimeoutExpired:
    return None, f'did not finish in {timeout:g} s'
  if child.returncode:
    # skip a native crash's stack frames: the line that names the failure comes before them
    lines = [l for l in child.stderr.splitlines()
             if l.strip() and not l.startswith(('    @', '***'))]
    return None, f'failed: {lines[-1] if lines else child.returncode}'
  return json.loads(child.stdout.strip().splitlines()[-1]), ''


def write_json(path: str | None, payload: dict) -> None:
  if path:
    with open(path, 'w') as f:
      json.dump(payload, f, indent=2)
      f.write('\n')
