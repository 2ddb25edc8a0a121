"""Weights in and out of the original PyTorch code: its exact names, its layouts, round trips.

``tests/data/quark0_reference.npz`` holds the original's own ``state_dict`` names and values for a
search network (``search/w/...``: C=4, 5 cells, parameters only) and a NetworkCIFAR
(``eval/w/...``: C=4, 5 cells, DARTS_V2, auxiliary head, running statistics included).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import interop
from darts_jax.genotypes import DARTS_V2, AmoebaNet
from darts_jax.networks import NetworkCIFAR
from darts_jax.supernet import SupernetConfig, supernet_shapes


def _eval_shapes(model, dtype=jnp.float32):
  x = jnp.zeros((2, 32, 32, 3), dtype)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, True))


def test_search_network_round_trip_with_the_originals_names(reference_path, x64):
  named = interop.load_npz_weights(reference_path, 'search/w/')
  shapes = supernet_shapes(SupernetConfig(C=4, layers=5), dtype=jnp.float64)
  variables = interop.from_original(named, {'params': shapes.weights,
                                            'batch_stats': shapes.batch_stats},
                                    require=('params',))
  back = interop.to_original({'params': variables['params']})
  assert set(back) == set(named)  # every name of the original, and no other
  chex.assert_trees_all_equal(back, named)
  params = variables['params']
  # layouts: dense OIHW -> HWIO, linear (out, in) -> (in, out)
  np.testing.assert_array_equal(params['stem_conv']['kernel'],
                                named['stem.0.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params['classifier']['kernel'], named['classifier.weight'].T)
  # edge 3 of cell 0 (node 1's input 1) is slot 3 of the stack leaving the cell inputs; op 4 of
  # PRIMITIVES is sep_conv_3x3, whose module 1 is the first depthwise (C, 1, k, k) convolution
  dw = params['cell0']['edges_01']['sep_conv_3x3']['dw1']['kernel'][..., 3 * 4:4 * 4]
  np.testing.assert_array_equal(dw, named['cells.0._ops.3._ops.4.op.1.weight'][:, 0]
                                .transpose(1, 2, 0))
  # the running statistics, not in the file, start at PyTorch's 0 and 1
  np.testing.assert_array_equal(variables['batch_stats']['stem_bn']['var'], 1.0)


def test_network_cifar_round_trip_with_the_originals_names(reference_path, x64):
  named = interop.load_npz_weights(reference_path, 'eval/w/')
  shapes = _eval_shapes(NetworkCIFAR(4, 10, 5, True, DARTS_V2), jnp.float64)
  variables = interop.from_original(named, shapes)
  back = interop.to_original(variables)
  assert set(back) == set(named)
  chex.assert_trees_all_equal(back, named)
  np.testing.assert_array_equal(variables['batch_stats']['cell0']['preprocess0']['bn']['mean'],
                                named['cells.0.preprocess0.op.2.running_mean'])
  # the auxiliary head's 2x2 convolution, OIHW -> HWIO
  np.testing.assert_array_equal(variables['params']['aux']['conv2']['kernel'],
                                named['auxiliary_head.features.5.weight'].transpose(2, 3, 1, 0))


def test_mismatched_network_and_names_are_reported(reference_path):
  named = interop.load_npz_weights(reference_path, 'search/w/')
  wrong = supernet_shapes(SupernetConfig(C=4, layers=4))
  with pytest.raises(ValueError, match=r'does not fit .* \(network size differs\?\)'):
    interop.from_original(named, {'params': wrong.weights}, require=('params',))
  shapes = supernet_shapes(SupernetConfig(C=4, layers=5))
  del named['classifier.bias']
  named['cells.9.preprocess1.op.1.weight'] = np.zeros((4, 16, 1, 1))
  with pytest.raises(ValueError, match=r"1 missing \(e.g. \['classifier.bias'\]\), 1 unexpected"):
    interop.from_original(named, {'params': shapes.weights}, require=('params',))


def test_ops_are_numbered_by_position_in_the_searched_subset():
  primitives = ('none', 'max_pool_3x3', 'sep_conv_3x3')
  config = SupernetConfig(C=2, layers=3, primitives=primitives)
  shapes = supernet_shapes(config, (8, 8))
  variables = {'params': shapes.weights, 'batch_stats': shapes.batch_stats}
  rng = np.random.default_rng(0)
  values = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(s.dtype), variables)
  names = interop.to_original(values, primitives=primitives)
  # sep_conv_3x3 is op 2 of this subset: module 1 of its sequence is the first depthwise conv;
  # edge 13 is slot 0 of the last group; the kernel is stored (C, 1, k, k)
  dw = values['params']['cell0']['edges_4']['sep_conv_3x3']['dw1']['kernel']
  np.testing.assert_array_equal(names['cells.0._ops.13._ops.2.op.1.weight'],
                                np.asarray(dw).transpose(2, 0, 1)[:, None])
  assert 'cells.0._ops.13._ops.1.1.running_mean' in names  # max pool's BN
  chex.assert_trees_all_equal(interop.from_original(names, variables, primitives=primitives),
                              values)


def test_nodes_set_the_edge_numbering():
  """Two nodes: 5 edges per cell, edge 4 (node 1's input from node 0) alone in 'edges_2'."""
  config = SupernetConfig(C=2, layers=1, nodes=2, multiplier=2, primitives=('skip_connect',
                                                                            'sep_conv_3x3'))
  shapes = supernet_shapes(config, (8, 8))
  rng = np.random.default_rng(2)
  values = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(s.dtype),
                                  {'params': shapes.weights})
  names = interop.to_original(values, nodes=2, primitives=config.primitives)
  edges = {int(k.split('.')[3]) for k in names if k.startswith('cells.0._ops.')}
  assert edges == set(range(5))
  pw = values['params']['cell0']['edges_2']['sep_conv_3x3']['pw2']['kernel'][0]
  np.testing.assert_array_equal(names['cells.0._ops.4._ops.1.op.6.weight'][:, :, 0, 0], pw.T)
  chex.assert_trees_all_equal(
      interop.from_original(names, values, nodes=2, primitives=config.primitives), values)


