"""Scaling out: data parallelism over a device mesh, several hosts, and the choices that go
with it (BatchNorm semantics, sharded weights, batch-size learning-rate scaling).

Everything runs on XLA's collectives through ``jax.jit`` with ``NamedSharding`` over a 1-D mesh
whose axis is ``'data'``: the batch is split over it, and XLA inserts the all-reduces that the
replicated (or sharded) state needs. The step functions do not change: a data-parallel step is
the single-device step with a global batch. Across hosts, ``jax.distributed`` joins the
processes; each feeds only its share of every global batch (:class:`BatchFeed`).

BatchNorm semantics (``batch_norm``):

- ``'global'`` (the default): statistics over the whole global batch, so ``N`` devices compute
  exactly what one device computes with the same batch (XLA all-reduces each BN's sums).
- ``'per_device'``: each device normalises its own shard (PyTorch ``DataParallel``): the loss is
  the mean over shards of the single-device loss on that shard
  (:func:`per_device_batch_norm`), and the running statistics are the mean of the shards'
  updates. Gradients, and every hypergradient estimator, differentiate that mean, so they are
  the shard gradients averaged.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = 'data'
BATCH_NORM_MODES = ('global', 'per_device')
LR_SCALING = ('none', 'linear')
# leaves smaller than this stay replicated under shard_weights: gathering them costs more than
# they save (BN scales, biases, alphas' neighbours)
MIN_SHARDED_SIZE = 1024


# ----------------------------------------------------------------------------------------------
# processes and devices
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  """How this process joins a multi-process run (``jax.distributed.initialize``).

  ``enabled=False``: one process. Otherwise fields left unset (``''``, ``0``, ``-1``) are
  detected by JAX from the environment: SLURM, Open MPI, Kubernetes, Cloud TPU pods, or
  ``JAX_COORDINATOR_ADDRESS``.
  """
  enabled: bool = False
  coordinator_address: str = ''  # host:port of process 0
  num_processes: int = 0
  process_id: int = -1
  timeout: int = 300  # seconds to wait for every process to join

  @classmethod
  def from_config(cls, cfg: Mapping) -> 'DistributedConfig':
    return cls(bool(cfg['distributed']), cfg['coordinator_address'], cfg['num_processes'],
               cfg['process_id'], cfg['distributed_timeout'])

  def __post_init__(self):
    if not isinstance(self.coordinator_address, str):
      raise ValueError(f'coordinator_address={self.coordinator_address!r}: give "host:port"')
    if self.coordinator_address and ':' not in self.coordinator_address:
      raise ValueError(f'coordinator_address={self.coordinator_address!r}: give "host:port"')
    for name, low in (('num_processes', 0), ('process_id', -1), ('timeout', 1)):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f'{name}={value!r}: must be an integer >= {low}')
    if self.num_processes and self.process_id >= self.num_processes:
      raise ValueError(f'process_id={self.process_id} is not below num_processes='
                       f'{self.num_processes}')


def _wait_for_coordinator(address: str, timeout: float) -> None:
  """Raises a one-line error unless ``host:port`` accepts connections within ``timeout``
  seconds. JAX itself aborts the whole process (a C++ check failure) when it cannot register
  with the coordinator in time."""
  host, port = address.rsplit(':', 1)
  deadline = time.monotonic() + timeout
  while True:
    try:
      with socket.create_connection((host.strip('[]'), int(port)), timeout=1.0):
        return
    except (OSError, ValueError) as e:
      if time.monotonic() >= deadline:
        raise ValueError(f'coordinator_address={address!r}: nothing answered there within '
                         f'{timeout:g} s ({e}); start process 0 first, or check the address '
                         'and distributed_timeout') from None
      time.sleep(0.5)


def initialize(dist: DistributedConfig) -> None:
  """Joins the multi-process run described by ``dist`` (nothing when it is disabled or this
  process has joined already). Must run before anything else touches a JAX backend."""
  if not dist.enabled or jax.distributed.is_initialized():
    return
  if dist.coordinator_address and dist.process_id > 0:
    _wait_for_coordinator(dist.coordinator_address, dist.timeout)
  try:
    jax.distributed.initialize(
        coordinator_address=dist.coordinator_address or None,
        num_processes=dist.num_processes or None,
        process_id=None if dist.process_id < 0 else dist.process_id,
        initialization_timeout=dist.timeout)
  except (RuntimeError, ValueError, TypeError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(
        f'distributed=True: could not join the run ({first}). Give coordinator_address, '
        'num_processes and process_id, or launch under SLURM / a TPU pod / Open MPI where JAX '
        'detects them; distributed must be set before any other JAX work in the process'
    ) from None


def is_main_process() -> bool:
  """Process 0 writes logs, pictures and text files; every process takes part in checkpoints."""
  return jax.process_index() == 0


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh over the first ``num_devices`` devices of the run (all by default; across
  every process of a multi-process run), axis ``'data'``."""
  devices = jax.devices()
  n = len(devices) if num_devices is None else num_devices
  if not 1 <= n <= len(devices):
    raise ValueError(f'num_devices={num_devices!r}: this run has {len(devices)} device(s)')
  if jax.process_count() > 1 and n != len(devices):
    raise ValueError(f'num_devices={num_devices!r}: a multi-process run uses all of its '
                     f'{len(devices)} devices (num_devices=0)')
  return Mesh(np.asarray(devices[:n]), (AXIS,))


