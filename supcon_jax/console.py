"""What a person sees on the console: our own progress and results, libraries only on request.

By default only INFO lines logged from supcon_jax's own modules (and every WARNING or worse, from
anywhere) reach the console, as plain text; orbax, tfds, clu, absl and jax INFO logs appear
with `--verbose`, with absl's usual prefixes. Metrics still go to TensorBoard in full.
"""
import datetime
import logging as std_logging
import os

from absl import flags, logging

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def define_flags() -> None:
  """The entry points' `--verbose` flag."""
  flags.DEFINE_bool("verbose", False,
                    "Also show INFO logs of the libraries (orbax, tfds, clu, absl, jax) and the "
                    "full metrics line of every log step.")


# Library warnings that say nothing to act on: orbax's note on every read-only manager (the
# linear evaluation reads the pretraining run's checkpoints read-only, by design).
_BENIGN_WARNINGS = ("Given directory is read only",)


class OwnInfoOnly(std_logging.Filter):
  """Passes warnings and errors from anywhere (but _BENIGN_WARNINGS), INFO and below only from
  supcon_jax."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if os.path.abspath(record.pathname).startswith(_PACKAGE_DIR):
      return True
    return (record.levelno >= std_logging.WARNING
            and not str(record.msg).startswith(_BENIGN_WARNINGS))


class _PlainFormatter(std_logging.Formatter):
  """INFO lines as they are; others prefixed with their level so they stand out."""

  def format(self, record: std_logging.LogRecord) -> str:
    message = super().format(record)
    return message if record.levelno == std_logging.INFO else f"{record.levelname}: {message}"


def import_tensorflow_quietly() -> None:
  """Imports TensorFlow with its C++ start-up lines (the oneDNN notice and absl's
  "before InitializeLog" warning) sent to /dev/null: TF 2.21 prints them whatever
  TF_CPP_MIN_LOG_LEVEL says. An import error still raises, and prints, as usual."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  saved_stderr = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  finally:
    os.dup2(saved_stderr, 2)
    os.close(saved_stderr)
    os.close(devnull)


def setup(verbose: bool) -> None:
  """Configures absl's handler (call once from an entry point's main, after flags parse)."""
  logging.set_verbosity(logging.INFO)
  if verbose:
    return
  handler = logging.get_absl_handler()
  handler.addFilter(OwnInfoOnly())
  handler.python_handler.setFormatter(_PlainFormatter("%(message)s"))
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()


def duration(seconds: float) -> str:
  """'0:01:05' style, whole seconds."""
  return str(datetime.timedelta(seconds=int(round(max(seconds, 0.0)))))


def progress_line(step: int, total_steps: int, scalars: dict[str, float], steps_per_sec: float,
                  images_per_sec: float) -> str:
  """One line per log interval: step, main metrics, speed and ETA."""
  parts = [f"step {step:>{len(str(total_steps))}}/{total_steps} ({100 * step / total_steps:3.0f}%)"]
  for key, label, fmt in (("loss", "loss", ".4f"), ("main_loss", "main", ".4f"),
                          ("probe_top1", "probe top-1", ".3f"),
                          ("learning_rate", "lr", ".4g")):
    if key in scalars:
      parts.append(f"{label} {scalars[key]:{fmt}}")
  remaining = (total_steps - step) / steps_per_sec if steps_per_sec > 0 else 0.0
  parts.append(f"{steps_per_sec:.2f} steps/s, {images_per_sec:.0f} img/s, "
               f"ETA {duration(remaining)}")
  return "  ".join(parts)
