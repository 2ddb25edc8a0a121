"""Every parameter count of the original (shared/REFERENCE.md), reproduced exactly."""

import jax
import jax.numpy as jnp
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
