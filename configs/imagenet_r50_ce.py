r"""Cross-entropy baseline for configs/imagenet_r50.py (paper: 78.2% with AutoAugment).

  python -m supcon_jax.main --config=configs/imagenet_r50_ce.py --workdir=gs://BUCKET/ce_r50

Same encoder, data pipeline (one AutoAugment view per image) and trainer; the classifier head
trains the encoder. Label smoothing 0.1 and 350 epochs are our choices, not the paper's.
"""
from configs import imagenet_r50


def get_config():
  c = imagenet_r50.get_config()
  c.method = "cross_entropy"
  c.num_epochs = 350.0
  c.data.num_views = 1
  c.loss.label_smoothing = 0.1
  c.optim.base_lr = 0.1
  c.optim.weight_decay = 5e-5
  return c
