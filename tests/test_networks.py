"""Evaluation networks: the published parameter counts, drop path, auxiliary head, modes and
input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax.genotypes import DARTS_V1, DARTS_V2, Genotype
from darts_jax.networks import EvalCell, NetworkCIFAR, NetworkImageNet
from darts_jax.ops import init


def _count(model, size):
  x = jnp.zeros((2, size, size, 3))
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, True))
  return init.num_params(shapes['params'])


@pytest.mark.parametrize('genotype,without_aux,with_aux', [
    (DARTS_V2, 3_349_342, 3_825_768), (DARTS_V1, 3_169_414, 3_645_840)])
def test_network_cifar_has_the_originals_parameter_count(genotype, without_aux, with_aux):
  """The original's counts (shared/REFERENCE.md; DARTS_V2 is the paper's 3.3M), which also pin
  the auxiliary head to the output of cell 2 * layers // 3."""
  for aux, count in ((False, without_aux), (True, with_aux)):
    assert _count(NetworkCIFAR(36, 10, 20, aux, genotype), 32) == count


@pytest.mark.parametrize('genotype,without_aux,with_aux', [
    (DARTS_V2, 4_718_752, 5_979_528), (DARTS_V1, 4_510_432, 5_771_208)])
def test_network_imagenet_has_the_originals_parameter_count(genotype, without_aux, with_aux):
  for aux, count in ((False, without_aux), (True, with_aux)):
    assert _count(NetworkImageNet(48, 1000, 14, aux, genotype), 224) == count


def _cell(normal):
  g = Genotype(normal=normal, normal_concat=[2, 3, 4, 5], reduce=normal,
               reduce_concat=[2, 3, 4, 5])
  return EvalCell(g, 3, 3, 3, reduction=False, reduction_prev=False)


def _run(cell, p, key=0):
  s = jax.random.normal(jax.random.PRNGKey(5), (16, 4, 4, 3))
  variables = cell.init(jax.random.PRNGKey(0), s, s, False)
  out, _ = cell.apply(variables, s, s, True, p, rngs={'drop_path': jax.random.PRNGKey(key)},
                      mutable=['batch_stats'])
  return np.asarray(out)


def test_drop_path_never_touches_identity_ops():
  cell = _cell([('skip_connect', 0), ('skip_connect', 1)] * 4)
  np.testing.assert_array_equal(_run(cell, 0.9), _run(cell, 0.0))


def test_drop_path_drops_whole_samples_and_rescales():
  # node 0 = drop(maxpool(s0)) + drop(maxpool(s0)), each term kept with p 0.5 and doubled:
  # per sample the node is 0, 1 or 2 times its undropped value
  cell = _cell([('max_pool_3x3', 0), ('max_pool_3x3', 0)] * 4)
  plain = _run(cell, 0.0)[..., :3]
  dropped = _run(cell, 0.5)[..., :3]
  ratios = [np.unique(np.round(d / p, 6)) for d, p in zip(dropped, plain)]
  assert all(len(r) == 1 and r[0] in (0.0, 1.0, 2.0) for r in ratios)
  counts = np.bincount([int(r[0]) for r in ratios], minlength=3)
  assert counts.min() > 0  # 16 samples: each outcome (1/4, 1/2, 1/4) occurs


def test_auxiliary_head_in_training_only():
  model = NetworkCIFAR(4, 10, 5, True, DARTS_V2)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(1), x, True))
  variables = init.torch_default_init(jax.random.PRNGKey(1), shapes)
  # initialised in evaluation mode, the auxiliary head still gets its weights
  eval_shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(1), x, False))
  assert jax.tree_util.tree_structure(eval_shapes) == jax.tree_util.tree_structure(shapes)
  logits, aux = jax.jit(lambda v: model.apply(v, x, False))(variables)
  assert logits.shape == (2, 10) and aux is None
  train = jax.jit(lambda v: model.apply(v, x, True, mutable=['batch_stats'])[0])
  logits_t, aux_t = train(variables)
  # the head's classifier bias moves the auxiliary logits one for one, and the logits not at all
  aux_bias = "['params']['aux']['classifier']['bias']"
  shifted = jax.tree_util.tree_map_with_path(
      lambda path, a: a + 1.0 if jax.tree_util.keystr(path) == aux_bias else a, variables)
  logits_s, aux_s = train(shifted)
  np.testing.assert_array_equal(logits_s, logits_t)
  np.testing.assert_allclose(aux_s, aux_t + 1.0, rtol=1e-6)
  no_aux = NetworkCIFAR(4, 10, 5, False, DARTS_V2)
  assert 'aux' not in jax.eval_shape(lambda: no_aux.init(jax.random.PRNGKey(1), x, True))['params']


