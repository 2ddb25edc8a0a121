"""Every hypergradient estimator against the exact one, on the toy problems and on a search
network (the reference file's, with its weights, batches and momentum buffer): the CNN file's,
or a recurrent file's (the format is told from the file's keys).

  python -m experiments.hypergradient_study [--reference FILE.npz] [--dtypes float64,float32]
                                            [--out study.json]

For each estimator: cosine similarity and relative error to the exact DARTS second-order
hypergradient (eq. 6 through the real optimiser step), run time (median of 3 after compiling),
compile time and XLA's temporary-buffer size. Includes the paper's finite difference (eq. 7) at
r = 1e-2 ... 1e-7 in each dtype.
"""

import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from darts_jax import compile_cache
from experiments import cli


def _timed(fn, *args):
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  out = jax.block_until_ready(compiled(*args))
  runs = []
  for _ in range(3):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    runs.append(time.perf_counter() - t0)
  mem = compiled.memory_analysis()
  temp = getattr(mem, 'temp_size_in_bytes', None) if mem is not None else None
  return out, compile_s, statistics.median(runs), temp


def _row(name, g, exact, compile_s, run_s, temp):
  from darts_jax import hypergradient as hg
  return {'estimator': name, 'cosine': float(hg.cosine_similarity(g, exact)),
          'rel_err': float(hg.relative_error(g, exact)), 'run_s': round(run_s, 4),
          'compile_s': round(compile_s, 2),
          'temp_mb': None if temp is None else round(temp / 2**20, 1)}


def study_network(path: str, dtype, done: frozenset = frozenset()):
  """Yields one result row per estimator as soon as it is measured, skipping the estimators
  named in ``done`` (the exact one is always computed: it is what the others are compared to)."""
  from darts_jax import hypergradient as hg
  from darts_jax import interop
  from darts_jax.spaces.cnn import reference_architecture, search_config
  from darts_jax.supernet import make_loss, supernet_shapes
  with np.load(path) as f:
    ref = {k: f[k] for k in f.files}
  meta = json.loads(str(ref['meta']))
  config, m = search_config(meta), meta['search']
  cast = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), t)
  nhwc = lambda x: jnp.asarray(x.transpose(0, 2, 3, 1), dtype)
  shapes = supernet_shapes(config, ref['search/x_train'].shape[2:], dtype)
  named = lambda prefix: {k[len(prefix):]: v for k, v in ref.items() if k.startswith(prefix)}
  load = lambda prefix: cast(interop.from_original(
      named(prefix), {'params': shapes.weights}, nodes=config.nodes, require=('params',),
      primitives=config.primitives)['params'])
  weights, buf = load('search/w/'), load('search/momentum/')
  alphas = cast(reference_architecture(ref, 'search/', config))  # PC-DARTS: betas too
  # training-mode losses normalise with batch statistics: the running ones are never read
  stats = cast(jax.tree_util.tree_map(lambda s: np.zeros(s.shape), shapes.batch_stats))
  loss = make_loss(config)
  batches = ((nhwc(ref['search/x_train']), jnp.asarray(ref['search/y_train'])),
             (nhwc(ref['search/x_val']), jnp.asarray(ref['search/y_val'])))
  xi = m['xi']
  inner = optax.chain(optax.add_decayed_weights(m['weight_decay']),
                      optax.sgd(xi, momentum=m['momentum']))
  state = optax.tree_utils.tree_set(inner.init(weights), trace=buf)
  # every array is an argument, never a closed-over constant: XLA would constant-fold the network
  data = (weights, state, stats, batches)

  def estimator(name, **options):
    def run(a, data, *fd_r):  # fd_r traced: one compile for the whole r sweep
      weights, state, stats, (train, val) = data
      est = hg.make_estimator(name, inner, **options, **({'fd_r': fd_r[0]} if fd_r else {}))
      return est.estimate(hg.bind_loss(loss, stats, train), hg.bind_loss(loss, stats, val),
                          weights, a, state, xi)[0]
    return run

  g_exact, c, r, t = _timed(estimator('exact'), alphas, data)
  yield _row('exact (unrolled K=1)', g_exact, g_exact, c, r, t)
  for name, fn in {'first_order': estimator('first_order'),
                   'unrolled K=2': estimator('unrolled', unrolled_steps=2),
                   'implicit CG (20 iters, damping 1)': estimator(
                       'implicit', implicit_maxiter=20, implicit_damping=1.0),
                   }.items():
    if name in done:
      continue
    g, c, r, t = _timed(fn, alphas, data)
    yield _row(name, g, g_exact, c, r, t)
  fd, c_fd = None, 0.0
  for r_fd in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7):
    if f'finite difference r={r_fd:g}' in done:
      continue
    args = (alphas, data, jnp.asarray(r_fd, dtype))
    if fd is None:
      t0 = time.perf_counter()
      fd = jax.jit(estimator('finite_difference')).lower(*args).compile()
      c_fd = time.perf_counter() - t0
    t0 = time.perf_counter()
    g = jax.block_until_ready(fd(*args))
    yield _row(f'finite difference r={r_fd:g}', g, g_exact, c_fd, time.perf_counter() - t0,
               None)


