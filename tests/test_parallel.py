"""Data parallelism on 4 simulated CPU devices (conftest): the sharded search and training steps
equal the single-device steps with the same global batch; per-device BatchNorm equals the
single-device loss run per shard and averaged; sharded weights change nothing; bf16 mixed
precision stays near float32 with float32 master weights; no recompilation on later calls."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import hypergradient as hg
from darts_jax import parallel
from darts_jax import run_config
from darts_jax import search as S
from darts_jax import train as T
from darts_jax.genotypes import DARTS_V2
from darts_jax.networks import NetworkCIFAR
from darts_jax.supernet import (LossAux, SupernetConfig, init_alphas, init_supernet,
                                make_loss)

DEVICES = 4
BATCH = 8
# a supernet small enough to compile in seconds: 2 cells (both reductions) of 2 nodes, C=2, 3
# ops that cover pooling + BN, identity and a separable convolution with its BNs
NET = SupernetConfig(C=2, layers=2, nodes=2, multiplier=2,
                     primitives=('max_pool_3x3', 'skip_connect', 'sep_conv_3x3'))
# the per-device float64 exact test compiles twice in float64: one node, two ops with BNs
NET_1NODE = SupernetConfig(C=2, layers=2, nodes=1, multiplier=1,
                           primitives=('max_pool_3x3', 'sep_conv_3x3'))
IMAGE = (8, 8)


def _mesh(n):
  if len(jax.devices()) < n:
    pytest.skip(f'needs {n} devices (conftest sets 4 simulated CPU devices)')
  return parallel.make_mesh(n)


def _traced_once(calls_per_trace: int):
  """An identity preprocess that raises if the step using it is traced a second time (a
  recompile): the step calls it ``calls_per_trace`` times per trace."""
  chex.clear_trace_counter()  # chex counts by the definition site: each new step starts at 0
  return chex.assert_max_traces(lambda key, images: images, n=calls_per_trace)


def _batches(seed, n=2, dtype=np.float32):
  rng = np.random.default_rng(seed)
  return [(rng.normal(size=(BATCH, *IMAGE, 3)).astype(dtype),
           rng.integers(0, 10, BATCH).astype(np.int32)) for _ in range(2 * n)]


def _search_state(hp, dtype=jnp.float32, net=NET):
  variables = init_supernet(jax.random.PRNGKey(0), net, IMAGE, dtype)
  return S.init_search_state(hp, variables.weights,
                             init_alphas(jax.random.PRNGKey(1), net, dtype),
                             variables.batch_stats, jax.random.PRNGKey(2))


def _run_search(hp, loss, mesh, sharded_fields=(), min_size=parallel.MIN_SHARDED_SIZE,
                steps=2, dtype=jnp.float32, net=NET):
  """``steps`` jitted search steps on ``mesh``; returns the final state on the host, the
  jitted function and the placed state."""
  state = _search_state(hp, dtype, net)
  shardings = parallel.state_sharding(state, mesh, sharded_fields, min_size)
  # the identity preprocess is called for the train and the val batch of each trace
  step = S.jit_search_step(hp, loss, mesh, _traced_once(2), state_sharding=shardings)
  state = parallel.place(state, shardings)
  feed = parallel.BatchFeed(mesh, BATCH)
  batches = _batches(0, steps, dtype)
  for t in range(steps):
    (xt, yt), (xv, yv) = batches[2 * t], batches[2 * t + 1]
    state, _ = step(state, feed(np.arange(BATCH), xt, yt), feed(np.arange(BATCH), xv, yv))
  return parallel.to_host(state), step, state


def _assert_trees_close(a, b, rtol=2e-5, atol=2e-6):
  chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.slow
@pytest.mark.extended
def test_sharded_exact_search_step_equals_one_device():
  hp = S.SearchHParams(estimator='exact', steps_per_epoch=4, epochs=2)
  loss = make_loss(NET)
  one, _, _ = _run_search(hp, loss, _mesh(1))
  four, step, _ = _run_search(hp, loss, _mesh(DEVICES))
  _assert_trees_close(four, one)
  # the second call reused the first call's executable: a retrace would have raised in the
  # preprocess (_traced_once)
  assert int(four.step) == 2 and int(four.nonfinite_step) == -1


def _per_shard_loss(loss, groups, batch_argnum=3):
  """The reference for per-device BN: the single-device loss run on each shard in turn (a
  sequential ``lax.map``, no vmap, no mesh) and averaged, so its gradients are the shard
  gradients averaged; the running statistics are averaged too."""

  def mean_loss(*args):
    images, labels = args[batch_argnum]
    shards = (images.reshape(groups, -1, *images.shape[1:]), labels.reshape(groups, -1))

    def one_shard(shard):
      value, aux = loss(*args[:batch_argnum], shard, *args[batch_argnum + 1:])
      return value, aux[0], aux[1]

    values, stats, logits = jax.lax.map(one_shard, shards)
    mean_stats = jax.tree_util.tree_map(lambda x: jnp.mean(x, 0), stats)
    logits = logits.reshape(-1, logits.shape[-1])
    return jnp.mean(values), (LossAux(mean_stats, logits) if batch_argnum == 3
                              else (mean_stats, logits))

  return mean_loss


@pytest.mark.slow
@pytest.mark.extended
def test_per_device_batch_norm_equals_per_shard_steps_averaged(x64):
  # float64: BN over a 2-image shard of 2x2 maps divides by a small-sample variance, which
  # amplifies float32 round-off to ~1e-5 after two exact steps; in float64 the two agree to 1e-10
  hp = S.SearchHParams(estimator='exact', steps_per_epoch=4, epochs=2)
  mesh = _mesh(DEVICES)
  loss = make_loss(NET_1NODE)
  per_device_loss = parallel.per_device_batch_norm(loss, DEVICES, mesh)
  per_device, _, _ = _run_search(hp, per_device_loss, mesh, dtype=jnp.float64, net=NET_1NODE)
  reference, _, _ = _run_search(hp, _per_shard_loss(loss, DEVICES), _mesh(1),
                                dtype=jnp.float64, net=NET_1NODE)
  _assert_trees_close(per_device, reference, rtol=1e-9, atol=1e-11)
  # and it is not global BN (the comparison could not pass by accident)
  state = _search_state(hp, jnp.float64, NET_1NODE)
  batch = _batches(0, 1, np.float64)[0]
  values = jax.jit(lambda *args: (per_device_loss(*args)[0], loss(*args)[0]))
  per_device_value, global_value = values(state.weights, state.alphas, state.batch_stats, batch)
  assert abs(float(per_device_value) - float(global_value)) > 1e-3


def test_per_device_batch_norm_keeps_statistics_on_their_device():
  """Global BN all-reduces each BN's sums across devices; per-device BN only the loss."""
  mesh = _mesh(DEVICES)
  loss = make_loss(NET)
  state = _search_state(S.SearchHParams())
  images = jax.ShapeDtypeStruct((BATCH, *IMAGE, 3), jnp.float32,
                                sharding=jax.sharding.NamedSharding(mesh, parallel.P('data')))
  labels = jax.ShapeDtypeStruct((BATCH,), jnp.int32, sharding=images.sharding)

  def all_reduces(fn):
    forward = jax.jit(lambda w, a, s, x, y: fn(w, a, s, (x, y))[0])
    text = forward.lower(state.weights, state.alphas, state.batch_stats, images,
                         labels).compile().as_text()
    return text.count('all-reduce(') + text.count('all-reduce-start(')

  assert all_reduces(parallel.per_device_batch_norm(loss, DEVICES, mesh)) <= 2
  assert all_reduces(loss) > 10  # one or two per BatchNorm


