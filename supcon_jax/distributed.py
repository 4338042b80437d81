"""Multi-host start-up: join the other processes with jax.distributed when there are any.

Where the job's processes come from, first match wins:
  1. --coordinator_address/--num_processes/--process_id (any cluster; tests, local runs);
  2. Open MPI (OMPI_COMM_WORLD_SIZE > 1). jax 0.10.2 detects only ORTE launches (Open MPI <= 4,
     OMPI_MCA_orte_hnp_uri); under Open MPI 5 (PRRTE) the rank comes from OMPI_* and the
     coordinator from JAX_COORDINATOR_ADDRESS, which the launcher exports to every rank;
  3. SLURM (SLURM_NTASKS > 1 inside an srun step): jax's own detection, one device per process;
  4. a Cloud TPU VM slice: launch/tpu.sh says so (SUPCON_TPU_SLICE=1), or the GCE metadata that
     jax's GceTpuCluster reads lists several workers. On TPU VMs the only marker is that
     metadata (TPU_WORKER_HOSTNAMES is set by GKE only).
Whatever the route, a job of several processes without a jax.distributed client is refused
here, at start-up: orbax needs the client for every multi-host checkpoint and for the
preemption sync point.
"""
import http.client
import importlib.util
import os
import urllib.request
from typing import Any, Dict, Optional, Tuple

import jax
from absl import flags, logging

# Set by launch/tpu.sh on every worker of a TPU VM slice.
TPU_SLICE_ENV = "SUPCON_TPU_SLICE"


def define_flags() -> None:
  """The entry points' flags for an explicit cluster (auto-detected clusters need none)."""
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0, for clusters jax cannot detect itself.")
  flags.DEFINE_integer("num_processes", None, "Processes in the job (with coordinator_address).")
  flags.DEFINE_integer("process_id", None, "This process's index (with coordinator_address).")


def gce_metadata(key: str, timeout_s: float = 5.0) -> Optional[str]:
  """The instance attribute `key` from the GCE metadata server, or None where there is none.

  Same endpoint and header as jax's cloud_tpu_cluster.get_metadata (GCE_METADATA_IP overrides
  the host), but one short try: off GCE the name does not resolve and start-up must not wait.
  """
  host = os.environ.get("GCE_METADATA_IP", "metadata.google.internal")
  request = urllib.request.Request(
      f"http://{host}/computeMetadata/v1/instance/attributes/{key}",
      headers={"Metadata-Flavor": "Google"})
  try:
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
      return response.read().decode()
  except (OSError, http.client.HTTPException):  # no metadata server (URLError), no such key
    return None


def _libtpu_installed() -> bool:
  """Whether the TPU runtime is importable (jax[tpu] installs it), without loading it."""
  return importlib.util.find_spec("libtpu") is not None


def tpu_slice_processes() -> Optional[int]:
  """Processes (one per TPU VM) of this Cloud TPU slice job, or None when this is no TPU VM.

  Off a TPU VM nothing is asked unless the launcher said it is one: jax[tpu] installs libtpu,
  and jax skips the metadata query under TPU_SKIP_MDS_QUERY, so do we.
  """
  launcher_says = os.environ.get(TPU_SLICE_ENV) == "1"
  if not launcher_says and (not _libtpu_installed() or "TPU_SKIP_MDS_QUERY" in os.environ):
    return None
  # Comma-separated, one entry per worker: hostnames, or name:id:ip triples on older images.
  endpoints = gce_metadata("worker-network-endpoints")
  if not endpoints:
    if launcher_says:
      raise RuntimeError(
          f"{TPU_SLICE_ENV}=1 says this is a Cloud TPU VM, but the GCE metadata server gave no "
          "worker-network-endpoints; run on the TPU VM itself, or unset the variable.")
    return None
  slices = int(os.environ.get("MEGASCALE_NUM_SLICES", "1"))  # Multislice: jax's variable
  return len(endpoints.split(",")) * slices


