"""The metric log (``darts_jax.metrics_log``): JSONL records with numpy values, truncation on
resume, TensorBoard event files, and a reader-only writer on the other processes."""

import json
import os

import numpy as np

from darts_jax.metrics_log import MetricWriter


def test_records_truncate_and_tensorboard(tmp_path):
  writer = MetricWriter(str(tmp_path), tensorboard=True)
  for step in (1, 2, 3):
    writer.write({'kind': 'train', 'step': step, 'loss': np.float32(1.0 / step),
                  'alphas': {'normal': np.eye(2)}}, {'train/loss': 1.0 / step})
  writer.close()
  records = writer.records()
  assert [r['step'] for r in records] == [1, 2, 3]
  assert records[1]['loss'] == float(np.float32(0.5)) and records[0]['alphas'] == {
      'normal': [[1.0, 0.0], [0.0, 1.0]]}
  assert any(f.startswith('events') for f in os.listdir(tmp_path / 'tensorboard'))
  # a run resumed from step 2 redoes step 3: its old record goes
  MetricWriter(str(tmp_path), tensorboard=False).truncate_after(2)
  assert [json.loads(l)['step'] for l in open(tmp_path / 'metrics.jsonl')] == [1, 2]


def test_a_disabled_writer_reads_but_never_writes(tmp_path):
  MetricWriter(str(tmp_path), tensorboard=False).write({'step': 1, 'x': 1})
  reader = MetricWriter(str(tmp_path), tensorboard=True, enabled=False)
  reader.write({'step': 2, 'x': 2})
  reader.truncate_after(0)
  assert reader.records() == [{'step': 1, 'x': 1}]
  assert not os.path.exists(tmp_path / 'tensorboard')