def _train_model():
  return NetworkCIFAR(C=4, num_classes=10, layers=3, auxiliary=False, genotype=DARTS_V2)


def _run_train(hp, mesh, loss=None, sharded_fields=(), steps=2, dtype=jnp.float32):
  model = _train_model()
  state = T.init_train_state(hp, model, jax.random.PRNGKey(3), IMAGE, dtype=dtype)
  shardings = parallel.state_sharding(state, mesh, sharded_fields, min_size=1)
  step = T.jit_train_step(hp, model, mesh, _traced_once(1), loss=loss, state_sharding=shardings)
  state = parallel.place(state, shardings)
  feed = parallel.BatchFeed(mesh, BATCH)
  for x, y in _batches(4, steps, dtype)[:steps]:
    state, _ = step(state, feed(np.arange(BATCH), x, y))
  return parallel.to_host(state), step, state


@pytest.mark.slow
@pytest.mark.extended
def test_sharded_train_step_equals_one_device_with_drop_path_and_sharded_weights():
  # one step per epoch over 2 epochs: the second step drops paths with p = 0.1
  hp = T.TrainHParams(epochs=2, steps_per_epoch=1, drop_path_prob=0.2)
  one, _, _ = _run_train(hp, _mesh(1))
  four, step, placed = _run_train(hp, _mesh(DEVICES), sharded_fields=('weights', 'opt_state'))
  _assert_trees_close(four, one)  # and no recompile: _traced_once(1) would have raised
  # the weights really are split: some leaf lives in quarters on the 4 devices
  specs = [x.sharding.spec for x in jax.tree_util.tree_leaves(placed.weights)]
  assert any('data' in spec for spec in specs)


