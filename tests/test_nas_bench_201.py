"""NAS-Bench-201's space (``darts_jax.nas_bench_201``, ``darts_jax.spaces.nas_bench_201``):

- parameter counts against the benchmark's own figures;
- the search network (logits, loss, every gradient, BN statistics) and an architecture's network
  against the benchmark's code in float64 (``tests/data/nb201_reference.npz``, written by
  ``tests/data/make_nb201_reference.py`` from AutoDL-Projects' ``xautodl``);
- the architecture string form, the argmax rule, PC-DARTS's wiring in a closed form;
- every DARTS-family method on the space, the search and training commands as runs.
"""

import json
import os
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import methods
from darts_jax import nas_bench_201 as nb
from darts_jax import variants
from darts_jax.ops.init import num_params
from darts_jax.search_loop import run_search
from darts_jax.spaces import StepContext
from darts_jax.spaces import nas_bench_201 as nb_space
from darts_jax.supernet import channel_shuffle
from darts_jax.train import TrainHParams, optimizer
from darts_jax.train_loop import run_train
from experiments.configs.search import get_config as search_config
from experiments.configs.train import get_config as train_config
from run_helpers import interrupt_after, leaves
import test_search_loop

REFERENCE = pathlib.Path(__file__).parent / 'data' / 'nb201_reference.npz'
ALL = {op: '|{0}~0|+|{0}~0|{0}~1|+|{0}~0|{0}~1|{0}~2|'.format(op) for op in nb.PRIMITIVES}
ARCH_9930 = ('|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|'
             'nor_conv_3x3~2|')
MIXED = '|nor_conv_1x1~0|+|skip_connect~0|nor_conv_3x3~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|'
NB201_STRING = re.compile(r'^\|[a-z0-9_]+~0\|\+\|[a-z0-9_]+~0\|[a-z0-9_]+~1\|\+'
                          r'\|[a-z0-9_]+~0\|[a-z0-9_]+~1\|[a-z0-9_]+~2\|$')


def _params(structure: str, num_classes: int = 10) -> int:
  net = nb.TinyNetwork(nb.Structure.from_string(structure), num_classes=num_classes)
  return num_params(nb.network_shapes(net, (32, 32), 3, jnp.float32, False)['params'])


def test_parameter_counts_are_the_benchmarks():
  # NAS-Bench-201's table lists 1.289 MB of parameters for architecture 9930 on CIFAR-10, and
  # its networks span 0.073 MB (no convolution in the cell) to 1.531 MB (all nor_conv_3x3);
  # the exact counts are those of its code's TinyNetwork (C=16, N=5), run in PyTorch
  assert _params(ARCH_9930) == 1_288_506
  assert _params(ALL['nor_conv_3x3']) == 1_531_546
  assert _params(ALL['nor_conv_1x1']) == 241_306
  for op in ('skip_connect', 'avg_pool_3x3', 'none'):
    assert _params(ALL[op]) == 73_306
  assert _params(MIXED) == 587_386
  assert _params(ALL['nor_conv_3x3'], num_classes=100) == 1_537_396
  # the DARTS supernet of its search code (TinyNetworkDarts: the search ops' convolutions carry
  # a bias, their BNs no affine parameters)
  weights, _ = nb.init_search_network(jax.random.PRNGKey(0), nb.NB201Config())
  assert num_params(weights) == 1_692_826


def _named(ref, prefix):
  return {k[len(prefix):]: v for k, v in ref.items() if k.startswith(prefix)}


