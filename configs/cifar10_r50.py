r"""SupCon ResNet-50 on CIFAR-10, as released: HobbitLong/SupContrast main_supcon.py with its
README's command, and main_linear.py for the probe (paper and README: 96.0% top-1).

  python -m supcon_jax.main --config=configs/cifar10_r50.py --workdir=gs://BUCKET/cifar10_r50
  python -m supcon_jax.linear_eval --config=configs/cifar10_r50.py --workdir=gs://BUCKET/cifar10_r50

Pretraining (README: --batch_size 1024 --learning_rate 0.5 --temp 0.1 --cosine; the rest are
main_supcon.py's defaults and util.py): 1000 epochs, SGD momentum 0.9, weight decay 1e-4 on
every parameter (torch SGD: biases and BatchNorm too), warm-up over 10 epochs from 0.01 to the
cosine's value at epoch 10 (batch > 256 turns it on), cosine over all 1000 epochs to
lr × 0.1³; the loss scaled by τ / 0.07 (losses.py's
base_temperature); ResNet-50 with a 3x3 stride-1 stem and no max-pool, BatchNorm scales
initialised to 1 (zero_init_residual=False); head Linear(2048, 2048) - ReLU -
Linear(2048, 128), both with bias, PyTorch's default init, on the unnormalised r. Views:
RandomResizedCrop(32, scale (0.2, 1)), flip, ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8,
grayscale p 0.2, no blur (torchvision's multiplicative jitter: the augmentation module's
jitter-implementation field). Linear probe (README: --batch_size 512 --learning_rate 5;
main_linear.py defaults): 100 epochs, SGD momentum 0.9, no weight decay, no warm-up, × 0.2 at
epochs 60, 75 and 90, on views from main_ce.py's loader (random resized crop (0.2, 1) and
flip), on the unnormalised r.
Our learning rates follow the linear scaling rule (× batch / 256), so lr 0.5 at batch 1024 is
base_lr 0.125 and the probe's lr 5 at batch 512 is base_lr 2.5.

Paper text vs. released code (we follow the code): the paper's L_out has no τ / 0.07 factor;
the README's τ is 0.1 (an earlier README and main_supcon.py's default say 0.07 / 0.5).
Where we differ from the code: the cosine learning rate changes every step, not once an epoch
(SupContrast sets the cosine's value at the start of each epoch); bfloat16 compute; the probe's kernel starts at zero
instead of PyTorch's uniform init (a convex problem); the encoder's convolutions use flax's
init, not kaiming_normal(fan_out); the crop window comes from the released TF sampler
(tf.image.sample_distorted_bounding_box: uniform aspect ratio, minimum object coverage 0.1,
100 attempts, then the central square) with RandomResizedCrop's area and ratio ranges, where
torchvision draws the ratio log-uniformly, 10 attempts, then a central crop.
"""
from configs import base


def get_config():
  c = base.get_config()
  c.method = "supcon"
  c.batch_size = 1024
  c.num_epochs = 1000.0

  c.data.dataset = "cifar10"
  c.data.image_size = 32
  c.data.augment = "simclr"
  c.data.crop_area = (0.2, 1.0)
  c.data.crop_aspect_ratio = (3 / 4, 4 / 3)  # RandomResizedCrop's default ratio
  c.data.color_jitter_strength = 0.5  # brightness/contrast/saturation 0.4, hue 0.1, p 0.8
  c.data.color_jitter_impl = "torchvision"  # SupContrast's transforms.ColorJitter
  c.data.blur = False

  c.model.name = "resnet50"
  c.model.stem = "small"
  c.model.width = 1.0
  c.model.num_classes = 10
  c.model.zero_init_last_bn = False
  c.model.bn_momentum = 0.9  # torch BatchNorm2d momentum 0.1
  c.model.bn_epsilon = 1e-5
  c.model.head_dims = (2048, 128)
  c.model.head_bn = False
  c.model.head_output_bias = True
  c.model.head_init = "torch"
  c.model.normalize_representation = False
  c.model.dtype = "bfloat16"

  c.loss.temperature = 0.1
  c.loss.base_temperature = 0.07
  c.loss.contrast_mode = "all"
  c.loss.label_smoothing = 0.0

  c.optim.name = "sgd"
  c.optim.base_lr = 0.5 * 256 / 1024
  c.optim.momentum = 0.9
  c.optim.nesterov = False
  c.optim.weight_decay = 1e-4
  c.optim.decay_biases = True
  c.optim.decay_norms = True
  c.optim.warmup_epochs = 10.0
  c.optim.warmup_init_factor = 0.01 / 0.5
  c.optim.schedule = "cosine"
  c.optim.decay_after_warmup = False
  c.optim.end_lr_factor = 0.1 ** 3

  c.probe.epochs = 100
  c.probe.batch_size = 512
  c.probe.augmented_features = True
  c.probe.augment = "crop_flip"
  c.probe.train_batch_statistics = False  # main_linear.py: model.eval()
  c.probe.label_smoothing = 0.0
  c.probe.init = "zeros"
  p = c.probe.optim
  p.name = "sgd"
  p.base_lr = 5.0 * 256 / 512
  p.momentum = 0.9
  p.nesterov = False
  p.weight_decay = 0.0
  p.warmup_epochs = 0.0
  p.schedule = "step"
  p.decay_rate = 0.2
  p.milestones_epochs = (60, 75, 90)

  c.train.log_every_steps = 100
  c.train.eval_every_steps = None
  c.train.eval_every_epochs = 100.0
  c.train.checkpoint_every_steps = None
  c.train.checkpoint_every_epochs = 50.0  # main_supcon.py's save_freq
  return c
