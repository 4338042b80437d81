"""tf.data input pipeline: tfds datasets, V augmented views per image, per-process splits.

Per-process batches (b = batch_size // process_count) are dicts of numpy arrays:
  train: {"images": float32 [b, V, H, W, C], "labels": int32 [b]}
  eval:  {"images": float32 [b, 1, H, W, C], "labels": int32 [b], "mask": bool [b]}
Images are normalised with the dataset's per-channel mean and std. `create_train_iterator` and
`create_eval_iterator` assemble them into global jax.Arrays of leading size batch_size.

Every dataset goes through tfds, including fashion_mnist without internet: with `data.manual_dir`
pointing at the four original .gz files (Debian's dataset-fashion-mnist installs them in
/usr/share/datasets/fashion-mnist), `prepare_dataset` builds tfds' own `fashion_mnist` from them.
"""
import dataclasses
import os
import types
from collections.abc import Callable, Iterator, Mapping

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from jax.sharding import Mesh

from supcon_jax import augment, checks, sharding


@dataclasses.dataclass(frozen=True)
class _Dataset:
  mean: tuple[float, ...]  # Per channel, of images in [0, 1].
  std: tuple[float, ...]
  # Eval resizes the short side to image_size / eval_crop_fraction, then centre-crops image_size.
  eval_crop_fraction: float = 1.0


_DATASETS = types.MappingProxyType({
    "imagenet2012": _Dataset(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                             eval_crop_fraction=224 / 256),
    "cifar10": _Dataset(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    "cifar100": _Dataset(mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
    "fashion_mnist": _Dataset(mean=(0.2860,), std=(0.3530,)),
})
DATASETS = tuple(sorted(_DATASETS))

_FASHION_MNIST_FILES = {
    "train_data": "train-images-idx3-ubyte.gz", "train_labels": "train-labels-idx1-ubyte.gz",
    "test_data": "t10k-images-idx3-ubyte.gz", "test_labels": "t10k-labels-idx1-ubyte.gz"}


class _LocalFashionMNIST(tfds.image_classification.FashionMNIST, skip_registration=True):
  """tfds' fashion_mnist (same name, version and features), built from files in manual_dir.

  The registered builder downloads the files and checks them against registered checksums, which
  Debian's re-compressed copies fail (same content, other gzip headers). This one only extracts
  local files; the examples come from tfds' own generator, so `tfds.builder("fashion_mnist")`
  reads the result as if it had been downloaded.
  """
  name = "fashion_mnist"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Put {', '.join(_FASHION_MNIST_FILES.values())} in manual_dir: e.g. "
      "`apt-get install dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist.")

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    files = dl_manager.extract({key: os.path.join(dl_manager.manual_dir, name)
                                for key, name in _FASHION_MNIST_FILES.items()})
    return [
        tfds.core.SplitGenerator(name=split, gen_kwargs=dict(
            num_examples=size, data_path=files[f"{split}_data"],
            label_path=files[f"{split}_labels"]))
        for split, size in (("train", 60_000), ("test", 10_000))]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_train_examples: int  # In data.train_split, all processes together.
  num_eval_examples: int  # In data.eval_split.
  num_classes: int
  image_shape: tuple[int, int, int]  # (H, W, C) of the model input.
  label_names: tuple[str, ...]  # tfds' names of the classes, by label index.


def _builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  name = config.data.dataset
  checks.check_choice("config.data.dataset", name, DATASETS)
  return tfds.builder(name, data_dir=config.data.data_dir)


def prepare_dataset(config: ml_collections.ConfigDict) -> None:
  """Downloads and prepares data.dataset in data.data_dir; run it once, on one process.

  imagenet2012 needs its tar files in data.manual_dir (default <data_dir>/downloads/manual).
  fashion_mnist with data.manual_dir set is built from the .gz files there, without internet.
  """
  builder = _builder(config)
  if config.data.dataset == "fashion_mnist" and config.data.manual_dir:
    builder = _LocalFashionMNIST(data_dir=config.data.data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=config.data.manual_dir))


def _not_prepared_message(config: ml_collections.ConfigDict,
                          builder: tfds.core.DatasetBuilder) -> str:
  name, where = config.data.dataset, builder.data_dir_root
  fix = ("call supcon_jax.input_pipeline.prepare_dataset(config) once, on one machine with "
         f"internet (or run `tfds build {name} --data_dir={where}`)")
  if name == "imagenet2012":
    fix = ("it needs a manual download: get ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
           "from https://image-net.org, put them in data.manual_dir (default "
           f"{where}/downloads/manual), then call "
           "supcon_jax.input_pipeline.prepare_dataset(config) once")
  elif name == "fashion_mnist":
    fix += ("; without internet, set data.manual_dir to a directory with the four original "
            ".gz files (Debian: `apt-get install dataset-fashion-mnist` puts them in "
            "/usr/share/datasets/fashion-mnist) before calling prepare_dataset")
  return f"Dataset {name} is not prepared in data.data_dir={where}: {fix}."