@pytest.mark.slow
def test_networks_equal_the_benchmark_code_in_float64(x64):
  ref = dict(np.load(REFERENCE))
  meta = json.loads(str(ref['meta']))
  x, y = jnp.asarray(ref['x'].transpose(0, 2, 3, 1)), jnp.asarray(ref['y'])
  cfg = nb.NB201Config(C=meta['C'], cells_per_stage=meta['N'], num_classes=meta['num_classes'],
                       primitives=tuple(meta['ops']))
  size = x.shape[1:3]
  space = nb_space.make_space(cfg)
  shapes = nb.network_shapes(nb.SearchNetwork(cfg), size, 3, jnp.float64,
                             space.architecture_mixing(space.init_architecture(
                                 jax.random.PRNGKey(0), jnp.float64), jnp.float64), False)
  variables = nb.from_original(_named(ref, 'search/w/'), shapes, cfg.primitives)
  alphas = {'cell': jnp.asarray(ref['search/alphas'])}
  (loss, aux), (g_w, g_alpha) = jax.jit(jax.value_and_grad(
      space.make_loss(), argnums=(0, 1), has_aux=True))(variables['params'], alphas,
                                                        variables['batch_stats'], (x, y))
  np.testing.assert_allclose(aux.logits, ref['search/logits_train'], rtol=0, atol=1e-12)
  np.testing.assert_allclose(loss, ref['search/loss_train'], rtol=1e-13)
  np.testing.assert_allclose(g_alpha['cell'], ref['search/grad_alphas'], rtol=0, atol=1e-12)
  expected_g = nb.from_original(_named(ref, 'search/grad/'), {'params': shapes['params']},
                                cfg.primitives)['params']
  expected_stats = nb.from_original(_named(ref, 'search/after_train/'),
                                    {'batch_stats': shapes['batch_stats']},
                                    cfg.primitives)['batch_stats']
  for ours, theirs in ((g_w, expected_g), (aux.batch_stats, expected_stats)):
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs),
                    strict=True):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)

  net = nb.TinyNetwork(nb.Structure.from_string(meta['arch']), C=meta['C'],
                       cells_per_stage=meta['N'], num_classes=meta['num_classes'])
  variables = nb.from_original(_named(ref, 'net/w/'),
                               nb.network_shapes(net, size, 3, jnp.float64, False))
  logits_eval = net.apply(variables, x, False)[0]
  (logits_train, _), _ = net.apply(variables, x, True, mutable=['batch_stats'])
  np.testing.assert_allclose(logits_eval, ref['net/logits_eval'], rtol=0, atol=1e-12)
  np.testing.assert_allclose(logits_train, ref['net/logits_train'], rtol=0, atol=1e-12)


def test_architecture_strings_and_the_argmax_rule(tmp_path):
  s = nb.Structure.from_string(MIXED)
  assert s.to_string() == MIXED and str(s) == MIXED
  assert s.edges == (('nor_conv_1x1', 0), ('skip_connect', 0), ('nor_conv_3x3', 1),
                     ('avg_pool_3x3', 0), ('none', 1), ('nor_conv_3x3', 2))
  assert nb.Structure.from_dict(json.loads(s.to_json())) == s
  assert nb.Structure.from_edges(op for op, _ in s.edges) == s
  # each edge's argmax, 'none' included, the first of a tie
  a = np.zeros((6, 5))
  for row, k in enumerate((2, 1, 3, 4, 0, 3)):
    a[row, k] = 1.0
  a[4, 3] = 1.0  # a tie between none and nor_conv_3x3: the first wins
  assert nb.derive_structure({'cell': a}) == s
  # the loaders: the string, a workdir, a genotype.txt
  (tmp_path / 'genotype.json').write_text(s.to_json())
  (tmp_path / 'genotype.txt').write_text(MIXED + '\n')
  assert nb.load_structure(str(tmp_path)) == s
  assert nb.load_structure(str(tmp_path / 'genotype.txt')) == s
  for bad, message in (
      ('|nor_conv_3x3~0|+|nor_conv_3x3~1|', r'node 2 .* must take nodes \[0, 1\]'),
      ('|nor_conv_3x3-0|', r"'nor_conv_3x3-0' should read op~input"),
      ('nor_conv_3x3~0', 'neither a NAS-Bench-201 string'),
      ('|nor_conv_3x3~0|+||', r"'\|\|' should read \|op~input\|")):
    with pytest.raises(ValueError, match=message):
      nb.load_structure(bad)
  with pytest.raises(ValueError, match="uses 'sep_conv_3x3'; allowed: none"):
    nb.Structure.from_string('|sep_conv_3x3~0|').validate_ops(nb.PRIMITIVES)
  with pytest.raises(ValueError, match=r"alphas\['cell'\] has shape \(6, 4\)"):
    nb.derive_structure({'cell': np.zeros((6, 4))})


