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
# what may differ from the run's own config when evaluating a run: where the data is, how much,
# on which devices (and runs.PROCESS_KEYS: how the processes meet)
EVAL_KEYS = ('data_dir', 'download', 'max_test_examples', 'num_devices', 'compute_dtype')


def _flags(values: flags.FlagValues) -> dict:
  return {
      'checkpoint': flags.DEFINE_enum('checkpoint', 'best', ['best', 'last'],
                                      "The run's checkpoint to test.", flag_values=values),
      'weights': flags.DEFINE_string('weights', None, "An .npz of the original's weights "
                                     '(experiments.convert_torch_checkpoint).',
                                     flag_values=values)}


def run(config: dict, workdir: str | None, extra: dict) -> None:
  from darts_jax.runs import PROCESS_KEYS, SCALE_OUT_KEYS
  from darts_jax.train_loop import evaluate_checkpoint
  if workdir and extra['weights']:
    raise cli.UsageError('give --workdir (a training run) or --weights (an .npz), not both')
  if workdir:
    path = os.path.join(workdir, 'config.json')
    if not os.path.isfile(path):
      raise cli.UsageError(f'--workdir={workdir}: no config.json there (not a training run)')
    with open(path) as f:
      stored = json.load(f)
    # a run from before the scale-out keys takes its preset's values of them
    missing = sorted(set(config) - set(stored) - set(SCALE_OUT_KEYS))
    if missing:
      raise cli.UsageError(f'--workdir={workdir} is not a training run (its config.json has no '
                           f'{", ".join(missing[:3])})')
    # the command line's overrides are the keys where it differs from its own preset
    preset = cli_preset_defaults(config['preset'])
    stored.update({k: preset[k] for k in SCALE_OUT_KEYS if k not in stored})
    stored.update({k: config[k] for k in EVAL_KEYS + PROCESS_KEYS if config[k] != preset[k]})
    genotype = os.path.join(workdir, 'genotype.txt')  # as trained, even if its source moved
    if os.path.isfile(genotype):
      stored['genotype'] = genotype
    config = stored
  elif not extra['weights']:
    raise cli.UsageError('give --workdir (a training run) or --weights (an .npz)')
  evaluate_checkpoint(config, workdir or None, extra['checkpoint'], extra['weights'])


def cli_preset_defaults(preset: str) -> dict:
  from experiments.configs.train import get_config
  return get_config(preset).to_dict()


if __name__ == '__main__':
  sys.exit(cli.main(run, DEFAULT_CONFIG, extra=_flags, workdir_required=False))
