r"""SupCon, SimCLR and cross-entropy on Fashion-MNIST at several budgets: the README's study.

  python -m bench.study --output=/tmp/study                      # the README's table and plot
  python -m bench.study --output=/tmp/tune --split=validation --methods=supcon --epochs=6 \
      --override=optim.base_lr=0.5                               # one tuning trial

Each (method, epochs) run is what a user runs: `python -m supcon_jax.main` and then
`python -m supcon_jax.linear_eval`, in subprocesses, with the method's config
(bench.study.CONFIGS) and --config.num_epochs; the same linear-eval job scores every method.
Wall-clock figures are the subprocesses' (start-up, compilation and data preparation
included). --split=validation trains on the first 50,000 training images and scores on the
last 10,000 (and their first 1,000 for the corruptions): the split hyperparameters are chosen
on. --split=test trains on all 60,000 and scores on the test set, once per final config.

Writes OUTPUT/results.json (every run's figures and commands, the study's commands, the
machine) and OUTPUT/study.png (linear-probe top-1 against epochs and against wall-clock, ECE,
and mean top-1 under corruptions). A run already in results.json is not run again, so an
interrupted study resumes where it stopped (an unfinished run starts over), and a later
invocation with other --methods or --epochs adds its runs to the same results and plot.
"""
import json
import os
import platform
import shutil
import subprocess
import sys
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"supcon": "configs/fashion_mnist.py", "cross_entropy": "configs/fashion_mnist_ce.py",
           "simclr": "configs/fashion_mnist_simclr.py"}
LABELS = {"supcon": "SupCon", "simclr": "SimCLR", "cross_entropy": "cross-entropy"}
# The held-out split: the last 10,000 training images (the test set stays untouched).
VALIDATION = {"data.train_split": "train[:50000]", "data.eval_split": "train[50000:]",
              "probe.corruption_split": "train[50000:51000]"}
# Report fields copied into results.json.
FIELDS = ("linear_top1", "linear_train_top1", "knn_top1", "ece", "corruption_mean_top1",
          "raw_pixel_linear_top1", "step", "train_examples", "test_examples")

FLAGS = flags.FLAGS
flags.DEFINE_string("output", None, "Directory for the runs, results.json and study.png.")
flags.DEFINE_list("methods", list(CONFIGS), f"Methods to train, from {list(CONFIGS)}.")
flags.DEFINE_list("epochs", ["0.5", "1", "2.5"],
                  "Pretraining budgets in epochs (2.5: configs/fashion_mnist.py's).")
flags.DEFINE_enum("split", "test", ["test", "validation"],
                  "test: train on train, score on test (final configs only); validation: train "
                  "on train[:50000], score on train[50000:] (tuning).")
flags.DEFINE_multi_string("override", [], "FIELD=VALUE config overrides for every run, e.g. "
                          "optim.base_lr=0.5 (both jobs get them as --config.FIELD=VALUE).")


def config_flags(method: str, epochs: float, split: str, overrides: list[str]) -> list[str]:
  """The --config flags that both entry points get for one run."""
  pairs = [f"num_epochs={epochs}"]
  if split == "validation":
    pairs += [f"{k}={v}" for k, v in VALIDATION.items()]
  pairs += overrides
  return [f"--config={CONFIGS[method]}"] + [f"--config.{p}" for p in pairs]


def run_one(method: str, epochs: float, split: str, overrides: list[str],
            workdir: str) -> dict:
  """Pretrains and evaluates one (method, epochs) pair in `workdir`; returns its figures."""
  flags_ = config_flags(method, epochs, split, overrides)
  commands = {"pretrain": [sys.executable, "-m", "supcon_jax.main", f"--workdir={workdir}"],
              "linear_eval": [sys.executable, "-m", "supcon_jax.linear_eval",
                              f"--workdir={workdir}"]}
  seconds = {}
  shutil.rmtree(workdir, ignore_errors=True)  # an unfinished run starts over: honest timings
  os.makedirs(workdir)
  for job, command in commands.items():
    command += flags_
    print(f"[{method}, {epochs:g} epoch(s)] {job}: {' '.join(command[1:])}", flush=True)
    start = time.time()
    with open(os.path.join(workdir, f"{job}.log"), "w") as log:
      done = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            check=False)
    seconds[job] = time.time() - start
    if done.returncode:
      raise RuntimeError(f"{job} of {method} at {epochs:g} epochs failed (exit "
                         f"{done.returncode}); see {os.path.join(workdir, job + '.log')}.")
  with open(os.path.join(workdir, "linear_eval", "report.json")) as f:
    report = json.load(f)
  return {"method": method, "epochs": epochs, "pretrain_seconds": seconds["pretrain"],
          "eval_seconds": seconds["linear_eval"],
          **{k: report[k] for k in FIELDS if k in report},
          "commands": {job: " ".join(["python"] + c[1:]) for job, c in commands.items()}}