def test_partial_channels_and_edge_betas_follow_their_closed_form():
  """A cell whose every edge is skip_connect (one-hot mixing), under PC-DARTS with K=2 and
  edge betas: each edge gives shuffle(input) (its first half through the identity, the rest
  bypassing), weighted by the softmax of the betas over its node's incoming edges."""
  cfg = nb.NB201Config(C=4, cells_per_stage=1, partial_channels=2, edge_normalization=True)
  betas = jnp.asarray([0.3, -0.2, 0.5, 0.1, 0.4, -0.6])
  ops = jax.nn.one_hot(jnp.ones(6, jnp.int32), 5)  # skip_connect on every edge
  mixing = nb.architecture_mixing({'cell': jnp.zeros((6, 5)), 'betas_cell': betas},
                                  jnp.float32, cfg)['cell']
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 4))
  cell = nb.SearchCell(4, cfg)
  variables = cell.init(jax.random.PRNGKey(1), x, ops, mixing.edges, None, True)
  out, _ = cell.apply(variables, x, ops, mixing.edges, None, True, mutable=['batch_stats'])

  def shuffle(v):
    return np.asarray(channel_shuffle(v, 2))

  weight = {(1, 0): 1.0}
  for node, rows in ((2, [1, 2]), (3, [3, 4, 5])):
    e = np.exp(np.asarray(betas)[rows])
    for j, w in enumerate(e / e.sum()):
      weight[(node, j)] = w
  np.testing.assert_allclose(mixing.edges, [weight[e] for e in nb.cell_edges()], rtol=1e-6)
  nodes = [np.asarray(x)]
  for i in (1, 2, 3):
    nodes.append(sum(weight[(i, j)] * shuffle(nodes[j]) for j in range(i)))
  np.testing.assert_allclose(out, nodes[3], rtol=1e-5, atol=1e-6)


def _method_space(method: str):
  cfg = dict(search_config('demo').to_dict(), init_channels=4, cells_per_stage=1,
             partial_channels=2, search_space='nas_bench_201')
  return methods.build(method, cfg, nb_space.space_from_run, 10, 1), cfg


def test_pc_darts_and_gdas_on_the_space():
  """PC-DARTS adds the edge betas; GDAS keeps the benchmark's argmax rule (in the DARTS cells
  it has its own)."""
  pc, _ = _method_space('pc_darts')
  assert set(pc.init_architecture(jax.random.PRNGKey(2), jnp.float32)) == {'cell', 'betas_cell'}
  gdas, _ = _method_space('gdas')
  a = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (6, 5)))
  assert gdas.genotype({'cell': a}) == nb.derive_structure({'cell': a})


@pytest.mark.slow
@pytest.mark.extended
def test_drnas_darts_minus_and_sampled_steps_on_the_space():
  """DrNAS adds its KL term to the network at the Dirichlet's mean, DARTS- its skip; the
  stochastic methods' sampled steps differentiate."""
  batch = (jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1)), jnp.arange(4))
  plain, _ = _method_space('darts')
  weights, stats = plain.init(jax.random.PRNGKey(0), (1, 8, 8, 1), jnp.float32)
  alphas = plain.init_architecture(jax.random.PRNGKey(2), jnp.float32)
  darts_loss = float(jax.jit(plain.make_loss())(weights, alphas, stats, batch)[0])
  # DrNAS: the loss without a draw is the network at the Dirichlet mean plus the KL penalty
  drnas, cfg = _method_space('drnas')  # (with partial channels, K=2)
  w_drnas, s_drnas = drnas.init(jax.random.PRNGKey(0), (1, 8, 8, 1), jnp.float32)
  mean = variants.dirichlet_concentration(alphas['cell'])
  mean = mean / jnp.sum(mean, -1, keepdims=True)
  at_mean = drnas.make_mixing_loss()(w_drnas, {'cell': drnas.architecture_mixing(
      alphas, jnp.float32)['cell']._replace(ops=mean)}, s_drnas, batch)[0]
  kl = cfg['drnas_kl_scale'] * jnp.sum(variants.dirichlet_kl(
      variants.dirichlet_concentration(alphas['cell'])))
  np.testing.assert_allclose(drnas.make_loss()(w_drnas, alphas, s_drnas, batch)[0],
                             at_mean + kl, rtol=1e-6)
  # DARTS-: beta * x on every edge besides eq. 2's sum; beta is 0 after the search (the loss is
  # DARTS's there) and 1 at the first epoch, where the loss differs
  minus, _ = _method_space('darts_minus')
  w_minus, s_minus = minus.init(jax.random.PRNGKey(0), (1, 8, 8, 1), jnp.float32)
  at = lambda epoch: float(minus.make_step_loss()(StepContext(None, epoch, 10)).loss(  # noqa
      w_minus, alphas, s_minus, batch)[0])
  assert at(10) == pytest.approx(darts_loss, rel=1e-6) and at(0) != pytest.approx(darts_loss)
  # a sampled step of each stochastic method is finite and differentiable in the alphas
  for method in ('gdas', 'sdarts_rs'):
    space, _ = _method_space(method)
    step = space.make_step_loss()(StepContext(jax.random.PRNGKey(4), jnp.int32(0), 10))
    g = jax.grad(lambda a: step.loss(weights, a, stats, batch)[0])(alphas)
    assert np.all(np.isfinite(g['cell'])) and np.any(g['cell'] != 0), method


