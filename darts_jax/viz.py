"""Pictures of a search: the derived cells as graphs, the mixing weights softmax(alpha) as
heatmaps and curves (:func:`darts_jax.genotypes.mixing_weights` computes them from the alphas).

matplotlib and the ``graphviz`` Python package are optional (``pip install 'darts_jax[viz]'``), so
they are imported inside the functions that need them: importing this module costs nothing and a
training script without them fails only when it asks for a picture. The graphviz ``dot`` program is
optional too: :func:`save_genotype_graphs` always writes the DOT source and renders a PNG only when
``dot`` is installed and works.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import warnings
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

CELLS: tuple[str, ...] = ('normal', 'reduce')
OUTPUT = 'c_{k}'
_INPUTS = ('c_{k-2}', 'c_{k-1}')
_INSTALL_HINT = "pip install 'darts_jax[viz]'"


def _require(module: str, what: str) -> Any:
  """``module`` imported, or an ImportError that says how to get it."""
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise ImportError(f'{what} needs the {module.split(".")[0]!r} package: {_INSTALL_HINT}') from e


def _check_cell(cell: Any) -> str:
  if cell not in CELLS:
    raise ValueError(f'unknown cell {cell!r}; allowed: {CELLS}')
  return cell


def state_name(index: int) -> str:
  """The name of cell state ``index``: 0 and 1 are the cell inputs, i >= 2 is node i - 2."""
  return _INPUTS[index] if index < 2 else str(index - 2)


class CellLayout(NamedTuple):
  """How a space's cells are drawn: their kinds (the mixing dicts' keys), the names of the
  states that feed a cell, and the name of its first computed node. Node i (from 0) takes every
  input state and every earlier node."""
  cells: tuple[str, ...]
  inputs: tuple[str, ...]
  first_node: int
  title: str = '{} cell'  # a cell's panel title, from its kind

  def state(self, index: int) -> str:
    m = len(self.inputs)
    return self.inputs[index] if index < m else str(index - m + self.first_node)


# the DARTS cells: inputs c_{k-2}, c_{k-1}, nodes 0, 1, ...
DARTS_LAYOUT = CellLayout(CELLS, _INPUTS, 0)
# NAS-Bench-201's cell: input node 0, nodes 1, 2, 3 (edges '1<-0', '2<-0', '2<-1', ...)
NB201_LAYOUT = CellLayout(('cell',), ('0',), 1, 'the cell (every cell shares it)')


def _nodes_for_edges(num_edges: Any, layout: CellLayout = DARTS_LAYOUT) -> int:
  """The node count whose edges (m + (m + 1) + ... for m input states) number ``num_edges``."""
  if not isinstance(num_edges, (int, np.integer)) or isinstance(num_edges, bool):
    raise ValueError(f'the number of edges must be an int, got {num_edges!r}')
  m = len(layout.inputs)
  nodes, total = 0, 0
  while total < num_edges:
    total += nodes + m
    nodes += 1
  if nodes == 0 or total != num_edges:
    sizes = np.cumsum(np.arange(m, m + 5))
    raise ValueError(f'{num_edges} edges is no cell: node i has i + {m} inputs, so a cell has '
                     f'{", ".join(map(str, sizes))}, ... edges')
  return nodes


def edge_names(num_edges: int, layout: CellLayout = DARTS_LAYOUT) -> list[str]:
  """Names of the alpha rows, in the supernet's order: ``'1<-c_{k-2}'`` is node 1's first input
  (DARTS); ``'2<-0'`` node 2's (NAS-Bench-201)."""
  nodes, m = _nodes_for_edges(num_edges, layout), len(layout.inputs)
  return [f'{node + layout.first_node}<-{layout.state(j)}' for node in range(nodes)
          for j in range(node + m)]