def check_batch_divisible(batch_size: int, mesh: Mesh, name: str = 'batch_size') -> None:
  if batch_size % mesh.size:
    raise ValueError(f'{name}={batch_size} is not divisible by the number of devices '
                     f'({mesh.size}); the batch is split evenly over the data axis')


def barrier(name: str) -> None:
  """Waits for every process (nothing with one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


# ----------------------------------------------------------------------------------------------
# data: each process feeds its share of a global batch
# ----------------------------------------------------------------------------------------------


class BatchFeed:
  """Global batches sharded over ``'data'``, built from this process's rows only.

  Every process draws the same global order (from the seed), so ``feed(index, *arrays)`` takes
  the global batch's example indices, gathers the rows that this process's devices hold, and
  joins them into global arrays (``jax.make_array_from_process_local_data``). With one process
  that is the whole batch.
  """

  def __init__(self, mesh: Mesh, batch_size: int):
    check_batch_divisible(batch_size, mesh)
    self.batch_size = batch_size
    self.sharding = NamedSharding(mesh, P(AXIS))
    index_map = self.sharding.addressable_devices_indices_map((batch_size,))
    starts = sorted({(s[0].start or 0, s[0].stop or batch_size) for s in index_map.values()})
    lo, hi = starts[0][0], starts[-1][1]
    if sum(b - a for a, b in starts) != hi - lo:
      raise ValueError('this process\'s devices do not hold one contiguous block of the batch; '
                       'build the mesh from jax.devices() in order')
    self.rows = slice(lo, hi)

  def __call__(self, index: np.ndarray, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
    index = np.asarray(index)
    if index.shape != (self.batch_size,):
      raise ValueError(f'a global batch has {self.batch_size} indices, got shape {index.shape}')
    local = index[self.rows]
    return self.from_local(*(np.asarray(a[local]) for a in arrays))

  def from_local(self, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
    """Global batches from this process's rows ``self.rows`` of each, already gathered (a
    loader that decodes only those rows)."""
    size = self.rows.stop - self.rows.start
    for a in arrays:
      if len(a) != size:
        raise ValueError(f'this process holds rows {self.rows.start}..{self.rows.stop - 1} of '
                         f'the batch ({size}), got {len(a)}')
    return tuple(jax.make_array_from_process_local_data(
        self.sharding, np.asarray(a), (self.batch_size, *np.shape(a)[1:])) for a in arrays)


# ----------------------------------------------------------------------------------------------
# state placement
# ----------------------------------------------------------------------------------------------


def leaf_sharding(shape: Sequence[int], mesh: Mesh,
                  min_size: int = MIN_SHARDED_SIZE) -> NamedSharding:
  """Where one weight (or optimiser moment) lives under ``shard_weights``: split over
  ``'data'`` along its largest axis that the device count divides, else (or when it has fewer
  than ``min_size`` entries) replicated."""
  axes = [a for a, n in enumerate(shape) if n % mesh.size == 0]
  if mesh.size == 1 or not axes or int(np.prod(shape)) < min_size:
    return NamedSharding(mesh, P())
  axis = max(axes, key=lambda a: shape[a])
  return NamedSharding(mesh, P(*[AXIS if a == axis else None for a in range(len(shape))]))


def state_sharding(state: Any, mesh: Mesh, sharded_fields: Sequence[str] = (),
                   min_size: int = MIN_SHARDED_SIZE) -> Any:
  """Shardings for a state NamedTuple: the fields named in ``sharded_fields`` (weights and
  their optimiser state) split as :func:`leaf_sharding` says (ZeRO-3 / FSDP style: XLA gathers
  each weight where it is used), everything else replicated."""
  replicated = NamedSharding(mesh, P())
  fields = {}
  for name, value in state._asdict().items():
    where = ((lambda x: leaf_sharding(np.shape(x), mesh, min_size)) if name in sharded_fields
             else (lambda x: replicated))
    fields[name] = jax.tree_util.tree_map(where, value)
  return type(state)(**fields)


def place(tree: Any, shardings: Any) -> Any:
  """``tree``'s values on the devices ``shardings`` names. Every process holds the same values
  (the same seed drew them), and each puts only the parts its own devices hold."""
  def put(x, sharding):
    host = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
  return jax.tree_util.tree_map(put, tree, shardings)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """``tree`` on every device of ``mesh``."""
  return place(tree, jax.tree_util.tree_map(lambda _: NamedSharding(mesh, P()), tree))


def to_host(tree: Any) -> Any:
  """numpy copies of ``tree``'s leaves on every process (sharded leaves are gathered)."""
  def fetch(x):
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
      from jax.experimental import multihost_utils
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
  return jax.tree_util.tree_map(fetch, tree)