data_dir = test_search_loop.data_dir  # a fake CIFAR-10 archive in the real format


def _search_config(data_dir, **overrides):
  c = search_config('nas_bench_201').to_dict()
  c.update(data_dir=data_dir, download=False, init_channels=2, cells_per_stage=1, batch_size=8,
           epochs=2, estimator='exact', log_every=1, checkpoint_every=2, progress=False,
           hessian_every=1, hessian_batch=8, tensorboard=False)
  c.update(overrides)
  return c


@pytest.mark.slow
def test_search_writes_the_benchmark_string_the_health_report_and_stops_early(data_dir,
                                                                            tmp_path):
  """The health report as a run writes it, with DARTS-ES under a rule made to fire: the search
  stops after epoch 2 and returns epoch 1's architecture, in the benchmark's string form."""
  config = _search_config(data_dir, estimator='first_order', epochs=4, early_stop='darts_es',
                          **test_search_loop.FIRING_RULE)
  result = run_search(config, str(tmp_path / 'es'), log=lambda s: None)
  records = [json.loads(l) for l in open(tmp_path / 'es' / 'metrics.jsonl')]
  epochs = [r for r in records if r['kind'] == 'epoch']
  assert int(result.state.step) == 10 and [r['epoch'] for r in epochs] == [1, 2]
  assert epochs[1]['early_stop']['stop_epoch'] == 1
  assert result.genotype.to_dict() == epochs[0]['genotype']
  text = (tmp_path / 'es' / 'genotype.txt').read_text().strip()
  assert NB201_STRING.match(text) and text == result.genotype.to_string()
  for r in epochs:
    h = np.load(tmp_path / 'es' / 'hessian' / f'epoch_{r["epoch"]:03d}.npy')
    assert h.shape == (30, 30)  # 6 edges x 5 ops
    assert r['dominant_eigenvalue'] == pytest.approx(np.linalg.eigvalsh(
        h.astype(np.float64))[-1], rel=1e-6)
    assert r['dominant_eigenvalue'] > 0 and r['hessian_examples'] == 16
    assert r['parameter_free_cell'] == sum(op in nb.PARAMETER_FREE for op, _ in r['genotype'][
        'cell'])
    assert r['second_order_share'] == 0 and r['entropy_cell'] <= np.log(5)
    assert 0 <= r['margin_cell'] <= 1
  assert {'hessian_eigenvalue.png', 'collapse_diagnostics.png', 'alpha_evolution.png',
          'alphas_epoch002.png'} <= set(os.listdir(tmp_path / 'es' / 'plots'))
  # the run is complete: called again, it steps no further
  assert int(run_search(config, str(tmp_path / 'es'), log=lambda s: None).state.step) == 10


