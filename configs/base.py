"""Every config key of supcon_jax, with defaults; recipes import this and override.

Derived values (learning rate from batch size, steps from epochs) are computed in code from
these fields, never stored here, so command-line overrides cannot leave them stale.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # supcon | simclr (labels unused) | cross_entropy (the baseline).
  c.method = "supcon"
  # Global batch, summed over every device of every process.
  c.batch_size = 256
  c.num_epochs = 10

  # --- Data (supcon_jax/input_pipeline.py, supcon_jax/augment.py) -------------------------
  c.data = ml_collections.ConfigDict()
  c.data.dataset = "fashion_mnist"
  c.data.data_dir = ml_collections.FieldReference(None, field_type=str)
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.image_size = 28
  c.data.num_views = 2
  # Manually downloaded files: imagenet2012's ILSVRC2012_img_{train,val}.tar (None: tfds'
  # <data_dir>/downloads/manual); for fashion_mnist, a directory with the four original .gz files
  # to build from instead of downloading (Debian's dataset-fashion-mnist:
  # /usr/share/datasets/fashion-mnist). Used by input_pipeline.prepare_dataset.
  c.data.manual_dir = ml_collections.FieldReference(None, field_type=str)
  # Encoded examples that each process shuffles each epoch through. It is filled at the start of
  # every epoch (a pause) and held in memory (ImageNet: ~110 kB an example).
  c.data.shuffle_buffer_size = 10_000
  # Policy of the training views: simclr | autoaugment (ImageNet policy) | randaugment |
  # stacked_randaugment (SimCLR jitter, RandAugment, grayscale, blur) | crop_flip (the
  # cross-entropy baseline). Every policy starts with a random resized crop and a flip.
  c.data.augment = "simclr"
  # Random resized crop: fraction of the image area and width/height range (CIFAR: (0.2, 1.0)).
  c.data.crop_area = (0.08, 1.0)
  c.data.crop_aspect_ratio = (3 / 4, 4 / 3)
  # SimCLR colour jitter strength s (brightness/contrast/saturation 0.8 s, hue 0.2 s, p=0.8);
  # 0.5 is SupCon's ColorJitter(0.4, 0.4, 0.4, 0.1), SimCLR's ImageNet runs use 1.0.
  c.data.color_jitter_strength = 0.5
  # Gaussian blur (p=0.5) in simclr and stacked_randaugment; small-image recipes turn it off.
  c.data.blur = True
  # RandAugment N (ops per image) and M (magnitude, 0..10).
  c.data.randaugment_num_ops = 2
  c.data.randaugment_magnitude = 9

  # --- Model (supcon_jax/models/) ----------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.name = "resnet18"
  c.model.num_classes = 10
  # float32 | bfloat16: compute dtype; parameters stay float32.
  c.model.dtype = "float32"

  # --- Loss (supcon_jax/losses.py) ---------------------------------------------------------
  c.loss = ml_collections.ConfigDict()
  c.loss.temperature = 0.1
  c.loss.base_temperature = ml_collections.FieldReference(None, field_type=float)
  c.loss.contrast_mode = "all"
  c.loss.summation = "outside"
  c.loss.denominator = "all"
  c.loss.label_smoothing = 0.0
  return c