# ----------------------------------------------------------------------------------------------
# per-device BatchNorm
# ----------------------------------------------------------------------------------------------


def per_device_batch_norm(loss: Callable, groups: int, mesh: Mesh | None = None, *,
                          batch_argnum: int = 3, key_argnum: int | None = None) -> Callable:
  """``loss`` with BatchNorm statistics per shard of the batch, as on ``groups`` devices that
  each normalise their own shard (PyTorch ``DataParallel``).

  ``loss(*args) -> (value, aux)`` takes a batch ``(images, labels)`` at ``batch_argnum`` and
  returns ``aux = (batch_stats, logits, ...)`` (``supernet.LossAux`` or the training loss's
  pair). The batch is cut into ``groups`` consecutive shards, ``loss`` runs on each
  (``jax.vmap``), and the result is ``mean_s value_s`` with the running statistics averaged over
  shards and the logits in batch order. A PRNG key at ``key_argnum`` is split, one per shard.
  With ``mesh`` the shards are pinned to its devices, so no statistic crosses a device.
  """
  if not isinstance(groups, int) or groups < 1:
    raise ValueError(f'groups={groups!r}: must be an integer >= 1')

  def grouped(x):
    if x.shape[0] % groups:
      raise ValueError(f'per-device BatchNorm: the batch of {x.shape[0]} does not split into '
                       f'{groups} equal shards')
    x = x.reshape(groups, x.shape[0] // groups, *x.shape[1:])
    return x if mesh is None else jax.lax.with_sharding_constraint(
        x, NamedSharding(mesh, P(AXIS)))

  def sharded_loss(*args):
    args, axes = list(args), [None] * len(args)
    args[batch_argnum] = tuple(grouped(x) for x in args[batch_argnum])
    axes[batch_argnum] = 0
    if key_argnum is not None:
      args[key_argnum], axes[key_argnum] = jax.random.split(args[key_argnum], groups), 0
    values, aux = jax.vmap(loss, in_axes=tuple(axes))(*args)
    stats = jax.tree_util.tree_map(lambda s: jnp.mean(s, axis=0), aux[0])
    logits = aux[1].reshape(-1, *aux[1].shape[2:])
    rest = (stats, logits, *aux[2:])
    return jnp.mean(values), (type(aux)(*rest) if hasattr(aux, '_fields') else rest)

  return sharded_loss


# ----------------------------------------------------------------------------------------------
# batch-size scaling of learning rates
# ----------------------------------------------------------------------------------------------


def scaled_learning_rates(rates: Mapping[str, float], batch_size: int, base_batch: int,
                          rule: str) -> dict[str, float]:
  """The linear scaling rule (Goyal et al., 2017): learning rates times ``batch / base``.

  The original searched with batch 64 on one GPU; its multi-GPU successor (pt.darts) searched
  with batch 256 on 4 GPUs with w_lr 0.1, w_lr_min 0.004 and alpha_lr 1.2e-3: this rule with
  base 64.
  """
  if rule not in LR_SCALING:
    raise ValueError(f'lr_scaling={rule!r}: allowed: {", ".join(LR_SCALING)}')
  if not isinstance(base_batch, int) or isinstance(base_batch, bool) or base_batch < 1:
    raise ValueError(f'lr_base_batch={base_batch!r}: must be an integer >= 1')
  factor = batch_size / base_batch if rule == 'linear' else 1.0
  return {k: v * factor for k, v in rates.items()}


def check_batch_norm_mode(mode: str) -> None:
  if mode not in BATCH_NORM_MODES:
    raise ValueError(f'batch_norm={mode!r}: allowed: {", ".join(BATCH_NORM_MODES)}')