@pytest.mark.slow
@pytest.mark.extended
def test_per_device_batch_norm_in_training_equals_per_shard_steps_averaged(x64):
  hp = T.TrainHParams(epochs=2, steps_per_epoch=1, drop_path_prob=0.0)
  model, mesh = _train_model(), _mesh(DEVICES)
  loss = T.make_train_loss(model, hp.auxiliary_weight)

  grouped = parallel.per_device_batch_norm(loss, DEVICES, mesh, batch_argnum=2, key_argnum=3)
  per_device, _, _ = _run_train(hp, mesh, loss=grouped, dtype=jnp.float64)
  reference, _, _ = _run_train(hp, _mesh(1), loss=_per_shard_loss(loss, DEVICES, 2),
                            dtype=jnp.float64)
  _assert_trees_close(per_device, reference, rtol=1e-9, atol=1e-11)


@pytest.mark.slow
@pytest.mark.extended
def test_shard_weights_search_equals_replicated():
  hp = S.SearchHParams(estimator='first_order', steps_per_epoch=4, epochs=2)
  mesh = _mesh(DEVICES)
  loss = make_loss(NET)
  replicated, _, _ = _run_search(hp, loss, mesh)
  sharded, step, placed = _run_search(hp, loss, mesh, ('weights', 'w_opt_state'), min_size=1)
  _assert_trees_close(sharded, replicated)  # and no recompile (_traced_once)
  specs = [x.sharding.spec for x in jax.tree_util.tree_leaves(placed.weights)]
  assert any('data' in spec for spec in specs)
  assert all(x.sharding.is_fully_replicated for x in jax.tree_util.tree_leaves(placed.alphas))


@pytest.mark.slow
@pytest.mark.extended
def test_bf16_mixed_precision_stays_near_float32_with_float32_master_weights():
  variables = init_supernet(jax.random.PRNGKey(0), NET, IMAGE)
  alphas = init_alphas(jax.random.PRNGKey(1), NET)
  rng = np.random.default_rng(5)
  batch = (rng.normal(size=(16, *IMAGE, 3)).astype(np.float32),
           rng.integers(0, 10, 16).astype(np.int32))

  def value_and_alpha_grad(compute_dtype):
    loss = make_loss(NET, compute_dtype=compute_dtype)
    return jax.jit(jax.value_and_grad(
        lambda a: loss(variables.weights, a, variables.batch_stats, batch)[0]))(alphas)

  (l32, g32), (l16, g16) = value_and_alpha_grad(None), value_and_alpha_grad('bfloat16')
  assert l16.dtype == jnp.float32 and g16['normal'].dtype == jnp.float32
  # bf16 keeps 8 bits of mantissa (relative spacing 2^-8 = 0.4 %)
  assert abs(float(l16) - float(l32)) <= 1e-3 * abs(float(l32))
  # the alpha gradient at initialisation on noise images is a small sum of cancelling terms:
  # measured relative error 0.19, cosine 0.986 (float32 mixing weights, float32 BN statistics)
  assert float(hg.relative_error(g16, g32)) <= 0.3
  assert float(hg.cosine_similarity(g16, g32)) >= 0.97

  # a whole search step keeps float32 master weights, alphas, BN statistics and optimiser state
  hp = S.SearchHParams(estimator='first_order', steps_per_epoch=4, epochs=2)
  state, _, _ = _run_search(hp, make_loss(NET, compute_dtype='bfloat16'), _mesh(1), steps=1)
  dtypes = {np.asarray(x).dtype for x in jax.tree_util.tree_leaves(
      (state.weights, state.alphas, state.batch_stats, state.w_opt_state, state.alpha_opt_state))}
  assert dtypes == {np.dtype(np.float32)} or dtypes == {np.dtype(np.float32), np.dtype(np.int32)}
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(state.weights))


