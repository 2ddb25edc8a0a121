"""PC-DARTS (Xu et al., 2020) on the DARTS supernet: partial channels, the channel shuffle, edge
normalisation and its genotype rule, against closed forms, the published parameter count and the
original's float64 outputs (``shared/reference/pcdarts_reference.npz``)."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import genotypes, methods
from darts_jax.ops import modules
from darts_jax.spaces import cnn
from darts_jax.supernet import (SearchCell, SupernetConfig, cell_specs, channel_shuffle,
                                init_alphas, init_supernet, make_loss, node_softmax,
                                supernet_shapes)

PCDARTS_REFERENCE = pathlib.Path(__file__).parent / 'data' / 'pcdarts_reference.npz'


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def test_paper_search_network_has_the_originals_parameter_count():
  # PCDARTS_README.md: Network(16, 10, 8) has 299,578 parameters and 252 architecture entries
  # (2 x 14 x 8 alphas + 2 x 14 betas); DARTS's of the same size 1,930,618
  config = SupernetConfig(partial_channels=4, edge_normalization=True)
  assert _count(supernet_shapes(config).weights) == 299_578
  assert _count(jax.eval_shape(lambda: init_alphas(jax.random.PRNGKey(0), config))) == 252
  assert _count(supernet_shapes(SupernetConfig()).weights) == 1_930_618


def test_channel_shuffle_closed_form():
  # out[..., 4m + g] = a[..., g q + m]; for 12 channels the README's permutation
  a = jnp.arange(12.0).reshape(1, 1, 1, 12)
  np.testing.assert_array_equal(np.asarray(channel_shuffle(a, 4)).ravel(),
                                [0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11])
  np.testing.assert_array_equal(channel_shuffle(a, 1), a)  # K = 1: DARTS, nothing moves


def test_node_softmax_is_a_softmax_over_each_nodes_own_edges():
  betas = jnp.arange(14.0) / 7
  w = np.asarray(node_softmax(betas, 4))
  for start, n in ((0, 2), (2, 3), (5, 4), (9, 5)):
    e = np.exp(np.arange(start, start + n) / 7)
    np.testing.assert_allclose(w[start:start + n], e / e.sum(), rtol=1e-6)
  np.testing.assert_allclose(genotypes.node_softmax_np(np.asarray(betas), 4), w, rtol=1e-6)


def _cell(config, spec_index=0):
  spec = cell_specs(config)[spec_index]
  return SearchCell(**spec, config=config), spec


@pytest.mark.parametrize('spec_index', [0, 1])  # a normal and a reduction cell
@pytest.mark.slow
@pytest.mark.extended
def test_one_channel_group_with_edge_normalisation_is_darts_with_weighted_edges(spec_index, x64):
  """K = 1 with edge betas is DARTS whose edge e mixes with softmax(alpha_e) * w_e: the mixed op
  is linear in its mixing weights (the limit the issue names)."""
  config = SupernetConfig(C=4, layers=3, partial_channels=1, edge_normalization=True)
  cell, spec = _cell(config, spec_index)
  key = jax.random.PRNGKey(spec_index)
  s0 = jax.random.normal(key, (2, 8, 8, spec['c_prev_prev']), jnp.float64)
  s1 = jax.random.normal(jax.random.fold_in(key, 1), (2, 8, 8, spec['c_prev']), jnp.float64)
  mixing = jax.nn.softmax(jax.random.normal(jax.random.fold_in(key, 2), config.alpha_shape,
                                            jnp.float64))
  edge = node_softmax(jax.random.normal(jax.random.fold_in(key, 3), (14,), jnp.float64), 4)
  variables = cell.init(key, s0, s1, mixing, edge, None, True)
  pc, _ = cell.apply(variables, s0, s1, mixing, edge, None, True, mutable=['batch_stats'])
  darts, _ = cell.apply(variables, s0, s1, mixing * edge[:, None], None, None, True,
                        mutable=['batch_stats'])
  np.testing.assert_allclose(pc, darts, rtol=1e-12, atol=1e-12)


def test_bypassed_channels_reach_the_cell_unchanged():
  """With every alpha on 'none' the op channels are zero, and what remains of node 0 is the
  bypassed 3/4 of its two inputs, shuffled and weighted by the edge weights: a closed form."""
  config = SupernetConfig(C=8, layers=3, partial_channels=4, edge_normalization=True,
                          primitives=('none', 'skip_connect'))
  cell, spec = _cell(config, 0)
  key = jax.random.PRNGKey(0)
  s0 = jax.random.normal(key, (2, 4, 4, spec['c_prev_prev']))
  s1 = jax.random.normal(jax.random.fold_in(key, 1), (2, 4, 4, spec['c_prev']))
  mixing = jnp.tile(jnp.array([[1.0, 0.0]]), (14, 1))  # all weight on 'none'
  edge = node_softmax(jax.random.normal(jax.random.fold_in(key, 3), (14,)), 4)
  variables = cell.init(key, s0, s1, mixing, edge, None, True)
  out, updates = cell.apply(variables, s0, s1, mixing, edge, None, True, mutable=['batch_stats'])
  # the preprocessed inputs, by the cell's own preprocessing parameters (ReLU, 1x1, BN)
  h = [modules.ReLUConvBN(s.shape[-1], spec['c'], False).apply(
      {'params': variables['params'][n], 'batch_stats': variables['batch_stats'][n]}, s, True,
      mutable=['batch_stats'])[0] for s, n in ((s0, 'preprocess0'), (s1, 'preprocess1'))]
  c, q = spec['c'], spec['c'] // 4

  def edge_out(x):  # op part zero, bypass kept: a = [0 (q), x[q:]], then the shuffle
    a = jnp.concatenate([jnp.zeros_like(x[..., :q]), x[..., q:]], axis=-1)
    return a.reshape(*a.shape[:-1], 4, q).swapaxes(-1, -2).reshape(a.shape)

  node0 = edge[0] * edge_out(h[0]) + edge[1] * edge_out(h[1])
  np.testing.assert_allclose(out[..., :c], node0, rtol=1e-5, atol=1e-6)


def test_partial_channels_that_do_not_divide_are_one_line_errors():
  with pytest.raises(ValueError, match=r'partial_channels=3: a cell of 16 channels cannot be '
                                       r'split into 3 parts \(C=16 must be a multiple of 3\)'):
    SupernetConfig(partial_channels=3)
  # two reduction cells first: 12 channels give their ops 3
  with pytest.raises(ValueError, match=r"odd 3, which skip_connect's FactorizedReduce cannot "
                                       r'halve: a reduction cell needs a multiple of 8 channels'):
    SupernetConfig(C=6, layers=2, partial_channels=4)
  with pytest.raises(ValueError, match=r'partial_channels=0: must be a positive integer'):
    SupernetConfig(partial_channels=0)
  config = SupernetConfig(C=4, layers=3, partial_channels=2, edge_normalization=True)
  variables = init_supernet(jax.random.PRNGKey(0), config, (8, 8))
  with pytest.raises(ValueError, match=r"alphas must be a dict with keys 'normal', 'reduce', "
                                       r"'betas_normal' and 'betas_reduce', got \['normal', "
                                       r"'reduce'\]"):
    make_loss(config)(variables.weights, init_alphas(jax.random.PRNGKey(0), SupernetConfig(
        C=4, layers=3)), variables.batch_stats, (jnp.zeros((2, 8, 8, 3)), jnp.array([0, 1])))


def test_genotype_ranks_edges_by_betas():
  """Equal alphas on every edge: the betas alone choose each node's two edges, the alphas the
  op (PC-DARTS's genotype(): W = softmax(alpha) * softmax_node(beta))."""
  alphas = np.zeros((14, 8))
  alphas[:, 4] = 1.0  # sep_conv_3x3 everywhere
  betas = np.zeros(14)
  betas[[1, 4, 5, 11]] = [2.0, 1.0, 3.0, 5.0]  # node 0: edge 1 first; node 1: state 2 first
  arch = {'normal': alphas, 'reduce': alphas, 'betas_normal': betas, 'betas_reduce': betas}
  g = genotypes.derive_genotype(arch)
  # ties among the rest keep the lower state first (the original's stable sort)
  assert list(g.normal) == [('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 2),
                      ('sep_conv_3x3', 0), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
                      ('sep_conv_3x3', 2), ('sep_conv_3x3', 0)]
  without = genotypes.derive_genotype({'normal': alphas, 'reduce': alphas})
  assert list(without.normal[:2]) == [('sep_conv_3x3', 0), ('sep_conv_3x3', 1)]


def test_pc_darts_method_builds_the_pc_space():
  cfg = dict(init_channels=8, layers=5, nodes=4, multiplier=4, stem_multiplier=3, primitives=())
  space = methods.build('pc_darts', cfg, cnn.space_from_run, 10, 3)
  arch = space.init_architecture(jax.random.PRNGKey(0), jnp.float32)
  assert sorted(arch) == ['betas_normal', 'betas_reduce', 'normal', 'reduce']
  weights, _ = space.init(jax.random.PRNGKey(0), (1, 32, 32, 3), jnp.float32)
  assert _count(weights) == _count(supernet_shapes(SupernetConfig(
      C=8, layers=5, partial_channels=4, edge_normalization=True)).weights)
  darts = methods.build('darts', {**cfg, 'partial_channels': 4}, cnn.space_from_run, 10, 3)
  assert sorted(darts.init_architecture(jax.random.PRNGKey(0), jnp.float32)) == ['normal',
                                                                                  'reduce']


@pytest.mark.slow
@pytest.mark.extended
def test_pc_darts_reference_file_matches_the_original(x64):
  from darts_jax import reference
  report = reference.verify(str(PCDARTS_REFERENCE))
  bad = {k: v for k, v in report['quantities'].items() if v['status'] != reference.PASS}
  assert not bad and report['ok'], bad
  assert report['quantities']['genotypes']['matched'] == 20