def genotype_dot(genotype: Any, cell: str) -> Any:
  """The ``cell`` ('normal' or 'reduce') of ``genotype`` as a left-to-right ``graphviz.Digraph``.

  Nodes are the inputs ``c_{k-2}``, ``c_{k-1}``, the intermediate nodes ``0``, ``1``, ... and the
  output ``c_{k}``; each (op, input) pair is an edge labelled with the op, and every state in the
  concat list has an unlabelled edge into ``c_{k}``.
  """
  _check_cell(cell)
  graphviz = _require('graphviz', 'genotype_dot')
  pairs = list(getattr(genotype, cell))
  concat = list(getattr(genotype, cell + '_concat'))
  if len(pairs) % 2:
    raise ValueError(f'genotype {cell}: needs two (op, input) pairs per node, got {len(pairs)}')
  nodes = len(pairs) // 2

  dot = graphviz.Digraph(
      name=f'{cell}_cell', format='png',
      graph_attr={'rankdir': 'LR'},
      node_attr={'style': 'filled', 'shape': 'box', 'align': 'center', 'fontname': 'helvetica',
                 'fontsize': '20', 'height': '0.5', 'width': '0.5', 'penwidth': '2'},
      edge_attr={'fontname': 'helvetica', 'fontsize': '16'})
  for name in _INPUTS:
    dot.node(name, fillcolor='darkseagreen2')
  for node in range(nodes):
    dot.node(str(node), fillcolor='lightblue')
  dot.node(OUTPUT, fillcolor='palegoldenrod')

  for i, (op, j) in enumerate(pairs):
    node = i // 2
    if not 0 <= j < node + 2:
      raise ValueError(f'genotype {cell}: node {node} takes input {j} ({op!r}); allowed inputs '
                       f'are 0..{node + 1}')
    dot.edge(state_name(j), str(node), label=op)
  for c in concat:
    if not 0 <= c < nodes + 2:
      raise ValueError(f'genotype {cell}_concat: {c} is not a state index 0..{nodes + 1}')
    dot.edge(state_name(c), OUTPUT, color='gray40')
  return dot


def _render_png(dot_exe: str, gv_path: str, png_path: str) -> bool:
  """Runs ``dot``; False (with a warning) when it fails, since a picture is never worth a crash."""
  try:
    subprocess.run([dot_exe, '-Tpng', gv_path, '-o', png_path], check=True,
                   capture_output=True, timeout=120)
  except (OSError, subprocess.SubprocessError) as e:
    detail = getattr(e, 'stderr', None)
    detail = detail.decode(errors='replace').strip() if isinstance(detail, bytes) else str(e)
    warnings.warn(f'graphviz dot could not render {gv_path}: {detail or e}; kept the DOT source',
                  RuntimeWarning, stacklevel=3)
    return False
  return os.path.exists(png_path)


def save_genotype_graphs(genotype: Any, directory: str | os.PathLike, stem: str
                         ) -> dict[str, Any]:
  """Writes ``{stem}_normal.gv`` and ``{stem}_reduce.gv`` in ``directory``, plus a ``.png`` of each
  when the graphviz ``dot`` program is installed and works.

  Returns ``{'normal': path, 'reduce': path, 'rendered': bool}``, each path the PNG when it was
  rendered, else the DOT source; ``rendered`` is True only when both PNGs were.
  """
  os.makedirs(directory, exist_ok=True)
  # looked up at call time (not import time) so installing dot mid-run, or a test, takes effect
  dot_exe = shutil.which('dot')
  out: dict[str, Any] = {}
  rendered = dot_exe is not None
  for cell in CELLS:
    gv_path = os.path.join(os.fspath(directory), f'{stem}_{cell}.gv')
    with open(gv_path, 'w', encoding='utf-8') as f:
      f.write(genotype_dot(genotype, cell).source)
    out[cell] = gv_path
    if dot_exe is not None:
      png_path = os.path.join(os.fspath(directory), f'{stem}_{cell}.png')
      if _render_png(dot_exe, gv_path, png_path):
        out[cell] = png_path
      else:
        rendered = False
  out['rendered'] = rendered
  return out


def recurrent_genotype_dot(genotype: Any) -> Any:
  """A recurrent genotype (``darts_jax.recurrent.RecurrentGenotype``) as a left-to-right
  ``graphviz.Digraph``: ``x_{t}`` and ``h_{t-1}`` make state 0, each (op, j) pair is an edge from
  state j into the next node labelled with the op, and the concat states average into
  ``h_{t}``."""
  graphviz = _require('graphviz', 'recurrent_genotype_dot')
  dot = graphviz.Digraph(
      name='recurrent_cell', format='png', graph_attr={'rankdir': 'LR'},
      node_attr={'style': 'filled', 'shape': 'box', 'align': 'center', 'fontname': 'helvetica',
                 'fontsize': '20', 'height': '0.5', 'width': '0.5', 'penwidth': '2'},
      edge_attr={'fontname': 'helvetica', 'fontsize': '16'})
  for name in ('x_{t}', 'h_{t-1}'):
    dot.node(name, fillcolor='darkseagreen2')
    dot.edge(name, '0', color='gray40')
  for i in range(len(genotype.recurrent) + 1):
    dot.node(str(i), fillcolor='lightblue')
  dot.node('h_{t}', fillcolor='palegoldenrod')
  for i, (op, j) in enumerate(genotype.recurrent):
    dot.edge(str(j), str(i + 1), label=op)
  for c in genotype.concat:
    dot.edge(str(c), 'h_{t}', color='gray40')
  return dot


