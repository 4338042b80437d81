"""Every config key of supcon_jax, with defaults; recipes import this and override.

Derived values (learning rate from batch size, steps from epochs) are computed in code from
these fields, never stored here, so command-line overrides cannot leave them stale.
"""
import ml_collections


def optimizer_defaults() -> ml_collections.ConfigDict:
  """The keys of an optimizer section (config.optim and config.probe.optim), with defaults."""
  o = ml_collections.ConfigDict()
  o.name = "lars"  # lars | sgd | rmsprop | adamw
  # Peak learning rate = base_lr * batch_size / 256.
  o.base_lr = 0.3
  o.warmup_epochs = 1.0
  # The warm-up starts at this fraction of the peak (SupContrast: 0.01 / 0.5 = 0.02).
  o.warmup_init_factor = 0.0
  # After the warm-up: cosine | constant | exponential | step (supcon_jax.optim.SCHEDULES).
  o.schedule = "cosine"
  # True: the decay starts at the peak when the warm-up ends (the released TF code). False:
  # the decay counts steps from 0 and the warm-up replaces its first epochs (SupContrast).
  o.decay_after_warmup = True
  # cosine: the learning rate at the end, as a fraction of the peak (SupContrast: 1e-3).
  o.end_lr_factor = 0.0
  # exponential and step: the factor of each decay.
  o.decay_rate = 0.1
  # exponential: epochs between decays (staircase), counted from the end of the warm-up.
  o.epochs_per_decay = 1.0
  # step: epochs (after the warm-up) at which the learning rate is multiplied by decay_rate.
  o.milestones_epochs = (30, 60, 80)
  o.weight_decay = 1e-6
  # Weight decay (and LARS's trust ratio) always covers kernels; these add the biases of
  # Dense/Conv layers and the scale/bias of normalisation layers (supcon_jax.optim.decay_mask).
  o.decay_biases = False
  o.decay_norms = False
  o.momentum = 0.9
  o.nesterov = False
  o.trust_coefficient = 1e-3
  o.b1 = 0.9
  o.b2 = 0.999
  o.eps = 1e-8
  o.rmsprop_decay = 0.9
  # RMSProp's initial mean square (TF1's RMSPropOptimizer starts it at 1.0, optax at 0.0).
  o.rmsprop_initial_scale = 0.0
  o.grad_clip_norm = 0.0  # 0 disables clipping
  return o


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
  # Random resized crop, sampled as the released supcon/preprocessing.py does: fraction of the
  # image area (CIFAR: (0.2, 1.0)), width/height range, minimum fraction of the image covered,
  # tries before falling back to the central square.
  c.data.crop_area = (0.08, 1.0)
  c.data.crop_aspect_ratio = (0.75, 1.33)
  c.data.crop_min_object_covered = 0.1
  c.data.crop_max_attempts = 100
  # SimCLR colour jitter strength s (brightness/contrast/saturation 0.8 s, hue 0.2 s, p=0.8);
  # 0.5 is SupCon's ColorJitter(0.4, 0.4, 0.4, 0.1), SimCLR's ImageNet runs use 1.0.
  c.data.color_jitter_strength = 0.5
  # torchvision (ColorJitter: multiplicative brightness, gray-mean contrast; the released code's
  # use_pytorch_color_jitter, its CIFAR runs) | simclr_tf (additive brightness, per-channel
  # contrast; the released default, its ImageNet runs). See supcon_jax/augment.py.
  c.data.color_jitter_impl = "torchvision"
  # Gaussian blur (p=0.5) in simclr and stacked_randaugment; small-image recipes turn it off.
  c.data.blur = True
  # RandAugment N (ops per image) and M (magnitude, 0..10; the released stacked policy uses 10).
  c.data.randaugment_num_ops = 2
  c.data.randaugment_magnitude = 9

  # --- Model (supcon_jax/models/) ----------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  # resnet18 | resnet34 | resnet50 | resnet101 | resnet152 | resnet200 | vit_ti16 | vit_s16
  # | vit_b16 (supcon_jax.models.ENCODERS).
  c.model.name = "resnet18"
  c.model.num_classes = 10
  # float32 | bfloat16: compute dtype; parameters stay float32.
  c.model.dtype = "float32"
  # ResNet: imagenet (7x7/2 conv + max-pool, 224 px) | small (3x3/1 conv, 28-32 px).
  c.model.stem = "small"
  # ResNet channel multiplier (SimCLR's ResNet-50 (2x) is width 2).
  c.model.width = 1.0
  # Zero the last BatchNorm scale of each residual block, so blocks start as the identity.
  c.model.zero_init_last_bn = False
  # BatchNorm in encoder and head: running = momentum * running + (1 - momentum) * batch.
  c.model.bn_momentum = 0.9
  c.model.bn_epsilon = 1e-5
  # ResNet normalisation: batch | group. GroupNorm has per-example statistics, so training
  # with train.microbatches > 1 gives exactly the full-batch update (BatchNorm: statistics
  # per micro-batch instead of per global batch).
  c.model.norm = "batch"
  # ViT: None takes the patch size from the name (16 for vit_*16); image size comes from data.
  c.model.patch_size = ml_collections.FieldReference(None, field_type=int)
  # ViT pooling: cls (class token) | gap (global average of the tokens, no class token).
  c.model.pool = "cls"
  # Projection head widths; ReLU between layers, output L2-normalised.
  c.model.head_dims = (2048, 128)
  # BatchNorm between the projection head's layers.
  c.model.head_bn = False
  # A bias in the head's last Dense layer (the released TF head has none; SupContrast's has).
  c.model.head_output_bias = True
  # Initialisation of the head's Dense layers: lecun_normal (flax's default) | normal (std
  # head_init_std, zero bias; the released TF head) | torch (PyTorch nn.Linear's default:
  # kernel and bias uniform in ±1/sqrt(fan_in); SupContrast's head).
  c.model.head_init = "lecun_normal"
  c.model.head_init_std = 0.01
  # L2-normalise the representation r before both heads (the released TF SupCon runs); the
  # model's "representation" output, and so the linear probe, is then the normalised r.
  c.model.normalize_representation = False

  # --- Start from a PyTorch checkpoint (supcon_jax/torch_io.py) ------------------------------
  c.init = ml_collections.ConfigDict()
  # A .pt/.pth file whose encoder (and fc / projection head, where they fit) seeds pretraining
  # and linear evaluation when the workdir has no checkpoint of its own. Resume order: the
  # workdir's checkpoint, then this file, then the random init. Refused, listing every
  # difference, if its encoder does not fit config.model.
  c.init.checkpoint = ml_collections.FieldReference(None, field_type=str)
  # torchvision | timm | supcontrast (HobbitLong/SupContrast's {'model': ...} files).
  c.init.format = "torchvision"

  # --- Loss (supcon_jax/losses.py) ---------------------------------------------------------
  c.loss = ml_collections.ConfigDict()
  c.loss.temperature = 0.1
  c.loss.base_temperature = ml_collections.FieldReference(None, field_type=float)
  c.loss.contrast_mode = "all"
  c.loss.summation = "outside"
  c.loss.denominator = "all"
  c.loss.label_smoothing = 0.0
  # Anchors whose logits are computed at once (recomputed in the backward pass): memory is
  # O(block × global batch). None: automatic (512 anchors, less for huge contrast sets).
  c.loss.block_size = ml_collections.FieldReference(None, field_type=int)
  # At most this many positives per anchor besides its own sample's other views (a multiple
  # of data.num_views; the released code's positives_cap). None: no cap.
  c.loss.positives_cap = ml_collections.FieldReference(None, field_type=int)

  # --- Optimizer (supcon_jax/optim.py) -----------------------------------------------------
  c.optim = optimizer_defaults()

  # --- Trainer (supcon_jax/train.py) -------------------------------------------------------
  c.train = ml_collections.ConfigDict()
  # Shard parameters and optimizer state along the data axis (FSDP style) instead of
  # replicating them: for encoders whose state does not fit on one device.
  c.train.shard_params = False
  c.train.log_every_steps = 50
  # Evaluation and checkpoint intervals: set exactly one of *_epochs and *_steps (the other
  # None); epochs become steps in supcon_jax.experiment, so they follow batch_size.
  # An evaluation interval <= 0 evaluates the online probe only at the end.
  c.train.eval_every_epochs = ml_collections.FieldReference(None, field_type=float)
  c.train.eval_every_steps = ml_collections.FieldReference(1000, field_type=int)
  c.train.checkpoint_every_epochs = ml_collections.FieldReference(None, field_type=float)
  c.train.checkpoint_every_steps = ml_collections.FieldReference(1000, field_type=int)
  c.train.keep_checkpoints = 3
  # Gradient caching: embed the global batch in this many micro-batches without keeping
  # activations, take the loss gradient w.r.t. the embeddings over the whole batch, then
  # backpropagate it micro-batch by micro-batch. The SupCon loss still contrasts the whole
  # global batch; memory for activations drops by this factor, at ~1/3 more compute.
  c.train.microbatches = 1
  # Weight of the online linear probe's cross-entropy (it only reaches the classifier head).
  c.train.probe_weight = 1.0

  # --- Linear evaluation (supcon_jax/linear_eval.py) ---------------------------------------
  c.probe = ml_collections.ConfigDict()
  c.probe.epochs = 10
  c.probe.batch_size = 256
  # Features of freshly augmented train views each epoch (the paper), instead of fixed
  # eval-preprocessed ones: more faithful, one encoder pass over the train split per epoch.
  c.probe.augmented_features = False
  # The policy of those views (a data.augment value); None: the pretraining's data.augment.
  c.probe.augment = ml_collections.FieldReference(None, field_type=str)
  # Those views pass the frozen encoder with BatchNorm on their batch's statistics (the
  # released TF stage 2; running statistics stay as trained) instead of the running ones.
  c.probe.train_batch_statistics = False
  c.probe.label_smoothing = 0.0
  # Standardise each feature with its mean and deviation over the train split before the
  # classifier (a BatchNorm without scale and bias, as MAE's linear probing; the released
  # protocols do not).
  c.probe.standardize = False
  # Initial probe kernel: zeros | glorot_uniform (the released TF SupCon classifier). The
  # bias starts at zero.
  c.probe.init = "zeros"
  # The probe's optimizer: the optimizer defaults, except for these.
  c.probe.optim = optimizer_defaults()
  c.probe.optim.name = "sgd"
  c.probe.optim.base_lr = 0.5  # per 256 examples
  c.probe.optim.warmup_epochs = 0.0
  c.probe.optim.weight_decay = 0.0
  c.probe.knn_k = 20
  c.probe.knn_temperature = 0.07
  c.probe.ece_bins = 15
  # ImageNet-C style corruptions (tfds' implementation) at these severities, applied to the
  # raw test images of corruption_split; the ImageNet configs use a part of "validation".
  # (impulse_noise is left out: tfds draws it from an unseeded generator, so it cannot repeat.)
  c.probe.corruptions = ("gaussian_noise", "shot_noise", "speckle_noise", "defocus_blur",
                         "gaussian_blur", "contrast", "brightness", "pixelate",
                         "jpeg_compression", "elastic_transform")
  c.probe.severities = (1, 2, 3, 4, 5)
  c.probe.corruption_split = "test[:2000]"
  c.probe.tsne_examples = 2000
  # Also fit the same probe on the eval-preprocessed raw pixels (a floor for the encoder;
  # cheap for 28-32 px images, 150k features at ImageNet's 224 px).
  c.probe.raw_pixel_baseline = False
  # (label, top-1 in [0, 1]) pairs printed after the result for comparison, e.g. the README's
  # measured cross-entropy run with the same budget.
  c.probe.reference_top1 = ()
  return c
