"""Heads on the representation r: the SupCon projection head and the online linear probe."""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, eps) along axis, computed in float32; zero vectors map to zero.

  Returns float32 of x's shape. The gradient is finite everywhere, including at x = 0.
  """
  x = x.astype(jnp.float32)
  sq_norm = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq_norm, eps * eps))


HEAD_INITS = ("lecun_normal", "normal", "torch")


def _dense_inits(init: str, std: float, fan_in: int) -> tuple[Any, Any]:
  """(kernel_init, bias_init) of a Dense layer with `fan_in` inputs under head init `init`."""
  if init == "normal":
    return nn.initializers.normal(std), nn.initializers.zeros
  if init == "torch":  # nn.Linear.reset_parameters: both uniform in ±1/sqrt(fan_in)
    bound = 1.0 / fan_in ** 0.5
    uniform = lambda key, shape, dtype=jnp.float32: jax.random.uniform(
        key, shape, dtype, -bound, bound)
    return uniform, uniform
  return nn.initializers.lecun_normal(), nn.initializers.zeros


class ProjectionHead(nn.Module):
  """MLP g: r [N, D] -> z [N, dims[-1]] float32, each row of unit L2 norm.

  Dense layers of the given widths with ReLU between them (none after the last), and
  BatchNorm before each ReLU if batch_norm is set.

  Attributes:
    dims: output width of each Dense layer, e.g. (2048, 128).
    batch_norm: BatchNorm between layers; the Dense before it then has no bias.
    output_bias: whether the last Dense layer has a bias.
    init_scheme: HEAD_INITS: lecun_normal (flax), normal (std `init_std`, zero bias), torch
      (PyTorch nn.Linear's uniform ±1/sqrt(fan_in) for kernel and bias).
    bn_momentum, bn_epsilon: as in the encoder.
    dtype: compute dtype; parameters are always float32.
  """
  dims: Sequence[int] = (2048, 128)
  batch_norm: bool = False
  output_bias: bool = True
  init_scheme: str = "lecun_normal"
  init_std: float = 0.01
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, r: jax.Array, train: bool) -> jax.Array:
    if not self.dims:
      raise ValueError("ProjectionHead: dims must name at least one layer.")
    if self.init_scheme not in HEAD_INITS:
      raise ValueError(f"ProjectionHead: init_scheme={self.init_scheme!r}, expected one of "
                       f"{HEAD_INITS}.")
    x = r.astype(self.dtype)
    for i, features in enumerate(self.dims):
      last = i == len(self.dims) - 1
      kernel_init, bias_init = _dense_inits(self.init_scheme, self.init_std, x.shape[-1])
      x = nn.Dense(features, use_bias=self.output_bias if last else not self.batch_norm,
                   kernel_init=kernel_init, bias_init=bias_init, dtype=self.dtype,
                   param_dtype=jnp.float32, name=f"dense{i + 1}")(x)
      if last:
        break
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                         epsilon=self.bn_epsilon, dtype=self.dtype, param_dtype=jnp.float32,
                         name=f"bn{i + 1}")(x)
      x = nn.relu(x)
    return l2_normalize(x)


class ClassifierHead(nn.Module):
  """Online linear probe: r [N, D] -> logits [N, num_classes] float32.

  r passes through stop_gradient, so a loss on the logits trains only this layer and leaves
  the encoder untouched; `train_encoder=True` lets the gradient through instead (the
  cross-entropy baseline). Computed in float32: the layer is tiny and its logits feed a loss.
  """
  num_classes: int
  train_encoder: bool = False

  @nn.compact
  def __call__(self, r: jax.Array) -> jax.Array:
    if not self.train_encoder:
      r = jax.lax.stop_gradient(r)
    r = r.astype(jnp.float32)
    return nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32)(r)
