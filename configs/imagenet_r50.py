r"""SupCon ResNet-50 on ImageNet (paper: 78.7% top-1 with AutoAugment).

  python -m supcon_jax.main --config=configs/imagenet_r50.py --workdir=gs://BUCKET/supcon_r50 \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets

From the paper (Sec. 4 and Appendix): global batch 6144-8192 contrasted across all devices,
LARS, τ = 0.1, AutoAugment, warmup then cosine decay, 350-700 epochs, the projection head
dropped for the linear probe. The learning rate and weight decay are SimCLR's LARS recipe
(0.3 × batch / 256, 1e-6; Chen et al., 2020), our choice where the paper gives no number; the
representation is L2-normalised before the head, as the official ImageNet runs do. Tune
base_lr if you change the batch by much. A v4-128 / v5p-128 slice fits batch 8192 in bfloat16.
"""
from configs import base


def get_config():
  c = base.get_config()
  c.method = "supcon"
  c.batch_size = 8192
  c.num_epochs = 700.0

  c.data.dataset = "imagenet2012"
  c.data.image_size = 224
  c.data.eval_split = "validation"
  c.probe.corruption_split = "validation[:10000]"
  c.probe.epochs = 90
  c.probe.batch_size = 4096
  c.data.augment = "autoaugment"
  c.data.crop_area = (0.08, 1.0)

  c.model.name = "resnet50"
  c.model.stem = "imagenet"
  c.model.num_classes = 1000
  c.model.head_dims = (2048, 128)
  c.model.normalize_representation = True
  c.model.dtype = "bfloat16"

  c.loss.temperature = 0.1

  c.optim.name = "lars"
  c.optim.base_lr = 0.3
  c.optim.weight_decay = 1e-6
  c.optim.warmup_epochs = 10.0

  c.train.log_every_steps = 100
  c.train.eval_every_steps = 15640  # every 100 epochs at batch 8192
  c.train.checkpoint_every_steps = 1000
  return c
