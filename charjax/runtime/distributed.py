"""Several processes (hosts) training one run: `jax.distributed.initialize` and host-side helpers.

`python -m charjax.train ... --num_processes=2 --process_id=0 --coordinator_address=host:port`
(one command per process, the same on every host but for `--process_id`) joins the
processes before JAX starts; on a cluster JAX detects these itself (Slurm, ...), asked for
with `--distributed`. On CPU the processes exchange data through gloo. Every process
loads the whole dataset and holds its devices' part of each batch; all of them save the
checkpoints together (Orbax), and only process 0 writes the run's files.
"""

from __future__ import annotations

import jax
from jax.experimental import multihost_utils
import numpy as np

from charjax.runtime import cpu_settings


def initialize(coordinator_address: str = '', num_processes: int = 0, process_id: int = -1,
               auto: bool = False) -> bool:
  """Joins a multi-process run when one is asked for; returns whether it did.

  Asked for by `num_processes` > 1 (with `coordinator_address` and `process_id`), or by
  `auto` (JAX reads the cluster's environment). Must run before any JAX computation.
  """
  if num_processes <= 1 and not auto:
    return False
  if cpu_settings.will_compute_on_cpu():
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if auto:
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  return True


def is_writer() -> bool:
  """Whether this process writes the run's files (process 0)."""
  return jax.process_index() == 0


def to_host(tree):
  """numpy copies of (replicated) arrays, also of arrays that span several processes."""
  def fetch(a):
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
      if a.is_fully_replicated:
        return np.asarray(a.addressable_data(0))
      return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)
  return jax.tree.map(fetch, tree)