def machine() -> dict:
  """What the wall-clock figures were measured on."""
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  return {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
          "python": platform.python_version(), "jax": metadata.version("jax")}


def plot(runs: list[dict], path: str) -> None:
  """study.png: four panels, one line per method."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  panels = (("epochs", "linear_top1", "pretraining epochs", "linear-probe top-1 (%)"),
            ("pretrain_seconds", "linear_top1", "pretraining wall-clock (min)",
             "linear-probe top-1 (%)"),
            ("epochs", "ece", "pretraining epochs", "ECE of the probe (%)"),
            ("epochs", "corruption_mean_top1", "pretraining epochs",
             "mean top-1 under corruptions (%)"))
  fig, axes = plt.subplots(2, 2, figsize=(11, 8))
  for ax, (x_key, y_key, x_label, y_label) in zip(axes.flat, panels):
    for method in CONFIGS:
      points = sorted((r[x_key], r[y_key]) for r in runs
                      if r["method"] == method and y_key in r)
      if points:
        xs, ys = zip(*points)
        xs = [x / 60 for x in xs] if x_key == "pretrain_seconds" else xs
        ax.plot(xs, [100 * y for y in ys], marker="o", label=LABELS[method])
    raw = [r["raw_pixel_linear_top1"] for r in runs if "raw_pixel_linear_top1" in r]
    if y_key == "linear_top1" and raw:
      ax.axhline(100 * raw[0], color="gray", linestyle="--", label="raw pixels")
    # Budgets span ~30x (0.5 to 16 epochs): a log axis keeps the short runs apart.
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    if x_key == "epochs":
      ax.set_xticks(sorted({r["epochs"] for r in runs}))
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  unknown = set(FLAGS.methods) - set(CONFIGS)
  if unknown:
    raise app.UsageError(f"--methods: unknown {sorted(unknown)}; choose from {list(CONFIGS)}.")
  epochs = [float(e) for e in FLAGS.epochs]
  os.makedirs(FLAGS.output, exist_ok=True)
  results_path = os.path.join(FLAGS.output, "results.json")
  runs, commands = {}, []  # earlier invocations' runs stay in results.json and the plot
  if os.path.exists(results_path):
    with open(results_path) as f:
      saved = json.load(f)
    if (saved["split"], saved["overrides"]) != (FLAGS.split, FLAGS.override):
      raise app.UsageError(
          f"{results_path} holds runs with --split={saved['split']} and overrides "
          f"{saved['overrides']}, not --split={FLAGS.split} and {FLAGS.override}: use another "
          "--output, or delete it to start over.")
    runs = {(r["method"], r["epochs"]): r for r in saved["runs"]}
    commands = saved["commands"]
  command = " ".join(["python -m bench.study"] + sys.argv[1:])
  if command not in commands:
    commands.append(command)
  host = machine()
  for method in FLAGS.methods:
    for e in epochs:
      workdir = os.path.join(FLAGS.output, "runs", f"{method}_{e:g}ep")
      if (method, e) not in runs:
        runs[method, e] = run_one(method, e, FLAGS.split, FLAGS.override, workdir)
      done = runs[method, e]
      print(f"[{method}, {e:g} epoch(s)] linear top-1 {100 * done['linear_top1']:.2f}%, kNN "
            f"{100 * done['knn_top1']:.2f}%, ECE {done['ece']:.3f}, pretraining "
            f"{done['pretrain_seconds']:.0f} s, evaluation {done['eval_seconds']:.0f} s",
            flush=True)
      with open(results_path, "w") as f:
        json.dump({"split": FLAGS.split, "overrides": FLAGS.override, "machine": host,
                   "commands": commands, "runs": list(runs.values())}, f, indent=2)
  plot(list(runs.values()), os.path.join(FLAGS.output, "study.png"))
  print(f"Wrote {results_path} and {os.path.join(FLAGS.output, 'study.png')}.")


if __name__ == "__main__":
  flags.mark_flag_as_required("output")  # here: tests import this module beside other flags
  app.run(main)
