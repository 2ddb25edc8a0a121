"""Time one training step of a derived network (the evaluation network of ``train.py``).

  python -m benchmarks.train_step [--preset tiny|small|paper] [--genotype DARTS_V2]
                                  [--steps 10] [--out results.json]

The step is :func:`darts_jax.train.train_step`: forward with drop path and the auxiliary head,
``CE + 0.4 CE_aux``, clip 5, SGD with momentum and weight decay. Presets: ``paper`` (C=36,
20 cells, batch 96: the paper's CIFAR-10 evaluation), ``small`` (C=16, 8 cells, batch 32),
``tiny`` (C=8, 5 cells, batch 8, for tests). Reported as in ``benchmarks.search_step``, plus the
parameter count (auxiliary head included).
"""

from __future__ import annotations

import argparse
import json
import sys

from benchmarks import common

PRESETS = {'tiny': dict(layers=5, C=8, batch=8), 'small': dict(layers=8, C=16, batch=32),
           'paper': dict(layers=20, C=36, batch=96)}


def measure(preset: str, genotype: str, steps: int, depthwise_impl: str = 'auto',
            compute_dtype: str = 'float32') -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from darts_jax import hypergradient as hg
  from darts_jax import train as T
  from darts_jax.networks import NetworkCIFAR
  from darts_jax.ops.init import num_params
  from darts_jax.parallel import make_mesh

  p = PRESETS[preset]
  model = NetworkCIFAR(p['C'], 10, p['layers'], True, genotype, depthwise_impl=depthwise_impl)
  # mid-training drop path (epoch 300 of 600), so that the timed step draws its masks
  hp = T.TrainHParams(steps_per_epoch=1)
  state = T.init_train_state(hp, model, jax.random.PRNGKey(0))
  state = state._replace(step=jnp.asarray(300, jnp.int32))
  rng = np.random.default_rng(0)
  batch = (jnp.asarray(rng.normal(size=(p['batch'], 32, 32, 3)), jnp.float32),
           jnp.asarray(rng.integers(0, 10, p['batch']), jnp.int32))
  loss = T.make_train_loss(model, hp.auxiliary_weight,
                           None if compute_dtype == 'float32' else compute_dtype)
  jitted = T.jit_train_step(hp, model, make_mesh(1), loss=loss)
  result, out = common.time_step(jitted, (state, batch), steps,
                                 lambda out, args: (out[0], args[1]))
  if out is None:  # compiled only
    return result
  state = out[0]
  return {'preset': preset, **p, 'row': 'train_step', 'genotype': genotype,
          'depthwise_impl': depthwise_impl, 'compute_dtype': compute_dtype,
          'params': num_params(state.weights), **result,
          'finite': bool(np.isfinite(float(hg.tree_norm(state.weights))))}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m benchmarks.train_step',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--preset', choices=list(PRESETS), default='small')
  parser.add_argument('--genotype', default='DARTS_V2', help='a published name or genotype string')
  parser.add_argument('--out', help='write the row as JSON here')
  common.add_run_flags(parser, 'seconds allowed, compile included')
  args = parser.parse_args(argv)
  if common.steps_error(args.steps) and not args.one:  # a --one child of --cache_check: 0
    print(common.steps_error(args.steps), file=sys.stderr)
    return 2
  from darts_jax.genotypes import parse_genotype
  try:
    parse_genotype(args.genotype)
  except ValueError as e:
    print(f'error: --genotype: {e}', file=sys.stderr)
    return 2
  if args.one:
    common.use_compile_cache(args.compile_cache)
    print(json.dumps(measure(args.preset, args.genotype, args.steps, args.depthwise_impl,
                             args.compute_dtype)))
    return 0
  print(common.header(f'{args.preset}: row'), flush=True)
  row, why = common.run_row('benchmarks.train_step',
                            ['--preset', args.preset, '--genotype', args.genotype,
                             '--depthwise_impl', args.depthwise_impl, '--compute_dtype',
                             args.compute_dtype], args)
  if row is None:
    print(f'{"train_step":22} {why}', flush=True)
    common.write_json(args.out, {'preset': args.preset, 'rows': [],
                                 'failures': {'train_step': why}})
    return 1
  print(common.row_line('train_step', row), flush=True)
  print(f'parameters: {row["params"]:,} (auxiliary head included)')
  common.write_json(args.out, {'preset': args.preset, **PRESETS[args.preset], 'rows': [row],
                               'failures': {}})
  return 0


if __name__ == '__main__':
  sys.exit(main())
