"""Test a trained network on the CIFAR-10 test set: a training run's best or last checkpoint,
or the original's released weights converted to ``.npz``.

  python -m experiments.cifar_eval --workdir=runs/train [--checkpoint=last]
  python -m experiments.convert_torch_checkpoint cifar10_model.pt cifar10_model.npz
  python -m experiments.cifar_eval --weights=cifar10_model.npz --config.genotype=DARTS_V2

With ``--workdir`` the network and data are those of the run (its ``config.json``); only
``--config.data_dir``, ``--config.download``, ``--config.max_test_examples``, the devices
(``num_devices``, the ``distributed`` keys) and ``compute_dtype`` given on the command line
change. With ``--weights`` the network is
the one the config describes (the paper's C=36, 20 cells, auxiliary head, by default).
"""

import json
import os
import sys

from absl import flags

from experiments import cli

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs', 'train.py')


def eval_flags(values: flags.FlagValues) -> dict:
  return {
      'checkpoint': flags.DEFINE_enum('checkpoint', 'best', ['best', 'last'],
                                      "The run's checkpoint to test.", flag_values=values),
      'weights': flags.DEFINE_string('weights', None, "An .npz of the original's weights "
                                     '(experiments.convert_torch_checkpoint).',
                                     flag_values=values)}


def run(config: dict, workdir: str | None, extra: dict, get_config=None) -> None:
  """``get_config``: the config file's presets (default: ``experiments/configs/train.py``)."""
  from darts_jax.run_config import evaluation_config
  from darts_jax.train_loop import evaluate_checkpoint
  if get_config is None:
    from experiments.configs.train import get_config
  if workdir and extra['weights']:
    raise cli.UsageError('give --workdir (a training run) or --weights (an .npz), not both')
  if workdir:
    path = os.path.join(workdir, 'config.json')
    if not os.path.isfile(path):
      raise cli.UsageError(f'--workdir={workdir}: no config.json there (not a training run)')
    with open(path) as f:
      stored = json.load(f)
    # the command line's overrides are the keys where it differs from its own preset
    config = evaluation_config(stored, config, get_config(config['preset']).to_dict(), workdir)
  elif not extra['weights']:
    raise cli.UsageError('give --workdir (a training run) or --weights (an .npz)')
  evaluate_checkpoint(config, workdir or None, extra['checkpoint'], extra['weights'])


if __name__ == '__main__':
  sys.exit(cli.main(run, DEFAULT_CONFIG, extra=eval_flags, workdir_required=False))
