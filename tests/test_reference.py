"""Fidelity to the original DARTS code: float64 reference outputs (tests/data, see
shared/reference/README.md for the format), checked by running
``python -m experiments.verify_reference`` itself."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from darts_jax import interop
from darts_jax.reference import NOT_COMPUTED, PASS
from darts_jax.supernet import SupernetConfig, supernet_shapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def cli_run(reference_path, tmp_path_factory):
  """The verifier's command line, run once: (completed process, path of its --out report)."""
  out = tmp_path_factory.mktemp('verify') / 'report.json'
  # the suite's XLA flags (conftest.py) are inherited: -O0 compiles the float64 second-order
  # checks about twice as fast, and XLA's optimisation level changes no float64 result beyond
  # round-off, far inside the tolerances
  result = subprocess.run([sys.executable, '-m', 'experiments.verify_reference', reference_path,
                           '--out', str(out)], cwd=ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=3000)
  return result, out


@pytest.fixture(scope='module')
def report(cli_run):
  result, out = cli_run
  assert out.exists(), result.stderr[-3000:]
  return json.loads(out.read_text())


@pytest.mark.parametrize('name,tol', [
    ('search/logits_train', 1e-9), ('search/loss_train', 1e-9), ('search/loss_val', 1e-9),
    ('search/grad_w_train', 1e-8), ('search/grad_alphas_train', 1e-8),
    ('search/hypergrad_first_order', 1e-8), ('search/hypergrad_exact', 1e-8),
    ('search/hypergrad_exact_nomomentum', 1e-8), ('search/hypergrad_fd', 1e-6),
    ('search/hypergrad_fd_nomomentum', 1e-6), ('eval/logits_eval', 1e-9),
    ('eval/logits_train', 1e-9), ('eval/logits_aux_train', 1e-9),
    ('search/step/alphas_normal', 1e-8), ('search/step/alphas_reduce', 1e-8),
    ('search/step/w', 1e-8), ('search/step/loss_train', 1e-8)])
def test_quantity_matches_original(report, name, tol):
  q = report['quantities'][name]
  assert q['status'] == PASS and q['rel_err'] <= tol, q


def test_genotype_rule_20_of_20(report):
  assert report['quantities']['genotypes'] == {'status': PASS, 'matched': 20, 'total': 20,
                                               'mismatches': []}


def test_every_quantity_computed_and_passed(report):
  assert report['summary'][NOT_COMPUTED] == 0 and report['ok'] is True, report['summary']


def test_cli_prints_report_and_exits_0(cli_run, report):
  result, _ = cli_run
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads(result.stdout) == report
  assert report['quantities']['genotypes']['matched'] == 20


def test_cli_bad_file(tmp_path, capsys):
  from experiments import verify_reference
  bad = tmp_path / 'bad.npz'
  np.savez(bad, x=np.zeros(3))
  assert verify_reference.main([str(bad)]) == 2
  assert 'no "meta" entry' in capsys.readouterr().err


def test_interop_roundtrip_and_mismatch(reference_path, x64):
  named = interop.load_npz_weights(reference_path, 'search/w/')
  config = SupernetConfig(C=4, layers=5)
  shapes = supernet_shapes(config, dtype=jax.numpy.float64)
  variables = interop.from_original(named, {'params': shapes.weights,
                                            'batch_stats': shapes.batch_stats},
                                    require=('params',))
  back = interop.to_original({'params': variables['params']})
  assert set(back) == set(named)
  for k in named:
    np.testing.assert_array_equal(back[k], named[k])
  wrong = supernet_shapes(SupernetConfig(C=4, layers=4))
  with pytest.raises(ValueError, match=r'does not fit .* \(network size differs\?\)'):
    interop.from_original(named, {'params': wrong.weights}, require=('params',))


def test_interop_reports_missing_and_unexpected_names(reference_path):
  named = interop.load_npz_weights(reference_path, 'search/w/')
  shapes = supernet_shapes(SupernetConfig(C=4, layers=5))
  del named['classifier.bias']
  named['cells.9.preprocess1.op.1.weight'] = np.zeros((4, 16, 1, 1))
  with pytest.raises(ValueError, match=r"1 missing \(e.g. \['classifier.bias'\]\), 1 unexpected"):
    interop.from_original(named, {'params': shapes.weights}, require=('params',))


def test_interop_numbers_ops_by_position_in_the_searched_subset():
  primitives = ('none', 'max_pool_3x3', 'sep_conv_3x3')
  config = SupernetConfig(C=2, layers=3, primitives=primitives)
  shapes = supernet_shapes(config, (8, 8))
  variables = {'params': shapes.weights, 'batch_stats': shapes.batch_stats}
  rng = np.random.default_rng(0)
  values = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape), variables)
  names = interop.to_original(values, primitives=primitives)
  # sep_conv_3x3 is op 2 of this subset: module 1 of its sequence is the first depthwise conv;
  # edge 13 is slot 0 of the last group; the kernel is stored (C, 1, k, k)
  dw = values['params']['cell0']['edges_4']['sep_conv_3x3']['dw1']['kernel']
  np.testing.assert_array_equal(names['cells.0._ops.13._ops.2.op.1.weight'],
                                np.asarray(dw).transpose(2, 0, 1)[:, None])
  assert 'cells.0._ops.13._ops.1.1.running_mean' in names  # max pool's BN
  back = interop.from_original(names, variables, primitives=primitives)
  for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(values)):
    np.testing.assert_array_equal(a, np.asarray(b, a.dtype))


def test_interop_maps_the_nasnet_and_amoebanet_ops():
  from darts_jax.genotypes import AmoebaNet
  from darts_jax.networks import NetworkCIFAR
  model = NetworkCIFAR(4, 10, 5, True, AmoebaNet)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jax.numpy.zeros((2, 32, 32, 3))))
  rng = np.random.default_rng(1)
  values = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)
  names = interop.to_original(values)
  # AmoebaNet's reduce op 8 is conv_7x1_1x7: (1, 7) then (7, 1) convolutions, then BN
  assert names['cells.1._ops.8.op.1.weight'].shape == (8, 8, 1, 7)
  assert names['cells.1._ops.8.op.2.weight'].shape == (8, 8, 7, 1)
  assert names['cells.1._ops.8.op.3.running_var'].shape == (8,)
  assert names['cells.1._ops.3.op.1.weight'].shape == (8, 1, 7, 7)  # sep_conv_7x7
  back = interop.from_original(names, shapes)
  for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(values)):
    np.testing.assert_array_equal(a, b)
