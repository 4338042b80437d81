"""Tests of the input pipeline (the augmentation ops and policies: tests/test_augment.py).

imagenet2012 and cifar10 are tfds mock data (random images, 12 examples whatever the split);
Fashion-MNIST is the real data, built through tfds from Debian's dataset-fashion-mnist files.
"""
import os

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from jax.sharding import PartitionSpec as P

from configs import base
from supcon_jax import augment, input_pipeline

MOCK_EXAMPLES = 12


def _config(dataset: str, image_size: int, **data):
  config = base.get_config()
  config.batch_size = 8
  config.data.dataset = dataset
  config.data.image_size = image_size
  config.data.update(data)
  return config


def _first_batches(ds: tf.data.Dataset, n: int) -> list[dict[str, np.ndarray]]:
  return list(ds.take(n).as_numpy_iterator())


def _bounds(config) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel values of normalised 0 and 1."""
  spec = input_pipeline.DATASETS[config.data.dataset]
  mean, std = np.array(spec.mean), np.array(spec.std)
  return -mean / std, (1 - mean) / std


def _assert_normalised(config, images: np.ndarray) -> None:
  low, high = _bounds(config)
  assert images.dtype == np.float32
  assert np.all(images >= low - 1e-5) and np.all(images <= high + 1e-5)
  assert images.max() - images.min() > 1.0  # Not a constant image.


@pytest.fixture
def mock_tfds():
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    yield



@pytest.mark.parametrize("dataset,image_size", [("imagenet2012", 64), ("cifar10", 32)])
def test_train_batches_on_mock_data(mock_tfds, dataset, image_size):
  config = _config(dataset, image_size)
  batch = _first_batches(input_pipeline.create_train_dataset(config), 1)[0]
  assert set(batch) == {"images", "labels"}
  assert batch["images"].shape == (8, 2, image_size, image_size, 3)
  _assert_normalised(config, batch["images"])
  assert batch["labels"].dtype == np.int32 and batch["labels"].shape == (8,)
  num_classes = input_pipeline.dataset_info(config).num_classes
  assert np.all((batch["labels"] >= 0) & (batch["labels"] < num_classes))
  # The two views of every image differ.
  assert np.all(np.abs(batch["images"][:, 0] - batch["images"][:, 1]).max(axis=(1, 2, 3)) > 0.1)


@pytest.mark.parametrize("dataset,image_size", [("imagenet2012", 64), ("cifar10", 32)])
def test_eval_batches_on_mock_data(mock_tfds, dataset, image_size):
  config = _config(dataset, image_size)
  batches = list(input_pipeline.create_eval_dataset(config).as_numpy_iterator())
  assert len(batches) == 2  # 12 examples in batches of 8.
  for batch in batches:
    assert batch["images"].shape == (8, 1, image_size, image_size, 3)
    assert batch["labels"].dtype == np.int32 and batch["mask"].dtype == np.bool_
  mask = np.concatenate([batch["mask"] for batch in batches])
  np.testing.assert_array_equal(mask, np.arange(16) < MOCK_EXAMPLES)
  images = np.concatenate([batch["images"] for batch in batches])
  _assert_normalised(config, images[:MOCK_EXAMPLES])
  assert not images[MOCK_EXAMPLES:].any()
  info = input_pipeline.dataset_info(config)
  assert info.image_shape == (image_size, image_size, 3)
  assert info.num_train_examples == info.num_eval_examples == MOCK_EXAMPLES


@pytest.mark.slow
@pytest.mark.parametrize("policy", augment.POLICIES)
def test_every_policy_is_deterministic(mock_tfds, policy):
  config = _config("cifar10", 32, augment=policy)
  ds = input_pipeline.create_train_dataset(config)
  # A second pass over the same dataset replays everything from scratch: any seed state kept
  # between calls (as a Keras layer's own SeedGenerator would) makes it differ.
  first, again = _first_batches(ds, 2), _first_batches(ds, 2)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["images"], b["images"])
    np.testing.assert_array_equal(a["labels"], b["labels"])
  _assert_normalised(config, first[0]["images"])


def test_same_seed_same_batches_other_seed_other_batches(mock_tfds):
  config = _config("cifar10", 32)
  batches = _first_batches(input_pipeline.create_train_dataset(config), 3)
  again = _first_batches(input_pipeline.create_train_dataset(config), 3)
  for a, b in zip(batches, again):
    np.testing.assert_array_equal(a["images"], b["images"])
  config.seed += 1
  other = _first_batches(input_pipeline.create_train_dataset(config), 3)
  assert not np.allclose(batches[0]["images"], other[0]["images"])


@pytest.mark.parametrize("start_step", [1, 4])
def test_resume_at_step_k_matches_uninterrupted_run(mock_tfds, start_step):
  config = _config("cifar10", 32, augment="crop_flip")
  # 12 examples, batches of 8: step 1 resumes inside epoch 0, step 4 inside epoch 2.
  uninterrupted = _first_batches(input_pipeline.create_train_dataset(config), start_step + 2)
  resumed = _first_batches(
      input_pipeline.create_train_dataset(config, start_step=start_step), 2)
  for a, b in zip(uninterrupted[start_step:], resumed):
    np.testing.assert_array_equal(a["images"], b["images"])
    np.testing.assert_array_equal(a["labels"], b["labels"])


def test_epochs_are_shuffled_differently_and_complete(mock_tfds):
  config = _config("cifar10", 32, augment="crop_flip")
  config.batch_size = 24  # Divisible by the 8 devices; one batch = two epochs of 12.
  labels = _first_batches(input_pipeline.create_train_dataset(config), 1)[0]["labels"]
  epoch_0, epoch_1 = labels[:MOCK_EXAMPLES], labels[MOCK_EXAMPLES:]
  np.testing.assert_array_equal(np.sort(epoch_0), np.sort(epoch_1))  # Same examples...
  assert not np.array_equal(epoch_0, epoch_1)  # ...in another order.


def test_global_arrays_from_the_train_iterator(mock_tfds):
  config = _config("cifar10", 32)
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  batch = next(input_pipeline.create_train_iterator(config, mesh))
  local = _first_batches(input_pipeline.create_train_dataset(config), 1)[0]
  for key in ("images", "labels"):
    assert isinstance(batch[key], jax.Array)
    assert batch[key].sharding.spec == P("data")
    assert len(batch[key].addressable_shards) == jax.device_count()
    np.testing.assert_array_equal(np.asarray(batch[key]), local[key])


# The classes of Fashion-MNIST (Xiao et al., 2017, Table 1), in label order.
_FASHION_MNIST_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                        "Sneaker", "Bag", "Ankle boot")


def test_fashion_mnist_train_and_eval_batches(fashion_mnist_dir):
  config = _config("fashion_mnist", 28, data_dir=fashion_mnist_dir, crop_area=(0.2, 1.0))
  info = input_pipeline.dataset_info(config)
  assert info == input_pipeline.DatasetInfo(num_train_examples=60_000, num_eval_examples=10_000,
                                            num_classes=10, image_shape=(28, 28, 1),
                                            label_names=_FASHION_MNIST_NAMES)
  batch = _first_batches(input_pipeline.create_train_dataset(config), 1)[0]
  assert batch["images"].shape == (8, 2, 28, 28, 1)
  _assert_normalised(config, batch["images"])
  assert batch["labels"].dtype == np.int32 and np.all(batch["labels"] < 10)
  assert np.all(np.abs(batch["images"][:, 0] - batch["images"][:, 1]).max(axis=(1, 2, 3)) > 0.1)
  batch = _first_batches(input_pipeline.create_eval_dataset(config), 1)[0]
  assert batch["images"].shape == (8, 1, 28, 28, 1) and batch["mask"].all()
  _assert_normalised(config, batch["images"])


def _tfds_ids(data_dir: str, split: str) -> list[str]:
  builder = tfds.builder("fashion_mnist", data_dir=data_dir)
  ds = builder.as_dataset(split=split, read_config=tfds.ReadConfig(add_tfds_id=True),
                          decoders={"image": tfds.decode.SkipDecoding()})
  return [i for ids in ds.map(lambda example: example["tfds_id"]).batch(4096).as_numpy_iterator()
          for i in ids]


@pytest.mark.parametrize("split", ["test", "test[:1001]"])
def test_process_splits_are_disjoint_and_cover_the_split(fashion_mnist_dir, split):
  parts = [_tfds_ids(fashion_mnist_dir, input_pipeline.process_split(split, index, 2))
           for index in (0, 1)]
  everything = _tfds_ids(fashion_mnist_dir, split)
  assert not set(parts[0]) & set(parts[1])
  assert sorted(parts[0] + parts[1]) == sorted(everything)
  assert abs(len(parts[0]) - len(parts[1])) <= 1


def test_eval_padding_counts_every_example_once(fashion_mnist_dir):
  split = "test[:1001]"  # 501 + 500 examples over 2 processes with batches of 8.
  config = _config("fashion_mnist", 28, data_dir=fashion_mnist_dir)
  config.batch_size = 16
  images, labels, num_batches = [], [], []
  for index in (0, 1):
    batches = list(input_pipeline.create_eval_dataset(
        config, split=split, process_index=index, process_count=2).as_numpy_iterator())
    num_batches.append(len(batches))
    for batch in batches:
      assert batch["images"].shape[0] == 8
      images.append(batch["images"][batch["mask"]])
      labels.append(batch["labels"][batch["mask"]])
  assert num_batches == [63, 63]
  # Undo the normalisation and compare with the raw split, as multisets of (image, label).
  spec = input_pipeline.DATASETS["fashion_mnist"]
  pixels = np.round((np.concatenate(images)[:, 0] * spec.std[0] + spec.mean[0]) * 255)
  seen = sorted((p.astype(np.uint8).tobytes(), int(l))
                for p, l in zip(pixels, np.concatenate(labels)))
  raw = tfds.builder("fashion_mnist", data_dir=fashion_mnist_dir).as_dataset(split=split)
  expected = sorted((e["image"].tobytes(), int(e["label"])) for e in raw.as_numpy_iterator())
  assert len(seen) == 1001 and seen == expected


def test_unknown_dataset_names_the_field_and_the_choices():
  with pytest.raises(ValueError, match=r"data\.dataset='mnist'.*cifar10.*fashion_mnist"):
    input_pipeline.dataset_info(_config("mnist", 28))


@pytest.mark.parametrize("batch_size,process_count,what", [(16, 3, "processes"),
                                                           (12, 2, "devices")])
def test_batch_size_must_divide_over_processes_and_devices(batch_size, process_count, what):
  config = _config("cifar10", 32)
  config.batch_size = batch_size
  with pytest.raises(ValueError, match=f"batch_size={batch_size} .* number of {what}"):
    input_pipeline.create_train_dataset(config, process_index=0, process_count=process_count)


@pytest.mark.parametrize("dataset,fix", [
    ("imagenet2012", r"ILSVRC2012_img_train\.tar.*data\.manual_dir.*downloads/manual"),
    ("cifar10", r"prepare_dataset\(config\).*tfds build cifar10"),
    ("fashion_mnist", r"data\.manual_dir.*dataset-fashion-mnist"),
])
def test_unprepared_dataset_says_how_to_prepare_it(tmp_path, dataset, fix):
  config = _config(dataset, 32, data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match=f"{dataset} is not prepared.*{fix}"):
    input_pipeline.create_eval_dataset(config)
