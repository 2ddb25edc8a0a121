"""Checkpoints (orbax) and run directories.

A checkpoint stores a state pytree's leaves under readable dotted names
(``weights.cells_0.preprocess0.conv.kernel``, ``w_opt_state.1.1.0.trace....``) and restores
them into the structure of a freshly built state, so optimiser-state containers (empty
``NamedTuple`` s, tuples) never go through orbax's structure handling. orbax writes each
checkpoint to a temporary directory and renames it when complete: a crash mid-save leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

import jax
import numpy as np


# entry-name prefixes that earlier code wrote (old -> new): such checkpoints restore into today's
# state (the training state's network weights were called ``params`` until the names were
# unified: ``weights`` everywhere)
RENAMED_PREFIXES = (('params.', 'weights.'),)
# entries later code added to a state: a checkpoint written before them restores them at the
# fresh state's value (the search's epoch sums of the hypergradient's first- and second-order
# norms, for the health report; 0 at an epoch's start)
ADDED_ENTRIES = ('metrics.direct_norm', 'metrics.indirect_norm')


def _stored_name(name: str, stored: set[str]) -> str:
  """The name under which a checkpoint holds ``name``: itself, or its earlier name."""
  if name in stored:
    return name
  for old, new in RENAMED_PREFIXES:
    if name.startswith(new) and old + name[len(new):] in stored:
      return old + name[len(new):]
  return name


def _key_name(key) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _dtype(x) -> np.dtype:
  return np.dtype(x.dtype) if hasattr(x, 'dtype') else np.result_type(x)


def leaf_names(tree) -> list[str]:
  return ['.'.join(_key_name(k) for k in path)
          for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def flatten_named(tree) -> dict[str, Any]:
  names, leaves = leaf_names(tree), jax.tree_util.tree_leaves(tree)
  if len(set(names)) != len(names):
    raise ValueError('state leaf names are not unique; cannot checkpoint by name')
  return dict(zip(names, leaves))


def unflatten_named(named: Mapping[str, Any], like):
  """``like``'s structure with the leaves of ``named`` (same names, shapes and dtypes)."""
  names = leaf_names(like)
  missing = sorted(set(names) - set(named))
  extra = sorted(set(named) - set(names))
  if missing or extra:
    raise ValueError(f'checkpoint does not fit this run: missing {missing[:3]}, unexpected '
                     f'{extra[:3]} (of {len(missing)} / {len(extra)})')
  leaves = []
  for name, ref in zip(names, jax.tree_util.tree_leaves(like)):
    value = named[name]
    if np.shape(value) != np.shape(ref) or _dtype(value) != _dtype(ref):
      raise ValueError(f'checkpoint entry {name!r} has shape {np.shape(value)} and dtype '
                       f'{_dtype(value)}; this run needs {np.shape(ref)} {_dtype(ref)}')
    leaves.append(value)
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves)


