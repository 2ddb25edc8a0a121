"""From a config to what a run runs with (``darts_jax.run_config``): checked values, the dtype,
hyperparameters with the linear lr rule, the workdir checks made before any data is read, the
evaluation config of a training run, and the resume rule for renamed keys."""

import json
import os

import jax.numpy as jnp
import pytest

from darts_jax import run_config
from darts_jax import search as search_lib
from darts_jax.search_loop import MAY_DIFFER
from experiments.configs.search import get_config as search_config
from experiments.configs.train import get_config as train_config


def test_check_int_and_dtype_errors_are_one_line():
  with pytest.raises(ValueError, match=r"^epochs=0: must be an integer >= 1$"):
    run_config.check_int({'epochs': 0}, 'epochs', 1)
  with pytest.raises(ValueError, match=r"log_every=True: must be an integer >= 0 \(0: off\)"):
    run_config.check_int({'log_every': True}, 'log_every', 0, 'off')
  with pytest.raises(ValueError, match="dtype='float16' is not supported; allowed: float32, "
                                       "float64"):
    run_config.run_dtype({'dtype': 'float16'})
  assert run_config.run_dtype({'dtype': 'float32'}) == jnp.float32


def test_hparams_from_config_scales_the_learning_rates_linearly():
  cfg = dict(search_config('paper').to_dict(), batch_size=256, lr_scaling='linear')
  hp = run_config.hparams_from_config(search_lib.SearchHParams, cfg, steps_per_epoch=98)
  # pt.darts' 4-GPU settings: 4 x the paper's batch of 64
  assert (hp.w_lr, hp.w_lr_min, hp.alpha_lr) == pytest.approx((0.1, 0.004, 1.2e-3))
  assert hp.steps_per_epoch == 98 and hp.estimator == 'exact'


def test_configs_take_the_papers_values_from_the_library():
  paper = search_lib.SearchHParams()
  cfg = search_config('paper').to_dict()
  for name in ('epochs', 'w_lr', 'w_lr_min', 'w_momentum', 'w_weight_decay', 'grad_clip',
               'alpha_lr', 'alpha_b1', 'alpha_b2', 'alpha_weight_decay', 'estimator', 'fd_r'):
    assert cfg[name] == getattr(paper, name), name
  # the values themselves are the paper's (train_search.py)
  assert (cfg['w_lr'], cfg['alpha_lr'], cfg['epochs'], cfg['nodes'], cfg['layers']) == (
      0.025, 3e-4, 50, 4, 8)
  train = train_config('paper').to_dict()
  assert (train['lr'], train['epochs'], train['auxiliary_weight'], train['drop_path_prob']) == (
      0.025, 600, 0.4, 0.2)


def test_workdir_that_cannot_be_created_fails_first_and_creates_nothing(tmp_path):
  with pytest.raises(ValueError, match=r"workdir='/dev/null/x' cannot be created: /dev/null is "
                                       r'not a directory'):
    run_config.check_workdir_usable('/dev/null/x')
  afile = tmp_path / 'afile'
  afile.write_text('')
  with pytest.raises(ValueError, match='is not a directory'):
    run_config.check_workdir_usable(str(afile / 'deeper' / 'run'))
  run_config.check_workdir_usable(str(tmp_path / 'new' / 'run'))  # creatable: no error
  assert not (tmp_path / 'new').exists()


def test_a_run_from_before_nodes_was_named_resumes(tmp_path):
  cfg = search_config('tiny').to_dict()
  old = {('steps' if k == 'nodes' else k): v for k, v in cfg.items()}
  os.makedirs(tmp_path / 'old')
  (tmp_path / 'old' / 'config.json').write_text(json.dumps(old))
  assert run_config.check_workdir(str(tmp_path / 'old'), cfg, MAY_DIFFER, True)
  with pytest.raises(ValueError, match=r'nodes: 4 -> 3'):
    run_config.check_workdir(str(tmp_path / 'old'), dict(cfg, nodes=3), MAY_DIFFER, True)


def test_a_search_from_before_the_darts_family_keys_resumes_as_darts(tmp_path):
  cfg = search_config('tiny').to_dict()
  old = {k: v for k, v in cfg.items() if k not in ('method', 'partial_channels', 'warmup_epochs')}
  os.makedirs(tmp_path / 'old')
  (tmp_path / 'old' / 'config.json').write_text(json.dumps(old))
  assert run_config.check_workdir(str(tmp_path / 'old'), cfg, MAY_DIFFER, True)
  with pytest.raises(ValueError, match=r"method: 'darts' -> 'pc_darts'"):
    run_config.check_workdir(str(tmp_path / 'old'), dict(cfg, method='pc_darts'), MAY_DIFFER,
                             True)


def test_evaluation_config_keeps_the_run_and_takes_only_evaluation_keys(tmp_path):
  defaults = train_config('paper').to_dict()
  stored = dict(train_config('tiny').to_dict(), genotype='DARTS_V1')
  (tmp_path / 'genotype.txt').write_text('as trained\n')
  given = dict(defaults, max_test_examples=7, lr=0.5, num_devices=2)
  config = run_config.evaluation_config(stored, given, defaults, str(tmp_path))
  assert config['max_test_examples'] == 7 and config['num_devices'] == 2  # evaluation keys
  assert config['lr'] == stored['lr'] and config['layers'] == 3  # the run's own
  assert config['genotype'] == str(tmp_path / 'genotype.txt')  # as trained
  # a run from before the scale-out keys takes the preset's values of them
  old = {k: v for k, v in stored.items() if k not in run_config.SCALE_OUT_KEYS}
  assert run_config.evaluation_config(old, defaults, defaults, str(tmp_path))[
      'batch_norm'] == 'global'
  with pytest.raises(ValueError, match=r'is not a training run \(its config.json has no '):
    run_config.evaluation_config(search_config('tiny').to_dict(), defaults, defaults,
                                 str(tmp_path))