def save_recurrent_graph(genotype: Any, directory: str | os.PathLike, stem: str) -> str:
  """Writes ``{stem}.gv`` in ``directory`` and a ``.png`` when graphviz ``dot`` works; returns
  the PNG's path when it was rendered, else the DOT source's."""
  os.makedirs(directory, exist_ok=True)
  gv_path = os.path.join(os.fspath(directory), f'{stem}.gv')
  with open(gv_path, 'w', encoding='utf-8') as f:
    f.write(recurrent_genotype_dot(genotype).source)
  dot_exe = shutil.which('dot')
  png_path = os.path.join(os.fspath(directory), f'{stem}.png')
  if dot_exe is not None and _render_png(dot_exe, gv_path, png_path):
    return png_path
  return gv_path


def _cell_mixing(mixing: Any, primitives: Sequence[str], where: str = 'mixing',
                 layout: CellLayout = DARTS_LAYOUT) -> dict[str, np.ndarray]:
  """``mixing`` as ``{cell: float array (E, O)}`` in the layout's order, checked against
  ``primitives``."""
  cells = layout.cells
  if not isinstance(mixing, Mapping) or not mixing:
    got = sorted(mixing) if isinstance(mixing, Mapping) else type(mixing).__name__
    raise ValueError(f'{where} must be a non-empty dict with keys from {cells}, got {got}')
  unknown = [k for k in mixing if k not in cells]
  if unknown:
    raise ValueError(f'{where} has unknown cells {unknown}; allowed: {cells}')
  out = {}
  for cell in cells:
    if cell not in mixing:
      continue
    a = np.asarray(mixing[cell], dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != len(primitives):
      raise ValueError(f'{where}[{cell!r}] has shape {a.shape}; expected (E, {len(primitives)}): '
                       f'one row per edge, one column per primitive')
    try:
      _nodes_for_edges(a.shape[0], layout)
    except ValueError as e:
      raise ValueError(f'{where}[{cell!r}] has shape {a.shape}: {e}') from None
    out[cell] = a
  return out


def _check_primitives(primitives: Sequence[str]) -> list[str]:
  names = list(primitives)
  if not names or not all(isinstance(p, str) for p in names):
    raise ValueError(f'primitives must be a non-empty list of op names, got {primitives!r}')
  return names


def _new_figure(figsize: tuple[float, float]) -> Any:
  """A Figure on its own Agg canvas: no pyplot state, so calls don't leak and it runs headless."""
  _require('matplotlib', 'plotting')
  figure = importlib.import_module('matplotlib.figure')
  backend_agg = importlib.import_module('matplotlib.backends.backend_agg')
  fig = figure.Figure(figsize=figsize, layout='constrained')
  backend_agg.FigureCanvasAgg(fig)
  return fig


def _save(fig: Any, path: str | os.PathLike) -> None:
  parent = os.path.dirname(os.fspath(path))
  if parent:
    os.makedirs(parent, exist_ok=True)
  fig.savefig(path, format='png', dpi=100)


def plot_alpha_heatmaps(mixing: Mapping[str, Any], primitives: Sequence[str],
                        path: str | os.PathLike, title: str | None = None,
                        layout: CellLayout = DARTS_LAYOUT) -> None:
  """Side-by-side heatmaps (edges x ops) of each cell's mixing weights, saved as a PNG.

  ``mixing`` is ``{cell: (E, O)}`` of softmax(alpha), e.g. ``genotypes.mixing_weights(alphas)``.
  """
  primitives = _check_primitives(primitives)
  cells = _cell_mixing(mixing, primitives, layout=layout)
  rows = max(a.shape[0] for a in cells.values())
  # wide enough for the title's longest line (about 0.115 inch a character at its size)
  width = max(len(cells) * (0.75 * len(primitives) + 3.0),
              0.115 * max(map(len, (title or '').splitlines()), default=0))
  fig = _new_figure((width, 0.4 * rows + 2.5))
  axes = fig.subplots(1, len(cells), squeeze=False)[0]
  for ax, (cell, a) in zip(axes, cells.items()):
    # a fixed 0..1 scale (mixing weights) keeps colours comparable from epoch to epoch
    vmin, vmax = min(0.0, float(a.min())), max(1.0, float(a.max()))
    im = ax.imshow(a, cmap='viridis', vmin=vmin, vmax=vmax, aspect='auto')
    ax.set_xticks(range(len(primitives)), labels=primitives, rotation=45, ha='right',
                  rotation_mode='anchor')
    ax.set_yticks(range(a.shape[0]), labels=edge_names(a.shape[0], layout))
    ax.set_title(layout.title.format(cell))
    middle = (vmin + vmax) / 2
    for (e, k), v in np.ndenumerate(a):
      ax.text(k, e, f'{v:.2f}', ha='center', va='center', fontsize=7,
              color='black' if v > middle else 'white')
    fig.colorbar(im, ax=ax, shrink=0.8)
  if title:
    fig.suptitle(title)
  _save(fig, path)


def _history_mixing(history: Sequence[Mapping[str, Any]], primitives: Sequence[str],
                    layout: CellLayout = DARTS_LAYOUT) -> dict[str, np.ndarray]:
  """``{cell: array (T, E, O)}`` from T epochs of mixing weights, which must agree in cells and
  shapes."""
  if isinstance(history, Mapping) or not isinstance(history, Sequence) or not history:
    raise ValueError('history must be a non-empty list with one mixing-weights dict per epoch, '
                     f'got {type(history).__name__}')
  epochs = [_cell_mixing(h, primitives, where=f'history[{t}]', layout=layout)
            for t, h in enumerate(history)]
  first = {cell: a.shape for cell, a in epochs[0].items()}
  for t, epoch in enumerate(epochs[1:], start=1):
    shapes = {cell: a.shape for cell, a in epoch.items()}
    if shapes != first:
      raise ValueError(f'history[{t}] has cells/shapes {shapes}; expected {first} as in history[0]')
  return {cell: np.stack([e[cell] for e in epochs]) for cell in first}


def plot_alpha_evolution(history: Sequence[Mapping[str, Any]], primitives: Sequence[str],
                         path: str | os.PathLike, steps: Sequence[float] | None = None,
                         layout: CellLayout = DARTS_LAYOUT) -> None:
  """Each edge's mixing weights over the epochs of ``history`` (one ``{cell: (E, O)}`` of
  softmax(alpha) per epoch), saved as a PNG.

  One panel grid per cell, laid out like the cell: row i is node i, column j its input j (so row i
  has i + 2 panels in a DARTS cell); one line per op, with a legend of the primitives shared by
  all panels. The x axis is the epoch index, or ``steps`` (one value per entry of ``history``).
  """
  primitives = _check_primitives(primitives)
  cells = _history_mixing(history, primitives, layout)
  n = len(history)
  x = np.arange(n) if steps is None else np.asarray(steps, dtype=np.float64)
  if x.shape != (n,):
    raise ValueError(f'steps has shape {x.shape}; expected ({n},), one value per history entry')

  m = len(layout.inputs)
  nodes = max(_nodes_for_edges(a.shape[1], layout) for a in cells.values())
  panel = 1.6
  fig = _new_figure((len(cells) * (nodes + m - 1) * panel + 0.5, nodes * panel + 1.2))
  subfigs = np.atleast_1d(fig.subfigures(1, len(cells)))
  colours = importlib.import_module('matplotlib').colormaps[
      'tab10' if len(primitives) <= 10 else 'tab20']
  marker = 'o' if n == 1 else None  # a single epoch would otherwise draw nothing visible
  handles = []
  for sub, (cell, a) in zip(subfigs, cells.items()):
    sub.suptitle(layout.title.format(cell))
    sub.supxlabel('epoch' if steps is None else 'step', fontsize=9)
    sub.supylabel('softmax weight', fontsize=9)
    cell_nodes = _nodes_for_edges(a.shape[1], layout)
    grid = sub.subplots(cell_nodes, cell_nodes + m - 1, squeeze=False, sharex=True, sharey=True)
    names = edge_names(a.shape[1], layout)
    e = 0
    for node in range(cell_nodes):
      for j in range(cell_nodes + m - 1):
        ax = grid[node, j]
        if j >= node + m:
          ax.set_axis_off()
          continue
        lines = [ax.plot(x, a[:, e, k], color=colours(k % colours.N), marker=marker,
                         linewidth=1.2)[0] for k in range(len(primitives))]
        handles = handles or lines
        ax.set_title(names[e], fontsize=8)
        ax.set_ylim(min(0.0, float(a.min())), max(1.0, float(a.max())))
        ax.tick_params(labelsize=6)
        e += 1
  width = fig.get_figwidth()  # about 1.4 inches per legend entry
  fig.legend(handles, primitives, loc='outside lower center',
             ncol=max(1, min(len(primitives), 8, int(width // 1.4))), fontsize=8)
  _save(fig, path)


def plot_curves(epochs: Sequence[int], curves: Mapping[str, Sequence[float]],
                path: str | os.PathLike, ylabel: str, log_y: bool = False) -> None:
  """One line per named curve over the epochs (e.g. training and validation perplexity)."""
  fig = _new_figure((6, 4))
  ax = fig.add_subplot()
  for name, values in curves.items():
    ax.plot(list(epochs), list(values), marker='o', label=name)
  ax.set_xlabel('epoch')
  ax.set_ylabel(ylabel)
  if log_y:
    ax.set_yscale('log')
  ax.grid(alpha=0.3)
  ax.legend()
  _save(fig, path)


def _record_curves(records: Sequence[Mapping[str, Any]], keys: Sequence[str]
                   ) -> dict[str, tuple[list[int], list[float]]]:
  """(epochs, values) of each key that some record holds, over the records that hold it."""
  out = {}
  for key in keys:
    points = [(r['epoch'], r[key]) for r in records if r.get(key) is not None]
    if points:
      out[key] = ([p[0] for p in points], [float(p[1]) for p in points])
  return out


def plot_search_health(records: Sequence[Mapping[str, Any]], directory: str | os.PathLike
                       ) -> list[str]:
  """A search's health report as pictures (``darts_jax.health``), from its epoch records:

  - ``hessian_eigenvalue.png``: the dominant eigenvalue of the architecture Hessian at each
    evaluation, with the epochs an early stop chose (RobustDARTS's Fig. 4 and 7);
  - ``collapse_diagnostics.png``: the parameter-free ops of the genotype, the edges' mean
    entropy and margin, and the second-order share of the hypergradient.

  Returns the paths written (the eigenvalue plot only once some record holds one)."""
  written = []
  eigen = _record_curves(records, ('dominant_eigenvalue',))
  if eigen:
    fig = _new_figure((6, 4))
    ax = fig.add_subplot()
    epochs, values = eigen['dominant_eigenvalue']
    ax.plot(epochs, values, marker='o', label='dominant eigenvalue')
    for r in records:
      stop = r.get('early_stop')
      if stop:
        ax.axvline(stop['stop_epoch'], color='tab:red', ls='--',
                   label=f'stop chosen at epoch {stop["epoch"]}: epoch {stop["stop_epoch"]}')
    ax.set_xlabel('epoch')
    ax.set_ylabel('dominant eigenvalue of the Hessian in alpha')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = os.path.join(os.fspath(directory), 'hessian_eigenvalue.png')
    _save(fig, path)
    written.append(path)
  panels = (('parameter-free ops in the genotype', 'parameter_free_'),
            ('mean entropy of the edges (nats)', 'entropy_'),
            ('mean margin of the two strongest ops', 'margin_'),
            ('second-order share of the hypergradient norm', 'second_order_share'))
  keys = sorted({k for r in records for k in r if any(k.startswith(p) for _, p in panels)})
  curves = _record_curves(records, keys)
  if curves:
    fig = _new_figure((10, 7))
    for i, (title, prefix) in enumerate(panels):
      ax = fig.add_subplot(2, 2, i + 1)
      for key, (epochs, values) in curves.items():
        if key.startswith(prefix):
          ax.plot(epochs, values, marker='.', label=key[len(prefix):] or None)
      ax.set_title(title, fontsize=9)
      ax.set_xlabel('epoch')
      ax.grid(alpha=0.3)
      if any(k.startswith(prefix) and k != prefix for k in curves):
        ax.legend(fontsize=8)
    path = os.path.join(os.fspath(directory), 'collapse_diagnostics.png')
    _save(fig, path)
    written.append(path)
  return written
