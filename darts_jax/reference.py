"""Checks our implementation against reference outputs of the original code.

A reference file (an ``.npz``; formats: ``shared/reference/README.md`` of the project,
``tests/data`` holds one) stores the original's weights, inputs and outputs in float64.
:func:`verify` tells the file's format from its ``meta`` entry, lets that search space's
:class:`~darts_jax.spaces.ReferenceFormat` recompute every quantity it holds, and reports, per
quantity, the relative error ``max|ours - reference| / max|reference|`` against a tolerance.
Quantities that this version cannot compute yet are reported as ``"not yet computed"``, never
as passed.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Mapping

import jax
import numpy as np

PASS, FAIL, NOT_COMPUTED = 'pass', 'fail', 'not yet computed'

# tolerances (relative, max-norm) per dtype of the recomputation; float32 checks a backend's
# lowering (e.g. on a GPU) against round-off, float64 checks the semantics exactly; 'same_math'
# compares two of our own computations of one quantity (exact eq. 6 in pieces vs unrolled);
# 'roundoff' is a quantity computed in the original's order of operations (states, first
# derivatives); 'full_step' a step taken from a finite-difference hypergradient
TOLERANCES_BY_DTYPE = {
    'float64': {'logits': 1e-9, 'loss': 1e-9, 'gradient': 1e-8, 'finite_difference': 1e-6,
                'step': 1e-8, 'same_math': 1e-12, 'roundoff': 1e-9, 'full_step': 1e-6},
    'float32': {'logits': 1e-4, 'loss': 1e-4, 'gradient': 1e-3, 'finite_difference': 1e-2,
                'step': 1e-3, 'same_math': 1e-4, 'roundoff': 1e-4, 'full_step': 1e-2},
}


def max_relative_error(ours, ref) -> float:
  """``max|ours - ref| / max|ref|`` (the max norm: every entry counts, however small the
  tensor); ``inf`` when the shapes differ."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  if ours.shape != ref.shape:
    return float('inf')
  scale = np.max(np.abs(ref)) if ref.size else 0.0
  diff = np.max(np.abs(ours - ref)) if ref.size else 0.0
  return float(diff / scale) if scale > 0 else float(diff)


class Report(dict):
  """Quantity name -> result, checked with the tolerances of the dtype being recomputed in."""

  def __init__(self, tolerances: Mapping[str, float], cross_checks: bool = True):
    super().__init__()
    self.tolerances = dict(tolerances)
    # also recompute a quantity by a second implementation (exact == unrolled), beside the
    # file's own quantities
    self.cross_checks = cross_checks

  def check(self, name: str, ours, ref, kind: str) -> None:
    """``ours`` against ``ref`` with the tolerance of ``kind`` ('logits', 'gradient', ...)."""
    tol = self.tolerances[kind]
    err = max_relative_error(ours, ref)
    self[name] = {'status': PASS if err <= tol else FAIL, 'rel_err': err, 'tol': tol}

  def check_named(self, name: str, ours: Mapping, ref: Mapping, kind: str) -> None:
    """One quantity over every tensor of a network, matched by the original's parameter names
    (every entry counts in the max norm)."""
    if set(ref) != set(ours):
      self.fail(name, kind, 'parameter names differ')
      return
    names = sorted(ref)
    self.check(name, np.concatenate([np.ravel(ours[n]) for n in names]),
               np.concatenate([np.ravel(ref[n]) for n in names]), kind)

  def fail(self, name: str, kind: str, detail: str) -> None:
    self[name] = {'status': FAIL, 'rel_err': float('inf'), 'tol': self.tolerances[kind],
                  'detail': detail}

  def count(self, name: str, total: int, mismatches: list) -> None:
    """A quantity that must match exactly in each of ``total`` cases (e.g. genotype rules)."""
    self[name] = {'status': PASS if not mismatches else FAIL, 'matched': total - len(mismatches),
                  'total': total, 'mismatches': list(mismatches)}


def formats():
  """Every known reference format, one per search space (imported on use: each space's checks
  pull in its networks)."""
  from darts_jax.spaces import cnn, rnn
  return (cnn.REFERENCE, rnn.REFERENCE)


def _read(path: str) -> dict[str, np.ndarray]:
  # np.load would take any other file for a pickle and say it "contains pickled data"
  if not os.path.isfile(path):
    raise ValueError(f'{path!r}: no such file')
  if not zipfile.is_zipfile(path):
    raise ValueError(f'{path!r} is not a reference file: not an .npz (zip) archive')
  try:
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise ValueError(f'cannot read reference file {path!r}: {e}') from None


def verify(path: str, dtype: str = 'float64', cross_checks: bool = True) -> dict:
  """Recomputes every quantity of the reference file at ``path``; returns the report dict.
  ``cross_checks=False`` leaves out the checks of one of our computations against another
  (the exact hypergradient against jax.grad through the whole virtual step: minutes of
  compiling), which are not quantities of the file.

  ``dtype='float64'`` (the exact check) needs ``jax.config.update('jax_enable_x64', True)``;
  ``'float32'`` recomputes in float32 with round-off tolerances. ``report['ok']`` is True only
  when every quantity in the file was computed and passed.
  """
  if dtype not in TOLERANCES_BY_DTYPE:
    raise ValueError(f'dtype={dtype!r}: allowed {", ".join(TOLERANCES_BY_DTYPE)}')
  if dtype == 'float64' and not jax.config.jax_enable_x64:
    raise ValueError('verify() in float64 needs x64: call '
                     "jax.config.update('jax_enable_x64', True) first")
  ref = _read(path)
  # inputs and weights in the recomputation's dtype (references compare in float64 anyway)
  ref = {k: v.astype(dtype) if v.dtype == np.float64 else v for k, v in ref.items()}
  if 'meta' not in ref:
    raise ValueError(f'{path!r} has no "meta" entry: not a reference file of this format')
  meta = json.loads(str(ref['meta']))
  quantities = Report(TOLERANCES_BY_DTYPE[dtype], cross_checks)
  known = [f for f in formats() if f.detect(meta)]
  if not known:
    raise ValueError(f'{path!r} is of no known reference format (meta keys: '
                     f'{", ".join(sorted(meta)) or "none"}; known formats: '
                     f'{", ".join(f.name for f in formats())})')
  try:
    for fmt in known:
      fmt.verify(ref, meta, quantities)
  except KeyError as e:
    raise ValueError(f'{path!r} lacks entry {e} that its meta promises') from None
  counts = {s: sum(q['status'] == s for q in quantities.values())
            for s in (PASS, FAIL, NOT_COMPUTED)}
  return {'file': str(path), 'dtype': dtype, 'relative_error': 'max|ours-ref| / max|ref|',
          'quantities': dict(quantities), 'summary': counts,
          'ok': counts[FAIL] == 0 and counts[NOT_COMPUTED] == 0}
