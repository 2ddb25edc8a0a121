"""Shared by the run tests: interrupt a run after N steps, the way Ctrl-C would."""

import jax
import pytest

from darts_jax import checkpoint as ckpt_lib
from darts_jax import run_loop


def interrupt_after(steps: int, run, monkeypatch) -> None:
  """Calls ``run()`` with a progress bar that raises KeyboardInterrupt once ``steps`` steps are
  done, and checks that the interruption propagates."""

  class Interrupting:
    n = 0

    def __init__(self, *args, **kwargs):
      pass

    def update(self, k):
      Interrupting.n += k
      if Interrupting.n == steps:
        raise KeyboardInterrupt

    set_postfix = close = lambda self, *a, **k: None

  with monkeypatch.context() as m:
    m.setattr(run_loop, 'progress', Interrupting)
    with pytest.raises(KeyboardInterrupt):
      run()


def latest_checkpoint(directory: str) -> int | None:
  checkpoints = ckpt_lib.Checkpoints(directory)
  try:
    return checkpoints.latest_step()
  finally:
    checkpoints.close()


def leaves(state):
  return jax.tree_util.tree_leaves(jax.device_get(state))
