"""Time the recurrent search step (the PTB search of ``experiments.ptb_search``), darts_jax against
the original (PyTorch, quark0/darts ``rnn/``), side by side in one run on this machine.

  python -m benchmarks.recurrent_step [--preset paper|small|tiny] [--estimators first_order,exact]
      [--darts_src PATH/darts/rnn --torch_python PATH/bin/python] [--steps 5] [--out FILE]

One step is ``train_search.py``'s loop body at a full window: the architect's alpha step (first
order, or eq. 7's finite difference with ``unrolled=True``), then the weight step (NLL + TAR,
clip 0.25, SGD lr 20, weight decay 5e-7), dropouts at the search's rates. darts_jax rows:
compile time, median / min / max seconds per step after one warm-up, XLA's plan of the step's
memory and peak RSS. The original's rows (with ``--darts_src``): its ``RNNModelSearch`` and
``Architect`` imported as they are (``.cuda()`` made a no-op), 2 threads, run by
``--torch_python`` (an interpreter with torch; nothing of the original is copied here). Each
row runs in its own process, so that peak RSS is that step's.
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

# vocabulary, units, batch, BPTT
PRESETS = {'paper': dict(ntoken=10000, nhid=300, batch=256, bptt=35),
           'small': dict(ntoken=10000, nhid=300, batch=64, bptt=35),
           'tiny': dict(ntoken=100, nhid=16, batch=8, bptt=8)}
OURS = ('first_order', 'exact', 'finite_difference', 'unrolled', 'implicit')
ORIGINAL = ('first', 'second')


def measure_ours(preset: str, estimator: str, steps: int) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from benchmarks import common
  from darts_jax import recurrent as rc
  from darts_jax import recurrent_search as rs
  from darts_jax import recurrent_search_loop as rl
  p = PRESETS[preset]
  hp = rs.RecurrentSearchHParams(estimator=estimator)
  config = rc.RecurrentConfig(p['ntoken'], p['nhid'])
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  search = rs.init_search_state(hp, rc.init_weights(k[0], config), rc.init_alphas(k[1], config),
                                rc.init_batch_stats(config), p['batch'])
  zero = jnp.zeros((), jnp.float32)
  state = rl.PTBSearchState(jnp.zeros((), jnp.int32), search, k[2],
                            rl.EpochSums(jnp.zeros((), jnp.int32), zero, zero + 0, zero + 1),
                            jnp.asarray(-1, jnp.int32))
  rng = np.random.default_rng(0)
  data = rng.integers(0, p['ntoken'], (p['bptt'] + 1, p['batch'])).astype(np.int32)
  window = lambda: rl.corpus_lib.window(data, 0, p['bptt'], p['bptt'])  # noqa: E731
  step = jax.jit(lambda st, t, v, q, f: rl.ptb_search_step(
      hp, rs.search_network(), rc.DropoutRates(), p['bptt'], st, t, v, q, f),
      donate_argnums=0)
  args = (state, window(), window(), np.int32(p['bptt']), np.bool_(False))
  row, _ = common.time_step(step, args, steps, lambda out, a: (out[0], *a[1:]))
  weights = sum(x.size for x in jax.tree_util.tree_leaves(search.weights))
  return {'who': 'darts_jax', 'row': estimator, 'preset': preset, **p, 'weights': int(weights),
          **row}


def measure_original(darts_src: str, preset: str, order: str, steps: int, threads: int) -> dict:
  import torch
  from torch import nn
  torch.set_num_threads(threads)
  nn.Module.cuda = lambda self, *args, **kwargs: self
  torch.Tensor.cuda = lambda self, *args, **kwargs: self
  # its embedding dropout calls torch 0.3's embed._backend.Embedding.apply(words, weight,
  # padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse): today's F.embedding
  functional = nn.functional

  class _Embedding:
    @staticmethod
    def apply(words, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse):
      return functional.embedding(words, weight, None if padding_idx < 0 else padding_idx,
                                  max_norm, norm_type, scale_grad_by_freq, sparse)

  nn.Embedding._backend = type('Backend', (), {'Embedding': _Embedding})
  sys.path.insert(0, os.path.abspath(darts_src))
  import warnings
  warnings.filterwarnings('ignore')  # its torch 0.3-era calls
  from architect import Architect  # the original's own alpha step
  from model_search import RNNModelSearch  # the original's search network
  p = PRESETS[preset]
  torch.manual_seed(0)
  # train_search.py's defaults: emsize = nhid = nhidlast, dropouts .75 .25 .75 .2 0
  model = RNNModelSearch(p['ntoken'], p['nhid'], p['nhid'], p['nhid'], 0.75, 0.25, 0.75, 0.2, 0)
  weights = list(model.parameters())
  optimizer = torch.optim.SGD(weights, lr=20, weight_decay=5e-7)
  architect = Architect(model, argparse.Namespace(wdecay=5e-7, clip=0.25, arch_lr=3e-3,
                                                  arch_wdecay=1e-3))
  data = torch.randint(0, p['ntoken'], (p['bptt'] + 1, p['batch']))
  x, y = data[:-1], data[1:].reshape(-1)
  hidden, hidden_valid = model.init_hidden(p['batch']), model.init_hidden(p['batch'])

  def step():  # train_search.py's loop body at a full window
    nonlocal hidden, hidden_valid
    hidden_valid, _ = architect.step(hidden, x, y, hidden_valid, x, y, optimizer,
                                     order == 'second')
    optimizer.zero_grad()
    log_prob, hidden, rnn_hs, _ = model(x, hidden, return_h=True)
    loss = nn.functional.nll_loss(log_prob.view(-1, log_prob.size(2)), y)
    loss = loss + sum(1e-3 * (h[1:] - h[:-1]).pow(2).mean() for h in rnn_hs[-1:])
    loss.backward()
    nn.utils.clip_grad_norm_(weights, 0.25)
    optimizer.step()
    hidden = [h.detach() for h in hidden] if isinstance(hidden, list) else hidden.detach()
    hidden_valid = ([h.detach() for h in hidden_valid] if isinstance(hidden_valid, list)
                    else hidden_valid.detach())

  step()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
  return {'who': 'original', 'row': order, 'preset': preset, **p, 'torch': torch.__version__,
          'threads': threads, 'steps': steps, 'weights': sum(w.numel() for w in weights),
          'step_median_s': round(statistics.median(times), 4),
          'step_min_s': round(min(times), 4), 'step_max_s': round(max(times), 4),
          'peak_memory_gb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
          'memory_kind': 'peak RSS'}


def _child(python: str, args: list[str], timeout: float | None) -> tuple[dict | None, str]:
  try:
    proc = subprocess.run([python, '-m', 'benchmarks.recurrent_step', *args],
                          capture_output=True, text=True, timeout=timeout,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  except subprocess.TimeoutExpired:
    return None, f'did not finish in {timeout:g} s'
  if proc.returncode:
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    return None, f'failed: {lines[-1] if lines else proc.returncode}'
  return json.loads(proc.stdout.strip().splitlines()[-1]), ''


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m benchmarks.recurrent_step',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--preset', choices=list(PRESETS), default='paper')
  parser.add_argument('--estimators', default='first_order,exact,finite_difference',
                      help=f'darts_jax rows, from {", ".join(OURS)}')
  parser.add_argument('--darts_src', default='',
                      help="the original repository's rnn/ folder: adds its first and second "
                           'order rows')
  parser.add_argument('--torch_python', default=sys.executable,
                      help='the interpreter that runs the original (needs torch)')
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--threads', type=int, default=2, help="the original's torch threads")
  parser.add_argument('--timeout', type=float, default=None, help='seconds per row')
  parser.add_argument('--out', help='write the rows as JSON here')
  parser.add_argument('--one', choices=('ours', 'original'), help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  rows_asked = [e for e in args.estimators.split(',') if e]
  allowed = ORIGINAL if args.one == 'original' else OURS
  bad = [e for e in rows_asked if e not in allowed]
  if bad:
    print(f'error: --estimators: {bad[0]!r} is not an estimator; allowed: {", ".join(allowed)}',
          file=sys.stderr)
    return 2
  if args.steps < 1:
    print(f'error: --steps={args.steps}: must be >= 1', file=sys.stderr)
    return 2
  if args.darts_src and not os.path.exists(os.path.join(args.darts_src, 'model_search.py')):
    print(f'error: --darts_src={args.darts_src!r} holds no model_search.py (the original '
          "repository's rnn/ folder)", file=sys.stderr)
    return 2
  if args.one == 'ours':
    from darts_jax import compile_cache
    compile_cache.configure(False)  # a cold compile, as a first run has it
    print(json.dumps(measure_ours(args.preset, rows_asked[0], args.steps)))
    return 0
  if args.one == 'original':
    print(json.dumps(measure_original(args.darts_src, args.preset, rows_asked[0], args.steps,
                                      args.threads)))
    return 0
  common = ['--preset', args.preset, '--steps', str(args.steps)]
  jobs = [(sys.executable, ['--one', 'ours', '--estimators', e, *common]) for e in rows_asked]
  if args.darts_src:
    jobs += [(args.torch_python, ['--one', 'original', '--estimators', o, '--darts_src',
                                  args.darts_src, '--threads', str(args.threads), *common])
             for o in ORIGINAL]
  rows, failures = [], {}
  print(f'{"":28} {"compile s":>9} {"s/step":>8} {"min":>8} {"max":>8} {"step GB":>8} '
        f'{"peak GB":>8}', flush=True)
  for python, job in jobs:
    name = f'{"original" if "original" in job else "darts_jax"} {job[3]}'
    row, why = _child(python, job, args.timeout)
    if row is None:
      failures[name] = why
      print(f'{name:28} {why}', flush=True)
      continue
    rows.append(row)
    print(f'{name:28} {row.get("compile_s", float("nan")):>9.1f} {row["step_median_s"]:>8.3f} '
          f'{row["step_min_s"]:>8.3f} {row["step_max_s"]:>8.3f} '
          f'{row.get("step_memory_gb", float("nan")):>8.2f} {row["peak_memory_gb"]:>8.2f}',
          flush=True)
  if args.out:
    with open(args.out, 'w') as f:
      json.dump({'preset': args.preset, 'rows': rows, 'failures': failures}, f, indent=2)
      f.write('\n')
  return 0 if rows else 1


if __name__ == '__main__':
  sys.exit(main())
