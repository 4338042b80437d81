"""bench.study: the flags each run gets, the plot, and one tiny study end to end."""
import importlib
import json
import re
import subprocess
import sys

import pytest

from bench import study

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_validation_runs_never_see_the_test_set():
  flags_ = study.config_flags("supcon", 3.0, "validation", ["optim.base_lr=0.5"])
  assert flags_[0] == "--config=configs/fashion_mnist.py"
  assert "--config.num_epochs=3.0" in flags_
  assert "--config.data.train_split=train[:50000]" in flags_
  assert "--config.data.eval_split=train[50000:]" in flags_
  assert "--config.probe.corruption_split=train[50000:51000]" in flags_
  assert flags_[-1] == "--config.optim.base_lr=0.5"  # after the split: overrides win
  assert not any("test" in f for f in flags_)
  test_flags = study.config_flags("cross_entropy", 1.0, "test", [])
  assert test_flags == ["--config=configs/fashion_mnist_ce.py", "--config.num_epochs=1.0"]


def test_every_method_has_a_config_that_names_it():
  from ml_collections import config_flags  # noqa: F401  (config files import ml_collections)
  import importlib.util
  for method, path in study.CONFIGS.items():
    spec = importlib.util.spec_from_file_location("cfg", f"{study.REPO}/{path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.get_config().method == method, path


def test_plot_writes_a_png_with_every_method(tmp_path):
  runs = [{"method": m, "epochs": e, "pretrain_seconds": 60.0 * e, "linear_top1": 0.8 + e / 100,
           "ece": 0.02, "corruption_mean_top1": 0.6, "raw_pixel_linear_top1": 0.84}
          for m in study.CONFIGS for e in (1, 3)]
  path = tmp_path / "study.png"
  study.plot(runs, str(path))
  assert path.read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.slow
def test_a_tiny_study_end_to_end_then_resumes_without_rerunning(fashion_mnist_dir, tmp_path,
                                                                cpu_env):
  tiny = ["data.data_dir=" + fashion_mnist_dir, "data.train_split=train[:512]",
          "data.eval_split=test[:128]", "probe.corruption_split=test[:32]",
          "probe.corruptions=('contrast',)", "probe.severities=(5,)", "probe.epochs=2",
          "probe.tsne_examples=0", "model.width=0.125", "batch_size=64"]
  command = [sys.executable, "-m", "bench.study", f"--output={tmp_path}",
             "--methods=cross_entropy", "--epochs=1,2"] + [f"--override={o}" for o in tiny]
  subprocess.run(command, cwd=study.REPO, env=cpu_env(1), check=True, capture_output=True)
  results = json.loads((tmp_path / "results.json").read_text())
  assert [(r["method"], r["epochs"], r["step"]) for r in results["runs"]] == [
      ("cross_entropy", 1.0, 8), ("cross_entropy", 2.0, 16)]
  for run in results["runs"]:
    assert 0 <= run["linear_top1"] <= 1 and 0 <= run["corruption_mean_top1"] <= 1
    assert run["pretrain_seconds"] > 0 and run["test_examples"] == 128
    assert "--config.data.eval_split=test[:128]" in run["commands"]["linear_eval"]
  assert results["machine"]["cpu_count"] >= 1
  assert results["commands"] == [" ".join(["python -m bench.study"] + command[3:])]
  assert (tmp_path / "study.png").read_bytes()[:8] == PNG_SIGNATURE
  # Resuming reuses every finished run; other overrides are refused, not mixed in.
  again = subprocess.run(command, cwd=study.REPO, env=cpu_env(1), check=True,
                         capture_output=True, text=True)
  assert "pretrain:" not in again.stdout
  assert json.loads((tmp_path / "results.json").read_text())["runs"] == results["runs"]
  other = subprocess.run(command[:-1], cwd=study.REPO, env=cpu_env(1), capture_output=True,
                         text=True)
  assert other.returncode != 0 and "use another --output" in other.stderr


@pytest.mark.parametrize("name", ["fashion_mnist", "fashion_mnist_long"])
def test_quoted_reference_figures_are_the_committed_studys(name):
  """Each figure a config prints on its Compare: line is the committed study's run of the
  method and budget its label names ("N epochs", or "same budget" as the config's), and the
  README's results quote it."""
  config = importlib.import_module(f"configs.{name}").get_config()
  with open(f"{study.REPO}/bench/results/fashion_mnist_study.json") as f:
    runs = json.load(f)["runs"]
  readme = open(f"{study.REPO}/README.md").read()
  results = readme[readme.index("## Results on Fashion-MNIST"):].split("\n## ")[0]
  assert config.probe.reference_top1
  for label, top1 in config.probe.reference_top1:
    method, = (m for m, name_ in study.LABELS.items() if name_ in label)
    budget = re.search(r"([\d.]+) epochs", label)
    assert budget or "same budget" in label, label
    epochs = float(budget.group(1)) if budget else config.num_epochs
    run, = (r for r in runs if (r["method"], r["epochs"]) == (method, epochs))
    assert top1 == run["linear_top1"], (label, run)
    assert f"{100 * top1:.1f}%" in results
