"""Pictures: DOT source of the published cells, headless PNGs, clear errors on bad input."""

import os
import re
import shutil
import stat
import sys

import numpy as np
import pytest

pytest.importorskip('graphviz')
pytest.importorskip('matplotlib')

from matplotlib import image as mpimg  # noqa: E402

from darts_jax import viz  # noqa: E402
from darts_jax.genotypes import DARTS_V2, PRIMITIVES, mixing_weights  # noqa: E402

EDGE = re.compile(r'^\s*("?)([^"]+?)\1 -> ("?)([^"]+?)\3(?: \[(.*)\])?$')
NODE = re.compile(r'^\s*("?)([^"]+?)\1 \[.*\]$')


def parse_source(source):
  """(nodes, edges) of a DOT source: edges as (tail, head, label or None)."""
  nodes, edges = [], []
  for line in source.splitlines():
    m = EDGE.match(line)
    if m:
      label = re.search(r'label=("?)([^" \]]+)\1', m.group(5) or '')
      edges.append((m.group(2), m.group(4), label.group(2) if label else None))
      continue
    m = NODE.match(line)
    if m and m.group(2) not in ('graph', 'node', 'edge'):
      nodes.append(m.group(2))
  return nodes, edges


def softmaxed(rng, shape):
  return mixing_weights({'cell': rng.normal(size=shape)})['cell']


def test_darts_v2_normal_cell_graph():
  dot = viz.genotype_dot(DARTS_V2, 'normal')
  nodes, edges = parse_source(dot.source)
  assert nodes == ['c_{k-2}', 'c_{k-1}', '0', '1', '2', '3', 'c_{k}']
  op_edges = [e for e in edges if e[2] is not None]
  assert op_edges == [
      ('c_{k-2}', '0', 'sep_conv_3x3'), ('c_{k-1}', '0', 'sep_conv_3x3'),
      ('c_{k-2}', '1', 'sep_conv_3x3'), ('c_{k-1}', '1', 'sep_conv_3x3'),
      ('c_{k-1}', '2', 'sep_conv_3x3'), ('c_{k-2}', '2', 'skip_connect'),
      ('c_{k-2}', '3', 'skip_connect'), ('0', '3', 'dil_conv_3x3')]
  assert sorted(e for e in edges if e[2] is None) == [(n, 'c_{k}', None) for n in '0123']
  assert 'rankdir=LR' in dot.source


def test_reduce_cell_graph_and_concat_of_inputs():
  _, edges = parse_source(viz.genotype_dot(DARTS_V2, 'reduce').source)
  assert ('0', '1', 'skip_connect') in edges and ('c_{k-1}', '3', 'max_pool_3x3') in edges
  assert len(edges) == 12
  # a concat list naming a cell input draws that input into the output, not a node
  g = DARTS_V2.__class__(normal=DARTS_V2.normal[:2], normal_concat=[1, 2],
                         reduce=DARTS_V2.reduce[:2], reduce_concat=[2])
  nodes, edges = parse_source(viz.genotype_dot(g, 'normal').source)
  assert nodes == ['c_{k-2}', 'c_{k-1}', '0', 'c_{k}']
  assert [e for e in edges if e[1] == 'c_{k}'] == [('c_{k-1}', 'c_{k}', None), ('0', 'c_{k}', None)]


def test_bad_cell_name():
  with pytest.raises(ValueError, match=r"'reduction'.*'normal', 'reduce'"):
    viz.genotype_dot(DARTS_V2, 'reduction')


def test_missing_package_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, 'graphviz', None)  # makes `import graphviz` fail
  with pytest.raises(ImportError, match=re.escape("pip install 'darts_jax[viz]'")):
    viz.genotype_dot(DARTS_V2, 'normal')


def test_save_graphs_without_dot(tmp_path, monkeypatch):
  monkeypatch.setattr(shutil, 'which', lambda name, *a, **k: None)
  out = viz.save_genotype_graphs(DARTS_V2, tmp_path / 'cells', 'epoch_3')
  assert out == {'normal': str(tmp_path / 'cells' / 'epoch_3_normal.gv'),
                 'reduce': str(tmp_path / 'cells' / 'epoch_3_reduce.gv'), 'rendered': False}
  assert sorted(os.listdir(tmp_path / 'cells')) == ['epoch_3_normal.gv', 'epoch_3_reduce.gv']
  text = (tmp_path / 'cells' / 'epoch_3_normal.gv').read_text()
  assert text == viz.genotype_dot(DARTS_V2, 'normal').source


def _fake_dot(tmp_path, body):
  exe = tmp_path / 'fake_dot'
  exe.write_text('#!/bin/sh\n' + body + '\n')
  exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
  return str(exe)


@pytest.mark.parametrize('broken', ['fails', 'missing'])
def test_save_graphs_when_dot_fails(tmp_path, monkeypatch, broken):
  exe = (_fake_dot(tmp_path, 'echo "Error: syntax" >&2; exit 1') if broken == 'fails'
         else str(tmp_path / 'no_such_dot'))
  monkeypatch.setattr(shutil, 'which', lambda name, *a, **k: exe)
  with pytest.warns(RuntimeWarning, match='could not render'):
    out = viz.save_genotype_graphs(DARTS_V2, tmp_path, 'g')
  assert out['rendered'] is False
  assert out['normal'].endswith('g_normal.gv') and out['reduce'].endswith('g_reduce.gv')
  assert os.path.getsize(out['normal']) > 0 and os.path.getsize(out['reduce']) > 0


