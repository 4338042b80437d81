"""The SupCon model (encoder + projection head + online probe) and its registry by name."""
import types
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from supcon_jax import checks
from supcon_jax.models import heads, resnet, vit

# name -> (stage_sizes, block)
_RESNETS = types.MappingProxyType({
    "resnet18": ((2, 2, 2, 2), "basic"),
    "resnet34": ((3, 4, 6, 3), "basic"),
    "resnet50": ((3, 4, 6, 3), "bottleneck"),
    "resnet101": ((3, 4, 23, 3), "bottleneck"),
    "resnet152": ((3, 8, 36, 3), "bottleneck"),
    "resnet200": ((3, 24, 36, 3), "bottleneck"),
})
# name -> (patch_size, hidden_size, depth, num_heads, mlp_dim)
_VITS = types.MappingProxyType({
    "vit_ti16": (16, 192, 12, 3, 768),
    "vit_s16": (16, 384, 12, 6, 1536),
    "vit_b16": (16, 768, 12, 12, 3072),
})
ENCODERS = tuple(_RESNETS) + tuple(_VITS)
DTYPES = types.MappingProxyType({"float32": jnp.float32, "bfloat16": jnp.bfloat16})


class SupConModel(nn.Module):
  """Encoder f, projection head g and linear probe on images [N, H, W, C].

  Callers stack the views of a batch along N, so BatchNorm sees all of them at once.

  Attributes:
    encoder: images [N, H, W, C], train -> r [N, D]; takes the name "encoder".
    head_dims, head_bn, head_output_bias, head_init, head_init_std: see heads.ProjectionHead.
    normalize_representation: L2-normalise r before both heads (the released TF SupCon
      runs feed the normalised r to the projection and the classification head).
    num_classes: classes of the online probe.
    bn_momentum, bn_epsilon: for the head's BatchNorm.
    dtype: compute dtype of the head; parameters are always float32.
    classifier_trains_encoder: let the classifier's gradient reach the encoder (the
      cross-entropy baseline) instead of probing stop_gradient(r).
  """
  encoder: nn.Module
  num_classes: int
  head_dims: Sequence[int] = (2048, 128)
  head_bn: bool = False
  head_output_bias: bool = True
  head_init: str = "lecun_normal"
  head_init_std: float = 0.01
  normalize_representation: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32
  classifier_trains_encoder: bool = False

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> dict[str, jax.Array]:
    """Returns float32 {"representation": [N, D], "projection": [N, head_dims[-1]] (unit
    rows), "logits": [N, num_classes]}; "representation" is r as both heads see it (unit rows
    if normalize_representation), so a linear probe on it sees what the classifier sees.
    Only "projection" passes gradients to the encoder, unless classifier_trains_encoder."""
    r = self.encoder(images, train=train)
    if self.normalize_representation:
      r = heads.l2_normalize(r)
    z = heads.ProjectionHead(
        dims=self.head_dims, batch_norm=self.head_bn, output_bias=self.head_output_bias,
        init_scheme=self.head_init, init_std=self.head_init_std, bn_momentum=self.bn_momentum,
        bn_epsilon=self.bn_epsilon, dtype=self.dtype, name="projection")(r, train=train)
    logits = heads.ClassifierHead(self.num_classes, train_encoder=self.classifier_trains_encoder,
                                  name="classifier")(r)
    return {"representation": r.astype(jnp.float32), "projection": z, "logits": logits}


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first invalid field of the model config (config.model)."""
  checks.check_choice("config.model.name", config.name, ENCODERS)
  checks.check_choice("config.model.stem", config.stem, resnet.STEMS)
  checks.check_choice("config.model.norm", config.norm, resnet.NORMS)
  checks.check_choice("config.model.pool", config.pool, vit.POOLS)
  checks.check_choice("config.model.dtype", config.dtype, tuple(DTYPES))
  checks.check_number("config.model.width", config.width, low=1 / 64)  # >= 1 channel
  checks.check_number("config.model.bn_momentum", config.bn_momentum, low=0, high=1,
                      high_open=True)
  checks.check_number("config.model.bn_epsilon", config.bn_epsilon, low=0, low_open=True)
  checks.check_number("config.model.num_classes", config.num_classes, low=1, integer=True)
  checks.check("config.model.head_dims", config.head_dims,
               isinstance(config.head_dims, (tuple, list)) and len(config.head_dims) >= 1
               and all(isinstance(d, int) and d >= 1 for d in config.head_dims),
               "one or more positive layer widths")
  checks.check_number("config.model.patch_size", config.patch_size, low=1, integer=True,
                      optional=True)
  for field in ("zero_init_last_bn", "head_bn", "normalize_representation", "head_output_bias"):
    checks.check_bool(f"config.model.{field}", config[field])
  checks.check_choice("config.model.head_init", config.head_init, heads.HEAD_INITS)
  checks.check_number("config.model.head_init_std", config.head_init_std, low=0, low_open=True)

def build_encoder(config: ml_collections.ConfigDict) -> nn.Module:
  """The encoder named by config.name (config is config.model), validated first."""
  validate(config)
  dtype = DTYPES[config.dtype]
  if config.name in _RESNETS:
    stage_sizes, block = _RESNETS[config.name]
    return resnet.ResNet(stage_sizes=stage_sizes, block=block, stem=config.stem,
                         width=config.width, zero_init_last_bn=config.zero_init_last_bn,
                         bn_momentum=config.bn_momentum, bn_epsilon=config.bn_epsilon,
                         norm=config.norm, dtype=dtype)
  patch_size, hidden_size, depth, num_heads, mlp_dim = _VITS[config.name]
  return vit.ViT(patch_size=config.patch_size or patch_size, hidden_size=hidden_size,
                 depth=depth, num_heads=num_heads, mlp_dim=mlp_dim, pool=config.pool,
                 dtype=dtype)


def build_model(config: ml_collections.ConfigDict,
                classifier_trains_encoder: bool = False) -> SupConModel:
  """The SupConModel described by config (config is config.model), validated first.

  `classifier_trains_encoder` is derived from the training method, not a config field: only
  the cross-entropy baseline trains the encoder through the classifier.
  """
  return SupConModel(encoder=build_encoder(config), num_classes=config.num_classes,
                     head_dims=tuple(config.head_dims), head_bn=config.head_bn,
                     head_output_bias=config.head_output_bias, head_init=config.head_init,
                     head_init_std=config.head_init_std,
                     normalize_representation=config.normalize_representation,
                     bn_momentum=config.bn_momentum, bn_epsilon=config.bn_epsilon,
                     dtype=DTYPES[config.dtype],
                     classifier_trains_encoder=classifier_trains_encoder)
