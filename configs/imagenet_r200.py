r"""SupCon ResNet-200 on ImageNet, as released: google-research/google-research
supcon/scripts/supcon_imagenet_resnet200.sh (paper: 81.4% top-1).

  python -m supcon_jax.main --config=configs/imagenet_r200.py --workdir=gs://BUCKET/supcon_r200

configs/imagenet_r50.py (the same flag groups: IMAGENET_FLAGS, SUPCON_FLAGS, and the same
stage-2 probe) with the values this script sets differently: ResNet-200, batch 4096 (which is
also the probe's batch), 700 epochs, LARS base lr 0.2, weight decay 1e-4, and stacked
RandAugment (SimCLR colour jitter, RandAugment, grayscale, blur with probability 0.5) at the
released augmentation_magnitude 1.0 (on the released [0, 1] scale; the augmentation module
maps it onto data.randaugment_magnitude).

Paper text vs. released code: as for configs/imagenet_r50.py (τ / 1 loss scaling, single-layer
projection head, schedule values only in the code). Where we differ from the code: as there,
and parameters and optimizer state are sharded along the data axis (FSDP style) to leave room
for activations; this changes memory, not the update.
"""
from configs import imagenet_r50


def get_config():
  c = imagenet_r50.get_config()
  c.model.name = "resnet200"
  c.batch_size = 4096
  c.num_epochs = 700.0
  c.data.augment = "stacked_randaugment"
  c.data.blur = True
  # augmentation_magnitude 1.0: jitter strength 1.0 (TF's jitter, as every released ImageNet
  # run), RandAugment's 2 layers at the top of its scale (10 on ours).
  c.data.color_jitter_impl = "simclr_tf"
  c.data.color_jitter_strength = 1.0
  c.data.randaugment_num_ops = 2
  c.data.randaugment_magnitude = 10
  c.optim.base_lr = 0.2
  c.optim.weight_decay = 1e-4
  c.probe.batch_size = 4096
  c.train.shard_params = True
  # ~ the released save_interval_steps=1000 at batch 4096 (312 steps an epoch).
  c.train.checkpoint_every_epochs = 3.0
  return c