def test_save_graphs_with_working_dot(tmp_path, monkeypatch):
  # argv is dot -Tpng IN.gv -o OUT.png: the fake writes its input as "the picture"
  exe = _fake_dot(tmp_path, 'cp "$2" "$4"')
  monkeypatch.setattr(shutil, 'which', lambda name, *a, **k: exe)
  out = viz.save_genotype_graphs(DARTS_V2, tmp_path / 'out', 'g')
  assert out == {'normal': str(tmp_path / 'out' / 'g_normal.png'),
                 'reduce': str(tmp_path / 'out' / 'g_reduce.png'), 'rendered': True}
  assert (tmp_path / 'out' / 'g_reduce.png').read_text() == (
      tmp_path / 'out' / 'g_reduce.gv').read_text()


def test_edge_names():
  assert viz.edge_names(14) == [
      '0<-c_{k-2}', '0<-c_{k-1}',
      '1<-c_{k-2}', '1<-c_{k-1}', '1<-0',
      '2<-c_{k-2}', '2<-c_{k-1}', '2<-0', '2<-1',
      '3<-c_{k-2}', '3<-c_{k-1}', '3<-0', '3<-1', '3<-2']
  assert viz.edge_names(2) == ['0<-c_{k-2}', '0<-c_{k-1}']
  for bad in (13, 0, 1, 15, -2, 14.0, True):
    with pytest.raises(ValueError):
      viz.edge_names(bad)


def _read_png(path):
  assert os.path.getsize(path) > 0
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  return mpimg.imread(path)


def test_heatmaps_png(tmp_path):
  rng = np.random.default_rng(0)
  mixing = {'normal': softmaxed(rng, (14, 8)), 'reduce': softmaxed(rng, (14, 8))}
  viz.plot_alpha_heatmaps(mixing, PRIMITIVES, tmp_path / 'h' / 'both.png', title='epoch 0')
  both = _read_png(tmp_path / 'h' / 'both.png')
  assert both.ndim == 3 and both.shape[2] == 4
  viz.plot_alpha_heatmaps({'normal': mixing['normal']}, PRIMITIVES, tmp_path / 'one.png')
  one = _read_png(tmp_path / 'one.png')
  assert both.shape[1] > 1.5 * one.shape[1]  # the cells sit side by side


def test_evolution_png(tmp_path):
  rng = np.random.default_rng(1)
  history = [{'normal': softmaxed(rng, (5, 3)), 'reduce': softmaxed(rng, (5, 3))}
             for _ in range(4)]
  ops = ['none', 'skip_connect', 'sep_conv_3x3']
  viz.plot_alpha_evolution(history, ops, tmp_path / 'evo.png', steps=[10, 20, 30, 40])
  img = _read_png(tmp_path / 'evo.png')
  assert img.ndim == 3 and img.shape[2] == 4
  viz.plot_alpha_evolution(history[:1], ops, tmp_path / 'first.png')  # one epoch is fine
  assert _read_png(tmp_path / 'first.png').shape[2] == 4


def test_shape_errors(tmp_path):
  rng = np.random.default_rng(2)
  good = softmaxed(rng, (14, 8))
  path = tmp_path / 'x.png'
  msg = r"mixing\['reduce'\] has shape \(14, 7\); expected \(E, 8\)"
  with pytest.raises(ValueError, match=msg):
    viz.plot_alpha_heatmaps({'normal': good, 'reduce': good[:, :7]}, PRIMITIVES, path)
  with pytest.raises(ValueError, match=r'\(13, 8\).*13 edges is no cell'):
    viz.plot_alpha_heatmaps({'normal': good[:13]}, PRIMITIVES, path)
  with pytest.raises(ValueError, match=r'shape \(14,\)'):
    viz.plot_alpha_heatmaps({'normal': good[:, 0]}, PRIMITIVES, path)
  with pytest.raises(ValueError, match='unknown cells'):
    viz.plot_alpha_heatmaps({'norm': good}, PRIMITIVES, path)
  history = [{'normal': good}, {'normal': good[:9]}]
  with pytest.raises(ValueError, match=r'history\[1\]'):
    viz.plot_alpha_evolution(history, PRIMITIVES, path)
  with pytest.raises(ValueError, match=r'history\[0\]\[\'normal\'\] has shape \(14, 8\)'):
    viz.plot_alpha_evolution([{'normal': good}], PRIMITIVES[:4], path)
  with pytest.raises(ValueError, match=r'steps has shape \(3,\); expected \(1,\)'):
    viz.plot_alpha_evolution([{'normal': good}], PRIMITIVES, path, steps=[1, 2, 3])
  with pytest.raises(ValueError, match='non-empty list'):
    viz.plot_alpha_evolution([], PRIMITIVES, path)
  assert not path.exists()


def test_recurrent_genotype_graph_has_one_edge_per_pair(tmp_path):
  from darts_jax import recurrent as rc
  g = rc.DARTS_V2
  source = viz.recurrent_genotype_dot(g).source
  for i, (op, j) in enumerate(g.recurrent):
    assert f'{j} -> {i + 1} [label={op}]' in source
  assert source.count('-> "h_{t}"') == len(g.concat)
  path = viz.save_recurrent_graph(g, tmp_path, 'cell')
  assert os.path.exists(path) and os.path.exists(tmp_path / 'cell.gv')


def test_plot_curves_writes_a_png(tmp_path):
  viz.plot_curves([1, 2, 3], {'train': [300, 200, 150], 'valid': [250, 180, 160]},
                  tmp_path / 'ppl.png', 'perplexity', log_y=True)
  assert (tmp_path / 'ppl.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
