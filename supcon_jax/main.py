"""Pretraining entry point.

  python -m supcon_jax.main --config=configs/fashion_mnist.py --workdir=/tmp/supcon

Every config field can be overridden on the command line, e.g. `--config.batch_size=1024`;
`--config.data.manual_dir=None` sets an optional field to None.
On several hosts, run the same command on each: SLURM, Open MPI and Cloud TPU slices are
detected; elsewhere pass --coordinator_address, --num_processes and --process_id.
`--verbose` also shows the libraries' INFO logs (orbax, tfds, clu, jax).
"""
from absl import app, flags
from ml_collections import config_flags

from supcon_jax import console

console.import_tensorflow_quietly()  # before the modules below import it
# pylint: disable=g-import-not-at-top,wrong-import-position
from supcon_jax import config_lib, distributed, train  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
config_lib.accept_none_on_command_line()
flags.DEFINE_string("workdir", None, "Checkpoints and metrics go here; a run resumes from it.")
flags.mark_flags_as_required(["config", "workdir"])
distributed.define_flags()
console.define_flags()

# Exit status of a run that saved and stopped early (SIGTERM, preemption, maintenance): "try
# again" (sysexits' EX_TEMPFAIL), so launchers resume it rather than go on to evaluation.
EXIT_PREEMPTED = 75


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.setup(FLAGS.verbose)
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  return EXIT_PREEMPTED if "preempted_at_step" in result else 0


if __name__ == "__main__":
  app.run(main)
