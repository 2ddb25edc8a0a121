"""The loss against its closed form, and the mixed-precision cast."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import losses


def test_cross_entropy_closed_form(x64):
  # softmax of log(1, 2, 3) is (1, 2, 3) / 6: the losses are log 6 / 1, log 6 / 2 and log 6 / 3
  logits = jnp.log(jnp.array([[1.0, 2.0, 3.0]] * 3)) + jnp.array([[0.0], [5.0], [-7.0]])
  labels = jnp.array([0, 1, 2])
  want = np.mean([np.log(6.0), np.log(3.0), np.log(2.0)])  # shifts of a row change nothing
  loss = losses.cross_entropy(logits, labels)
  assert loss.dtype == jnp.float64 and float(loss) == pytest.approx(want, rel=1e-15)
  # its gradient: (softmax - one_hot) / batch
  g = jax.grad(losses.cross_entropy)(logits, labels)
  np.testing.assert_allclose(g, (np.array([[1, 2, 3]] * 3) / 6 - np.eye(3)) / 3, rtol=1e-14)


def test_cross_entropy_of_bf16_logits_is_float32():
  logits = jnp.array([[0.0, 100.0], [3.0, 3.0]], jnp.bfloat16)
  loss = losses.cross_entropy(logits, jnp.array([0, 1]))
  assert loss.dtype == jnp.float32
  assert float(loss) == pytest.approx((100.0 + np.log(2.0)) / 2, rel=1e-6)


def test_cast_floating_casts_floating_leaves_only():
  tree = {'w': jnp.ones((2, 3)), 'step': jnp.array(3, jnp.int32), 'mask': jnp.array([True])}
  cast = losses.cast_floating(tree, 'bfloat16')
  assert {k: v.dtype for k, v in cast.items()} == {
      'w': jnp.bfloat16, 'step': jnp.int32, 'mask': jnp.bool_}
  assert losses.cast_floating(tree, jnp.bfloat16)['w'].dtype == jnp.bfloat16
  assert losses.cast_floating(tree, None) is tree
  # inside the differentiated function: the gradient comes back in the leaf's own precision
  g = jax.grad(lambda w: jnp.sum(losses.cast_floating(w, 'bfloat16')**2).astype(jnp.float32))(
      jnp.full((3,), 1.5))
  assert g.dtype == jnp.float32 and np.array_equal(g, [3.0, 3.0, 3.0])


@pytest.mark.parametrize('dtype', ['float16', jnp.float16, 'bf17'])
def test_cast_floating_bad_dtype_is_a_one_line_error(dtype):
  with pytest.raises(ValueError) as e:
    losses.cast_floating({'w': jnp.ones(2)}, dtype)
  message = str(e.value)
  assert '\n' not in message and 'allowed: bfloat16' in message
  assert message.startswith(f"compute_dtype='{'bf17' if dtype == 'bf17' else 'float16'}'")
  assert losses.COMPUTE_DTYPES == ('bfloat16',)
