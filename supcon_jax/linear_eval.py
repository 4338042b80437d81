"""Linear evaluation of a pretrained encoder: the paper's stage 2, plus kNN, robustness, ECE.

  python -m supcon_jax.linear_eval --config=configs/fashion_mnist.py --workdir=/tmp/supcon_fmnist

The encoder is restored from the pretraining checkpoint in --workdir (latest, or --step),
frozen, BatchNorm in inference mode (on augmented training views optionally with the batch's
own statistics, probe.train_batch_statistics), projection head dropped. The probe reads the model's
"representation": r exactly as the model's heads see it (L2-normalised when
model.normalize_representation). Representations of the train and test splits are extracted
once (sharded over every device), a linear classifier is fitted on them (or, with
probe.augmented_features, on fresh augmented views each epoch) with cross-entropy, and the
report (JSON, TensorBoard scalars, a t-SNE PNG) goes to --output_dir (default
WORKDIR/linear_eval). The protocol is the recipe's config.probe: e.g. the released TF ImageNet
stage 2 (RMSProp, staircase exponential decay, label smoothing) in configs/imagenet_r50.py,
SupContrast's main_linear.py (SGD, step decay) in configs/cifar10_r50.py.
"""
import json
import os
import threading
import time
import zlib
from typing import Any, Iterable, Optional

from supcon_jax import console

console.import_tensorflow_quietly()  # before the modules below import it
# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorflow as tf
from absl import app, flags, logging
from flax import linen as nn
from jax.experimental import multihost_utils
from ml_collections import config_flags
from tensorflow_datasets.image_classification import corruptions as tfds_corruptions

from supcon_jax import checkpointing, config_lib, distributed, experiment, input_pipeline
from supcon_jax import losses, metrics, optim, sharding, torch_io


# --- Pure pieces: probe, kNN, calibration -----------------------------------------------------

