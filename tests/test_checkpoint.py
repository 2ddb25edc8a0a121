"""Checkpoints (``darts_jax.checkpoint``): a state round-trips bit for bit under readable
names, a checkpoint of the earlier training state (``params``) restores into today's
(``weights``), ``read`` needs no state, and the workdir guard names the differing keys."""

import json
import os
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from darts_jax import checkpoint as ckpt_lib


class State(NamedTuple):
  step: jnp.ndarray
  weights: dict
  opt_state: tuple


class OldState(NamedTuple):  # the training state as version 0.1 wrote it
  step: jnp.ndarray
  params: dict
  opt_state: tuple


def _state(seed=0):
  rng = np.random.default_rng(seed)
  weights = {'conv': {'kernel': jnp.asarray(rng.normal(size=(3, 3, 2)), jnp.float32)},
             'bn': {'scale': jnp.asarray(rng.normal(size=(2,)), jnp.float32)}}
  return State(jnp.asarray(7, jnp.int32), weights, optax.sgd(0.1, momentum=0.9).init(weights))


def test_round_trip_is_bitwise_under_readable_names(tmp_path):
  state = _state()
  names = ckpt_lib.leaf_names(state)
  assert 'weights.conv.kernel' in names and 'step' in names
  checkpoints = ckpt_lib.Checkpoints(str(tmp_path), max_to_keep=2)
  try:
    checkpoints.save(7, state, {'epoch': 1})
    restored, meta = checkpoints.restore(_state(seed=1))  # the structure of a fresh state
    assert meta == {'epoch': 1}
    for name, value in ckpt_lib.flatten_named(state).items():
      np.testing.assert_array_equal(np.asarray(ckpt_lib.flatten_named(restored)[name]),
                                    np.asarray(value))
    assert set(checkpoints.read()) == set(names)
  finally:
    checkpoints.close()


def test_a_checkpoint_of_the_earlier_params_field_restores_into_weights(tmp_path):
  new = _state()
  old = OldState(new.step, new.weights, new.opt_state)
  checkpoints = ckpt_lib.Checkpoints(str(tmp_path))
  try:
    checkpoints.save(7, old)
    assert any(n.startswith('params.') for n in checkpoints.read())
    restored, _ = checkpoints.restore(_state(seed=1))
  finally:
    checkpoints.close()
  np.testing.assert_array_equal(restored.weights['conv']['kernel'], new.weights['conv']['kernel'])


def test_a_checkpoint_of_another_network_is_refused_by_name(tmp_path):
  checkpoints = ckpt_lib.Checkpoints(str(tmp_path))
  try:
    checkpoints.save(1, _state())
    other = _state()._replace(weights={'conv': {'kernel': jnp.zeros((3, 3, 4))},
                                       'bn': {'scale': jnp.zeros(2)}})
    with pytest.raises(ValueError, match=r"checkpoint entry 'weights.conv.kernel' has shape "
                                         r'\(3, 3, 2\); this run needs \(3, 3, 4\)'):
      checkpoints.restore(other._replace(opt_state=optax.sgd(0.1, momentum=0.9).init(
          other.weights)))
    with pytest.raises(ValueError, match=r"checkpoint does not fit this run: missing "
                                         r"\['weights.extra'\]"):
      checkpoints.restore(_state()._replace(weights={**_state().weights, 'extra': jnp.zeros(1)}))
  finally:
    checkpoints.close()


def test_run_config_guard(tmp_path):
  workdir = str(tmp_path / 'run')
  config = {'lr': 0.1, 'nodes': 4, 'progress': True}
  assert not ckpt_lib.check_run_config(workdir, config)  # a new run: config.json written
  assert json.load(open(os.path.join(workdir, 'config.json'))) == config
  assert ckpt_lib.check_run_config(workdir, dict(config, progress=False), ('progress',))
  with pytest.raises(ValueError, match=r"different config \(lr: 0.1 -> 0.2\)"):
    ckpt_lib.check_run_config(workdir, dict(config, lr=0.2))
  # a key the stored config lacks matches its old behaviour; a renamed key its new name
  old = str(tmp_path / 'old')
  os.makedirs(old)
  with open(os.path.join(old, 'config.json'), 'w') as f:
    json.dump({'lr': 0.1, 'steps': 4, 'progress': True}, f)
  assert ckpt_lib.check_run_config(old, dict(config, bf16=False), absent_means={'bf16': False},
                                   renamed={'steps': 'nodes'})
  with pytest.raises(ValueError, match=r'nodes: 4 -> 5'):
    ckpt_lib.check_run_config(old, dict(config, nodes=5), renamed={'steps': 'nodes'})


def test_write_atomic_replaces_whole(tmp_path):
  path = str(tmp_path / 'genotype.txt')
  ckpt_lib.write_atomic(path, 'first\n')
  ckpt_lib.write_atomic(path, 'second\n')
  assert open(path).read() == 'second\n' and os.listdir(tmp_path) == ['genotype.txt']
