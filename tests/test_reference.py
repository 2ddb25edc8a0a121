"""Fidelity to the original DARTS code: float64 reference outputs (tests/data, see
shared/reference/README.md for the format), checked by running
``python -m experiments.verify_reference`` itself."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from darts_jax.reference import NOT_COMPUTED, PASS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _verify(reference_path, directory, *flags):
  """The verifier's command line: (completed process, path of its --out report)."""
  out = directory / 'report.json'
  # the suite's XLA flags (conftest.py) are inherited: -O0 compiles the float64 second-order
  # checks about twice as fast, and XLA's optimisation level changes no float64 result beyond
  # round-off, far inside the tolerances
  result = subprocess.run([sys.executable, '-m', 'experiments.verify_reference', reference_path,
                           '--out', str(out), *flags], cwd=ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=3000)
  return result, out


@pytest.fixture(scope='module')
def cli_run(reference_path, tmp_path_factory):
  """The verifier run once on every quantity of the file. The cross-check of exact against
  unrolled (not a quantity of the file; a third of the compile time) runs in the extended
  tier, :func:`test_exact_equals_unrolled_on_the_file`."""
  return _verify(reference_path, tmp_path_factory.mktemp('verify'), '--no_cross_checks')


@pytest.fixture(scope='module')
def report(cli_run):
  result, out = cli_run
  assert out.exists(), result.stderr[-3000:]
  return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize('name,tol', [
    ('search/logits_train', 1e-9), ('search/loss_train', 1e-9), ('search/loss_val', 1e-9),
    ('search/grad_w_train', 1e-8), ('search/grad_alphas_train', 1e-8),
    ('search/hypergrad_first_order', 1e-8), ('search/hypergrad_exact', 1e-8),
    ('search/hypergrad_exact_nomomentum', 1e-8), ('search/hypergrad_fd', 1e-6),
    ('search/hypergrad_fd_nomomentum', 1e-6),
    ('eval/logits_eval', 1e-9),
    ('eval/logits_train', 1e-9), ('eval/logits_aux_train', 1e-9),
    ('search/step/alphas_normal', 1e-8), ('search/step/alphas_reduce', 1e-8),
    ('search/step/w', 1e-8), ('search/step/loss_train', 1e-8)])
def test_quantity_matches_original(report, name, tol):
  q = report['quantities'][name]
  assert q['status'] == PASS and q['rel_err'] <= tol, q


@pytest.mark.slow
@pytest.mark.extended
def test_exact_equals_unrolled_on_the_file(reference_path, tmp_path):
  # the chain rule in pieces (what the search runs) against jax.grad through the whole
  # virtual step, at the file's weights, alphas and batches
  result, out = _verify(reference_path, tmp_path)
  assert out.exists(), result.stderr[-3000:]
  q = json.loads(out.read_text())['quantities']['search/exact_vs_unrolled']
  assert q['status'] == PASS and q['rel_err'] <= 1e-12, q


@pytest.mark.slow
def test_genotype_rule_20_of_20(report):
  assert report['quantities']['genotypes'] == {'status': PASS, 'matched': 20, 'total': 20,
                                               'mismatches': []}


@pytest.mark.slow
def test_every_quantity_computed_and_passed(report):
  assert report['summary'][NOT_COMPUTED] == 0 and report['ok'] is True, report['summary']


@pytest.mark.slow
def test_cli_prints_report_and_exits_0(cli_run, report):
  result, _ = cli_run
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads(result.stdout) == report
  assert report['quantities']['genotypes']['matched'] == 20


def test_cli_bad_file(tmp_path, capsys, x64):
  # x64: main() switches float64 on for the process; the fixture switches it back afterwards
  from experiments import verify_reference
  bad = tmp_path / 'bad.npz'
  np.savez(bad, x=np.zeros(3))
  assert verify_reference.main([str(bad)]) == 2
  assert 'no "meta" entry' in capsys.readouterr().err
  # a text file named .npz: named as what it is, not as "pickled data"
  text = tmp_path / 'notes.npz'
  text.write_text('not an archive\n')
  assert verify_reference.main([str(text)]) == 2
  assert capsys.readouterr().err.strip() == (f"error: '{text}' is not a reference file: not an "
                                             '.npz (zip) archive')
  assert verify_reference.main([str(tmp_path / 'missing.npz')]) == 2
  assert 'missing.npz\': no such file' in capsys.readouterr().err
  # an archive of another space's format that this version does not know
  other = tmp_path / 'other.npz'
  np.savez(other, meta=np.array(json.dumps({'rnn_search': {}})))
  assert verify_reference.main([str(other)]) == 2
  assert 'is of no known reference format (meta keys: rnn_search; known formats: ' \
         'darts_cnn, darts_rnn)' in capsys.readouterr().err