def fit_linear_probe(features: np.ndarray, labels: np.ndarray, num_classes: int, *,
                     probe_config: ml_collections.ConfigDict, seed: int = 0,
                     epoch_features: Optional[Iterable[tuple[np.ndarray, np.ndarray]]] = None
                     ) -> dict[str, jax.Array]:
  """Fits logits = r W + b by minibatch cross-entropy; returns {"kernel": [D, C], "bias": [C]}.

  features [N, D], labels [N]. With `epoch_features`, epoch e trains on its e-th
  (features, labels) instead (the paper's freshly augmented views per epoch). The optimizer,
  schedule, label smoothing and initial kernel come from `probe_config` (config.probe). With
  probe_config.standardize, the classifier sees each feature minus its mean over `features`,
  divided by its deviation; the returned kernel and bias apply to the raw features.
  """
  config_lib.validate_probe(probe_config)
  batch = min(probe_config.batch_size, len(features))
  steps_per_epoch = max(len(features) // batch, 1)
  total = probe_config.epochs * steps_per_epoch
  schedule = optim.learning_rate_schedule(probe_config.optim, batch, steps_per_epoch, total)
  tx = optim.create_optimizer(probe_config.optim, schedule, "config.probe.optim")
  kernel_shape = (features.shape[1], num_classes)
  kernel = (nn.initializers.glorot_uniform()(jax.random.PRNGKey(seed), kernel_shape)
            if probe_config.init == "glorot_uniform" else jnp.zeros(kernel_shape))
  params = {"kernel": kernel, "bias": jnp.zeros((num_classes,))}
  opt_state = tx.init(params)
  mean, scale = np.zeros(features.shape[1], np.float32), np.ones(features.shape[1], np.float32)
  if probe_config.standardize:
    mean, std = features.mean(axis=0), features.std(axis=0)
    scale = np.where(std > 0, std, 1.0).astype(np.float32)  # constant features: centred to 0

  @jax.jit
  def step(params, opt_state, x, y):
    x = (x - mean) / scale
    loss_fn = lambda p: losses.cross_entropy_loss(
        x @ p["kernel"] + p["bias"], y, label_smoothing=probe_config.label_smoothing)
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  rng = np.random.default_rng(seed)
  epochs = (iter(epoch_features) if epoch_features is not None
            else ((features, labels) for _ in range(probe_config.epochs)))
  for x_all, y_all in epochs:
    order = rng.permutation(len(x_all))
    for i in range(steps_per_epoch):
      idx = order[i * batch:(i + 1) * batch]
      params, opt_state = step(params, opt_state, x_all[idx], y_all[idx])
  # (x - m) / s W + b = x (W / s) + (b - (m / s) W).
  return {"kernel": params["kernel"] / scale[:, None],
          "bias": params["bias"] - (mean / scale) @ params["kernel"]}


def knn_predict(train_features: np.ndarray, train_labels: np.ndarray,
                test_features: np.ndarray, num_classes: int, k: int = 20,
                temperature: float = 0.07, chunk: int = 1024) -> np.ndarray:
  """Class scores [M, C] of weighted kNN (Wu et al., 2018): the k most cosine-similar train
  examples vote for their class with weight exp(similarity / temperature)."""
  normalise = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  train_n = jnp.asarray(normalise(train_features))
  train_y = jnp.asarray(train_labels)
  k = min(k, len(train_features))

  @jax.jit
  def scores(test_chunk):
    sims, idx = jax.lax.top_k(test_chunk @ train_n.T, k)
    votes = jax.nn.one_hot(train_y[idx], num_classes) * jnp.exp(sims / temperature)[..., None]
    return votes.sum(axis=1)

  test_n = normalise(test_features)
  return np.concatenate([np.asarray(scores(test_n[i:i + chunk]))
                         for i in range(0, len(test_n), chunk)])


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
  """ECE (Guo et al., 2017): Σ_bins |bin| / N · |accuracy - mean confidence| over equal-width
  confidence bins of the top-1 prediction. probs [N, C] rows sum to 1."""
  confidence = probs.max(axis=1)
  correct = probs.argmax(axis=1) == labels
  edges = np.linspace(0.0, 1.0, bins + 1)
  which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
  ece = 0.0
  for b in range(bins):
    in_bin = which == b
    if in_bin.any():
      ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
  return float(ece)


def accuracies(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  top = np.argsort(-logits, axis=1)
  return {"top1": float(np.mean(top[:, 0] == labels)),
          "top5": float(np.mean((top[:, :5] == labels[:, None]).any(axis=1)))}


# --- Corruptions ----------------------------------------------------------------------------

class _SeededNumpy:
  """numpy as tfds' corruption module sees it, except that `random` is an explicit generator."""

  def __init__(self, random_state: np.random.RandomState):
    self.random = random_state

  def __getattr__(self, name: str):
    return getattr(np, name)


# tfds' corruption functions draw from `np.random` (the module-global generator); each call
# gets its own seeded generator instead, swapped in under this lock.
_CORRUPTION_LOCK = threading.Lock()


def corrupt(image: np.ndarray, name: str, severity: int) -> np.ndarray:
  """ImageNet-C corruption `name` at `severity` (1-5) of a uint8 [h, w, C] image, with tfds'
  implementation. Gray images are corrupted as RGB and averaged back; the random draws come
  from a generator seeded by the image and severity, so results repeat."""
  gray = image.shape[-1] == 1
  rgb = np.repeat(image, 3, axis=-1) if gray else image
  generator = np.random.RandomState(zlib.crc32(image.tobytes()) ^ severity)
  with _CORRUPTION_LOCK:
    tfds_corruptions.np = _SeededNumpy(generator)
    try:
      out = np.asarray(getattr(tfds_corruptions, name)(rgb, severity), np.float32)
    finally:
      tfds_corruptions.np = np
  if gray:
    out = out.mean(axis=-1, keepdims=True)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _corruption_fn(name: str, severity: int):
  def fn(image: tf.Tensor) -> tf.Tensor:
    out = tf.numpy_function(lambda x: corrupt(x, name, severity), [image], tf.uint8)
    return tf.ensure_shape(out, image.shape)
  return fn


# --- The job --------------------------------------------------------------------------------

def _extract(represent, state, batches) -> tuple[np.ndarray, np.ndarray]:
  """(r [N, D], labels [N]) of the real (mask=True) examples of eval-style batches."""
  feats, labels = [], []
  for batch in batches:
    r = represent(state, batch["images"])
    r, y, mask = (multihost_utils.process_allgather(x, tiled=True)
                  for x in (r, batch["labels"], batch["mask"]))
    feats.append(np.asarray(r)[np.asarray(mask)])
    labels.append(np.asarray(y)[np.asarray(mask)])
  return np.concatenate(feats), np.concatenate(labels)


def restore(config: ml_collections.ConfigDict, workdir: str, mesh,
            step: Optional[int]) -> tuple[experiment.Experiment, experiment.TrainState, int]:
  """(experiment, frozen state, step) of `workdir`'s checkpoint at `step` (default latest); a
  workdir without one starts from config.init.checkpoint when that is set (step 0)."""
  exp = experiment.build_experiment(config, mesh)
  with checkpointing.create_manager(workdir, config, read_only=True) as manager:
    if config.init.checkpoint is not None and manager.latest_step() is None:
      state = exp.init_state(config.seed)
      return exp, torch_io.init_from_checkpoint(state, config, exp.state_shardings), 0
    state, step = checkpointing.restore(manager, exp.abstract_state(), config, step)
  return exp, state, step


def represent_fn(model, key: str = "representation", batch_statistics: bool = False):
  """Jitted (state, images [N, V, H, W, C]) -> model output `key` of the first view.

  BatchNorm uses the running statistics, or with `batch_statistics` those of the batch
  itself, leaving the running ones untouched (the released TF stage 2 on training views).
  """
  def represent(state, images):
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    if batch_statistics:
      outputs, _ = model.apply(variables, images[:, 0], train=True, mutable=["batch_stats"])
    else:
      outputs = model.apply(variables, images[:, 0], train=False)
    return outputs[key]
  return jax.jit(represent)


def _baseline(baseline_workdir: str, mesh):
  """The cross-entropy checkpoint in `baseline_workdir`, under the config it was saved with."""
  config = ml_collections.ConfigDict(checkpointing.read_saved_config(baseline_workdir))
  if config.method != "cross_entropy":
    raise ValueError(f"--baseline_workdir={baseline_workdir} holds a {config.method!r} run; "
                     "mCE needs a cross_entropy baseline (e.g. configs/fashion_mnist_ce.py).")
  exp, state, _ = restore(config, baseline_workdir, mesh, None)
  return config, state, represent_fn(exp.model, "logits")


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        output_dir: Optional[str] = None, step: Optional[int] = None,
                        baseline_workdir: Optional[str] = None) -> dict[str, Any]:
  """Runs the whole evaluation and writes the report; returns it."""
  start = time.time()
  output_dir = output_dir or os.path.join(workdir, "linear_eval")
  mesh = sharding.create_mesh()
  exp, state, step = restore(config, workdir, mesh, step)
  represent = represent_fn(exp.model)
  probe = config.probe
  num_classes = exp.data.num_classes

  train_x, train_y = _extract(represent, state, input_pipeline.create_eval_iterator(
      config, mesh, split=config.data.train_split))
  test_x, test_y = _extract(represent, state, input_pipeline.create_eval_iterator(config, mesh))
  logging.info("Restored step %d of %s; representations of %d train and %d test examples "
               "(%d-d) in %s.", step, workdir, len(train_x), len(test_x), train_x.shape[1],
               console.duration(time.time() - start))

  epoch_features = None
  if probe.augmented_features:
    epoch_features = augmented_epochs(
        config, mesh, represent_fn(exp.model, batch_statistics=probe.train_batch_statistics),
        state, exp.steps_per_epoch)
  params = fit_linear_probe(train_x, train_y, num_classes, probe_config=probe,
                            seed=config.seed, epoch_features=epoch_features)
  classify = jax.jit(lambda x: x @ params["kernel"] + params["bias"])
  test_logits = np.asarray(classify(test_x))
  report: dict[str, Any] = {
      "step": int(step), "method": config.method, "dataset": config.data.dataset,
      "model": config.model.name, "train_examples": len(train_x), "test_examples": len(test_x),
      **{f"linear_{k}": v for k, v in accuracies(test_logits, test_y).items()},
      "linear_train_top1": accuracies(np.asarray(classify(train_x)), train_y)["top1"],
      "knn_top1": float(np.mean(knn_predict(train_x, train_y, test_x, num_classes, probe.knn_k,
                                            probe.knn_temperature).argmax(1) == test_y)),
      "ece": expected_calibration_error(np.asarray(jax.nn.softmax(test_logits)), test_y,
                                        probe.ece_bins),
      "per_class_top1": {name: float(np.mean(test_logits[test_y == c].argmax(1) == c))
                         for c, name in enumerate(exp.data.label_names) if np.any(test_y == c)},
  }
  logging.info("Linear probe (%d epochs): test top-1 %.2f%%, train top-1 %.2f%%; kNN top-1 "
               "%.2f%%.", probe.epochs, 100 * report["linear_top1"],
               100 * report["linear_train_top1"], 100 * report["knn_top1"])

  if probe.raw_pixel_baseline:
    report["raw_pixel_linear_top1"] = raw_pixel_top1(config, mesh, num_classes)
    logging.info("Linear probe on raw pixels (same protocol): test top-1 %.2f%%.",
                 100 * report["raw_pixel_linear_top1"])

  baseline = _baseline(baseline_workdir, mesh) if baseline_workdir else None
  corruption = {}
  for name in probe.corruptions:
    for severity in probe.severities:
      image_fn = _corruption_fn(name, severity)
      batches = input_pipeline.create_eval_iterator(config, mesh, split=probe.corruption_split,
                                                    image_fn=image_fn)
      x, y = _extract(represent, state, batches)
      entry = {"top1": accuracies(np.asarray(classify(x)), y)["top1"]}
      if baseline is not None:
        base_config, base_state, base_logits = baseline
        lx, ly = _extract(base_logits, base_state, input_pipeline.create_eval_iterator(
            base_config, mesh, split=probe.corruption_split, image_fn=image_fn))
        entry["baseline_top1"] = accuracies(lx, ly)["top1"]
      corruption[f"{name}/{severity}"] = entry
    logging.info("Corruption %s: top-1 %s at severities %s.", name, " ".join(
        f"{100 * corruption[f'{name}/{s}']['top1']:.1f}%" for s in probe.severities),
                 tuple(probe.severities))
  report["corruptions"] = corruption
  if corruption:
    report["corruption_mean_top1"] = float(np.mean([e["top1"] for e in corruption.values()]))
  if baseline is not None and corruption:
    report["mCE"] = mean_corruption_error(corruption, probe.corruptions, probe.severities)

  os.makedirs(output_dir, exist_ok=True)
  report["tsne_png"] = plot_tsne(test_x, test_y, exp.data.label_names,
                                 os.path.join(output_dir, "tsne.png"), probe.tsne_examples,
                                 config.seed)
  report["wall_seconds"] = time.time() - start
  if jax.process_index() == 0:
    with open(os.path.join(output_dir, "report.json"), "w") as f:
      json.dump(report, f, indent=2)
  writer = metrics.create_writer(output_dir)
  writer.write_scalars(int(step), {k: v for k, v in report.items()
                                   if isinstance(v, float)})
  writer.close()
  logging.info("Result: linear probe top-1 %.2f%% (top-5 %.2f%%) on %d %s examples of %s, "
               "step %d; kNN %.2f%%; ECE %.3f%s%s. Report: %s (%s).",
               100 * report["linear_top1"], 100 * report["linear_top5"], len(test_x),
               config.data.eval_split, config.data.dataset, step, 100 * report["knn_top1"],
               report["ece"],
               (f"; mean top-1 under corruption {100 * report['corruption_mean_top1']:.2f}%"
                if corruption else ""),
               f"; mCE {report['mCE']:.3f}" if "mCE" in report else "",
               os.path.join(output_dir, "report.json"), console.duration(report["wall_seconds"]))
  comparison = comparison_line(report, probe.reference_top1)
  if comparison:
    logging.info("%s", comparison)
  return report


def comparison_line(report: dict[str, Any], references) -> str:
  """The figures to read the result against: this run's raw-pixel probe, if any, and the
  config's quoted references ((label, top-1) pairs, e.g. the README's cross-entropy run)."""
  parts = [f"{label} {100 * top1:.1f}%" for label, top1 in references]
  if "raw_pixel_linear_top1" in report:
    parts.insert(0, f"linear probe on raw pixels (this run) "
                    f"{100 * report['raw_pixel_linear_top1']:.1f}%")
  return f"Compare: {'; '.join(parts)}." if parts else ""


_pixels = jax.jit(lambda state, images: images[:, 0].reshape(images.shape[0], -1))


def raw_pixel_top1(config: ml_collections.ConfigDict, mesh, num_classes: int) -> float:
  """Test top-1 of config.probe's linear probe fitted on the eval-preprocessed pixels of the
  train split: the floor that a learned representation has to beat."""
  train_x, train_y = _extract(_pixels, None, input_pipeline.create_eval_iterator(
      config, mesh, split=config.data.train_split))
  test_x, test_y = _extract(_pixels, None, input_pipeline.create_eval_iterator(config, mesh))
  params = fit_linear_probe(train_x, train_y, num_classes, probe_config=config.probe,
                            seed=config.seed)
  logits = test_x @ np.asarray(params["kernel"]) + np.asarray(params["bias"])
  return accuracies(logits, test_y)["top1"]


def mean_corruption_error(corruption: dict, names, severities) -> float:
  """mCE (Hendrycks & Dietterich, 2019): mean over corruptions of Σ_s error / Σ_s baseline
  error, both in the same units; 1.0 means as robust as the baseline, lower is better."""
  ratios = []
  for name in names:
    err = sum(1 - corruption[f"{name}/{s}"]["top1"] for s in severities)
    base = sum(1 - corruption[f"{name}/{s}"]["baseline_top1"] for s in severities)
    ratios.append(err / max(base, 1e-12))
  return float(np.mean(ratios))


def augmented_epochs(config, mesh, represent, state, steps_per_epoch):
  """Per epoch: features of one freshly augmented view (policy probe.augment, else
  data.augment) of each train example."""
  aug = config.copy_and_resolve_references()
  aug.data.num_views = 1
  if config.probe.augment is not None:
    aug.data.augment = config.probe.augment
  batches = input_pipeline.create_train_iterator(aug, mesh)
  for _ in range(config.probe.epochs):
    feats, labels = [], []
    for _ in range(steps_per_epoch):
      batch = next(batches)
      feats.append(np.asarray(multihost_utils.process_allgather(
          represent(state, batch["images"]), tiled=True)))
      labels.append(np.asarray(multihost_utils.process_allgather(batch["labels"], tiled=True)))
    yield np.concatenate(feats), np.concatenate(labels)


def plot_tsne(features: np.ndarray, labels: np.ndarray, label_names: tuple[str, ...], path: str,
              max_examples: int, seed: int) -> Optional[str]:
  """Writes a PNG of a 2-D t-SNE of up to max_examples features, coloured and labelled by
  class; returns its path, or None when max_examples is 0 (no plot)."""
  if max_examples == 0:
    return None
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top
  idx = np.random.default_rng(seed).permutation(len(features))[:max_examples]
  points = TSNE(n_components=2, init="pca", random_state=seed,
                perplexity=min(30.0, (len(idx) - 1) / 3)).fit_transform(features[idx])
  fig, ax = plt.subplots(figsize=(7, 7))
  cmap = plt.get_cmap("tab20" if len(label_names) > 10 else "tab10")
  for c in np.unique(labels[idx]):
    where = labels[idx] == c
    ax.scatter(points[where, 0], points[where, 1], s=4, color=cmap(int(c) % cmap.N),
               label=label_names[c])
  if len(label_names) <= 20:  # a legend of ImageNet's 1000 names would hide the plot
    ax.legend(title="class", loc="best", fontsize=7, markerscale=3)
  ax.set_title(f"t-SNE of {len(idx)} test representations")
  ax.set_xticks([])
  ax.set_yticks([])
  if jax.process_index() == 0:
    fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)
  return path


FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.setup(FLAGS.verbose)
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  evaluate_checkpoint(FLAGS.config, FLAGS.workdir, FLAGS.output_dir, FLAGS.step,
                      FLAGS.baseline_workdir)


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "The pretraining run's config file.",
                                  lock_config=True)
  config_lib.accept_none_on_command_line()
  flags.DEFINE_string("workdir", None, "The pretraining run's workdir (holds checkpoints/).")
  flags.DEFINE_string("output_dir", None, "Report directory (default WORKDIR/linear_eval).")
  flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: latest).")
  flags.DEFINE_string("baseline_workdir", None,
                      "Workdir of a cross_entropy run: its errors under corruption give mCE.")
  flags.mark_flags_as_required(["config", "workdir"])
  distributed.define_flags()
  console.define_flags()
  app.run(main)
