"""Losses: the SupCon family (L_out, L_in, SimCLR) and cross-entropy with top-k accuracy."""
from typing import Optional

import jax
import jax.numpy as jnp
import optax

CONTRAST_MODES = ("all", "one")
SUMMATIONS = ("outside", "inside")
DENOMINATORS = ("all", "one_positive", "only_negatives")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"supcon_loss: unknown {name}={value!r}; expected one of {choices}.")


def _check_positive(name: str, value) -> None:
  # Traced values cannot be checked here; concrete ones can and should be.
  if isinstance(value, (int, float)) and not value > 0:
    raise ValueError(f"supcon_loss: {name} must be > 0, got {value}.")


def _masked_logsumexp(x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """log Σ_j exp(x_ij) over mask_ij, along the last axis, stable and NaN-free.

  Returns (lse [..., ], nonempty [...]); rows with an empty mask get lse = 0 and
  nonempty = False, so callers can drop them without an -inf ever reaching a gradient.
  """
  nonempty = jnp.any(mask, axis=-1)
  row_max = jnp.max(jnp.where(mask, x, -jnp.inf), axis=-1, keepdims=True)
  row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  # Masking before exp keeps a huge masked-out entry from overflowing into a NaN gradient.
  total = jnp.sum(jnp.exp(jnp.where(mask, x - row_max, -jnp.inf)), axis=-1)
  # The maximal entry contributes exp(0) = 1, so total >= 1 on non-empty rows.
  lse = jnp.log(jnp.where(nonempty, total, 1.0)) + row_max[..., 0]
  return jnp.where(nonempty, lse, 0.0), nonempty


def supcon_loss(
    features: jax.Array,
    labels: Optional[jax.Array] = None,
    *,
    temperature: float = 0.1,
    base_temperature: Optional[float] = None,
    contrast_mode: str = "all",
    summation: str = "outside",
    denominator: str = "all",
    axis_name: Optional[str] = None,
) -> jax.Array:
  """Supervised contrastive loss (Khosla et al., 2020, arXiv 2004.11362).

  Args:
    features: [B, V, D] embeddings of V >= 1 views of B samples, each L2-normalised.
      Any float dtype; the logits are computed in float32.
    labels: [B] integer class ids, or None for SimCLR (each sample is its own class, so an
      anchor's positives are the other views of its own sample).
    temperature: τ > 0; logits are z_i·z_j / τ.
    base_temperature: if given, the loss is multiplied by temperature / base_temperature
      (the official code's rescaling); else by 1.
    contrast_mode: "all": every view of every sample is an anchor; "one": only view 0 of
      each sample is. The contrast set of an anchor is always all B·V views except itself.
    summation: "outside" (L_out, eq. 2 of the paper, recommended): the anchor's loss is
      -mean_{p ∈ P(i)} log(exp(s_ip) / den_ip). "inside" (L_in, eq. 3): it is
      -log(mean_{p ∈ P(i)} exp(s_ip) / den_ip). Here s_ij = z_i·z_j / τ and P(i) are the
      views in the contrast set with the anchor's label.
    denominator: "all": den_ip = Σ_{j ≠ i} exp(s_ij) over the whole contrast set;
      "one_positive": den_ip = exp(s_ip) + Σ_{n ∈ N(i)} exp(s_in); "only_negatives":
      den_ip = Σ_{n ∈ N(i)} exp(s_in), where N(i) are the views with another label.
    axis_name: set when called inside `jax.shard_map` over that mesh axis, with the local
      shard [B_local, V, D] (and [B_local] labels). Local views are the anchors; the contrast
      set is all-gathered (differentiably) from every device along the axis, in axis order.
      The result is the mean over the global batch, identical on every device, and equal
      (loss and gradients) to the unsharded call on the concatenated batch.

  Returns:
    Scalar float32: the mean of the anchors' losses over anchors that have at least one
    positive (and, for "only_negatives", at least one negative, since den is otherwise
    empty); other anchors add nothing. It is 0 when no anchor qualifies. Logits are
    max-subtracted and sums taken as log-sum-exp, so the result is never NaN or Inf.

  Raises:
    ValueError: features not of rank 3, labels not of shape [B], an unknown mode, or a
      temperature <= 0.
  """
  if features.ndim != 3:
    raise ValueError(
        f"supcon_loss: features must be [B, V, D] (rank 3), got shape {features.shape}; "
        "stack the views of each sample on axis 1.")
  batch, views, _ = features.shape
  if labels is not None and labels.shape != (batch,):
    raise ValueError(
        f"supcon_loss: labels must have shape [B] = ({batch},), got {labels.shape}.")
  _check_choice("contrast_mode", contrast_mode, CONTRAST_MODES)
  _check_choice("summation", summation, SUMMATIONS)
  _check_choice("denominator", denominator, DENOMINATORS)
  _check_positive("temperature", temperature)
  if base_temperature is not None:
    _check_positive("base_temperature", base_temperature)

  features = features.astype(jnp.float32)
  if axis_name is None:
    offset = 0
    all_features = features
  else:
    offset = jax.lax.axis_index(axis_name) * batch
    all_features = jax.lax.all_gather(features, axis_name, axis=0, tiled=True)
  global_batch = all_features.shape[0]

  local_ids = offset + jnp.arange(batch)
  if labels is None:
    # SimCLR: the global sample index is the class.
    anchor_labels = local_ids
    contrast_labels = jnp.arange(global_batch)
  else:
    anchor_labels = labels
    contrast_labels = (labels if axis_name is None else
                       jax.lax.all_gather(labels, axis_name, axis=0, tiled=True))

  anchor_views = views if contrast_mode == "all" else 1
  # Flattened views are ordered sample-major: row b * V + v.
  anchors = features[:, :anchor_views].reshape(batch * anchor_views, -1)
  contrast = all_features.reshape(global_batch * views, -1)
  anchor_sample = jnp.repeat(local_ids, anchor_views)
  anchor_view = jnp.tile(jnp.arange(anchor_views), batch)
  contrast_sample = jnp.repeat(jnp.arange(global_batch), views)
  contrast_view = jnp.tile(jnp.arange(views), global_batch)

  logits = jnp.matmul(anchors, contrast.T, precision=jax.lax.Precision.HIGHEST) / temperature
  not_self = ((anchor_sample[:, None] != contrast_sample[None, :])
              | (anchor_view[:, None] != contrast_view[None, :]))
  same_label = (jnp.repeat(anchor_labels, anchor_views)[:, None]
                == jnp.repeat(contrast_labels, views)[None, :])
  positive = same_label & not_self
  negative = ~same_label

  if denominator == "all":
    log_den, valid = _masked_logsumexp(logits, not_self)
    log_den = log_den[:, None]
  else:
    lse_neg, has_negative = _masked_logsumexp(logits, negative)
    if denominator == "only_negatives":
      log_den, valid = lse_neg[:, None], has_negative
    else:  # one_positive
      log_den = jnp.where(has_negative[:, None],
                          jnp.logaddexp(logits, lse_neg[:, None]), logits)
      valid = jnp.ones_like(has_negative)
  log_prob = logits - log_den

  num_positives = jnp.sum(positive, axis=-1)
  valid = valid & (num_positives > 0)
  safe_count = jnp.maximum(num_positives, 1).astype(jnp.float32)
  if summation == "outside":
    anchor_loss = -jnp.sum(jnp.where(positive, log_prob, 0.0), axis=-1) / safe_count
  else:
    lse_pos, _ = _masked_logsumexp(log_prob, positive)
    anchor_loss = -(lse_pos - jnp.log(safe_count))

  total = jnp.sum(jnp.where(valid, anchor_loss, 0.0))
  count = jnp.sum(valid).astype(jnp.float32)
  if axis_name is not None:
    total = jax.lax.psum(total, axis_name)
    count = jax.lax.psum(count, axis_name)
  scale = 1.0 if base_temperature is None else temperature / base_temperature
  return scale * total / jnp.maximum(count, 1.0)


def cross_entropy_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    label_smoothing: float = 0.0,
    weights: Optional[jax.Array] = None,
) -> jax.Array:
  """Mean softmax cross-entropy of [N, C] logits against [N] integer labels.

  `label_smoothing` mixes the one-hot target with the uniform distribution (optax.smooth_labels).
  `weights` ([N], e.g. a padding mask) weight each example; the mean is over their sum.
  Computed in float32.
  """
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"cross_entropy_loss: label_smoothing must be in [0, 1), got {label_smoothing}.")
  logits = logits.astype(jnp.float32)
  targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  per_example = optax.softmax_cross_entropy(logits, targets)
  return _weighted_mean(per_example, weights)


def topk_accuracy(
    logits: jax.Array, labels: jax.Array, k: int = 1, weights: Optional[jax.Array] = None
) -> jax.Array:
  """Fraction of [N] examples whose label is among the k largest of their [N, C] logits."""
  correct = topk_correct(logits, labels, k)
  return _weighted_mean(correct.astype(jnp.float32), weights)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int = 1) -> jax.Array:
  """[N] bool: the label is among the k largest logits (ties broken by rank, as lax.top_k)."""
  _, top = jax.lax.top_k(logits, k)
  return jnp.any(top == labels[:, None], axis=-1)


def _weighted_mean(values: jax.Array, weights: Optional[jax.Array]) -> jax.Array:
  if weights is None:
    return jnp.mean(values)
  weights = weights.astype(jnp.float32)
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)