def _read(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder,
          split: str) -> tf.data.Dataset:
  """Examples of `split` in a fixed order, images still encoded: skipping and shuffling move
  bytes, and only the examples that are used get decoded."""
  try:
    # No tfds autocache: it would keep small splits in memory, and warn whenever an iterator
    # stops mid-epoch; reading the records is cheap next to decoding and augmenting them.
    return builder.as_dataset(split=split, shuffle_files=False,
                              decoders={"image": tfds.decode.SkipDecoding()},
                              read_config=tfds.ReadConfig(try_autocache=False))
  except AssertionError as e:  # How tfds says that the data directory is missing.
    raise FileNotFoundError(_not_prepared_message(config, builder)) from e


def _size(ds: tf.data.Dataset) -> int:
  size = int(ds.cardinality())
  if size < 0:
    raise ValueError(f"tfds gave a dataset of unknown size ({size}).")
  return size


def dataset_info(config: ml_collections.ConfigDict) -> DatasetInfo:
  """Split sizes, classes and model input shape of data.dataset (reads no examples)."""
  builder = _builder(config)
  size = config.data.image_size
  return DatasetInfo(
      num_train_examples=_size(_read(config, builder, config.data.train_split)),
      num_eval_examples=_size(_read(config, builder, config.data.eval_split)),
      num_classes=builder.info.features["label"].num_classes,
      image_shape=(size, size, builder.info.features["image"].shape[-1]),
      label_names=tuple(builder.info.features["label"].names))


def process_split(split: str, process_index: int, process_count: int) -> str:
  """This process's part of `split`: parts are disjoint, cover the split and differ in size by
  at most one example (nothing is dropped)."""
  return tfds.even_splits(split, n=process_count, drop_remainder=False)[process_index]


def local_batch_size(batch_size: int, process_count: int, device_count: int) -> int:
  """Per-process batch of the global `batch_size`; it must split evenly over processes and
  devices."""
  for count, what in ((process_count, "processes"), (device_count, "devices")):
    if batch_size % count:
      raise ValueError(f"batch_size={batch_size} is not divisible by the number of {what} "
                       f"({count}).")
  return batch_size // process_count


def _topology(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  return (jax.process_index() if process_index is None else process_index,
          jax.process_count() if process_count is None else process_count)


def _decode(builder: tfds.core.DatasetBuilder, encoded: tf.Tensor) -> tf.Tensor:
  """uint8 [h, w, C]."""
  channels = builder.info.features["image"].shape[-1]
  image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
  return tf.ensure_shape(image, [None, None, channels])


def _normalize(config: ml_collections.ConfigDict, images: tf.Tensor) -> tf.Tensor:
  """float32 [..., C] in [0, 1] -> standardised with the dataset's mean and std."""
  spec = _DATASETS[config.data.dataset]
  return (images - tf.constant(spec.mean)) / tf.constant(spec.std)


def _options() -> tf.data.Options:
  options = tf.data.Options()
  # Outputs in input order, whatever the parallelism: with the per-example seeds, batches are a
  # function of (config, process, step) alone.
  options.deterministic = True
  options.autotune.enabled = True
  return options


def _process_key(config: ml_collections.ConfigDict, process_index: int) -> tf.Tensor:
  """int32 [2]: the root of every random draw of this process's train stream."""
  return tf.random.experimental.stateless_fold_in(tf.constant([config.seed, 0]), process_index)


def create_train_dataset(config: ml_collections.ConfigDict, *, start_step: int = 0,
                         process_index: int | None = None,
                         process_count: int | None = None) -> tf.data.Dataset:
  """Endless per-process train batches, from step `start_step` on.

  Yields {"images": float32 [b, V, S, S, C], "labels": int32 [b]} with b = batch_size //
  process_count, V = data.num_views and S = data.image_size. The stream is a function of the
  config, the process and the step: one started at step k yields exactly the batches that an
  uninterrupted one yields from step k on. Epoch e is this process's part of the split in an
  order shuffled with a seed of (seed, process, e); the views of example i of epoch e use seeds
  of (seed, process, e, i).
  """
  index, count = _topology(process_index, process_count)
  batch = local_batch_size(config.batch_size, count, jax.device_count())
  builder = _builder(config)
  examples = _read(config, builder, process_split(config.data.train_split, index, count))
  num_examples = _size(examples)
  examples = examples.enumerate()
  key = _process_key(config, index)
  # A restart only replays the epoch it lands in, as encoded bytes.
  start_epoch, skip = divmod(start_step * batch, num_examples)

  def epoch(e: tf.Tensor) -> tf.data.Dataset:
    epoch_key = tf.random.experimental.stateless_fold_in(key, e)
    shuffle_seed = tf.random.stateless_uniform([], epoch_key, None, None, dtype=tf.int64)
    return examples.shuffle(config.data.shuffle_buffer_size, seed=shuffle_seed).map(
        lambda i, example: (epoch_key, i, example))

  view = augment.make_view_fn(config.data)
  views = config.data.num_views

  def make_views(epoch_key: tf.Tensor, i: tf.Tensor, example: dict) -> dict[str, tf.Tensor]:
    image = _decode(builder, example["image"])
    example_key = tf.random.experimental.stateless_fold_in(epoch_key, i)
    view_seeds = tf.stack([tf.random.experimental.stateless_fold_in(example_key, v)
                           for v in range(views)])
    # One traced copy of the policy for all views (tracing AutoAugment takes seconds).
    images = tf.map_fn(lambda seed: view(image, seed), view_seeds,
                       fn_output_signature=tf.float32)
    return {"images": _normalize(config, images), "labels": tf.cast(example["label"], tf.int32)}

  # Shuffle within each epoch, then concatenate the epochs (rather than shuffle after repeat):
  # every example is seen once per epoch, and epoch boundaries stay where a restart expects them.
  ds = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max).flat_map(epoch).skip(skip)
  ds = ds.map(tf.autograph.experimental.do_not_convert(make_views),
              num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch, drop_remainder=True)  # Endless stream: no batch is ever partial.
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def _center_crop(image: tf.Tensor, size: int, crop_fraction: float) -> tf.Tensor:
  """uint8 [h, w, C] -> float32 [size, size, C] in [0, 1]: the short side resized to
  size / crop_fraction, then the central size x size."""
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = size / crop_fraction / tf.reduce_min(shape)
  resized_shape = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), size)
  resized = tf.image.resize(image, resized_shape)  # Bilinear, not antialiased, as in training.
  top, left = (resized_shape[0] - size) // 2, (resized_shape[1] - size) // 2
  crop = resized[top:top + size, left:left + size] / 255.0
  return tf.ensure_shape(crop, [size, size, image.shape[-1]])


