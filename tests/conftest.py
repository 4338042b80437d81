"""Every test sees 8 CPU devices, so sharded code runs as it would on a pod slice."""
import atexit
import os
import shutil
import sys
import tempfile

# Must happen before jax is imported anywhere in the test session. Compiling is most of a
# small test's time: without XLA's backend (LLVM) optimisations the suite spends about a third
# less CPU time (tests/test_models.py: 45 -> 31 CPU s); the tests' shapes are tiny, so the
# slower compiled code costs little.
def _xla_flags(devices: int) -> str:
  return f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"


os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _xla_flags(8)).strip()
# Many tests (and their subprocesses, which inherit the environment) compile the same tiny
# train step in separate jit objects: jax's persistent cache, keyed by the computation, compiles
# each once per test run (a third less CPU time for tests/test_train.py's end-to-end runs). One
# directory per run, shared by pytest-xdist's workers (children of the run's main process, which
# removes it at exit), so a run never reuses another's executables.
_WORKER = "PYTEST_XDIST_WORKER" in os.environ
_XLA_CACHE = os.path.join(tempfile.gettempdir(), "supcon_jax_tests_xla_cache_"
                          f"{os.getppid() if _WORKER else os.getpid()}")
os.makedirs(_XLA_CACHE, exist_ok=True)
if not _WORKER:
  atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# torchvision and timm (the tests' references) import torch._dynamo, which loads triton, whose
# bundled LLVM crashes the process (segfault) once TensorFlow is loaded. Nothing here needs
# triton (CPU only), and torch runs without it when its import fails.
sys.modules.setdefault("triton", None)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

FASHION_MNIST_FILES = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="session")
def cpu_env():
  """env(devices=8): the environment for a subprocess with `devices` CPU devices, compiled as
  this session compiles (results compared across processes must come from the same code)."""
  def env(devices: int = 8) -> dict[str, str]:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": _xla_flags(devices)}
  return env


@pytest.fixture(scope="session")
def fashion_mnist_dir(tmp_path_factory) -> str:
  """A tfds data_dir holding the real fashion_mnist, built once from Debian's .gz files (~25 s)."""
  if not os.path.exists(os.path.join(FASHION_MNIST_FILES, "t10k-images-idx3-ubyte.gz")):
    pytest.skip(f"needs Debian's dataset-fashion-mnist in {FASHION_MNIST_FILES} "
                "(apt-get install dataset-fashion-mnist; .ci/run installs it)")
  from configs import base
  from supcon_jax import input_pipeline
  config = base.get_config()
  config.data.dataset = "fashion_mnist"
  config.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
  config.data.manual_dir = FASHION_MNIST_FILES
  input_pipeline.prepare_dataset(config)
  return config.data.data_dir