@pytest.mark.slow
@pytest.mark.extended
def test_an_exact_search_with_the_health_report_resumes_bitwise(data_dir, tmp_path,
                                                                 monkeypatch):
  config = _search_config(data_dir, plots=False)
  full = run_search(config, str(tmp_path / 'full'), log=lambda s: None)
  # Ctrl-C after 3 of the 10 steps (checkpoint_every=2): resumed, the same state bit for bit
  interrupt_after(3, lambda: run_search(config, str(tmp_path / 'resumed'), log=lambda s: None),
                  monkeypatch)
  resumed = run_search(config, str(tmp_path / 'resumed'), log=lambda s: None)
  for x, y in zip(leaves(full.state), leaves(resumed.state), strict=True):
    np.testing.assert_array_equal(x, y)
  eigenvalues = lambda d: [r['dominant_eigenvalue'] for r in map(  # noqa: E731
      json.loads, open(tmp_path / d / 'metrics.jsonl')) if r['kind'] == 'epoch']
  assert eigenvalues('resumed') == eigenvalues('full')


@pytest.mark.slow
@pytest.mark.extended
@pytest.mark.parametrize('method', list(methods.METHODS))
def test_every_method_searches_the_space(data_dir, tmp_path, method):
  config = _search_config(data_dir, method=method, init_channels=4, partial_channels=2,
                          epochs=1, hessian_every=0, plots=False,
                          estimator='exact' if method in ('darts', 'pc_darts') else 'first_order')
  result = run_search(config, str(tmp_path), log=lambda s: None)
  assert NB201_STRING.match(result.genotype.to_string())
  assert np.all(np.isfinite(leaves(result.state.alphas)[0]))


def test_nesterov_sgd_is_pytorchs():
  """torch.optim.SGD(lr, momentum, weight_decay, nesterov=True): d = g + wd w,
  b = m b + d, w -= lr (d + m b)."""
  hp = TrainHParams(epochs=1, steps_per_epoch=10, lr=0.1, lr_min=0.1, momentum=0.9,
                    weight_decay=5e-4, grad_clip=0, nesterov=True)
  tx = optimizer(hp)
  w, b = np.array([1.0, -2.0]), np.zeros(2)
  params, state = jnp.asarray(w, jnp.float32), tx.init(jnp.asarray(w, jnp.float32))
  for g in (np.array([0.5, 0.25]), np.array([-1.0, 2.0])):
    d = g + 5e-4 * w
    b = 0.9 * b + d
    w = w - 0.1 * (d + 0.9 * b)
    updates, state = tx.update(jnp.asarray(g, jnp.float32), state, params)
    params = params + updates
    np.testing.assert_allclose(params, w, rtol=1e-6)


@pytest.mark.slow
def test_training_an_architecture_as_the_benchmark_did(data_dir, tmp_path):
  c = train_config('nas_bench_201').to_dict()
  c.update(data_dir=data_dir, download=False, genotype=MIXED, init_channels=2, cells_per_stage=1,
           batch_size=16, epochs=1, progress=False, tensorboard=False, log_every=1)
  lines = []
  result = run_train(c, str(tmp_path / 'train'), log=lines.append)
  assert result.genotype == nb.Structure.from_string(MIXED)
  net = nb.TinyNetwork(result.genotype, C=2, cells_per_stage=1)
  count = num_params(nb.network_shapes(net, (32, 32), 3, jnp.float32, False)['params'])
  assert num_params(result.state.weights) == count
  assert any(f'parameters: {count:,} (no auxiliary head)' in line for line in lines)
  assert 'Nesterov' in '\n'.join(lines)
  assert (tmp_path / 'train' / 'genotype.txt').read_text().strip() == MIXED
  assert 0 <= result.test['top1'] <= 1
  with pytest.raises(ValueError, match="auxiliary=True: NAS-Bench-201's networks train without"):
    run_train(dict(c, auxiliary=True), str(tmp_path / 'aux'), log=lambda s: None)
  with pytest.raises(ValueError, match="search_space='nb201' is unknown; allowed: darts_cnn, "
                                       'nas_bench_201'):
    run_train(dict(c, search_space='nb201'), str(tmp_path / 'bad'), log=lambda s: None)