def test_bad_compute_dtype_is_one_line():
  with pytest.raises(ValueError, match=r"compute_dtype='float16': allowed: bfloat16"):
    make_loss(NET, compute_dtype='float16')
  with pytest.raises(ValueError, match=r"compute_dtype='bf61': allowed: bfloat16"):
    make_loss(NET, compute_dtype='bf61')


def test_linear_learning_rate_scaling_gives_the_multi_gpu_search_settings():
  # pt.darts' 4-GPU search: batch 256, w_lr 0.1, w_lr_min 0.004, alpha_lr 1.2e-3
  scaled = parallel.scaled_learning_rates({'w_lr': 0.025, 'w_lr_min': 0.001, 'alpha_lr': 3e-4},
                                          256, 64, 'linear')
  assert scaled == pytest.approx({'w_lr': 0.1, 'w_lr_min': 0.004, 'alpha_lr': 1.2e-3})
  assert parallel.scaled_learning_rates({'lr': 0.025}, 256, 96, 'none') == {'lr': 0.025}
  with pytest.raises(ValueError, match="lr_scaling='sqrt': allowed: none, linear"):
    parallel.scaled_learning_rates({'lr': 0.025}, 256, 96, 'sqrt')


def test_batch_feed_and_mesh_errors():
  mesh = _mesh(DEVICES)
  with pytest.raises(ValueError, match=r'batch_size=6 is not divisible by the number of devices'):
    parallel.BatchFeed(mesh, 6)
  feed = parallel.BatchFeed(mesh, 8)
  x = np.arange(20, dtype=np.float32).reshape(10, 2)
  (got,) = feed(np.arange(2, 10), x)
  np.testing.assert_array_equal(np.asarray(got), x[2:10])
  assert got.sharding.spec == parallel.P('data')
  with pytest.raises(ValueError, match=r'a global batch has 8 indices'):
    feed(np.arange(4), x)
  with pytest.raises(ValueError, match=r'num_devices=9: this run has 4 device'):
    parallel.make_mesh(9)
  parallel.check_batch_divisible(8, mesh)  # 8 = 4 x 2: no error
  with pytest.raises(ValueError, match=r'batch_size=7 is not divisible by the number of devices '
                                       r'\(4\)'):
    parallel.check_batch_divisible(7, mesh)
  with pytest.raises(ValueError, match=r"batch_norm='sync': allowed: global, per_device"):
    parallel.check_batch_norm_mode('sync')


def test_resume_check_allows_another_device_count_and_runs_from_before_these_keys(tmp_path):
  import json

  from darts_jax.search_loop import MAY_DIFFER
  from experiments.configs.search import get_config

  cfg = get_config('tiny').to_dict()
  check = lambda workdir, c: run_config.check_workdir(str(tmp_path / workdir), c, MAY_DIFFER, True)
  assert not check('global', cfg)
  assert check('global', dict(cfg, num_devices=4, distributed=True))  # global BN: same result
  per_device = dict(cfg, batch_norm='per_device')
  assert not check('per_device', per_device)
  with pytest.raises(ValueError, match=r'different config \(num_devices: 1 -> 4\)'):
    check('per_device', dict(per_device, num_devices=4))  # the shards' BN statistics change

  # a run started before the scale-out keys existed resumes under their old behaviour only
  old = {k: v for k, v in cfg.items() if k not in run_config.SCALE_OUT_KEYS}
  (tmp_path / 'old').mkdir()
  (tmp_path / 'old' / 'config.json').write_text(json.dumps(old))
  assert check('old', cfg)
  with pytest.raises(ValueError, match=r"compute_dtype: '' -> 'bfloat16'"):
    check('old', dict(cfg, compute_dtype='bfloat16'))