def test_input_checks():
  with pytest.raises(ValueError, match='input image 30x30 .* multiples of 4'):
    jax.eval_shape(lambda: NetworkCIFAR(4, 10, 5, False, DARTS_V2).init(
        jax.random.PRNGKey(0), jnp.zeros((2, 30, 30, 3))))
  with pytest.raises(ValueError,
                     match='auxiliary head needs a map that pools to 2x2, got a 4x4 map'):
    jax.eval_shape(lambda: NetworkCIFAR(4, 10, 5, True, DARTS_V2).init(
        jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 3)), True))
  with pytest.raises(ValueError, match='NetworkImageNet needs an even C .* got C=5'):
    jax.eval_shape(lambda: NetworkImageNet(5, 10, 3, False, DARTS_V2).init(
        jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3))))
  with pytest.raises(ValueError, match="unknown op 'conv_9x9'"):
    bad = Genotype(normal=[('conv_9x9', 0), ('skip_connect', 1)], normal_concat=[2],
                   reduce=[('skip_connect', 0), ('skip_connect', 1)], reduce_concat=[2])
    jax.eval_shape(lambda: NetworkCIFAR(4, 10, 3, False, bad).init(
        jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3))))


def test_published_reference_cells_build():
  from darts_jax.genotypes import NASNet, parse_genotype
  assert parse_genotype('NASNet') is NASNet and len(NASNet.normal) == 10
  x = jnp.zeros((2, 32, 32, 3))
  for name in ('NASNet', 'AmoebaNet'):
    shapes = jax.eval_shape(lambda: NetworkCIFAR(4, 10, 5, False, name).init(
        jax.random.PRNGKey(0), x))
    # NASNet's normal cell concatenates 5 nodes: the classifier sees 5 * 16 channels
    assert shapes['params']['classifier']['kernel'].shape[0] == (80 if name == 'NASNet' else 48)


def test_bad_drop_path_and_concat():
  cell = _cell([('max_pool_3x3', 0), ('max_pool_3x3', 0)] * 4)
  with pytest.raises(ValueError, match=r'drop_path_prob=1.0: must be in \[0, 1\)'):
    _run(cell, 1.0)
  s = jnp.zeros((2, 4, 4, 3))
  variables = cell.init(jax.random.PRNGKey(0), s, s, False)
  with pytest.raises(ValueError, match="needs a PRNG key: pass rngs={'drop_path'"):
    cell.apply(variables, s, s, True, 0.2, mutable=['batch_stats'])
  with pytest.raises(ValueError, match='reduce_concat: 1 is a cell input'):
    Genotype(normal=[('skip_connect', 0), ('skip_connect', 1)], normal_concat=[2],
             reduce=[('skip_connect', 0), ('skip_connect', 1)], reduce_concat=[1, 2])
  with pytest.raises(ValueError, match='normal_concat is empty'):
    Genotype(normal=[('skip_connect', 0), ('skip_connect', 1)], normal_concat=[],
             reduce=[('skip_connect', 0), ('skip_connect', 1)], reduce_concat=[2])
  with pytest.raises(ValueError, match='C=0: must be a positive integer'):
    jax.eval_shape(lambda: NetworkCIFAR(0, 10, 5, False, DARTS_V2).init(
        jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3))))
  with pytest.raises(ValueError, match='images must be floating point'):
    jax.eval_shape(lambda: NetworkCIFAR(4, 10, 5, False, DARTS_V2).init(
        jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3), jnp.uint8)))


def test_imagenet_forward_small_input():
  """Evaluation mode normalises with the running statistics: each sample's logits are its own,
  whatever else is in the batch (batch statistics would mix the samples)."""
  model = NetworkImageNet(8, 7, 3, False, DARTS_V2)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(1), x))
  forward = jax.jit(lambda v, x: model.apply(v, x))
  variables = init.torch_default_init(jax.random.PRNGKey(1), shapes)
  logits, aux = forward(variables, x)
  assert logits.shape == (2, 7) and aux is None and np.all(np.isfinite(logits))
  other, _ = forward(variables, x.at[1].set(3.0 * x[1]))
  np.testing.assert_allclose(other[0], logits[0], rtol=1e-6)
  assert not np.allclose(other[1], logits[1])