def create_eval_dataset(config: ml_collections.ConfigDict, *, split: str | None = None,
                        process_index: int | None = None, process_count: int | None = None,
                        image_fn: Callable[[tf.Tensor], tf.Tensor] | None = None
                        ) -> tf.data.Dataset:
  """Per-process eval batches of `split` (default data.eval_split), in a fixed order.

  `image_fn` (uint8 [h, w, C] -> uint8 [h, w, C]), e.g. a corruption, is applied to each
  decoded image before the eval preprocessing, one example at a time.

  Yields {"images": float32 [b, 1, S, S, C], "labels": int32 [b], "mask": bool [b]}. The last
  batches are padded with mask=False examples so that every process yields the same number of
  batches and, over all processes, every example of the split is in exactly one batch.
  """
  split = config.data.eval_split if split is None else split
  index, count = _topology(process_index, process_count)
  batch = local_batch_size(config.batch_size, count, jax.device_count())
  builder = _builder(config)
  parts = [_read(config, builder, process_split(split, p, count)) for p in range(count)]
  sizes = [_size(part) for part in parts]
  padded_size = -(-max(sizes) // batch) * batch
  size, crop_fraction = config.data.image_size, _DATASETS[config.data.dataset].eval_crop_fraction

  def preprocess(example: dict) -> dict[str, tf.Tensor]:
    image = _decode(builder, example["image"])
    if image_fn is not None:
      image = image_fn(image)
    image = _center_crop(image, size, crop_fraction)
    return {"images": _normalize(config, image)[None], "mask": tf.constant(True),
            "labels": tf.cast(example["label"], tf.int32)}

  # An image_fn may draw from a process-wide random state (numpy's): run it sequentially so
  # that its draws, and so the results, are the same from run to run.
  ds = parts[index].map(tf.autograph.experimental.do_not_convert(preprocess),
                        num_parallel_calls=tf.data.AUTOTUNE if image_fn is None else None)
  padding = tf.data.Dataset.from_tensors(
      tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype), ds.element_spec))
  ds = ds.concatenate(padding.repeat(padded_size - sizes[index]))
  ds = ds.batch(batch, drop_remainder=True)  # padded_size is a multiple of batch: drops nothing.
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def to_global_arrays(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Each process's [b, ...] arrays -> global [b * process_count, ...] jax.Arrays, the leading
  dimension split over the mesh's "data" axis."""
  batch_sharding = sharding.batch_sharding(mesh)
  return {key: jax.make_array_from_process_local_data(batch_sharding, value)
          for key, value in batch.items()}


def create_train_iterator(config: ml_collections.ConfigDict, mesh: Mesh, *,
                          start_step: int = 0) -> Iterator[dict[str, jax.Array]]:
  """Global train batches from step `start_step` on: {"images": [B, V, S, S, C], "labels": [B]}
  with B = batch_size. Restarting at step k yields what an uninterrupted run sees from k on."""
  ds = create_train_dataset(config, start_step=start_step)
  return (to_global_arrays(batch, mesh) for batch in ds.as_numpy_iterator())


def create_eval_iterator(config: ml_collections.ConfigDict, mesh: Mesh, *,
                         split: str | None = None,
                         image_fn: Callable[[tf.Tensor], tf.Tensor] | None = None
                         ) -> Iterator[dict[str, jax.Array]]:
  """Global eval batches of `split`: {"images": [B, 1, S, S, C], "labels": [B], "mask": [B]}."""
  ds = create_eval_dataset(config, split=split, image_fn=image_fn)
  return (to_global_arrays(batch, mesh) for batch in ds.as_numpy_iterator())
