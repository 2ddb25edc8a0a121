"""Command-line plumbing shared by the experiment scripts: absl flags with an ml_collections
config file (``--config=FILE[:preset]`` plus ``--config.key=value`` overrides) and a
``--workdir``, where every parsing problem becomes one line on stderr, not a traceback."""

from __future__ import annotations

import re
import sys
from typing import Callable, Sequence

from absl import flags
from ml_collections import config_flags

from darts_jax import compile_cache


class UsageError(Exception):
  """A bad command line; the message is one line that names the bad value."""


def _last_line(error: BaseException) -> str:
  # ml_collections wraps errors from get_config() and override parsing with their traceback
  # text; the last line is the one that names the problem
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  text = lines[-1] if lines else type(error).__name__
  return re.sub(r'^\w+(Error|Exception): ', '', text)


def parse(argv: Sequence[str], default_config: str, extra: Callable | None = None,
          workdir_required: bool = True):
  """``(config dict, workdir)`` from ``argv`` (``argv[0]`` is the program).

  ``extra(flag_values)`` may define more flags; then ``(config, workdir, {name: value})``.
  """
  values = flags.FlagValues()
  try:
    config = config_flags.DEFINE_config_file(
        'config', default_config, 'Config file, optionally followed by :preset.',
        flag_values=values, lock_config=True, sys_argv=list(argv))
    workdir = flags.DEFINE_string('workdir', None, 'Directory holding everything the run writes.',
                                  flag_values=values)
    use_cache = flags.DEFINE_bool(
        'compile_cache', True, 'Keep compiled programs in the persistent compilation cache '
        '($DARTS_JAX_COMPILE_CACHE, default ~/.cache/darts_jax); --nocompile_cache turns it off.',
        flag_values=values)
    more = extra(values) if extra else {}
    rest = values(list(argv))
  except (KeyError, AttributeError) as e:  # an override of a key the config does not have
    raise UsageError(f'unknown config key {_last_line(e).strip(chr(34))} (the keys are listed '
                     f'in {default_config})') from None
  except (flags.Error, ValueError, TypeError) as e:
    raise UsageError(_last_line(e)) from None
  if len(rest) > 1:
    raise UsageError(f'unexpected arguments: {" ".join(rest[1:])}')
  if workdir_required and not workdir.value:
    raise UsageError('--workdir is required (the directory that holds the run)')
  compile_cache.configure(use_cache.value)  # before anything compiles
  if extra:
    return config.value.to_dict(), workdir.value, {k: v.value for k, v in more.items()}
  return config.value.to_dict(), workdir.value


def main(run: Callable[..., object], default_config: str, argv: Sequence[str] | None = None,
         extra: Callable | None = None, workdir_required: bool = True) -> int:
  """Parses, runs ``run(config, workdir[, extra flag values])``, and maps the library's input
  errors to exit status 2 with one line."""
  from darts_jax.data import DataError
  try:
    run(*parse(sys.argv if argv is None else argv, default_config, extra, workdir_required))
  except (UsageError, ValueError, DataError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    return 130
  return 0


def add_compile_cache_flag(parser) -> None:
  """``--no_compile_cache`` for the argparse commands (see :mod:`darts_jax.compile_cache`)."""
  parser.add_argument('--no_compile_cache', action='store_true',
                      help='do not use the persistent compilation cache '
                           '($DARTS_JAX_COMPILE_CACHE, default ~/.cache/darts_jax)')
