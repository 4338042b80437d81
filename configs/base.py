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
  c.num_epochs = 10.0
  # If set, overrides num_epochs (smoke tests, benchmarks).
  c.num_train_steps = ml_collections.FieldReference(None, field_type=int)

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

  # --- Optimizer (supcon_jax/optim.py) -----------------------------------------------------
  c.optim = ml_collections.ConfigDict()
  c.optim.name = "lars"  # lars | sgd | rmsprop | adamw
  # Peak learning rate = base_lr * batch_size / 256.
  c.optim.base_lr = 0.3
  c.optim.warmup_epochs = 1.0
  c.optim.schedule = "cosine"  # cosine | constant (after warmup)
  c.optim.weight_decay = 1e-6
  c.optim.momentum = 0.9
  c.optim.nesterov = False
  c.optim.trust_coefficient = 1e-3
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.rmsprop_decay = 0.9
  c.optim.grad_clip_norm = 0.0  # 0 disables clipping

  # --- Trainer (supcon_jax/train.py) -------------------------------------------------------
  c.train = ml_collections.ConfigDict()
  # Shard parameters and optimizer state along the data axis (FSDP style) instead of
  # replicating them: for encoders whose state does not fit on one device.
  c.train.shard_params = False
  c.train.log_every_steps = 50
  # <= 0: evaluate the online probe only at the end.
  c.train.eval_every_steps = 1000
  c.train.checkpoint_every_steps = 1000
  c.train.keep_checkpoints = 3
  # Weight of the online linear probe's cross-entropy (it only reaches the classifier head).
  c.train.probe_weight = 1.0
  return c
