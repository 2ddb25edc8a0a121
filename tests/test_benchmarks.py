"""The step benchmarks run end to end on CPU at the tiny preset and report every field.

No timing is asserted (timings belong to the benchmark's output, not to a test); the checks are
that every row ran, its fields exist with sane types, the ratios are what the rows imply, and
bad flags give one-line errors.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

ROW_FIELDS = {'preset': str, 'row': str, 'backend': str, 'device': str, 'jax': str,
              'python': str, 'lower_s': float, 'compile_s': float, 'step_median_s': float,
              'step_min_s': float, 'step_max_s': float, 'steps': int, 'peak_memory_gb': float,
              'memory_kind': str, 'gflop_per_step': float, 'achieved_gflops': float,
              'finite': bool, 'depthwise_impl': str, 'compute_dtype': str, 'layers': int, 'C': int,
              'batch': int, 'compile_peak_gb': float, 'step_memory_gb': float,
              'argument_gb': float, 'output_gb': float, 'temp_gb': float, 'alias_gb': float}


def _run(args, tmp_path, timeout=900):
  out = tmp_path / 'out.json'
  proc = subprocess.run([sys.executable, '-m', *args, '--out', str(out)], capture_output=True,
                        text=True, timeout=timeout)
  return proc, (json.loads(out.read_text()) if out.exists() else None)


def _check_row(row):
  for field, kind in ROW_FIELDS.items():
    assert field in row, field
    value = row[field]
    assert isinstance(value, kind) or (kind is float and isinstance(value, int)), (field, value)
  assert row['finite']
  assert 0 < row['step_min_s'] <= row['step_median_s'] <= row['step_max_s']
  assert 0 < row['lower_s'] < row['compile_s']
  assert row['gflop_per_step'] > 0 and row['peak_memory_gb'] > 0
  # the step's own memory as XLA planned it: arguments + outputs + temporaries - donated reuse
  np.testing.assert_allclose(row['step_memory_gb'], row['argument_gb'] + row['output_gb']
                             + row['temp_gb'] - row['alias_gb'], atol=2e-3)
  assert 0 < row['temp_gb'] < row['compile_peak_gb'] <= row['peak_memory_gb'] + 1e-9
  np.testing.assert_allclose(row['achieved_gflops'],
                             row['gflop_per_step'] / row['step_median_s'], rtol=0.05)


@pytest.mark.slow
@pytest.mark.extended
def test_search_step_benchmark_tiny(tmp_path):
  proc, result = _run(['benchmarks.search_step', '--preset', 'tiny', '--estimators',
                       'weight_step,first_order', '--steps', '2'], tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert result['failures'] == {} and [r['row'] for r in result['rows']] == ['weight_step',
                                                                              'first_order']
  for row in result['rows']:
    _check_row(row)
    assert (row['layers'], row['C'], row['batch'], row['steps']) == (3, 4, 8, 2)
    assert 'cached_compile_s' not in row  # only with --cache_check
  weight, first = result['rows']
  # a search step is an alpha step plus a weight step: more work than the weight step alone
  assert first['gflop_per_step'] > weight['gflop_per_step']
  assert result['ratios'] == {
      'FLOPs: weight_step / first_order': round(weight['gflop_per_step'] /
                                                first['gflop_per_step'], 2)}
  assert 'weight_step' in proc.stdout and 'first_order' in proc.stdout


@pytest.mark.slow
@pytest.mark.extended
def test_train_step_benchmark_tiny(tmp_path):
  # --cache_check (shared by both benchmarks) is tested here, on the cheaper program
  proc, result = _run(['benchmarks.train_step', '--preset', 'tiny', '--steps', '2',
                       '--cache_check'], tmp_path)
  assert proc.returncode == 0, proc.stderr
  (row,) = result['rows']
  _check_row(row)
  # a second process compiled the same step from the cache the first one filled (that it hit
  # the cache is tested in test_compile_cache.py, without timings)
  assert 'cached_error' not in row, row['cached_error']
  assert 0 < row['cached_lower_s'] <= row['cached_compile_s']
  assert row['genotype'] == 'DARTS_V2' and row['params'] > 0
  assert f'parameters: {row["params"]:,}' in proc.stdout


@pytest.mark.parametrize('args,message', [
    (['benchmarks.search_step', '--estimators', 'second_order'],
     "'second_order' is not a row; allowed: first_order, exact"),
    (['benchmarks.search_step', '--steps', '0'], '--steps=0: must be >= 1'),
    (['benchmarks.search_step', '--method', 'gdass'],
     "--method='gdass' is unknown; allowed: darts, pc_darts, gdas, drnas"),
    (['benchmarks.train_step', '--genotype', 'DARTS_V9'], '--genotype: '),
    (['benchmarks.original_step', '--darts_src', '/nonexistent'], 'holds no model_search.py'),
    (['benchmarks.original_step', '--darts_src', '.', '--orders', 'third'],
     "--orders='third': give 'first', 'second' or both"),
])
def test_bad_flags_are_one_line_errors(tmp_path, args, message):
  proc, result = _run(args, tmp_path, timeout=120)
  assert proc.returncode == 2 and result is None
  assert message in proc.stderr and 'Traceback' not in proc.stderr
