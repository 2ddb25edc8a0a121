"""The paper's Fig. 2 toy: the alternating scheme's end points against 2 / (1 + 2 xi)."""

import json

import numpy as np
import pytest

from darts_jax.toy import fixed_point, run_toy


@pytest.mark.parametrize('xi', [0.0, 0.3, 0.5])
def test_end_points_match_the_analytic_fixed_point(xi):
  t = run_toy(xi)
  assert abs(float(t.alpha[-1]) - fixed_point(xi)) < 1e-3
  assert abs(float(t.w[-1]) - fixed_point(xi)) < 1e-3
  assert (float(t.alpha[0]), float(t.w[0])) == (2.0, -2.0)


def test_cli_writes_png_and_endpoints(tmp_path, capsys):
  from experiments import toy_bilevel
  assert toy_bilevel.main(['--out', str(tmp_path), '--xi', '0,0.5']) == 0
  endpoints = json.loads((tmp_path / 'endpoints.json').read_text())
  np.testing.assert_allclose(endpoints['0'], [2, 2], atol=1e-3)
  np.testing.assert_allclose(endpoints['0.5'], [1, 1], atol=1e-3)
  png = (tmp_path / 'toy_bilevel.png').read_bytes()
  assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 10_000
  assert toy_bilevel.main(['--xi', '-1']) == 2
