"""Linear evaluation: the pure pieces against constructed data, and the job on a tiny checkpoint."""
import json
import os

import numpy as np
import pytest

import test_train
from configs import base
from supcon_jax import checkpointing, linear_eval, sharding, train

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny_eval_config(data_dir):
  config = test_train.tiny_config(data_dir, num_train_steps=2)
  config.probe.epochs = 3
  config.probe.corruptions = ("gaussian_noise", "contrast")
  config.probe.severities = (1, 5)
  config.probe.corruption_split = "test[:16]"
  config.probe.tsne_examples = 40
  return config


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, fashion_mnist_dir):
  """Workdirs of a 2-step SupCon run and of a 2-step cross-entropy baseline."""
  supcon = str(tmp_path_factory.mktemp("supcon"))
  train.train_and_evaluate(tiny_eval_config(fashion_mnist_dir), supcon)
  ce_config = tiny_eval_config(fashion_mnist_dir)
  ce_config.method, ce_config.data.num_views = "cross_entropy", 1
  baseline = str(tmp_path_factory.mktemp("ce"))
  train.train_and_evaluate(ce_config, baseline)
  return supcon, baseline


@pytest.mark.slow
def test_report_has_every_field_and_a_png(fashion_mnist_dir, pretrained, tmp_path):
  supcon, baseline = pretrained
  config = tiny_eval_config(fashion_mnist_dir)
  config.probe.raw_pixel_baseline = True
  report = linear_eval.evaluate_checkpoint(config, supcon, str(tmp_path),
                                           baseline_workdir=baseline)
  for key in ("linear_top1", "linear_top5", "linear_train_top1", "knn_top1",
              "corruption_mean_top1", "raw_pixel_linear_top1"):
    assert 0.0 <= report[key] <= 1.0, key
  assert report["test_examples"] == test_train.EVAL_EXAMPLES
  # Per-class accuracy is reported under tfds' class names, not indices.
  assert set(report["per_class_top1"]) <= {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"}
  assert len(report["per_class_top1"]) >= 5
  assert report["train_examples"] == 64
  assert 0.0 <= report["ece"] <= 1.0 and report["mCE"] > 0.0
  assert set(report["corruptions"]) == {"gaussian_noise/1", "gaussian_noise/5", "contrast/1",
                                        "contrast/5"}
  assert all(0 <= e["top1"] <= 1 and 0 <= e["baseline_top1"] <= 1
             for e in report["corruptions"].values())
  with open(tmp_path / "report.json") as f:
    assert json.load(f)["step"] == 2
  with open(report["tsne_png"], "rb") as f:
    assert f.read(8) == PNG_SIGNATURE
  import matplotlib.image  # decodes the whole file
  assert matplotlib.image.imread(report["tsne_png"]).ndim == 3


@pytest.mark.slow
def test_no_checkpoint_and_mismatched_config_are_clear_errors(fashion_mnist_dir, pretrained,
                                                              tmp_path):
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    linear_eval.evaluate_checkpoint(tiny_eval_config(fashion_mnist_dir), str(tmp_path))
  config = tiny_eval_config(fashion_mnist_dir)
  config.model.head_dims = (32, 8)
  with pytest.raises(checkpointing.CheckpointMismatchError, match=r"config\.model\.head_dims"):
    linear_eval.evaluate_checkpoint(config, pretrained[0])


@pytest.mark.slow
def test_raw_pixel_baseline_is_the_probe_on_standardised_pixels(fashion_mnist_dir):
  import tensorflow_datasets as tfds
  config = tiny_eval_config(fashion_mnist_dir)
  config.data.image_size = 28  # the eval crop is then the image itself
  config.probe.standardize = True
  top1 = linear_eval.raw_pixel_top1(config, sharding.create_mesh(), 10)
  # Independent path: tfds' arrays straight from disk.
  def load(split):
    images, labels = tfds.as_numpy(tfds.load("fashion_mnist", split=split, batch_size=-1,
                                             as_supervised=True, data_dir=fashion_mnist_dir))
    return images.reshape(len(images), -1).astype(np.float32) / 255.0, labels
  (train_x, train_y), (test_x, test_y) = load("train[:64]"), load("test[:40]")
  mean, std = train_x.mean(0), train_x.std(0)
  std[std == 0] = 1.0
  config.probe.standardize = False  # done by hand here
  params = linear_eval.fit_linear_probe((train_x - mean) / std, train_y, 10,
                                        probe_config=config.probe)
  expected = float(np.mean(((test_x - mean) / std @ np.asarray(params["kernel"])
                            + np.asarray(params["bias"])).argmax(1) == test_y))
  assert top1 == pytest.approx(expected, abs=1 / 40 + 1e-9)
  assert top1 > 0.4  # 64 examples of 10 classes: well above chance (0.1)


def test_standardised_probe_ignores_feature_scale_and_returns_raw_feature_params():
  x, y = separable()
  x[:, 0] = 1000.0 * x[:, 0] + 50.0  # one feature on a wildly different scale
  x[:, 5] = 3.0  # and a constant one
  config = base.get_config().probe
  config.standardize = True
  params = linear_eval.fit_linear_probe(x, y, 4, probe_config=config)
  mean, std = x.mean(0), x.std(0)
  std[std == 0] = 1.0
  config.standardize = False
  by_hand = linear_eval.fit_linear_probe((x - mean) / std, y, 4, probe_config=config)
  np.testing.assert_allclose(x @ np.asarray(params["kernel"]) + np.asarray(params["bias"]),
                             (x - mean) / std @ np.asarray(by_hand["kernel"])
                             + np.asarray(by_hand["bias"]), rtol=1e-4, atol=1e-3)
  logits = x @ np.asarray(params["kernel"]) + np.asarray(params["bias"])
  assert np.mean(logits.argmax(1) == y) > 0.95


def test_comparison_line_names_each_reference():
  line = linear_eval.comparison_line(
      {"linear_top1": 0.9, "raw_pixel_linear_top1": 0.8412},
      (("cross-entropy, same budget (README)", 0.9034),))
  assert line == ("Compare: linear probe on raw pixels (this run) 84.1%; "
                  "cross-entropy, same budget (README) 90.3%.")
  assert linear_eval.comparison_line({"linear_top1": 0.9}, ()) == ""


def separable(n=600, dim=16, classes=4, seed=0):
  rng = np.random.default_rng(seed)
  centres = 5.0 * np.eye(classes, dim)
  labels = rng.integers(0, classes, n)
  return (centres[labels] + rng.normal(scale=0.5, size=(n, dim))).astype(np.float32), labels


def test_probe_and_knn_reach_100_percent_on_separable_features():
  x, y = separable()
  test_x, test_y = separable(seed=1)
  config = base.get_config().probe
  params = linear_eval.fit_linear_probe(x, y, 4, probe_config=config)
  logits = test_x @ np.asarray(params["kernel"]) + np.asarray(params["bias"])
  assert linear_eval.accuracies(logits, test_y)["top1"] == 1.0
  scores = linear_eval.knn_predict(x, y, test_x, 4, k=20)
  assert np.mean(scores.argmax(1) == test_y) == 1.0


def test_ece_of_calibrated_and_overconfident_classifiers():
  rng = np.random.default_rng(0)
  n = 200_000
  confidence = rng.uniform(0.5, 1.0, n)
  labels = np.zeros(n, int)
  predicted = np.where(rng.uniform(size=n) < confidence, 0, 1)  # right with prob = confidence
  probs = np.stack([np.where(predicted == 0, confidence, 1 - confidence),
                    np.where(predicted == 0, 1 - confidence, confidence)], axis=1)
  assert linear_eval.expected_calibration_error(probs, labels) < 0.01
  overconfident = np.stack([np.full(n, 0.99), np.full(n, 0.01)], axis=1)
  labels_half = (rng.uniform(size=n) < 0.5).astype(int)  # right half the time
  assert linear_eval.expected_calibration_error(overconfident, labels_half) == pytest.approx(
      0.49, abs=0.01)


def test_corruptions_change_images_repeatably_and_keep_gray_images_gray():
  image = (np.random.default_rng(0).uniform(size=(28, 28, 1)) * 255).astype(np.uint8)
  for name in base.get_config().probe.corruptions:
    out = linear_eval.corrupt(image, name, 3)
    assert out.shape == image.shape and out.dtype == np.uint8, name
    assert not np.array_equal(out, image), name
    np.testing.assert_array_equal(out, linear_eval.corrupt(image, name, 3))


def test_corruptions_draw_from_their_own_generator_not_numpy_global_state():
  image = (np.random.default_rng(1).uniform(size=(28, 28, 1)) * 255).astype(np.uint8)
  np.random.seed(123)
  before = np.random.get_state()[1].copy()
  first = linear_eval.corrupt(image, "gaussian_noise", 5)
  np.testing.assert_array_equal(np.random.get_state()[1], before)  # global state untouched
  np.random.seed(456)  # and a caller's global seeding does not change the corruption
  np.testing.assert_array_equal(linear_eval.corrupt(image, "gaussian_noise", 5), first)


def test_tsne_plot_can_be_turned_off(tmp_path):
  features = np.random.default_rng(0).normal(size=(20, 4))
  path = str(tmp_path / "tsne.png")
  assert linear_eval.plot_tsne(features, np.arange(20) % 2, ("a", "b"), path, 0, 0) is None
  assert not os.path.exists(path)


@pytest.mark.slow
def test_probe_on_freshly_augmented_views_each_epoch(fashion_mnist_dir, pretrained, tmp_path):
  config = tiny_eval_config(fashion_mnist_dir)
  config.probe.augmented_features = True
  config.probe.corruptions = ()
  report = linear_eval.evaluate_checkpoint(config, pretrained[0], str(tmp_path))
  assert 0.0 <= report["linear_top1"] <= 1.0
  assert "mCE" not in report and report["corruptions"] == {}
