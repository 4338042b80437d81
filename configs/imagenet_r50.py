r"""SupCon ResNet-50 on ImageNet, as released: google-research/google-research
supcon/scripts/supcon_imagenet_resnet50.sh (paper: 78.7% top-1 with AutoAugment).

  python -m supcon_jax.main --config=configs/imagenet_r50.py --workdir=gs://BUCKET/supcon_r50 \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets
  python -m supcon_jax.linear_eval --config=configs/imagenet_r50.py --workdir=gs://BUCKET/supcon_r50

Every value is the script's, or the default of the flag it leaves unset (hparams_flags.py),
through scripts/configs.sh's flag groups (IMAGENET_FLAGS, SUPCON_FLAGS), launcher.py, utils.py,
projection_head.py and blocks.py (google-research at 0c1bbe5); tests/test_recipes.py pins each
one with its source line. Pretraining: batch 6144, 350 epochs, LARS (momentum 0.9, trust
coefficient 1e-3) at 0.4 × batch / 256, 12 warm-up epochs then cosine to 0, weight decay 1e-3
on kernels and biases, BatchNorm excluded from decay and trust ratio; τ 0.1 with the loss
scaled by τ / 1 (scale_by_temperature); r L2-normalised before a projection head that is one
Dense to 128 without bias, initialised normal(0.01); last BatchNorm of each residual block
zero-initialised; AutoAugment; label smoothing 0.05 (the online probe here). Linear probe
(the released stage 2, fed the same normalised r): RMSProp (decay 0.9, momentum 0.9, ε 1e-3,
mean square starting at 1) at 0.05 × batch / 256 with batch 6144, 12 warm-up epochs, then
× 0.97 every 0.5 epoch (staircase), weight decay 1e-6 on kernel and bias, label smoothing
0.05, glorot-uniform initial kernel, 90 epochs on augmented training views that pass the
encoder with BatchNorm on batch statistics (training mode, running averages not updated).
Views (preprocessing.py): tf.image.sample_distorted_bounding_box over the whole image with
area crop_area_range (0.08, 1.0), aspect ratio (0.75, 1.33), min_object_covered 0.1 and 100
attempts, falling back to the central square; bilinear resize to 224; flip; then the TF models'
AutoAugment policy v0 (augmentation_magnitude 1.0). Evaluation resizes the short side to
224 + 32 and takes the central 224 crop (RESIZE_THEN_CROP, crop_padding 32). The sampler's
min_object_covered / attempts and the AutoAugment policy are fields of the augmentation module.

Paper text vs. released code (we follow the code):
- Loss: the paper's L_out has no temperature factor; the code multiplies it by τ / 1.
- Projection head: the paper describes an MLP (hidden 2048, output 128); this script uses a
  single Dense layer to 128 (projection_head_layers=128).
- The paper does not give the learning rates, weight decay, warm-up, label smoothing or the
  probe's optimizer and schedule; these are the script's values.
Where we differ from the code, and why:
- The released stage 2 continues the pretraining job; ours is linear_eval on the checkpoint.
- The online probe trains during pretraining with the pretraining optimizer (the released
  classification head waits for stage 2); it does not reach the encoder.
- bfloat16 compute (the script's allow_mixed_precision=True), float32 parameters.
"""
from configs import base


def get_config():
  c = base.get_config()
  c.method = "supcon"
  c.batch_size = 6144
  c.num_epochs = 350.0

  c.data.dataset = "imagenet2012"
  c.data.image_size = 224
  c.data.eval_split = "validation"
  c.data.augment = "autoaugment"
  c.data.crop_area = (0.08, 1.0)
  c.data.crop_aspect_ratio = (0.75, 1.33)
  c.probe.corruption_split = "validation[:10000]"

  c.model.name = "resnet50"
  c.model.stem = "imagenet"
  c.model.width = 1.0
  c.model.num_classes = 1000
  c.model.zero_init_last_bn = True
  c.model.bn_momentum = 0.9
  c.model.bn_epsilon = 1e-5
  c.model.head_dims = (128,)
  c.model.head_bn = False
  c.model.head_output_bias = False
  c.model.head_init = "normal"
  c.model.head_init_std = 0.01
  c.model.normalize_representation = True
  c.model.dtype = "bfloat16"

  c.loss.temperature = 0.1
  c.loss.base_temperature = 1.0
  c.loss.contrast_mode = "all"
  c.loss.summation = "outside"
  c.loss.denominator = "all"
  c.loss.label_smoothing = 0.05

  c.optim.name = "lars"
  c.optim.base_lr = 0.4
  c.optim.momentum = 0.9
  c.optim.trust_coefficient = 1e-3
  c.optim.warmup_epochs = 12.0
  c.optim.schedule = "cosine"
  c.optim.end_lr_factor = 0.0
  c.optim.weight_decay = 1e-3
  c.optim.decay_biases = True
  c.optim.decay_norms = False

  c.probe.epochs = 90
  c.probe.batch_size = 6144
  c.probe.augmented_features = True
  c.probe.augment = None  # the pretraining views (stage 2 reads the same input_fn)
  c.probe.train_batch_statistics = True
  c.probe.label_smoothing = 0.05
  c.probe.init = "glorot_uniform"
  p = c.probe.optim
  p.name = "rmsprop"
  p.base_lr = 0.05
  p.rmsprop_decay = 0.9
  p.momentum = 0.9
  p.eps = 1e-3
  p.rmsprop_initial_scale = 1.0
  p.warmup_epochs = 12.0
  p.schedule = "exponential"
  p.decay_rate = 0.97
  p.epochs_per_decay = 0.5
  p.weight_decay = 1e-6
  p.decay_biases = True
  p.decay_norms = False

  c.train.log_every_steps = 100
  c.train.eval_every_steps = None
  c.train.eval_every_epochs = 50.0
  # ~ the released save_interval_steps=1000 at batch 6144 (208 steps an epoch).
  c.train.checkpoint_every_steps = None
  c.train.checkpoint_every_epochs = 5.0
  return c