def _open_mpi_args() -> Optional[Dict[str, Any]]:
  """jax.distributed.initialize arguments for an Open MPI job, or None if jax detects it."""
  env = os.environ
  if "OMPI_MCA_orte_hnp_uri" in env:  # Open MPI <= 4: jax's OmpiCluster reads the ORTE URI
    return None
  address = env.get("JAX_COORDINATOR_ADDRESS")
  if not address:
    raise ValueError(
        "Open MPI job without OMPI_MCA_orte_hnp_uri (Open MPI >= 5), which jax 0.10.2 cannot "
        "detect: export JAX_COORDINATOR_ADDRESS=HOST:PORT (rank 0's host, a free port) to every "
        "rank, e.g. mpirun -x JAX_COORDINATOR_ADDRESS=$(hostname):61234 ..., or pass "
        "--coordinator_address, --num_processes and --process_id.")
  # As jax does for ORTE launches: one local device per rank, chosen by the node-local rank.
  return dict(coordinator_address=address,
              num_processes=int(env["OMPI_COMM_WORLD_SIZE"]),
              process_id=int(env["OMPI_COMM_WORLD_RANK"]),
              local_device_ids=[int(env["OMPI_COMM_WORLD_LOCAL_RANK"])])


def _detected_job() -> Tuple[Optional[Dict[str, Any]], int]:
  """(jax.distributed.initialize kwargs or None for a single process, expected processes)."""
  env = os.environ
  ompi_size = int(env.get("OMPI_COMM_WORLD_SIZE", "1"))
  if ompi_size > 1:
    return _open_mpi_args() or {}, ompi_size
  slurm_tasks = int(env.get("SLURM_NTASKS", "1"))
  if slurm_tasks > 1:
    if "SLURM_STEP_NODELIST" not in env:
      raise ValueError(f"SLURM_NTASKS={slurm_tasks} but this is no job step: start every task "
                       "with srun (see launch/slurm/train.sbatch).")
    return {}, slurm_tasks
  tpu_processes = tpu_slice_processes()
  if tpu_processes is not None and (tpu_processes > 1 or os.environ.get(TPU_SLICE_ENV) == "1"):
    # On Cloud TPU jax finds every argument itself. A single-host VM started by hand stays a
    # plain process; through tpu.sh it joins too, which also starts jax's preemption service.
    return {}, tpu_processes
  return None, 1


def require_distributed(expected_processes: int) -> None:
  """Refuses a multi-process job that has no jax.distributed client, or the wrong size.

  On TPU slices libtpu joins the hosts by itself, so jax.process_count() > 1 even when
  jax.distributed was never started; orbax would then fail at the first save on every host.
  """
  count = jax.process_count()
  if max(count, expected_processes) > 1 and not jax.distributed.is_initialized():
    raise RuntimeError(
        f"This job has {max(count, expected_processes)} processes but jax.distributed is not "
        "initialised, so orbax could neither checkpoint nor sync on preemption. Start it through "
        f"launch/tpu.sh (which sets {TPU_SLICE_ENV}=1), srun, or mpirun, or pass "
        "--coordinator_address, --num_processes and --process_id.")
  if count != expected_processes:
    raise RuntimeError(f"Expected {expected_processes} processes in this job, jax sees {count}: "
                       "the launcher's environment and jax's cluster detection disagree.")


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> None:
  """Calls jax.distributed.initialize for explicit or detected clusters, then logs the topology.

  A single process on one machine needs nothing: jax then sees only its local devices.
  Raises before any computation if the job has several processes but no distributed client.
  """
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ValueError("--coordinator_address, --num_processes and --process_id go together; "
                       f"got {explicit}.")
    kwargs, expected = dict(coordinator_address=coordinator_address,
                            num_processes=num_processes, process_id=process_id), num_processes
  else:
    kwargs, expected = _detected_job()
  if kwargs is not None:
    jax.distributed.initialize(**kwargs)
  require_distributed(expected)
  logging.info("Process %d of %d; %d local of %d devices (%s).", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
