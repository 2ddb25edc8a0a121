"""The paper's CNN search space as a plug-in (``darts_jax.spaces.cnn``): its pieces against the
original's numbers (parameter count of the search network, the genotype rule on the reference
file's cases), the run config's keys, and the reference format's detection."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax.genotypes import Genotype
from darts_jax.ops.init import num_params
from darts_jax.spaces import cnn
from darts_jax.supernet import SupernetConfig
from experiments.configs.search import get_config


def test_the_paper_space_has_the_originals_parameter_count():
  space = cnn.make_space(SupernetConfig())
  weights, batch_stats = space.init(jax.random.PRNGKey(0), (1, 32, 32, 3), jnp.float32)
  assert num_params(weights) == 1_930_618  # model_search.Network(16, 10, 8), the original
  alphas = space.init_architecture(jax.random.PRNGKey(1), jnp.float32)
  assert {k: v.shape for k, v in alphas.items()} == {'normal': (14, 8), 'reduce': (14, 8)}
  assert space.choices[0] == 'none' and len(space.choices) == 8
  assert space.summary == '8 cells, C=16'
  with pytest.raises(ValueError, match=r"input image 30x30 is too small or not divisible for "
                                       r"the search network's 2 reductions"):
    space.init(jax.random.PRNGKey(0), (1, 30, 30, 3), jnp.float32)


def test_genotype_rule_and_mixing_on_the_reference_cases(reference_path):
  with np.load(reference_path) as f:
    ref = {k: f[k] for k in f.files}
  meta = json.loads(str(ref['meta']))
  space = cnn.make_space(cnn.search_config(meta))
  assert meta['genotypes']
  for k, want in enumerate(meta['genotypes']):
    alphas = {'normal': ref[f'genotype/{k}/alphas_normal'],
              'reduce': ref[f'genotype/{k}/alphas_reduce']}
    genotype = space.genotype(alphas)
    assert genotype == Genotype.from_dict(want), k  # the original's rule, ties included
    assert space.genotype_from_dict(genotype.to_dict()) == genotype
    mixing = space.mixing(alphas)  # float32, as the supernet mixes in a float32 run
    e = np.exp(alphas['normal'] - alphas['normal'].max(-1, keepdims=True))
    np.testing.assert_allclose(mixing['normal'], e / e.sum(-1, keepdims=True), rtol=1e-6)
    assert mixing['reduce'].dtype == np.float32


def test_config_from_run_and_reference_detection():
  cfg = dict(get_config('tiny').to_dict(), nodes=3, multiplier=2,
             primitives=('skip_connect', 'sep_conv_3x3'))
  config = cnn.config_from_run(cfg, num_classes=7, in_channels=1)
  assert (config.C, config.layers, config.nodes, config.multiplier, config.num_classes,
          config.in_channels, config.primitives) == (4, 3, 3, 2, 7, 1,
                                                      ('skip_connect', 'sep_conv_3x3'))
  assert cnn.REFERENCE.detect({'search': {}}) and cnn.REFERENCE.detect({'eval': {}})
  assert not cnn.REFERENCE.detect({'rnn_search': {}})
