"""PyTorch's default initialisation, drawn in one pass, and the parameter count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax.ops import init, modules


def test_torch_default_init_bounds():
  shapes = {'dw1': {'kernel': jax.ShapeDtypeStruct((3, 3, 64), jnp.float32)},
            'pw1': {'kernel': jax.ShapeDtypeStruct((8, 16, 16), jnp.float32)},
            'classifier': {'kernel': jax.ShapeDtypeStruct((100, 10), jnp.float32),
                           'bias': jax.ShapeDtypeStruct((10,), jnp.float32)},
            'bn': {'scale': jax.ShapeDtypeStruct((4,), jnp.float32),
                   'bias': jax.ShapeDtypeStruct((4,), jnp.float32)}}
  v = init.torch_default_init(jax.random.PRNGKey(0), shapes)
  for path, bound in [(('dw1', 'kernel'), 1 / 3), (('pw1', 'kernel'), 1 / 4),
                      (('classifier', 'kernel'), 0.1), (('classifier', 'bias'), 0.1)]:
    a = np.abs(np.asarray(v[path[0]][path[1]]))
    assert a.max() <= bound and a.max() > 0.5 * bound
  np.testing.assert_array_equal(v['bn']['scale'], 1.0)
  np.testing.assert_array_equal(v['bn']['bias'], 0.0)
  with pytest.raises(KeyError, match='no default initialiser known for user/a'):
    init.torch_default_init(jax.random.PRNGKey(0),
                            {'user': {'a': jax.ShapeDtypeStruct((3,), jnp.float32)}})


def test_torch_default_init_draws_as_the_modules_own_initialisers():
  """Two implementations of PyTorch's defaults agree: the one-draw ``torch_default_init`` and
  the modules' ``torch_uniform`` initialisers give each leaf the same interval (the largest of
  >= 64 uniform draws lies within 10% of its bound with probability 1 - 0.9^64)."""
  x = jnp.ones((2, 8, 8, 3 * 16))
  module = modules.SepConv(16, 5, 1, affine=True, n_edges=3)
  own = jax.jit(lambda: module.init(jax.random.PRNGKey(0), x, False))()
  drawn = init.torch_default_init(jax.random.PRNGKey(1), jax.eval_shape(lambda: own))
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(own)[0],
                          jax.tree_util.tree_leaves(drawn)):
    a, b = np.abs(np.asarray(a)), np.abs(np.asarray(b))
    if path[-1].key == 'kernel':
      assert a.size >= 64 and 0.9 < b.max() / a.max() < 1.1, jax.tree_util.keystr(path)
    else:  # BN: scale and variance 1, bias and mean 0
      np.testing.assert_array_equal(a, b)


def test_torch_uniform_interval():
  u = np.asarray(init.torch_uniform(25)(jax.random.PRNGKey(0), (10000,)))
  assert u.min() >= -0.2 and u.max() <= 0.2 and u.min() < -0.19 and u.max() > 0.19


def test_num_params_counts_scalars():
  tree = {'a': jnp.zeros((3, 4)), 'b': [jax.ShapeDtypeStruct((5,), jnp.float32), np.float32(1)]}
  assert init.num_params(tree) == 12 + 5 + 1
  assert init.num_params({}) == 0
