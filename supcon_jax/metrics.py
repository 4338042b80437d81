"""clu metric writers and periodic hooks; only process 0 writes files."""
from typing import Any, Sequence

import jax
import numpy as np
from clu import metric_writers, periodic_actions


def create_writer(workdir: str) -> metric_writers.MetricWriter:
  """TensorBoard event files plus console logging on process 0; logging only elsewhere."""
  return metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0, asynchronous=True)


def create_hooks(num_train_steps: int, writer: metric_writers.MetricWriter,
                 every_steps: int) -> list[periodic_actions.PeriodicAction]:
  """ReportProgress (steps/s, ETA) on every process: each logs its own progress."""
  return [periodic_actions.ReportProgress(
      num_train_steps=num_train_steps, writer=writer, every_steps=every_steps,
      every_secs=None)]


def mean_of(step_metrics: Sequence[dict[str, Any]]) -> dict[str, float]:
  """Averages per-step scalar metrics (device arrays are fetched here, once)."""
  fetched = jax.device_get(list(step_metrics))
  return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
