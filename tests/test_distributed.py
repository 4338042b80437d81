"""distributed.initialize: which jobs start jax.distributed, and which are refused at start-up.

The cluster facts are checked against jax 0.10.2's own detection code (jax._src.clusters), the
reference for what `jax.distributed.initialize()` without arguments will do on that cluster.
"""
import http.server
import threading

import jax
import pytest
from jax._src import clusters
from jax._src.clusters import cloud_tpu_cluster

from supcon_jax import distributed

CLUSTER_VARS = ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK",
                "OMPI_MCA_orte_hnp_uri", "SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS",
                "SLURM_PROCID", "SLURM_LOCALID", "TPU_SKIP_MDS_QUERY", "MEGASCALE_NUM_SLICES",
                "JAX_COORDINATOR_ADDRESS", "GCE_METADATA_IP", distributed.TPU_SLICE_ENV)


@pytest.fixture(autouse=True)
def no_cluster(monkeypatch):
  """A plain machine: no launcher variables, no libtpu."""
  for name in CLUSTER_VARS:
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(distributed, "_libtpu_installed", lambda: False)


@pytest.fixture
def fake_jax(monkeypatch):
  """Records jax.distributed.initialize calls; `client` says whether one left a client behind.

  The call cannot really run here (it would connect to a coordinator), and after the backend
  is up it must not; jax.process_count is what a joined job of `processes` would report.
  """
  class FakeJax:
    calls = []
    client = True
    processes = 1

  def initialize(**kwargs):
    FakeJax.calls.append(kwargs)

  monkeypatch.setattr(jax.distributed, "initialize", initialize)
  monkeypatch.setattr(jax.distributed, "is_initialized",
                      lambda: bool(FakeJax.calls) and FakeJax.client)
  monkeypatch.setattr(jax, "process_count", lambda: FakeJax.processes)
  return FakeJax


@pytest.fixture
def metadata_server(monkeypatch):
  """A GCE metadata server on localhost that answers only requests with Metadata-Flavor."""
  attributes = {}

  class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
      key = self.path.rsplit("/", 1)[-1]
      if self.headers.get("Metadata-Flavor") != "Google" or key not in attributes:
        self.send_error(403 if key in attributes else 404)
        return
      body = attributes[key].encode()
      self.send_response(200)
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    def log_message(self, *args):
      pass

  server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  monkeypatch.setenv("GCE_METADATA_IP", f"127.0.0.1:{server.server_address[1]}")
  yield attributes
  server.shutdown()
  server.server_close()


@pytest.mark.parametrize("endpoints", [
    "t1v-n-0-w-0,t1v-n-0-w-1,t1v-n-0-w-2,t1v-n-0-w-3",  # current images: hostnames
    "w-0:0:10.0.0.2,w-1:1:10.0.0.3,w-2:2:10.0.0.4,w-3:3:10.0.0.5",  # older: name:id:ip
])
def test_tpu_vm_slice_is_detected_from_the_metadata_jax_reads(metadata_server, monkeypatch,
                                                                fake_jax, endpoints):
  metadata_server["worker-network-endpoints"] = endpoints
  monkeypatch.setattr(distributed, "_libtpu_installed", lambda: True)
  reference = len(cloud_tpu_cluster.GceTpuCluster._get_worker_list_in_slice())
  assert distributed.tpu_slice_processes() == reference == 4
  fake_jax.processes = 4
  distributed.initialize()
  assert fake_jax.calls == [{}]  # on Cloud TPU jax finds every argument itself


def test_launcher_flag_starts_jax_distributed_on_a_single_host_slice_too(metadata_server,
                                                                         monkeypatch, fake_jax):
  metadata_server["worker-network-endpoints"] = "t1v-n-0-w-0"
  monkeypatch.setenv(distributed.TPU_SLICE_ENV, "1")  # libtpu not even installed
  distributed.initialize()
  assert fake_jax.calls == [{}]


def test_single_host_tpu_vm_started_by_hand_stays_a_plain_process(metadata_server, monkeypatch,
                                                                  fake_jax):
  metadata_server["worker-network-endpoints"] = "t1v-n-0-w-0"
  monkeypatch.setattr(distributed, "_libtpu_installed", lambda: True)
  distributed.initialize()
  assert not fake_jax.calls


def test_launcher_flag_without_metadata_is_an_error(monkeypatch, fake_jax):
  monkeypatch.setenv(distributed.TPU_SLICE_ENV, "1")
  monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:1")  # nothing listens there
  with pytest.raises(RuntimeError, match="worker-network-endpoints"):
    distributed.initialize()
  assert not fake_jax.calls