class Checkpoints:
  """Numbered checkpoints of one state pytree in ``directory`` (orbax ``CheckpointManager``)."""

  def __init__(self, directory: str, max_to_keep: int = 2,
               keep: Callable[[int], bool] | None = None):
    """``max_to_keep`` latest checkpoints, and besides them every step ``keep`` picks (the
    epoch ends a DARTS-ADA rewind may return to)."""
    import orbax.checkpoint as ocp  # imported here: orbax is slow to import
    self._ocp = ocp
    self._keep = keep
    options = ocp.CheckpointManagerOptions(max_to_keep=None if keep else max_to_keep,
                                           create=True, enable_async_checkpointing=False)
    self._max_to_keep = max_to_keep
    # handlers named up front, so that reading an item's metadata needs no guessing (orbax
    # otherwise warns that it cannot restore items it has no handler for)
    self.manager = ocp.CheckpointManager(
        os.path.abspath(directory), options=options,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'metadata': ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, metadata: Mapping | None = None) -> None:
    """Every process of a multi-process run calls this: orbax writes each array's shards from
    the process that holds them, and the metadata once."""
    named = {k: v if isinstance(v, jax.Array) else np.asarray(v)
             for k, v in flatten_named(state).items()}
    args = {'state': self._ocp.args.StandardSave(named)}
    if metadata is not None:
      args['metadata'] = self._ocp.args.JsonSave(dict(metadata))
    self.manager.save(step, args=self._ocp.args.Composite(**args), force=True)
    self.manager.wait_until_finished()
    if self._keep is not None:  # orbax keeps all; drop the older ones `keep` does not pick
      unpicked = [s for s in self.steps() if not self._keep(s)]
      for old in unpicked[:-self._max_to_keep] if self._max_to_keep else unpicked:
        if old != step:
          self.delete(old)

  def steps(self) -> list[int]:
    """The steps that have a checkpoint, ascending."""
    return sorted(self.manager.all_steps())

  def delete(self, step: int) -> None:
    self.manager.delete(step)

  def restore(self, like, step: int | None = None):
    """Restores into ``like``'s structure: onto ``like``'s devices and shardings where its
    leaves are ``jax.Array`` s (each process reads only its shards), else as numpy. Returns
    ``(state, metadata)``."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError('no checkpoint to restore')
    host = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    like_named = flatten_named(like)
    stored_meta = self.manager.item_metadata(step)['state']
    stored = set(stored_meta)
    names = {k: _stored_name(k, stored) for k in like_named}
    # a checkpoint of another run fails here, by entry name, not deep inside orbax
    added = {k for k in like_named if names[k] not in stored and k in ADDED_ENTRIES}
    missing = sorted(k for k in like_named if names[k] not in stored and k not in added)
    extra = sorted(stored - set(names.values()))
    if missing or extra:
      raise ValueError(f'checkpoint does not fit this run: missing {missing[:3]}, unexpected '
                       f'{extra[:3]} (of {len(missing)} / {len(extra)})')
    fresh = {k: like_named[k] for k in added}
    like_named = {k: v for k, v in like_named.items() if k not in added}
    for k, v in like_named.items():
      shape = tuple(stored_meta[names[k]].shape)
      if shape != tuple(np.shape(v)):
        raise ValueError(f'checkpoint entry {k!r} has shape {shape}; this run needs '
                         f'{tuple(np.shape(v))}')
    on_device = {k: isinstance(v, jax.Array) for k, v in like_named.items()}
    abstract = {names[k]: jax.ShapeDtypeStruct(np.shape(v), _dtype(v),
                                               sharding=v.sharding if on_device[k] else host)
                for k, v in like_named.items()}
    restored, metadata = self._restore(step, abstract)
    named = {k: restored[names[k]] if on_device[k] else np.asarray(restored[names[k]])
             for k in like_named}
    return unflatten_named({**named, **fresh}, like), metadata

  def read(self, step: int | None = None) -> dict[str, np.ndarray]:
    """Every entry of a checkpoint by name, as numpy, whatever devices and processes wrote it
    (a multi-host run's checkpoint reads on a laptop)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError('no checkpoint to read')
    host = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = {k: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=host)
                for k, m in self.manager.item_metadata(step)['state'].items()}
    return {k: np.asarray(v) for k, v in self._restore(step, abstract)[0].items()}

  def _restore(self, step: int, abstract: Mapping[str, jax.ShapeDtypeStruct]):
    items = {'state': self._ocp.args.StandardRestore(dict(abstract))}
    if 'metadata' in self.manager.item_metadata(step):
      items['metadata'] = self._ocp.args.JsonRestore()
    restored = self.manager.restore(step, args=self._ocp.args.Composite(**items))
    return restored['state'], restored.get('metadata') if 'metadata' in items else None

  def close(self) -> None:
    self.manager.close()


def write_atomic(path: str, text: str) -> None:
  """``text`` in ``path``, never half-written: a crash leaves the previous file."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def check_run_config(workdir: str, config: Mapping, may_differ: tuple[str, ...] = (),
                     write: bool = True, absent_means: Mapping[str, Any] | None = None,
                     renamed: Mapping[str, str] | None = None) -> bool:
  """Guards a run directory: writes ``config.json`` on first use (unless ``write`` is False:
  the other processes of a multi-process run); afterwards the stored config must equal
  ``config`` except for ``may_differ`` keys. A key missing from the stored config (a run
  started before the key existed) matches the value ``absent_means`` gives it, the behaviour
  of the time; a key of the stored config that ``renamed`` maps (old name -> new) is compared
  under its new name. Returns True if the workdir held a run.

  Raises ValueError naming the differing keys (nothing in the workdir is touched).
  """
  path = os.path.join(workdir, 'config.json')
  config = json.loads(json.dumps(dict(config)))  # as stored: tuples become lists
  if os.path.exists(path):
    with open(path) as f:
      stored = json.load(f)
    stored = {(renamed or {}).get(k, k): v for k, v in stored.items()}
    stored = {**dict(absent_means or {}), **stored}
    keys = sorted((set(stored) | set(config)) - set(may_differ))
    differ = [k for k in keys if stored.get(k, '<absent>') != config.get(k, '<absent>')]
    if differ:
      shown = ', '.join(f'{k}: {stored.get(k, "<absent>")!r} -> {config.get(k, "<absent>")!r}'
                        for k in differ[:4])
      raise ValueError(f'workdir {workdir!r} holds a run with a different config ({shown}); '
                       'use a new --workdir or the same config to resume')
    return True
  if not write:
    return False
  os.makedirs(workdir, exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(dict(config), f, indent=2, sort_keys=True)
  os.replace(tmp, path)
  return False
