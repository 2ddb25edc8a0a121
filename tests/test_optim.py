"""The optimiser pieces both runs use (``darts_jax.optim``) against closed forms: PyTorch's
gradient clipping, the per-epoch cosine schedule, the epoch sums and the non-finite guard."""

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from darts_jax import optim


def test_torch_clip_closed_form():
  g = {'a': jnp.array([3.0, 4.0]), 'b': jnp.array([12.0])}  # global norm 13
  clipped, _ = optim.clip_by_global_norm_torch(5.0).update(g, optax.EmptyState())
  scale = 5.0 / (13.0 + 1e-6)  # PyTorch's clip_grad_norm_: max_norm / (norm + 1e-6)
  np.testing.assert_allclose(clipped['a'], np.array([3.0, 4.0]) * scale, rtol=1e-7)
  np.testing.assert_allclose(clipped['b'], np.array([12.0]) * scale, rtol=1e-7)
  small, _ = optim.clip_by_global_norm_torch(20.0).update(g, optax.EmptyState())
  np.testing.assert_array_equal(small['a'], g['a'])  # below the limit: untouched


def test_cosine_per_epoch_closed_form():
  lr = optim.cosine_per_epoch(0.1, 0.01, epochs=4, steps_per_epoch=3)
  got = [float(lr(t)) for t in range(12)]
  expected = [0.01 + 0.09 * 0.5 * (1 + np.cos(np.pi * (t // 3) / 4)) for t in range(12)]
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  assert got[0] == pytest.approx(0.1) and got[2] == got[0] and got[3] < got[2]


class _State(NamedTuple):
  step: jnp.ndarray
  value: jnp.ndarray
  nonfinite_step: jnp.ndarray


def test_epoch_sums_reset_at_each_epoch_start():
  sums = {'loss': jnp.array(5.0), 'steps': jnp.array(3)}
  kept = optim.epoch_sums(sums, jnp.array(7), steps_per_epoch=4)  # step 7: inside epoch 2
  reset = optim.epoch_sums(sums, jnp.array(8), steps_per_epoch=4)  # step 8: epoch 3 begins
  assert float(kept['loss']) == 5.0 and int(kept['steps']) == 3
  assert float(reset['loss']) == 0.0 and int(reset['steps']) == 0


def test_keep_if_finite_keeps_the_old_state_and_records_the_first_bad_step():
  old = _State(jnp.array(4), jnp.array([1.0, 2.0]), jnp.array(-1))
  new = _State(jnp.array(5), jnp.array([3.0, 4.0]), jnp.array(-1))
  good = optim.keep_if_finite(new, old, jnp.array(1.0), {'g': jnp.ones(2)})
  np.testing.assert_array_equal(good.value, [3.0, 4.0])
  assert int(good.step) == 5 and int(good.nonfinite_step) == -1
  bad = optim.keep_if_finite(new, old, {'g': jnp.array([1.0, jnp.inf])})
  np.testing.assert_array_equal(bad.value, [1.0, 2.0])  # nothing moved
  assert int(bad.step) == 4 and int(bad.nonfinite_step) == 4
  # once a step was bad, every later step is a no-op, however finite
  later = optim.keep_if_finite(new._replace(step=jnp.array(5)), bad, jnp.array(0.0))
  assert int(later.step) == 4 and int(later.nonfinite_step) == 4
  assert not bool(optim.all_finite(jnp.array([jnp.nan]), jnp.ones(3)))
  assert bool(optim.all_finite(jnp.zeros(2), {'a': jnp.ones(1)}))