def test_nasnet_and_amoebanet_ops_map():
  model = NetworkCIFAR(4, 10, 5, True, AmoebaNet)
  shapes = _eval_shapes(model)
  rng = np.random.default_rng(1)
  values = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)
  names = interop.to_original(values)
  # AmoebaNet's reduce op 8 is conv_7x1_1x7: (1, 7) then (7, 1) convolutions, then BN
  assert names['cells.1._ops.8.op.1.weight'].shape == (8, 8, 1, 7)
  assert names['cells.1._ops.8.op.2.weight'].shape == (8, 8, 7, 1)
  assert names['cells.1._ops.8.op.3.running_var'].shape == (8,)
  assert names['cells.1._ops.3.op.1.weight'].shape == (8, 1, 7, 7)  # sep_conv_7x7
  chex.assert_trees_all_equal(interop.from_original(names, shapes), values)


def test_load_npz_weights_keeps_and_strips_a_prefix(tmp_path):
  path = tmp_path / 'weights.npz'
  arrays = {'eval/w/stem.0.weight': np.arange(6.0).reshape(1, 1, 2, 3),
            'eval/w/classifier.bias': np.ones(3), 'search/w/classifier.bias': np.zeros(3)}
  np.savez(path, **arrays)
  got = interop.load_npz_weights(str(path), 'eval/w/')
  chex.assert_trees_all_equal(got, {'stem.0.weight': arrays['eval/w/stem.0.weight'],
                                    'classifier.bias': np.ones(3)})
  chex.assert_trees_all_equal(interop.load_npz_weights(str(path)), arrays)
