"""Shared test settings, strict by design:

- implicit rank promotion is an error (``jax_numpy_rank_promotion='raise'``): a broadcast that
  adds axes must be written out, so a shape mistake cannot pass silently;
- every warning raised from darts_jax is an error (``pyproject.toml``'s ``filterwarnings``);
- float64 is enabled per test (the ``x64`` fixture);
- tests that compile for a long time carry ``@pytest.mark.slow``: ``pytest -m "not slow"`` is the
  fast tier for the edit-test loop; the long tail of compiles (second implementations of what
  the suite checks already, other meshes and processes, the benchmarks' smoke runs) also
  carries ``@pytest.mark.extended``: CI runs ``-m "not extended"`` (README's test command,
  under 13 minutes on 2 cores), and ``-m extended`` runs the rest.
"""

import os
import pathlib

import pytest

REFERENCE = pathlib.Path(__file__).parent / 'data' / 'quark0_reference.npz'

# The suite is compile-bound: XLA:CPU's LLVM backend at -O0 halves compile time (measured on
# tests/test_hypergradient.py: 201 s -> 107 s) and leaves every tolerance met. Set before any
# test imports jax, so that the backend starts with it (subprocesses inherit it).
# Four simulated CPU devices let the data-parallel tests build meshes in-process; everything
# else places its arrays on the first one, as on a one-device machine.
TEST_FLAGS = ('--xla_backend_optimization_level=0', '--xla_force_host_platform_device_count=4')
for _flag in TEST_FLAGS:
  if _flag not in os.environ.get('XLA_FLAGS', '').split():  # xdist workers import this too
    os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()
# read by jax at import, so subprocesses (the CLI and multi-process tests) are strict too
os.environ['JAX_NUMPY_RANK_PROMOTION'] = 'raise'
# The persistent compilation cache, as every command has it (darts_jax.compile_cache): test
# processes and their subprocesses load what another one compiled. DARTS_JAX_COMPILE_CACHE=off
# turns it off.
from darts_jax import compile_cache  # noqa: E402  (imports no jax)
_cache = compile_cache.cache_dir()
if _cache is not None:
  os.makedirs(_cache, exist_ok=True)
  os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', _cache)
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS',
                        str(compile_cache.MIN_COMPILE_SECONDS))


@pytest.fixture
def x64():
  """float64 inside one test (gradient and fidelity checks)."""
  import jax
  previous = jax.config.jax_enable_x64
  jax.config.update('jax_enable_x64', True)
  yield
  jax.config.update('jax_enable_x64', previous)


@pytest.fixture(scope='session')
def reference_path():
  return str(REFERENCE)


# the longest file first: with ``--dist loadfile`` each file runs whole on one worker, so the
# float64 reference check (minutes of compiling on one core) starts at once and the other
# worker takes the rest beside it, instead of it starting last and running alone
LONGEST_FIRST = ('test_reference.py',)


def pytest_collection_modifyitems(config, items):
  del config
  items.sort(key=lambda item: item.fspath.basename not in LONGEST_FIRST)
