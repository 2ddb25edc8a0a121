"""Search methods (``darts_jax.methods``): DARTS is the space itself; an unknown name is a
one-line error naming the known ones."""

import pytest

from darts_jax import methods
from darts_jax.spaces import cnn
from darts_jax.supernet import SupernetConfig


def test_darts_is_the_identity_and_unknown_methods_are_named():
  space = cnn.make_space(SupernetConfig(C=2, layers=2))
  assert methods.get('darts').transform(space, {}) is space
  with pytest.raises(ValueError, match=r"^method='gdass' is unknown; allowed: darts, pc_darts, "
                     r"gdas, drnas, sdarts_rs, sdarts_adv, darts_minus$"):
    methods.get('gdass')
