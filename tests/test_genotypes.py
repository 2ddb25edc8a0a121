"""Genotypes: the original's rule on its own 20 alpha sets, string/JSON forms, bad input."""

import json

import numpy as np
import pytest

from darts_jax.genotypes import (DARTS, DARTS_V1, DARTS_V2, GENOTYPES, PRIMITIVES, Genotype,
                                 derive_genotype, mixing_weights, num_edges, parse_genotype)

V2_STRING = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
             "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
             "('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
             "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
             "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], "
             "reduce_concat=[2, 3, 4, 5])")


def test_primitives_in_original_order():
  assert PRIMITIVES == ('none', 'max_pool_3x3', 'avg_pool_3x3', 'skip_connect', 'sep_conv_3x3',
                        'sep_conv_5x5', 'dil_conv_3x3', 'dil_conv_5x5')


def test_published_genotypes():
  assert DARTS is DARTS_V2 and GENOTYPES['DARTS_V1'] is DARTS_V1
  assert DARTS_V2.to_string() == V2_STRING
  assert DARTS_V1.normal[7] == ('skip_connect', 2) and DARTS_V1.reduce[7] == ('avg_pool_3x3', 0)
  with pytest.raises(Exception):
    DARTS_V2.normal = ()  # immutable


def test_string_roundtrip_and_range_form():
  assert Genotype.from_string(V2_STRING) == DARTS_V2
  with_range = V2_STRING.replace('[2, 3, 4, 5]', 'range(2, 6)')
  assert Genotype.from_string(with_range) == DARTS_V2
  for g in (DARTS_V1, DARTS_V2):
    assert Genotype.from_string(str(g)) == g
    assert Genotype.from_json(g.to_json()) == g
    assert json.loads(g.to_json())['normal'][0] == list(g.normal[0])


def test_parse_genotype_accepts_all_forms():
  assert parse_genotype('DARTS_V1') is DARTS_V1
  assert parse_genotype(V2_STRING) == DARTS_V2
  assert parse_genotype(DARTS_V1.to_json()) == DARTS_V1
  assert parse_genotype(DARTS_V1.to_dict()) == DARTS_V1


@pytest.mark.parametrize('text,message', [
    ('DARTS_V3', "unknown genotype 'DARTS_V3'"),
    ('Genotype(normal=[(', 'malformed genotype string'),
    ("Genotype(normal=__import__('os').system('true'), normal_concat=[2], reduce=[], "
     'reduce_concat=[2])', 'malformed genotype string: unexpected'),
    ("Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=[2, 3, 4, 5], reduce=[], "
     'reduce_concat=[2, 3, 4, 5])', 'two \\(op, input\\) pairs per node'),
    ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 2)], normal_concat=[2], "
     "reduce=[], reduce_concat=[])", 'node 0 takes input 2'),
    ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], normal_concat=[2]) ",
     "missing \\['reduce', 'reduce_concat'\\]"),
    ('{"normal": 1', 'genotype JSON is malformed'),
])
def test_bad_genotypes_have_clear_errors(text, message):
  with pytest.raises(ValueError, match=message):
    parse_genotype(text)


def test_unknown_op_in_genotype():
  g = Genotype.from_string(V2_STRING.replace("'dil_conv_3x3'", "'conv_9x9'"))
  with pytest.raises(ValueError, match="unknown op 'conv_9x9'; allowed: none"):
    g.validate_ops(PRIMITIVES)


def test_derive_genotype_original_rule_on_reference(reference_path):
  with np.load(reference_path) as f:
    meta = json.loads(str(f['meta']))
    for k, expected in enumerate(meta['genotypes']):
      got = derive_genotype({'normal': f[f'genotype/{k}/alphas_normal'],
                             'reduce': f[f'genotype/{k}/alphas_reduce']})
      assert got == Genotype.from_dict(expected), k
  assert len(meta['genotypes']) == 20


