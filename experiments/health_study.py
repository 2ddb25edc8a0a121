"""The health study: the architecture Hessian's dominant eigenvalue over a search, by estimator.

  python -m experiments.health_study --workdir=runs/health_study \
      [--config=experiments/configs/search.py:demo]
      [--estimators=first_order,exact,finite_difference] [--config.epochs=10 ...]

Runs the same search once per estimator (``WORKDIR/ESTIMATOR``, each resumable as any search)
with the health report every epoch (``hessian_every=1`` unless the config sets it), then writes
``WORKDIR/health_study.json`` (per estimator and epoch: the dominant eigenvalue, the
parameter-free ops of the genotype, the supernet's validation accuracy) and
``WORKDIR/health_study.png`` (the eigenvalue trajectories side by side). README "Search health"
reports what it measured.
"""

from __future__ import annotations

import json
import os
import sys

from experiments import cli

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs',
                              'search.py') + ':demo'
KEYS = ('dominant_eigenvalue', 'val_acc', 'second_order_share')
CELL_KEYS = ('parameter_free_', 'entropy_')  # per cell kind: normal, reduce; NAS-Bench-201's cell


def study(cfg: dict, workdir: str, estimators, log=print) -> dict:
  """Runs each search (or resumes it) and gathers its health records."""
  from darts_jax import hypergradient
  from darts_jax.search_loop import run_search
  bad = [e for e in estimators if e not in hypergradient.ESTIMATORS]
  if bad or not estimators:
    raise ValueError(f'estimators={estimators!r}: allowed {", ".join(hypergradient.ESTIMATORS)}')
  cfg = dict(cfg, hessian_every=cfg['hessian_every'] or 1)
  out = {'config': {k: cfg.get(k) for k in ('dataset', 'search_space', 'layers',
                                            'cells_per_stage', 'init_channels', 'epochs',
                                            'batch_size', 'hessian_every', 'hessian_batch',
                                            'seed')}, 'runs': {}}
  for estimator in estimators:
    directory = os.path.join(workdir, estimator)
    log(f'== {estimator}: {directory}')
    run_search(dict(cfg, estimator=estimator), directory, log=log)
    with open(os.path.join(directory, 'metrics.jsonl')) as f:
      records = [r for r in map(json.loads, f) if r.get('kind') == 'epoch']
    out['runs'][estimator] = [
        {'epoch': r['epoch'], 'genotype': r['genotype_str'], **{k: r.get(k) for k in KEYS},
         **{k: v for k, v in r.items() if k.startswith(CELL_KEYS)}} for r in records]
  return out


def plot(result: dict, path: str) -> None:
  from darts_jax import viz
  # the epochs the Hessian was evaluated at (every hessian_every epochs and the last)
  evaluated = lambda rows: [r for r in rows if r['dominant_eigenvalue'] is not None]  # noqa
  curves = {e: [r['dominant_eigenvalue'] for r in evaluated(rows)]
            for e, rows in result['runs'].items()}
  epochs = [r['epoch'] for r in evaluated(next(iter(result['runs'].values())))]
  viz.plot_curves(epochs, curves, path, 'dominant eigenvalue of the Hessian in alpha')


def _flags(values):
  from absl import flags
  return {'estimators': flags.DEFINE_list(
      'estimators', ['first_order', 'exact', 'finite_difference'], 'the searches to compare',
      flag_values=values)}


def run(config: dict, workdir: str, extra: dict) -> None:
  result = study(config, workdir, extra['estimators'])
  with open(os.path.join(workdir, 'health_study.json'), 'w') as f:
    json.dump(result, f, indent=1)
  try:
    plot(result, os.path.join(workdir, 'health_study.png'))
  except ImportError as e:
    print(f'note: no plot ({e})')
  for estimator, rows in result['runs'].items():
    print(estimator, ' '.join(f'{r["dominant_eigenvalue"]:.4g}' for r in rows
                              if r['dominant_eigenvalue'] is not None))


if __name__ == '__main__':
  sys.exit(cli.main(run, DEFAULT_CONFIG, extra=_flags))
