"""The execution keys that the search and training configs share: devices, hosts, BatchNorm
semantics, sharded weights, precision and learning-rate scaling (README, "Several devices and
hosts")."""

import ml_collections


def add_scale_out_keys(c: ml_collections.ConfigDict, base_batch: int) -> None:
  """Adds the keys to ``c``; ``base_batch`` is the paper's batch size for ``lr_scaling``."""
  c.num_devices = 1  # devices of the data-parallel mesh (0: all; a multi-process run uses all)
  c.batch_norm = 'global'  # BN statistics over the global batch, or 'per_device' (DataParallel)
  c.shard_weights = False  # split weights and their optimiser state over the devices (memory)
  c.compute_dtype = ''  # '': dtype; 'bfloat16': bf16 compute, float32 master weights and BN
  c.lr_scaling = 'none'  # 'linear': learning rates x batch_size / lr_base_batch
  c.lr_base_batch = base_batch
  c.distributed = False  # join a multi-process run (jax.distributed); the keys below, when
  c.coordinator_address = ''  # left '' / 0 / -1, are detected (SLURM, TPU pod, Open MPI)
  c.num_processes = 0
  c.process_id = -1
  c.distributed_timeout = 300  # seconds to wait for every process
