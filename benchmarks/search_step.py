"""Time one full DARTS search step (alpha step by each estimator, then the weight step).

  python -m benchmarks.search_step [--preset tiny|small|paper] [--estimators first_order,exact]
                                   [--method darts|pc_darts|gdas|...] [--steps 10]
                                   [--out results.json] [--timeout SECONDS]

Rows: each estimator's full search step (alpha step, then weight step), and ``weight_step``,
the plain weight step alone (forward, backward, clip, SGD). Each row runs in its own process,
so that peak memory (device memory statistics on GPU, peak RSS on CPU) belongs to that step
alone. Reported per row: compile seconds (trace, lower, XLA compile), median / min / max seconds
per step over ``--steps`` device-synchronised steps after one warm-up step, peak memory, XLA's
FLOP count per step and the achieved FLOP/s. Then the ratios that matter: exact / first order,
exact / finite difference (step time) and each row's FLOPs / first order's.

Presets: ``small`` (5 cells, C=8, batch 16) and ``paper`` (8 cells, C=16, batch 64) are the
configurations of ``shared/BASELINE.md``; ``tiny`` (3 cells, C=4, batch 8) is for tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from benchmarks import common

PRESETS = {'tiny': dict(layers=3, C=4, batch=8), 'small': dict(layers=5, C=8, batch=16),
           'paper': dict(layers=8, C=16, batch=64)}
ROWS = ('first_order', 'exact', 'finite_difference', 'unrolled', 'implicit', 'weight_step')


def measure(preset: str, row: str, steps: int, depthwise_impl: str = 'auto',
            compute_dtype: str = 'float32', remat_cells: bool = False,
            loop_gradients: bool = True, method: str = 'darts') -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from darts_jax import gradient_loop, methods
  from darts_jax import hypergradient as hg
  from darts_jax import search as S
  from darts_jax.parallel import make_mesh
  from darts_jax.spaces import cnn
  from darts_jax.supernet import SupernetConfig, init_supernet
  from experiments.configs.search import get_config

  p = PRESETS[preset]
  # the supernet the method's search builds (PC-DARTS: K = 4 and the edge betas; DARTS-: the
  # auxiliary skip), with the method's settings at the search config's defaults
  m = methods.get(method)
  options = m.configure(get_config('paper').to_dict())
  net = SupernetConfig(C=p['C'], layers=p['layers'], depthwise_impl=depthwise_impl,
                       remat_cells=remat_cells, partial_channels=options['partial_channels'],
                       edge_normalization=options['edge_normalization'],
                       auxiliary_skip=options.get('auxiliary_skip', False))
  space = m.transform(cnn.make_space(net), options)
  hp = S.SearchHParams(estimator='first_order' if row == 'weight_step' else row,
                       unrolled_steps=2, loop_gradients=loop_gradients)
  variables = init_supernet(jax.random.PRNGKey(0), net)
  state = S.init_search_state(hp, variables.weights,
                              space.init_architecture(jax.random.PRNGKey(1), jnp.float32),
                              variables.batch_stats, jax.random.PRNGKey(2))
  rng = np.random.default_rng(0)
  batch = lambda: (jnp.asarray(rng.normal(size=(p['batch'], 32, 32, 3)), jnp.float32),
                   jnp.asarray(rng.integers(0, 10, p['batch']), jnp.int32))
  train, val = batch(), batch()
  dtype = None if compute_dtype == 'float32' else compute_dtype
  loss = S.search_loss(space, dtype)  # a method's own: per-step draws
  if row == 'weight_step':
    def weight_only(state, train):
      losses = S.losses_at(hp, loss, state)
      weights, w_opt_state, *_ = S.weight_step(hp, losses.for_weights,
                                               state.weights, state.alphas, state.batch_stats,
                                               state.w_opt_state, train)
      return state._replace(weights=weights, w_opt_state=w_opt_state)

    jitted = jax.jit(weight_only, donate_argnums=0)
    result, out = common.time_step(jitted, (state, train), steps,
                                   lambda out, args: (out, args[1]))
  else:
    jitted = S.jit_search_step(hp, loss, make_mesh(1))
    flops_of = None
    if loop_gradients and row in gradient_loop.ESTIMATORS:
      # XLA's cost analysis counts a loop body once: count the same step written out instead
      # (lowered only, never compiled)
      written = S.jit_search_step(dataclasses.replace(hp, loop_gradients=False), loss,
                                  make_mesh(1))
      shapes = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                      (state, train, val))
      flops_of = lambda: common.flops(written.lower(*shapes).cost_analysis())  # noqa: E731
    result, out = common.time_step(jitted, (state, train, val), steps,
                                   lambda out, args: (out[0], *args[1:]), flops_of)
  if out is None:  # compiled only
    return result
  state = out if row == 'weight_step' else out[0]
  finite = bool(np.isfinite(float(hg.tree_norm(state.weights))))
  return {'preset': preset, **p, 'row': row, 'method': method, 'depthwise_impl': depthwise_impl,
          'compute_dtype': compute_dtype, 'remat_cells': remat_cells,
          'loop_gradients': loop_gradients, **result,
          'finite': finite}


def ratios(rows: list[dict]) -> dict[str, float]:
  step = {r['row']: r['step_median_s'] for r in rows}
  flop = {r['row']: r['gflop_per_step'] for r in rows}
  out = {}
  if 'exact' in step and 'first_order' in step:
    out['time: exact / first_order'] = round(step['exact'] / step['first_order'], 2)
  if 'exact' in step and 'finite_difference' in step:
    out['time: exact / finite_difference'] = round(step['exact'] / step['finite_difference'], 2)
  if flop.get('first_order'):
    for name, value in flop.items():
      if name != 'first_order':
        out[f'FLOPs: {name} / first_order'] = round(value / flop['first_order'], 2)
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m benchmarks.search_step',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--preset', choices=list(PRESETS), default='small')
  parser.add_argument('--estimators', default=','.join(ROWS),
                      help=f'comma-separated rows among {", ".join(ROWS)}')
  parser.add_argument('--out', help='write the rows and ratios as JSON here')
  parser.add_argument('--remat_cells', action='store_true',
                      help="recompute each cell's forward in the backward pass")
  parser.add_argument('--written_out', action='store_true',
                      help='each loss derivative its own copy in the program '
                           '(loop_gradients=False), as before darts_jax.gradient_loop')
  parser.add_argument('--method', default='darts',
                      help='the member of the DARTS family (darts_jax.methods): darts, pc_darts, '
                      'gdas, drnas, sdarts_rs, sdarts_adv, darts_minus')
  common.add_run_flags(parser, 'seconds allowed per row, compile included')
  args = parser.parse_args(argv)
  from darts_jax import methods
  if args.method not in methods.METHODS:
    print(f'error: --method={args.method!r} is unknown; allowed: {", ".join(methods.METHODS)}',
          file=sys.stderr)
    return 2
  names = [n for n in args.estimators.split(',') if n]
  bad = [n for n in names if n not in ROWS]
  if bad or not names:
    what = repr(bad[0]) if bad else 'it is empty'
    print(f'error: --estimators={args.estimators!r}: {what} is not a row; '
          f'allowed: {", ".join(ROWS)}', file=sys.stderr)
    return 2
  if common.steps_error(args.steps) and not args.one:
    print(common.steps_error(args.steps), file=sys.stderr)
    return 2
  if args.one:
    import json
    common.use_compile_cache(args.compile_cache)
    print(json.dumps(measure(args.preset, names[0], args.steps, args.depthwise_impl,
                             args.compute_dtype, args.remat_cells, not args.written_out,
                             args.method)))
    return 0
  rows, failures = [], {}
  print(common.header(f'{args.preset}: row'), flush=True)
  for name in names:
    row, why = common.run_row('benchmarks.search_step',
                              ['--preset', args.preset, '--estimators', name, '--depthwise_impl',
                               args.depthwise_impl, '--compute_dtype', args.compute_dtype,
                               '--method', args.method]
                              + ['--remat_cells'] * args.remat_cells
                              + ['--written_out'] * args.written_out, args)
    if row is None:
      failures[name] = why
      print(f'{name:22} {why}', flush=True)
      continue
    rows.append(row)
    print(common.row_line(name, row), flush=True)
  found = ratios(rows)
  for key, value in found.items():
    print(f'{key}: {value}')
  common.write_json(args.out, {'preset': args.preset, **PRESETS[args.preset],
                               'method': args.method,
                               'remat_cells': args.remat_cells,
                               'loop_gradients': not args.written_out, 'rows': rows,
                               'ratios': found, 'failures': failures})
  return 0 if rows else 1


if __name__ == '__main__':
  sys.exit(main())
