"""Vision Transformer encoder (Dosovitskiy et al., 2021), pre-LN, in the timm/torchvision layout.

With pool="cls" and no head, ViT-B/16 at 224 px has exactly the parameters of torchvision's
vit_b_16 without its classification head (85,798,656).
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

POOLS = ("cls", "gap")


class EncoderBlock(nn.Module):
  """Pre-LN transformer block: [N, L, D] -> [N, L, D]."""
  num_heads: int
  mlp_dim: int
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=jnp.float32)(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, param_dtype=jnp.float32,
        kernel_init=nn.initializers.xavier_uniform(),
        # A bfloat16 softmax loses the small attention weights.
        force_fp32_for_softmax=True)(y, y)
    x = x + y
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=jnp.float32)(x)
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32,
                              kernel_init=nn.initializers.xavier_uniform(),
                              bias_init=nn.initializers.normal(stddev=1e-6))
    y = dense(self.mlp_dim)(y)
    y = nn.gelu(y, approximate=False)
    y = dense(x.shape[-1])(y)
    return x + y


class ViT(nn.Module):
  """ViT encoder: images [N, H, W, C] -> representation r [N, hidden_size] (compute dtype).

  H and W must be multiples of patch_size; the learned position embedding is sized from the
  image the model is initialised with.

  Attributes:
    patch_size: side of the square patches.
    hidden_size: token width D.
    depth: number of transformer blocks.
    num_heads: attention heads per block.
    mlp_dim: hidden width of each block's MLP.
    pool: "cls": r is the final class token; "gap": no class token, r is the mean token.
    dtype: compute dtype; parameters are always float32.
  """
  patch_size: int
  hidden_size: int
  depth: int
  num_heads: int
  mlp_dim: int
  pool: str = "cls"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    del train  # No dropout or BatchNorm; kept for the encoder interface.
    if self.pool not in POOLS:
      raise ValueError(f"ViT: unknown pool={self.pool!r}; expected one of {POOLS}.")
    _, height, width, _ = x.shape
    if height % self.patch_size or width % self.patch_size:
      raise ValueError(f"ViT: image size {height}x{width} is not a multiple of "
                       f"patch_size={self.patch_size}.")
    p = self.patch_size
    x = nn.Conv(self.hidden_size, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                param_dtype=jnp.float32, name="patch_embed")(x.astype(self.dtype))
    n = x.shape[0]
    x = x.reshape(n, -1, self.hidden_size)
    if self.pool == "cls":
      cls = self.param("cls_token", nn.initializers.zeros, (1, 1, self.hidden_size))
      x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, self.hidden_size)).astype(self.dtype),
                           x], axis=1)
    pos = self.param("pos_embedding", nn.initializers.normal(stddev=0.02),
                     (1, x.shape[1], self.hidden_size))
    x = x + pos.astype(self.dtype)
    for i in range(self.depth):
      x = EncoderBlock(self.num_heads, self.mlp_dim, self.dtype, name=f"block{i + 1}")(x)
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=jnp.float32,
                     name="encoder_norm")(x)
    return x[:, 0] if self.pool == "cls" else jnp.mean(x, axis=1)
