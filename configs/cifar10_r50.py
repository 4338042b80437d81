r"""SupCon ResNet-50 on CIFAR-10: the SupContrast (PyTorch) recipe, paper Table 2 (96.0% top-1).

  python -m supcon_jax.main --config=configs/cifar10_r50.py --workdir=gs://BUCKET/cifar10_r50

Recipe (SupContrast README): batch 1024, SGD momentum 0.9, lr 0.5, weight decay 1e-4, τ 0.1,
cosine decay with warmup, 1000 epochs, crop area (0.2, 1), colour jitter (0.4, 0.4, 0.4, 0.1)
with p=0.8, grayscale p=0.2, no blur; ResNet-50 with a 3x3 stem, head 2048 -> 128.
Our learning rate follows the linear scaling rule, so lr 0.5 at batch 1024 is base_lr 0.125.
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
  c.data.color_jitter_strength = 0.5
  c.data.blur = False

  c.model.name = "resnet50"
  c.model.stem = "small"
  c.model.num_classes = 10
  c.model.head_dims = (2048, 128)
  c.model.dtype = "bfloat16"

  c.loss.temperature = 0.1

  c.optim.name = "sgd"
  c.optim.base_lr = 0.5 * 256 / 1024
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-4
  c.optim.warmup_epochs = 10.0

  c.train.log_every_steps = 100
  c.train.eval_every_steps = 4900  # every 100 epochs
  c.train.checkpoint_every_steps = 1000
  return c
