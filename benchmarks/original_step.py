"""Time the original DARTS search step (PyTorch, quark0/darts ``cnn/``) on this machine, to run
beside ``benchmarks.search_step``: absolute times drift from day to day, ratios from one run hold.

  python -m benchmarks.original_step --darts_src PATH/darts/cnn [--preset small|paper]
                                     [--orders first,second] [--steps 3] [--out FILE]

Needs PyTorch (CPU) and a checkout of the original repository; nothing of it is copied here.
The original's ``model_search.Network`` and ``architect.Architect`` are imported from
``--darts_src`` as they are (their ``.cuda()`` calls are made no-ops; torch 2 still takes their
deprecated ``add_(alpha, tensor)`` calls). One step is ``train_search.py``'s loop body:
``Architect.step`` (first order, or ``unrolled=True``: eq. 7's finite difference), then the
weight step (``L_train`` backward, clip 5, SGD with momentum 0.9 and weight decay 3e-4).

Each order runs in its own process (peak RSS is that step's): median / min / max seconds per
step over ``--steps`` steps after 2 warm-up steps, random CIFAR-shaped data, 2 threads.
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

PRESETS = {'small': dict(layers=5, C=8, batch=16), 'paper': dict(layers=8, C=16, batch=64)}
LR, MOMENTUM, WEIGHT_DECAY, CLIP = 0.025, 0.9, 3e-4, 5.0
ARCH_LR, ARCH_WEIGHT_DECAY = 3e-4, 1e-3


def measure(darts_src: str, preset: str, order: str, steps: int, threads: int) -> dict:
  import torch
  from torch import nn
  torch.set_num_threads(threads)
  # the original moves everything to a GPU; on this CPU those calls return the object itself
  nn.Module.cuda = lambda self, *args, **kwargs: self
  torch.Tensor.cuda = lambda self, *args, **kwargs: self
  sys.path.insert(0, os.path.abspath(darts_src))
  import warnings
  warnings.filterwarnings('ignore', category=UserWarning)  # its torch 0.3-era add_(alpha, t)
  from architect import Architect  # the original's own alpha step (first order or eq. 7)
  from model_search import Network  # the original's search network

  p = PRESETS[preset]
  torch.manual_seed(0)
  model = Network(p['C'], 10, p['layers'], nn.CrossEntropyLoss())
  weights = list(model.parameters())
  w_opt = torch.optim.SGD(weights, LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
  architect = Architect(model, argparse.Namespace(
      momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, arch_learning_rate=ARCH_LR,
      arch_weight_decay=ARCH_WEIGHT_DECAY))
  batch = lambda: (torch.randn(p['batch'], 3, 32, 32), torch.randint(0, 10, (p['batch'],)))
  train, val = batch(), batch()

  def step():  # train_search.py's loop body: the architect's step, then the weight step
    architect.step(*train, *val, LR, w_opt, unrolled=order == 'second')
    w_opt.zero_grad()
    model._loss(*train).backward()
    nn.utils.clip_grad_norm_(weights, CLIP)
    w_opt.step()

  for _ in range(2):
    step()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
  return {'preset': preset, **p, 'order': order, 'torch': torch.__version__,
          'threads': threads, 'steps': steps,
          'weights': sum(w.numel() for w in weights),
          'step_median_s': round(statistics.median(times), 3),
          'step_min_s': round(min(times), 3), 'step_max_s': round(max(times), 3),
          'peak_rss_gb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m benchmarks.original_step',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--darts_src', required=True,
                      help="the original repository's cnn/ folder (holds model_search.py)")
  parser.add_argument('--preset', choices=list(PRESETS), default='small')
  parser.add_argument('--orders', default='first,second', help='first, second or both')
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--out', help='write the rows as JSON here')
  parser.add_argument('--one', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  orders = [o for o in args.orders.split(',') if o]
  if not orders or any(o not in ('first', 'second') for o in orders):
    print(f"error: --orders={args.orders!r}: give 'first', 'second' or both", file=sys.stderr)
    return 2
  if not os.path.exists(os.path.join(args.darts_src, 'model_search.py')):
    print(f'error: --darts_src={args.darts_src!r} holds no model_search.py (the original '
          "repository's cnn/ folder)", file=sys.stderr)
    return 2
  if args.one:
    print(json.dumps(measure(args.darts_src, args.preset, orders[0], args.steps, args.threads)))
    return 0
  rows = []
  for order in orders:
    child = subprocess.run([sys.executable, '-m', 'benchmarks.original_step', '--one',
                            '--darts_src', args.darts_src, '--preset', args.preset, '--orders',
                            order, '--steps', str(args.steps), '--threads', str(args.threads)],
                           capture_output=True, text=True)
    if child.returncode:
      print(f'{order}: failed: {child.stderr.strip().splitlines()[-1:]}', flush=True)
      continue
    row = json.loads(child.stdout.strip().splitlines()[-1])
    rows.append(row)
    print(f"original {args.preset} {order} order: {row['step_median_s']:.2f} s/step "
          f"({row['step_min_s']:.2f}-{row['step_max_s']:.2f}), peak RSS "
          f"{row['peak_rss_gb']:.2f} GB", flush=True)
  if args.out:
    with open(args.out, 'w') as f:
      json.dump({'preset': args.preset, 'rows': rows}, f, indent=2)
      f.write('\n')
  return 0 if rows else 1


if __name__ == '__main__':
  sys.exit(main())
