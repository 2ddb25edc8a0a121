"""The classification loss and the mixed-precision cast, shared by the search and the training."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy, ``torch.nn.CrossEntropyLoss()``, in at least float32."""
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


COMPUTE_DTYPES = ('bfloat16',)


def computed_in(dtype, images) -> jnp.dtype:
  """The precision ``images`` are computed in under compute ``dtype`` (None or '': their own)."""
  return jnp.dtype(dtype) if dtype else jnp.result_type(images)


def cast_floating(tree, dtype):
  """Every floating leaf of ``tree`` in ``dtype`` (None: unchanged). The cast is inside the
  differentiated function, so gradients arrive in the leaves' own (master) precision."""
  if dtype is None:
    return tree
  try:
    name = jnp.dtype(dtype).name
  except TypeError:
    name = dtype
  if name not in COMPUTE_DTYPES:
    raise ValueError(f'compute_dtype={name!r}: allowed: '
                     f'{", ".join(COMPUTE_DTYPES)} (or None: the weights\' own dtype)')
  return jax.tree_util.tree_map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)
