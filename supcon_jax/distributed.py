"""Multi-host start-up: join the other processes with jax.distributed when there are any."""
import os
from typing import Optional

import jax
from absl import flags, logging


def define_flags() -> None:
  """The entry points' flags for an explicit cluster (auto-detected clusters need none)."""
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0, for clusters jax cannot detect itself.")
  flags.DEFINE_integer("num_processes", None, "Processes in the job (with coordinator_address).")
  flags.DEFINE_integer("process_id", None, "This process's index (with coordinator_address).")


def _cluster_detected() -> bool:
  """Several processes launched by SLURM, Open MPI, or a multi-host Cloud TPU slice."""
  env = os.environ
  return (int(env.get("SLURM_NTASKS", "1")) > 1
          or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
          or "," in env.get("TPU_WORKER_HOSTNAMES", ""))


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> None:
  """Calls jax.distributed.initialize for explicit or detected clusters, then logs the topology.

  A single process on one machine needs nothing: jax then sees only its local devices.
  """
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ValueError("--coordinator_address, --num_processes and --process_id go together; "
                       f"got {explicit}.")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif _cluster_detected():
    jax.distributed.initialize()
  logging.info("Process %d of %d; %d local of %d devices (%s).", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
