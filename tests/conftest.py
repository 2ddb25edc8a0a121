"""Shared test settings: warnings from our own code are errors; float64 is enabled per test."""

import os
import pathlib

import pytest

REFERENCE = pathlib.Path(__file__).parent / 'data' / 'quark0_reference.npz'


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
