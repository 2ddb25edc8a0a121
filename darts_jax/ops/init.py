"""Parameter initialisation in PyTorch's convention, and parameter counting.

PyTorch's default for convolutions and linear layers is ``kaiming_uniform`` with ``a=sqrt(5)``,
i.e. ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``; its linear bias draws from the same interval. BN
starts at scale 1, bias 0, running mean 0, running variance 1.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np


def torch_uniform(fan_in: int):
  """A Flax initialiser drawing from ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_default_init(key: jax.Array, shapes: Mapping[str, Any], dtype=None) -> dict[str, Any]:
  """Values for ``{'params': ..., 'batch_stats': ...}`` shapes, drawn as the modules' own
  initialisers draw them (PyTorch defaults; BN scale 1, bias 0, mean 0, var 1), from ONE random
  draw. Tracing ``module.init`` costs a threefry hash per parameter and path fold-in, which
  took XLA:CPU 30-60 s to compile for a search network; this takes a second.

  Raises KeyError for a parameter whose role it does not know (e.g. a user op's).
  """
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  sizes = [int(np.prod(s.shape)) for _, s in flat]
  u = np.asarray(jax.random.uniform(key, (max(sum(sizes), 1),), jnp.float32, -1.0, 1.0))
  leaves, offset = [], 0
  siblings: dict[tuple, dict] = {}
  for path, s in flat:
    names = tuple(getattr(p, 'key', str(p)) for p in path)
    siblings.setdefault(names[:-1], {})[names[-1]] = s
  for (path, s), n in zip(flat, sizes):
    names = tuple(getattr(p, 'key', str(p)) for p in path)
    leaf, parent, shape = names[-1], names[-2] if len(names) > 1 else '', s.shape
    sib = siblings[names[:-1]]
    if leaf in ('scale', 'var'):
      value = np.ones(shape)
    elif leaf == 'mean' or (leaf == 'bias' and 'scale' in sib):
      value = np.zeros(shape)
    else:
      if leaf == 'bias' and 'kernel' in sib:  # a linear layer's (in, out) or a conv's HWIO
        kernel = sib['kernel'].shape
        fan_in = int(np.prod(kernel[:-1])) if len(kernel) == 4 else kernel[0]
      elif leaf != 'kernel':
        raise KeyError(f'no default initialiser known for {"/".join(names)}')
      elif parent.startswith('dw'):
        fan_in = shape[0] * shape[1]
      elif len(shape) == 3:
        fan_in = shape[1]
      else:
        fan_in = int(np.prod(shape[:-1]))
      value = u[offset:offset + n].reshape(shape) / math.sqrt(fan_in)
    leaves.append(jnp.asarray(value, dtype or s.dtype))
    offset += n
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shapes), leaves)


def num_params(tree) -> int:
  """The number of scalars in ``tree`` (arrays or shape structs), as the paper counts parameters."""
  return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(tree)))