def test_multi_host_tpu_job_without_a_client_is_refused_before_training(
    metadata_server, monkeypatch, fake_jax):
  """libtpu joins the slice by itself (4 processes), but jax.distributed left no client."""
  from supcon_jax import main as main_lib
  from supcon_jax import train
  metadata_server["worker-network-endpoints"] = "w-0,w-1,w-2,w-3"
  monkeypatch.setenv(distributed.TPU_SLICE_ENV, "1")
  fake_jax.client, fake_jax.processes = False, 4
  started = []
  monkeypatch.setattr(train, "train_and_evaluate", lambda *a: started.append(a))
  main_lib.FLAGS(["main", "--config=configs/fashion_mnist.py", "--workdir=/nonexistent"])
  try:
    with pytest.raises(RuntimeError, match="4 processes but jax.distributed is not initialised"):
      main_lib.main(["main"])
  finally:
    main_lib.FLAGS.unparse_flags()
  assert fake_jax.calls == [{}] and not started  # nothing trained, nothing checkpointed


def test_undetected_multi_process_job_is_refused(fake_jax):
  fake_jax.processes = 2  # e.g. a TPU slice whose metadata jax could not read
  with pytest.raises(RuntimeError, match="2 processes but jax.distributed is not initialised"):
    distributed.initialize()
  assert not fake_jax.calls


def test_process_count_other_than_the_launchers_is_refused(fake_jax):
  with pytest.raises(RuntimeError, match="Expected 2 processes in this job, jax sees 1"):
    distributed.initialize("localhost:1234", 2, 0)
  assert fake_jax.calls == [dict(coordinator_address="localhost:1234", num_processes=2,
                                 process_id=0)]


def test_single_process_starts_nothing(fake_jax):
  distributed.initialize()
  assert not fake_jax.calls
  with pytest.raises(ValueError, match="go together"):
    distributed.initialize("localhost:1234", None, 0)


def _set(monkeypatch, **env):
  for name, value in env.items():
    monkeypatch.setenv(name, value)


def test_open_mpi_5_gets_rank_and_device_from_ompi_vars(monkeypatch, fake_jax):
  _set(monkeypatch, OMPI_COMM_WORLD_SIZE="4", OMPI_COMM_WORLD_RANK="2",
       OMPI_COMM_WORLD_LOCAL_RANK="1")
  with pytest.raises(ValueError, match="JAX_COORDINATOR_ADDRESS"):
    distributed.initialize()
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "node0:61234")
  fake_jax.processes = 4
  distributed.initialize()
  expected = dict(coordinator_address="node0:61234", num_processes=4, process_id=2,
                  local_device_ids=[1])
  assert fake_jax.calls == [expected]
  # What jax itself derives once it can see the launch (Open MPI <= 4 sets the ORTE URI).
  monkeypatch.setenv("OMPI_MCA_orte_hnp_uri", "1531576320.0;tcp://10.96.0.1:34911")
  detected = clusters.ClusterEnv.auto_detect_unset_distributed_params(
      None, None, None, None, None, 1)
  assert detected[1:] == (4, 2, [1])


def test_open_mpi_4_is_left_to_jax(monkeypatch, fake_jax):
  _set(monkeypatch, OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_RANK="0",
       OMPI_COMM_WORLD_LOCAL_RANK="0", OMPI_MCA_orte_hnp_uri="1.0;tcp://10.0.0.1:1")
  fake_jax.processes = 2
  distributed.initialize()
  assert fake_jax.calls == [{}]


def test_slurm_step_is_left_to_jax_which_gives_each_task_one_device(monkeypatch, fake_jax):
  _set(monkeypatch, SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="gpu[01-02]", SLURM_NTASKS="16",
       SLURM_PROCID="9", SLURM_LOCALID="1")
  fake_jax.processes = 16
  distributed.initialize()
  assert fake_jax.calls == [{}]
  address, processes, process, devices = clusters.ClusterEnv.auto_detect_unset_distributed_params(
      None, None, None, None, None, 1)
  # One GPU per process: the sbatch must start as many tasks per node as the node has GPUs.
  assert (address.split(":")[0], processes, process, devices) == ("gpu01", 16, 9, [1])


def test_slurm_batch_shell_without_srun_is_refused(monkeypatch, fake_jax):
  _set(monkeypatch, SLURM_JOB_ID="4242", SLURM_NTASKS="16")
  with pytest.raises(ValueError, match="srun"):
    distributed.initialize()


def test_metadata_lookup_off_gce_is_none(monkeypatch):
  monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:1")
  assert distributed.gce_metadata("worker-network-endpoints") is None
  monkeypatch.setattr(distributed, "_libtpu_installed", lambda: True)
  assert distributed.tpu_slice_processes() is None


@pytest.mark.parametrize("result,status", [({"probe_eval_top1": 0.5}, 0),
                                           ({"preempted_at_step": 4.0}, 75)])
def test_main_exits_75_when_the_run_saved_and_stopped_early(monkeypatch, result, status):
  """75 (EX_TEMPFAIL) tells launch/tpu.sh and train.sbatch to resume rather than evaluate."""
  from supcon_jax import main as main_lib
  from supcon_jax import train
  monkeypatch.setattr(train, "train_and_evaluate", lambda *a: result)
  main_lib.FLAGS(["main", "--config=configs/fashion_mnist.py", "--workdir=/nonexistent"])
  try:
    assert main_lib.main(["main"]) == status
  finally:
    main_lib.FLAGS.unparse_flags()