def study_recurrent(path: str, dtype, done: frozenset = frozenset()):
  """The recurrent file's search model: every estimator against eq. 6 differentiated exactly
  through the virtual step the recurrent search takes (clip and the held tied embedding
  included), and the original architect's finite difference (its quirks) and the textbook one
  against it."""
  from darts_jax import hypergradient as hg
  from darts_jax import recurrent as rc
  from darts_jax import recurrent_search as rs
  from darts_jax.spaces import rnn
  with np.load(path) as f:
    ref = {k: f[k] for k in f.files}
  meta = json.loads(str(ref['meta']))
  a = rnn.architect_hparams(meta['search'])
  primitives = tuple(meta.get('primitives', rc.PRIMITIVES))
  cast = lambda t: jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), t)  # noqa: E731
  w = cast(rc.from_original({k[len('search/w/'):]: v for k, v in ref.items()
                             if k.startswith('search/w/')}))
  alphas = cast({'recurrent': ref['search/alphas']})
  stats = cast({'mean': ref['search/bn/running_mean'], 'var': ref['search/bn/running_var']})
  batch = lambda s: (jnp.asarray(ref[f'search/x_{s}']), jnp.asarray(ref[f'search/y_{s}']),  # noqa
                     cast(ref[f'search/hidden_{s}'][0]))
  data = (w, stats, batch('train'), batch('val'))

  def losses(data):
    w, stats, train, val = data
    loss = lambda b: lambda w_, a_: rc.nll(rc.search_forward(  # noqa: E731
        w_, a_, stats, b[0], b[2], True, primitives, nodes='scan').log_probs, b[1])
    return loss(train), loss(val)

  def estimator(name, hp=a, **options):
    def run(alpha, data, *fd_r):
      train_loss, val_loss = losses(data)
      if name == 'architect':  # the original's eq. 7, each quirk per hp
        return rs.architect_finite_difference(train_loss, val_loss, data[0], alpha,
                                              hp._replace(r=fd_r[0]))[0]
      inner = rs.virtual_step(hp)
      est = hg.make_estimator(name, inner, **options)
      return est.estimate(train_loss, val_loss, data[0], alpha, inner.init(data[0]), hp.eta)[0]
    return run

  g_exact, c, r, t = _timed(estimator('exact'), alphas, data)
  yield _row('exact (through the step as coded)', g_exact, g_exact, c, r, t)
  textbook = rs.ArchitectHParams.textbook(eta=a.eta, weight_decay=a.weight_decay, clip=a.clip)
  for name, fn in {'exact, textbook step (no clip, embedding stepped)': estimator(
                       'exact', textbook),
                   'first_order': estimator('first_order'),
                   'unrolled K=2': estimator('unrolled', unrolled_steps=2),
                   'implicit CG (20 iters)': estimator('implicit', implicit_maxiter=20),
                   }.items():
    if name in done:
      continue
    g, c, r, t = _timed(fn, alphas, data)
    yield _row(name, g, g_exact, c, r, t)
  for label, hp in (('the original architect', a), ('textbook eq. 7', textbook)):
    compiled = None
    for r_fd in (1e-2, 1e-4, 1e-6):
      name = f'{label}, finite difference r={r_fd:g}'
      if name in done:
        continue
      args = (alphas, data, jnp.asarray(r_fd, dtype))
      if compiled is None:
        t0 = time.perf_counter()
        compiled = jax.jit(estimator('architect', hp)).lower(*args).compile()
        c_fd = time.perf_counter() - t0
      t0 = time.perf_counter()
      g = jax.block_until_ready(compiled(*args))
      yield _row(name, g, g_exact, c_fd, time.perf_counter() - t0, None)


