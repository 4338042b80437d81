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
