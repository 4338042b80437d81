"""ResNet v1.5 encoders (He et al., 2016; torchvision layout): stride on the 3x3 conv.

The encoder ends at global average pooling and returns the representation r; there is no fc
layer. Convolutions have no bias, as in torchvision, so parameter counts match it exactly.
"""
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

STEMS = ("imagenet", "small")
BLOCKS = ("basic", "bottleneck")
NORMS = ("batch", "group")

# torchvision pads every k x k conv by k // 2 on each side; "SAME" would pad stride-2 convs
# asymmetrically and shift the sampling grid.
_PAD1 = ((1, 1), (1, 1))
_PAD3 = ((3, 3), (3, 3))


class BasicBlock(nn.Module):
  """Two 3x3 convs; [N, H, W, C] -> [N, H/s, W/s, filters]."""
  filters: int
  strides: int
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]
  zero_init_last_bn: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    residual = x
    y = self.conv(self.filters, (3, 3), strides=self.strides, padding=_PAD1, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.filters, (3, 3), padding=_PAD1, name="conv2")(y)
    y = self.norm(scale_init=nn.initializers.zeros if self.zero_init_last_bn
                  else nn.initializers.ones, name="bn2")(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), strides=self.strides, name="downsample_conv")(x)
      residual = self.norm(name="downsample_bn")(residual)
    return nn.relu(y + residual)


class BottleneckBlock(nn.Module):
  """1x1 -> 3x3 (strided, v1.5) -> 1x1 convs; [N, H, W, C] -> [N, H/s, W/s, 4 * filters]."""
  filters: int
  strides: int
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]
  zero_init_last_bn: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    residual = x
    y = self.conv(self.filters, (1, 1), name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.filters, (3, 3), strides=self.strides, padding=_PAD1, name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(4 * self.filters, (1, 1), name="conv3")(y)
    y = self.norm(scale_init=nn.initializers.zeros if self.zero_init_last_bn
                  else nn.initializers.ones, name="bn3")(y)
    if residual.shape != y.shape:
      residual = self.conv(4 * self.filters, (1, 1), strides=self.strides,
                           name="downsample_conv")(x)
      residual = self.norm(name="downsample_bn")(residual)
    return nn.relu(y + residual)


class ResNet(nn.Module):
  """ResNet v1.5 encoder: images [N, H, W, C] -> representation r [N, D].

  D = 64 * width * 2**(len(stage_sizes) - 1), times 4 for bottleneck blocks
  (512 for ResNet-18, 2048 for ResNet-50). r has the compute dtype.

  Attributes:
    stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
    block: "basic" (ResNet-18/34) or "bottleneck" (ResNet-50 and deeper).
    stem: "imagenet": 7x7 stride-2 conv and 3x3 stride-2 max-pool (224 px inputs);
      "small": one 3x3 stride-1 conv, no max-pool (28-32 px inputs).
    width: multiplies every layer's channel count (SimCLR's ResNet-50 (2x) has width 2).
    zero_init_last_bn: initialise the last BatchNorm scale of each residual block to zero, so
      every block starts as the identity.
    bn_momentum: running-statistics decay (flax convention: new = m * old + (1 - m) * batch).
    bn_epsilon: BatchNorm variance epsilon.
    norm: "batch" (BatchNorm) or "group" (GroupNorm, 32 groups or fewer for narrow layers):
      per-example statistics, so gradient caching over micro-batches is exact.
    dtype: compute dtype; parameters are always float32.
  """
  stage_sizes: Sequence[int]
  block: str
  stem: str = "imagenet"
  width: float = 1.0
  zero_init_last_bn: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  norm: str = "batch"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.block not in BLOCKS:
      raise ValueError(f"ResNet: unknown block={self.block!r}; expected one of {BLOCKS}.")
    block_cls = BasicBlock if self.block == "basic" else BottleneckBlock
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             param_dtype=jnp.float32)
    # Statistics are means over the whole array, so under jit with a batch sharded over
    # devices they are global-batch statistics (GSPMD inserts the cross-device reduction).
    if self.norm == "batch":
      norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                               momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                               dtype=self.dtype, param_dtype=jnp.float32)
    elif self.norm == "group":
      norm = functools.partial(_GroupNorm, epsilon=self.bn_epsilon, dtype=self.dtype)
    else:
      raise ValueError(f"ResNet: unknown norm={self.norm!r}; expected one of {NORMS}.")
    filters = int(64 * self.width)

    x = x.astype(self.dtype)
    if self.stem == "imagenet":
      x = conv(filters, (7, 7), strides=2, padding=_PAD3, name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_PAD1)
    elif self.stem == "small":
      x = conv(filters, (3, 3), padding=_PAD1, name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
    else:
      raise ValueError(f"ResNet: unknown stem={self.stem!r}; expected one of {STEMS}.")

    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        x = block_cls(filters=filters * 2**i, strides=2 if i > 0 and j == 0 else 1,
                      conv=conv, norm=norm, zero_init_last_bn=self.zero_init_last_bn,
                      name=f"stage{i + 1}_block{j + 1}")(x)
    # jnp.mean accumulates low-precision inputs in float32.
    return jnp.mean(x, axis=(1, 2))


class _GroupNorm(nn.Module):
  """GroupNorm with min(32, C) groups, taking BatchNorm's scale_init so blocks can zero it."""
  epsilon: float
  dtype: Any
  scale_init: Callable[..., jax.Array] = nn.initializers.ones

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.GroupNorm(num_groups=min(32, x.shape[-1]), epsilon=self.epsilon, dtype=self.dtype,
                        param_dtype=jnp.float32, scale_init=self.scale_init)(x)
