"""Where a run's numbers go: a JSONL file (one record per line, the source of truth for
resuming and plotting) and TensorBoard event files (tensorboardX: no TensorFlow needed)."""

from __future__ import annotations

import json
import os
import warnings
from typing import Any, Mapping

import numpy as np


def _jsonable(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (np.ndarray, np.generic)) or hasattr(value, '__array__'):
    array = np.asarray(value)
    return array.item() if array.ndim == 0 else array.tolist()
  return value


class MetricWriter:
  """Appends records to ``workdir/metrics.jsonl`` and scalars to ``workdir/tensorboard``.
  With ``enabled=False`` (every process but the first of a multi-process run) it only reads."""

  def __init__(self, workdir: str, tensorboard: bool = True, enabled: bool = True):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.enabled = enabled
    self._tb = None
    if tensorboard and enabled:
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))
      except ImportError:
        warnings.warn('tensorboardX is not installed: no TensorBoard event files '
                      "(pip install tensorboardX); metrics.jsonl is still written", stacklevel=2)

  def records(self) -> list[dict]:
    if not os.path.exists(self.path):
      return []
    with open(self.path) as f:
      return [json.loads(line) for line in f if line.strip()]

  def truncate_after(self, step: int) -> None:
    """Drops records written after ``step`` (a run resumed from an earlier checkpoint redoes
    them; keeping both would double-count)."""
    if not self.enabled:
      return
    records = self.records()
    kept = [r for r in records if r.get('step', 0) <= step]
    if len(kept) != len(records):
      tmp = self.path + '.tmp'
      with open(tmp, 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in kept)
      os.replace(tmp, self.path)

  def write(self, record: Mapping[str, Any], scalars: Mapping[str, float] = ()) -> None:
    """One JSONL record (must hold ``step``) and its ``scalars`` in TensorBoard."""
    if not self.enabled:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps(_jsonable(record)) + '\n')
      f.flush()
      os.fsync(f.fileno())
    if self._tb is not None:
      for name, value in dict(scalars).items():
        self._tb.add_scalar(name, float(value), int(record['step']))
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
