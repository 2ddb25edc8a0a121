"""Every parameter count of the original (shared/REFERENCE.md), reproduced exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax.genotypes import DARTS_V1, DARTS_V2
from darts_jax.networks import NetworkCIFAR, NetworkImageNet
from darts_jax.supernet import SupernetConfig, num_params, supernet_shapes


@pytest.mark.parametrize('layers,C,count', [(8, 16, 1_930_618), (5, 16, 1_275_834),
                                            (5, 8, 394_210)])
def test_search_network(layers, C, count):
  config = SupernetConfig(C=C, layers=layers)
  assert num_params(supernet_shapes(config).weights) == count
  assert config.alpha_shape == (14, 8)  # 2 x 14 x 8 = 224 alpha numbers


def _eval_count(model, size):
  x = jnp.zeros((2, size, size, 3))
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, True))
  return num_params(shapes['params'])


@pytest.mark.parametrize('genotype,without_aux,with_aux', [
    (DARTS_V2, 3_349_342, 3_825_768), (DARTS_V1, 3_169_414, 3_645_840)])
def test_network_cifar(genotype, without_aux, with_aux):
  for aux, count in ((False, without_aux), (True, with_aux)):
    assert _eval_count(NetworkCIFAR(36, 10, 20, aux, genotype), 32) == count


@pytest.mark.parametrize('genotype,without_aux,with_aux', [
    (DARTS_V2, 4_718_752, 5_979_528), (DARTS_V1, 4_510_432, 5_771_208)])
def test_network_imagenet(genotype, without_aux, with_aux):
  for aux, count in ((False, without_aux), (True, with_aux)):
    assert _eval_count(NetworkImageNet(48, 1000, 14, aux, genotype), 224) == count


def test_training_state_of_darts_v2_has_the_published_count():
  """darts_jax.train initialises the paper's evaluation network (auxiliary head included) with
  exactly the original's parameter count, and optimiser state for every parameter."""
  from darts_jax import train as T
  state = T.init_train_state(T.TrainHParams(), NetworkCIFAR(36, 10, 20, True, 'DARTS_V2'),
                             jax.random.PRNGKey(0))
  assert num_params(state.params) == 3_825_768
  assert num_params(state.opt_state) == 3_825_768 + 1  # a momentum per weight, the step count


def test_training_schedules_and_hparam_checks():
  from darts_jax import train as T
  from darts_jax.search import cosine_per_epoch
  hp = T.TrainHParams(epochs=600, steps_per_epoch=10)
  # the original sets drop_path_prob * epoch / epochs at each epoch's start
  assert float(T.drop_path_prob(hp, 0)) == 0.0
  assert abs(float(T.drop_path_prob(hp, 3009)) - 0.2 * 300 / 600) < 1e-7
  # cosine annealing per epoch, to 0 at the end (CosineAnnealingLR(epochs) stepped per epoch)
  lr = cosine_per_epoch(hp.lr, hp.lr_min, hp.epochs, hp.steps_per_epoch)
  assert float(lr(9)) == pytest.approx(0.025)
  assert float(lr(3000)) == pytest.approx(0.0125, rel=1e-6)
  assert float(lr(5999)) == pytest.approx(0.0125 * (1 + np.cos(np.pi * 599 / 600)), rel=1e-4)
  with pytest.raises(ValueError, match=r'drop_path_prob=1.0: must be in \[0, 1\)'):
    T.TrainHParams(drop_path_prob=1.0)
  with pytest.raises(ValueError, match='epochs=0: must be an integer >= 1'):
    T.TrainHParams(epochs=0)