def study_file(path: str, dtype, done: frozenset = frozenset()):
  """:func:`study_network` or :func:`study_recurrent`, by the file's format."""
  from darts_jax.spaces import rnn
  with np.load(path) as f:
    meta = json.loads(str(f['meta']))
  return (study_recurrent if rnn.detect(meta) else study_network)(path, dtype, done)


def study_toys() -> list:
  from darts_jax import hypergradient as hg
  from darts_jax.toy import toy_train_loss, toy_val_loss
  w, a, xi = jnp.array(-2.0), jnp.array(2.0), 0.3
  inner = optax.sgd(xi)
  exact = (w - xi * (2 * w - 2 * a)) + 2 * xi * a - 2  # closed form of eq. 6 on the toy
  rows = []
  for name, estimator in {
      'first_order': hg.make_estimator('first_order'),
      'unrolled K=1': hg.make_estimator('exact', inner),
      'finite difference r=0.01': hg.make_estimator('finite_difference', inner, fd_r=0.01),
      'implicit CG': hg.make_estimator('implicit', implicit_maxiter=100, implicit_damping=0.0),
  }.items():
    g = estimator.estimate(toy_train_loss, toy_val_loss, w, a, inner.init(w), xi)[0]
    rows.append({'estimator': name, 'value': float(g), 'exact_eq6': float(exact),
                 'rel_err': float(abs(g - exact) / abs(exact))})
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m experiments.hypergradient_study')
  parser.add_argument('--reference', default='tests/data/quark0_reference.npz')
  parser.add_argument('--dtypes', default='float64,float32')
  parser.add_argument('--out', help='write the results as JSON here (after every row)')
  parser.add_argument('--resume', action='store_true',
                      help='keep the rows already in --out and measure only the missing ones')
  cli.add_compile_cache_flag(parser)
  args = parser.parse_args(argv)
  compile_cache.configure(not args.no_compile_cache)
  dtypes = args.dtypes.split(',')
  bad = [d for d in dtypes if d not in ('float64', 'float32')]
  if bad:
    print(f'error: dtype {bad[0]!r} is not float64 or float32', file=sys.stderr)
    return 2
  jax.config.update('jax_enable_x64', True)
  results = {'toy (xi=0.3, at (2, -2))': study_toys()}
  if args.resume:
    if not args.out:
      print('error: --resume needs --out', file=sys.stderr)
      return 2
    with open(args.out) as f:
      results.update({k: v for k, v in json.load(f).items() if k.startswith('reference')})

  def save():  # after every row: an hour-long study loses nothing when stopped early
    if args.out:
      with open(args.out, 'w') as f:
        json.dump(results, f, indent=2)

  for name in dtypes:
    rows = results.setdefault(f'reference network, {name}', [])
    done = frozenset(r['estimator'] for r in rows if not r['estimator'].startswith('exact'))
    print(f'\n{name}: {"estimator":50} {"cosine":>9} {"rel err":>9} {"run s":>8} {"compile s":>9}',
          flush=True)
    for row in study_file(args.reference, jnp.dtype(name), done):
      if row['estimator'].startswith('exact'):
        rows[:] = [r for r in rows if not r['estimator'].startswith('exact')]
        rows.insert(0, row)
      else:
        rows.append(row)
      print(f'{"":9}{row["estimator"]:50} {row["cosine"]:>9.4f} {row["rel_err"]:>9.2e} '
            f'{row["run_s"]:>8.3f} {row["compile_s"]:>9.1f}', flush=True)
      save()
  save()
  return 0


if __name__ == '__main__':
  sys.exit(main())
