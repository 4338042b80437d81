r"""SimCLR counterpart of configs/imagenet_r50.py: the same trainer with labels unused.

  python -m supcon_jax.main --config=configs/imagenet_r50_simclr.py --workdir=gs://BUCKET/simclr

SimCLR's own augmentation (colour jitter strength 1.0, blur) instead of AutoAugment, as in
Chen et al. (2020); everything else as the SupCon run.
"""
from configs import imagenet_r50


def get_config():
  c = imagenet_r50.get_config()
  c.method = "simclr"
  c.data.augment = "simclr"
  c.data.color_jitter_strength = 1.0
  c.data.blur = True
  return c
