"""Checks a host before a long run: the pinned packages, then the job's shape.

  python -m supcon_jax.preflight --expect_platform=tpu --expect_devices=32

Run on every host of a job (launch/tpu.sh does, after `setup`): it starts jax.distributed the
way the trainer does, prints this process's place in the job, and exits 1 naming what is off,
so a wrong Python, a missing libtpu or a half-joined slice fails in seconds, not at step 0.
"""
import importlib.metadata
import os
import re
import sys
from typing import List, Optional

import jax
from absl import app, flags

from supcon_jax import distributed

# jax 0.10.2's wheel metadata: Requires-Python >=3.11 (the TPU images ship 3.10).
MIN_PYTHON = (3, 11)
REQUIREMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "requirements.txt")
_PIN = re.compile(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(\S+)$")

FLAGS = flags.FLAGS


def version_problems(requirements: str) -> List[str]:
  """The interpreter and every `name==version` pin of `requirements` that this Python lacks."""
  problems = []
  if sys.version_info[:2] < MIN_PYTHON:
    problems.append(f"Python {sys.version.split()[0]} < {'.'.join(map(str, MIN_PYTHON))}, "
                    "which jax 0.10.2 requires (launch/tpu.sh setup installs one with uv).")
  with open(requirements) as f:
    for line in f:
      pin = _PIN.match(line.split("#")[0].strip())
      if pin is None:
        continue
      name, wanted = pin.groups()
      try:
        have = importlib.metadata.version(name)
      except importlib.metadata.PackageNotFoundError:
        have = "not installed"
      if have != wanted:
        problems.append(f"{name}: {have}, pinned {wanted} in {requirements}.")
  return problems


def topology_problems(expect_platform: Optional[str], expect_devices: Optional[int]) -> List[str]:
  """Mismatches between this job's devices and the expected platform and global count."""
  platform = jax.devices()[0].platform
  problems = []
  if expect_platform is not None and platform != expect_platform:
    problems.append(f"jax runs on {platform}, expected {expect_platform} (is its plugin, e.g. "
                    "libtpu for jax[tpu], installed?).")
  if expect_devices is not None and jax.device_count() != expect_devices:
    problems.append(f"the job sees {jax.device_count()} devices, expected {expect_devices}.")
  if jax.local_device_count() * jax.process_count() != jax.device_count():
    problems.append(f"{jax.local_device_count()} local devices x {jax.process_count()} processes "
                    f"!= {jax.device_count()} devices: the hosts are not alike.")
  return problems


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  problems = version_problems(FLAGS.requirements)
  print(f"python {sys.version.split()[0]}, jax {jax.__version__}", flush=True)
  if FLAGS.topology and not problems:
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    print(f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} "
          f"local of {jax.device_count()} {jax.devices()[0].platform} devices", flush=True)
    problems += topology_problems(FLAGS.expect_platform, FLAGS.expect_devices)
  for problem in problems:
    print(f"preflight: {problem}", file=sys.stderr)
  return 1 if problems else 0


if __name__ == "__main__":
  flags.DEFINE_string("requirements", REQUIREMENTS, "Pinned requirements the host must match.")
  flags.DEFINE_bool("topology", True, "Also start jax (and jax.distributed) and check devices.")
  flags.DEFINE_string("expect_platform", None, "Platform jax must use: tpu, gpu or cpu.")
  flags.DEFINE_integer("expect_devices", None, "Devices the whole job must see.")
  distributed.define_flags()
  app.run(main)