def test_derive_genotype_hand_case():
  """Node 0 keeps both inputs; node 1 keeps the two edges whose best non-none op is largest,
  even where 'none' dominates; ties go to the first op, as in the original."""
  a = np.zeros((14, 8))
  a[0, 4] = 3.0  # node 0, input 0: sep_conv_3x3
  a[1, 0] = 9.0  # node 0, input 1: 'none' dominates, best other op is the first (tie at 0)
  a[3, 7] = 2.0  # node 1, input 1: dil_conv_5x5
  a[4, 2] = 1.0  # node 1, input 2: avg_pool_3x3
  a[2, 0] = 50.0  # node 1, input 0: only 'none' strong -> dropped
  g = derive_genotype({'normal': a, 'reduce': a})
  assert g.normal[:4] == (('sep_conv_3x3', 0), ('max_pool_3x3', 1), ('dil_conv_5x5', 1),
                          ('avg_pool_3x3', 2))
  assert g.normal_concat == (2, 3, 4, 5)


def test_derive_genotype_none_only_space():
  with pytest.raises(ValueError, match='every op is none'):
    derive_genotype({'normal': np.zeros((14, 1)), 'reduce': np.zeros((14, 1))}, ('none',))


def test_repeated_keyword_and_leading_space():
  with pytest.raises(ValueError, match="keyword 'normal' given twice"):
    Genotype.from_string(V2_STRING.replace('reduce=', 'normal=', 1))
  assert Genotype.from_string('  ' + V2_STRING) == DARTS_V2


def test_derive_genotype_bad_shape():
  with pytest.raises(ValueError, match=r"alphas\['normal'\] has shape \(14, 7\); expected "
                                       r'\(14, 8\) \(4 nodes, 8 ops\)'):
    derive_genotype({'normal': np.zeros((14, 7)), 'reduce': np.zeros((14, 8))})
  with pytest.raises(ValueError, match=r'expected \(5, 8\) \(2 nodes, 8 ops\)'):
    derive_genotype({'normal': np.zeros((14, 8)), 'reduce': np.zeros((14, 8))}, nodes=2)


def test_num_edges():
  # node i has i + 2 inputs: 2, 2 + 3, 2 + 3 + 4, ...
  assert [num_edges(n) for n in range(1, 6)] == [2, 5, 9, 14, 20]


def test_mixing_weights_closed_form_and_precision():
  alphas = {'normal': np.log([[1.0, 2.0, 3.0], [4.0, 4.0, 8.0]]),
            'reduce': np.array([[0, 0, 0], [1000, 0, 1000]], np.int32)}
  mixing = mixing_weights(alphas)
  np.testing.assert_allclose(mixing['normal'], [[1 / 6, 2 / 6, 3 / 6], [0.25, 0.25, 0.5]],
                             rtol=1e-15)
  # integers in float64; large logits do not overflow (the row maximum is subtracted first)
  np.testing.assert_allclose(mixing['reduce'], [[1 / 3] * 3, [0.5, 0, 0.5]], rtol=1e-15)
  assert mixing['normal'].dtype == np.float64 and mixing['reduce'].dtype == np.float64
  # float32 alphas stay float32, as the original's softmax of its float32 parameters
  assert mixing_weights({'normal': np.zeros((2, 3), np.float32)})['normal'].dtype == np.float32


def test_derive_genotype_with_fewer_nodes():
  """Two nodes, concatenating the last one: the rule and the concat follow ``nodes``."""
  a = np.zeros((5, 8))
  a[0, 4] = a[1, 5] = 1.0  # node 0: sep_conv_3x3 from input 0, sep_conv_5x5 from input 1
  a[4, 6] = a[2, 1] = 1.0  # node 1: dil_conv_3x3 from node 0, max_pool_3x3 from input 0
  g = derive_genotype({'normal': a, 'reduce': a}, nodes=2, multiplier=1)
  assert g.normal == (('sep_conv_3x3', 0), ('sep_conv_5x5', 1), ('max_pool_3x3', 0),
                      ('dil_conv_3x3', 2))
  assert g.normal_concat == (3,) and g.reduce == g.normal
