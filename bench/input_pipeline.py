"""Prints augmented training views per second of the input pipeline on this machine.

  python -m bench.input_pipeline [--seconds=10] [--policies=simclr,autoaugment]

Two workloads, each through create_train_dataset as training reads it (one process, V = 2):
* fashion_mnist, 28 x 28 x 1, the real data, prepared through tfds from the .gz files in
  --fashion_mnist_files (Debian's dataset-fashion-mnist) into a temporary data_dir (~25 s);
* ImageNet-sized: tfds mock imagenet2012 whose examples are 500 x 375 JPEGs (about an average
  ImageNet photo), cropped to 224 x 224.
"""
import os
import tempfile
import time

from absl import app, flags, logging
import numpy as np

from supcon_jax import console

console.import_tensorflow_quietly()  # before TensorFlow is imported below
# pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from configs import base  # noqa: E402
from supcon_jax import augment, input_pipeline  # noqa: E402

_SECONDS = flags.DEFINE_float("seconds", 10.0, "Measuring time per row, after warm-up.")
_POLICIES = flags.DEFINE_list("policies", list(augment.POLICIES), "Policies to measure.")
_FASHION_MNIST_FILES = flags.DEFINE_string(
    "fashion_mnist_files", "/usr/share/datasets/fashion-mnist",
    "Directory with the four Fashion-MNIST .gz files.")


def _imagenet_sized_examples(num_examples: int = 10_000, distinct: int = 32) -> tf.data.Dataset:
  """Encoded 375 x 500 JPEGs of smooth random content, with labels."""
  rng = np.random.default_rng(0)
  coarse = rng.uniform(0, 255, (distinct, 24, 32, 3)).astype(np.float32)
  images = tf.image.resize(coarse, [375, 500], method="bicubic")
  images += rng.normal(0, 8, images.shape)  # Some texture, so JPEG has detail to encode.
  images = tf.cast(tf.clip_by_value(images, 0, 255), tf.uint8)
  jpegs = [tf.io.encode_jpeg(image, quality=90) for image in images]
  ds = tf.data.Dataset.from_tensor_slices({
      "image": tf.stack(jpegs), "label": tf.range(distinct, dtype=tf.int64),
      "file_name": tf.constant([f"{i}.JPEG" for i in range(distinct)])})
  return ds.repeat().take(num_examples)


def _views_per_second(config) -> float:
  batches = input_pipeline.create_train_dataset(config).as_numpy_iterator()
  for _ in range(3):  # Warm-up: tracing, shuffle buffer, autotuning.
    next(batches)
  start, views = time.perf_counter(), 0
  while time.perf_counter() - start < _SECONDS.value:
    views += int(np.prod(next(batches)["images"].shape[:2]))
  return views / (time.perf_counter() - start)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  tfds.disable_progress_bar()
  print(f"{os.cpu_count()} CPU cores; augmented views per second (V = 2 views per image):")
  with tempfile.TemporaryDirectory() as data_dir:
    config = base.get_config()
    config.batch_size = 128
    config.data.update(dataset="fashion_mnist", image_size=28, data_dir=data_dir,
                       manual_dir=_FASHION_MNIST_FILES.value)
    input_pipeline.prepare_dataset(config)
    for policy in _POLICIES.value:
      config.data.augment = policy
      print(f"  fashion_mnist   28x28x1   {policy:20s} {_views_per_second(config):8.0f}")

  config = base.get_config()
  config.batch_size = 64
  config.data.update(dataset="imagenet2012", image_size=224)
  mock = tfds.testing.mock_data(
      as_dataset_fn=lambda *args, **kwargs: _imagenet_sized_examples())
  with mock:
    for policy in _POLICIES.value:
      config.data.augment = policy
      print(f"  500x375 JPEG -> 224x224x3 {policy:20s} {_views_per_second(config):8.0f}")


if __name__ == "__main__":
  app.run(main)
