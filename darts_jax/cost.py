"""Multiply-adds of a network, counted from its traced program: the figure the mobile setting
bounds (DARTS, section 3.3: "the number of multiply-add operations in the model is restricted to
be less than 600M").

Every convolution and matrix product in the jaxpr counts ``output elements x inputs each
output reads`` (kernel area x input channels per group, or the contracted size); nothing else
counts, as the NAS literature counts. The program is traced, never run.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
from jax.extend import core as jax_core


def _subjaxprs(eqn) -> list:
  found = []
  for value in eqn.params.values():
    for item in (value if isinstance(value, (tuple, list)) else (value,)):
      if isinstance(item, jax_core.ClosedJaxpr):
        found.append(item.jaxpr)
      elif isinstance(item, jax_core.Jaxpr):
        found.append(item)
  return found


def _count(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'conv_general_dilated':
      lhs, rhs = (v.aval for v in eqn.invars)
      out = eqn.outvars[0].aval
      spec = eqn.params['dimension_numbers'].rhs_spec  # (out features, in features, *spatial)
      per_output = rhs.shape[spec[1]] * math.prod(rhs.shape[d] for d in spec[2:])
      total += math.prod(out.shape) * per_output
    elif name == 'dot_general':
      (contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval
      total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs.shape[d] for d in contract)
    for sub in _subjaxprs(eqn):
      total += _count(sub)
  return total


def multiply_adds(fn: Callable, *args: Any) -> int:
  """Multiply-adds of one call ``fn(*args)`` (arrays or ``jax.ShapeDtypeStruct``s)."""
  return _count(jax.make_jaxpr(fn)(*args).jaxpr)


def network_multiply_adds(model, variables, image_shape) -> int:
  """Multiply-adds of an evaluation network on one image of ``image_shape`` (H, W, C), in
  inference mode. Depthwise convolutions are traced as the grouped convolutions they are
  (``depthwise_impl='xla'``), whichever kernel the network computes them with."""
  if getattr(model, 'depthwise_impl', None) not in (None, 'xla'):
    model = model.clone(depthwise_impl='xla')
  image = jax.ShapeDtypeStruct((1, *image_shape), jax.numpy.float32)
  return multiply_adds(lambda v, x: model.apply(v, x, False), variables, image)
