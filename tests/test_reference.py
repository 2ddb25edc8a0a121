"""Fidelity to the original DARTS code: float64 reference outputs (tests/data, see
shared/reference/README.md for the format), checked through the same code path as
``python -m experiments.verify_reference``."""

import json

import jax
import numpy as np
import pytest

from darts_jax import interop
from darts_jax.reference import NOT_COMPUTED, PASS, verify
from darts_jax.supernet import SupernetConfig, supernet_shapes


@pytest.fixture(scope='module')
def report(reference_path):
  previous = jax.config.jax_enable_x64
  jax.config.update('jax_enable_x64', True)
  yield verify(reference_path)
  jax.config.update('jax_enable_x64', previous)


@pytest.mark.parametrize('name,tol', [
    ('search/logits_train', 1e-9), ('search/loss_train', 1e-9), ('search/loss_val', 1e-9),
    ('search/grad_w_train', 1e-8), ('search/grad_alphas_train', 1e-8),
    ('search/hypergrad_first_order', 1e-8), ('eval/logits_eval', 1e-9),
    ('eval/logits_train', 1e-9), ('eval/logits_aux_train', 1e-9)])
def test_quantity_matches_original(report, name, tol):
  q = report['quantities'][name]
  assert q['status'] == PASS and q['rel_err'] <= tol, q


def test_genotype_rule_20_of_20(report):
  assert report['quantities']['genotypes'] == {'status': PASS, 'matched': 20, 'total': 20,
                                               'mismatches': []}


def test_second_order_reported_as_not_computed(report):
  for name in ('search/hypergrad_exact', 'search/hypergrad_fd', 'search/hypergrad_exact_nomomentum',
               'search/hypergrad_fd_nomomentum', 'search/step'):
    assert report['quantities'][name]['status'] == NOT_COMPUTED
  assert report['ok'] is False and report['summary'][NOT_COMPUTED] == 5


def test_cli_prints_report_and_exits_1(report, reference_path, capsys, tmp_path):
  from experiments import verify_reference
  out = tmp_path / 'r.json'
  assert verify_reference.main([reference_path, '--out', str(out)]) == 1
  printed = json.loads(capsys.readouterr().out)
  assert printed['quantities']['genotypes']['matched'] == 20
  assert json.loads(out.read_text()) == printed


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
  names = interop.to_original(jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), variables),
                              primitives=primitives)
  # sep_conv_3x3 is op 2 of this subset: module 1 of its sequence is the first depthwise conv
  assert names['cells.0._ops.13._ops.2.op.1.weight'].shape == (2, 1, 3, 3)
  assert 'cells.0._ops.13._ops.1.1.running_mean' in names  # max pool's BN
  back = interop.from_original(names, variables, primitives=primitives)
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(variables)
