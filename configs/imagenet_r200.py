r"""SupCon ResNet-200 on ImageNet (paper: 81.4% top-1): configs/imagenet_r50.py, deeper.

  python -m supcon_jax.main --config=configs/imagenet_r200.py --workdir=gs://BUCKET/supcon_r200

Parameters and optimizer state are sharded along the data axis (FSDP style) to leave room
for activations at batch 8192.
"""
from configs import imagenet_r50


def get_config():
  c = imagenet_r50.get_config()
  c.model.name = "resnet200"
  c.train.shard_params = True
  return c
