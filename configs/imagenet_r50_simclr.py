r"""SimCLR ResNet-50 on ImageNet, as released: google-research/google-research
supcon/scripts/simclr_imagenet_resnet50.sh (paper's SimCLR baseline: 70.2% top-1).

  python -m supcon_jax.main --config=configs/imagenet_r50_simclr.py --workdir=gs://BUCKET/simclr

The script's SIMCLR_FLAGS and values: labels unused, batch 6144, 100 epochs, LARS at
0.3 × batch / 256, weight decay 1e-4 (kernels and biases, not BatchNorm), 12 warm-up epochs
then cosine, τ 0.1 with no loss scaling (scale_by_temperature=False), the representation not
normalised, projection head 2048-2048-128 with BatchNorm (with β) after each hidden Dense,
no biases in the Dense layers, normal(0.01) init; SimCLR augmentation at strength 1.0 (with
TensorFlow's colour jitter, use_pytorch_color_jitter=False, and blur probability 0.5).
Linear probe (stage 2): Nesterov SGD at 0.1 × batch / 256, weight decay 1e-6, 12 warm-up
epochs then cosine, label smoothing 0.05, zero-initialised classifier, 90 epochs on augmented
training views.

Paper text vs. released code: the paper gives no values for this baseline beyond "SimCLR";
we follow the script. Where we differ from the code: as configs/imagenet_r50.py (stage 2 as
its own job, the online probe, bfloat16).
"""
from configs import imagenet_r50


def get_config():
  c = imagenet_r50.get_config()
  c.method = "simclr"
  c.num_epochs = 100.0
  c.data.augment = "simclr"
  c.data.color_jitter_strength = 1.0
  c.data.color_jitter_impl = "simclr_tf"  # the released (and SimCLR's) TF jitter
  c.data.blur = True
  c.model.normalize_representation = False
  c.model.head_dims = (2048, 2048, 128)
  c.model.head_bn = True
  c.model.head_output_bias = False
  c.model.head_init = "normal"
  c.model.head_init_std = 0.01
  c.loss.base_temperature = None
  c.optim.base_lr = 0.3
  c.optim.weight_decay = 1e-4

  c.probe.init = "zeros"
  p = c.probe.optim
  p.name = "sgd"
  p.nesterov = True
  p.momentum = 0.9
  p.base_lr = 0.1
  p.schedule = "cosine"
  p.warmup_epochs = 12.0
  p.weight_decay = 1e-6
  p.decay_biases = True
  return c
