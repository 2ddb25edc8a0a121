"""The op registry: the original's op names, user ops, and clear errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax.genotypes import PRIMITIVES
from darts_jax.ops import modules, registry


def test_ops_are_the_originals():
  assert list(registry.OPS) == [*PRIMITIVES, 'sep_conv_7x7', 'conv_7x1_1x7']
  # skip_connect is the identity, or a FactorizedReduce on a reducing edge (the original's rule)
  assert isinstance(registry.make_op('skip_connect', 4, 1, True), modules.Identity)
  assert isinstance(registry.make_op('skip_connect', 4, 2, True), modules.FactorizedReduce)
  # the search network adds a BN after pooling; the evaluation networks do not
  assert registry.make_op('max_pool_3x3', 4, 1, False, search=True).bn
  assert not registry.make_op('avg_pool_3x3', 4, 1, True).bn
  op = registry.make_op('dil_conv_5x5', 4, 2, False, n_edges=3, impl='xla', module_name='op')
  assert (op.kernel_size, op.stride, op.dilation, op.n_edges, op.impl, op.name) == (
      5, 2, 2, 3, 'xla', 'op')


def test_unknown_op_and_user_op():
  with pytest.raises(ValueError, match="unknown op 'conv_7x7'; allowed: none, max_pool_3x3"):
    registry.make_op('conv_7x7', 4, 1, True)

  class Double(nn.Module):
    def __call__(self, x, train):
      return 2 * x

  ops = registry.make_op_registry(
      {'double': registry.single_edge_op(lambda c, stride, affine, name: Double(name=name))})
  assert 'double' in ops and 'sep_conv_3x3' in ops and 'double' not in registry.OPS
  op = registry.make_op('double', 2, 1, False, n_edges=3, search=True, ops=ops)
  assert isinstance(op, modules.PerEdge)
  x = jnp.arange(24.0).reshape(1, 2, 2, 6)
  np.testing.assert_array_equal(op.apply({}, x, True), 2 * x)
  with pytest.raises(ValueError, match='factory must be callable'):
    registry.make_op_registry({'bad': 3})
  with pytest.raises(ValueError, match='op names must be non-empty strings'):
    registry.make_op_registry({'': registry.OPS['none']})


def test_registry_is_read_only_and_hashable():
  a = registry.make_op_registry()
  assert a == registry.OPS and hash(a) == hash(registry.OPS) and a is not registry.OPS
  with pytest.raises(TypeError):
    a['none'] = a['skip_connect']
  replaced = registry.make_op_registry({'none': a['skip_connect']})
  assert replaced != registry.OPS and list(replaced) == list(registry.OPS)
  registry.check_op_names(PRIMITIVES)
  with pytest.raises(ValueError, match="unknown op 'conv_9x9'"):
    registry.check_op_names(['none', 'conv_9x9'], replaced)


def test_every_op_keeps_or_halves_the_map():
  x = jnp.ones((2, 8, 8, 4))
  for name in registry.OPS:
    for stride in (1, 2):
      op = registry.make_op(name, 4, stride, True)
      shapes = jax.eval_shape(lambda: op.init_with_output(jax.random.PRNGKey(0), x, False))[0]
      assert shapes.shape == (2, 8 // stride, 8 // stride, 4), (name, stride)
