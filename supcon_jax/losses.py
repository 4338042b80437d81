"""Losses: the SupCon family (L_out, L_in, SimCLR) and cross-entropy with top-k accuracy."""
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import optax
from jax.ad_checkpoint import checkpoint_name

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


# Names of the per-row statistics that a recomputed block keeps from its forward pass.
_ROW_STATS = "supcon_row_stats"
# Automatic block size: rows per block so that a block's [rows, contrast] float32 logits take
# about this many bytes; batches whose whole logits fit are computed densely.
_AUTO_BLOCK_BYTES = 16 * 2**20


def _masked_logsumexp(x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """log Σ_j exp(x_ij) over mask_ij, along the last axis, stable and NaN-free.

  Returns (lse [..., ], nonempty [...]); rows with an empty mask get lse = 0 and
  nonempty = False, so callers can drop them without an -inf ever reaching a gradient.
  """
  nonempty = checkpoint_name(jnp.any(mask, axis=-1), _ROW_STATS)
  row_max = jnp.max(jnp.where(mask, x, -jnp.inf), axis=-1, keepdims=True)
  row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  row_max = checkpoint_name(row_max, _ROW_STATS)
  # Masking before exp keeps a huge masked-out entry from overflowing into a NaN gradient.
  total = jnp.sum(jnp.exp(jnp.where(mask, x - row_max, -jnp.inf)), axis=-1)
  # The maximal entry contributes exp(0) = 1, so total >= 1 on non-empty rows.
  total = checkpoint_name(jnp.where(nonempty, total, 1.0), _ROW_STATS)
  lse = jnp.log(total) + row_max[..., 0]
  return jnp.where(nonempty, lse, 0.0), nonempty


def _anchor_losses(
    anchors: jax.Array,
    anchor_index: jax.Array,
    anchor_label: jax.Array,
    contrast: jax.Array,
    contrast_label: jax.Array,
    summation: str,
    denominator: str,
) -> tuple[jax.Array, jax.Array]:
  """The loss of each anchor in a block of rows: the one implementation of the per-row math.

  Args:
    anchors: [b, D] anchor embeddings, already divided by the temperature.
    anchor_index: [b] each anchor's own row in `contrast` (excluded from its contrast set).
    anchor_label: [b] each anchor's class.
    contrast: [N, D] the whole contrast set; contrast_label: [N] its classes.
    summation, denominator: as in `supcon_loss`.

  Returns:
    (loss [b], valid [b]): an anchor's loss counts only where valid (see `supcon_loss`).
  """
  logits = jnp.matmul(anchors, contrast.T, precision=jax.lax.Precision.HIGHEST)
  # Masks come from [b] and [N] vectors, so only the fused elementwise code sees [b, N].
  not_self = anchor_index[:, None] != jnp.arange(contrast.shape[0])[None, :]
  same_label = anchor_label[:, None] == contrast_label[None, :]
  positive = same_label & not_self
  num_positives = jnp.sum(positive, axis=-1)
  safe_count = jnp.maximum(num_positives, 1).astype(jnp.float32)

  if denominator == "one_positive":
    # log(exp(s_ip) / den_ip) = s_ip - logaddexp(s_ip, lse_neg_i) = -softplus(lse_neg_i - s_ip),
    # and 0 when there is no negative (den_ip = exp(s_ip)).
    lse_neg, has_negative = _masked_logsumexp(logits, ~same_label)
    log_prob = jnp.where(has_negative[:, None],
                         -jax.nn.softplus(lse_neg[:, None] - logits), 0.0)
    if summation == "outside":
      anchor_loss = -jnp.sum(jnp.where(positive, log_prob, 0.0), axis=-1) / safe_count
    else:
      lse_pos, _ = _masked_logsumexp(log_prob, positive)
      anchor_loss = jnp.log(safe_count) - lse_pos
    return anchor_loss, num_positives > 0

  if denominator == "all":
    log_den, valid = _masked_logsumexp(logits, not_self)
  else:  # only_negatives
    log_den, valid = _masked_logsumexp(logits, ~same_label)
  # den_i does not depend on p, so log(exp(s_ip) / den_i) = s_ip - log_den_i and both
  # summations need only the positives' logits.
  if summation == "outside":
    anchor_loss = log_den - jnp.sum(jnp.where(positive, logits, 0.0), axis=-1) / safe_count
  else:
    lse_pos, _ = _masked_logsumexp(logits, positive)
    anchor_loss = log_den - lse_pos + jnp.log(safe_count)
  return anchor_loss, valid & (num_positives > 0)


def _auto_block_size(num_anchors: int, num_contrast: int) -> int:
  return max(8, _AUTO_BLOCK_BYTES // (4 * num_contrast) // 8 * 8) if (
      4 * num_anchors * num_contrast > _AUTO_BLOCK_BYTES) else num_anchors


def _blockwise_anchor_losses(block_size: int, rows: tuple[jax.Array, ...],
                             block_fn) -> tuple[jax.Array, jax.Array]:
  """Applies block_fn to consecutive blocks of `rows` (arrays with a leading anchor axis).

  Each block is recomputed in the backward pass, keeping only its per-row statistics, so
  memory is O(block_size × contrast set) whatever the number of anchors. The last block is
  padded with rows whose results are dropped.
  """
  num_anchors = rows[0].shape[0]
  if block_size >= num_anchors:
    return block_fn(*rows)
  block_fn = jax.checkpoint(
      block_fn, prevent_cse=False,  # safe under scan, and lets XLA share work
      policy=jax.checkpoint_policies.save_only_these_names(_ROW_STATS))
  num_blocks = -(-num_anchors // block_size)
  pad = num_blocks * block_size - num_anchors
  blocks = [jnp.pad(r, [(0, pad)] + [(0, 0)] * (r.ndim - 1)).reshape(
      num_blocks, block_size, *r.shape[1:]) for r in rows]
  loss, valid = jax.lax.map(lambda block: block_fn(*block), blocks)
  return loss.reshape(-1)[:num_anchors], valid.reshape(-1)[:num_anchors]


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
    block_size: Optional[int] = None,
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
    block_size: how many anchors' logits are computed at once. Anchors are processed in
      blocks of this many rows (the last one padded), and each block is
      recomputed in the backward pass rather than stored, so peak memory is
      O(block_size × contrast set) instead of O(anchors × contrast set); the loss and its
      gradients are those of the dense form up to float32 round-off. None picks a block of
      about 16 MiB of float32 logits, or the dense form when all the logits fit in that.
      Sharded, it counts local anchors against the global contrast set.

  Returns:
    Scalar float32: the mean of the anchors' losses over anchors that have at least one
    positive (and, for "only_negatives", at least one negative, since den is otherwise
    empty); other anchors add nothing. It is 0 when no anchor qualifies. Logits are
    max-subtracted and sums taken as log-sum-exp, so the result is never NaN or Inf.

  Raises:
    ValueError: features not of rank 3, labels not of shape [B], an unknown mode, a
      temperature <= 0, or a block_size < 1.
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
  if block_size is not None and not (isinstance(block_size, int) and block_size >= 1):
    raise ValueError(f"supcon_loss: block_size must be an int >= 1 or None, got {block_size!r}.")

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
  # Dividing the [A, D] anchors by τ is cheaper than dividing the [A, N] logits.
  anchors = features[:, :anchor_views].reshape(batch * anchor_views, -1) / temperature
  contrast = all_features.reshape(global_batch * views, -1)
  anchor_index = (local_ids[:, None] * views + jnp.arange(anchor_views)[None, :]).reshape(-1)
  num_anchors, num_contrast = anchors.shape[0], contrast.shape[0]
  if block_size is None:
    block_size = _auto_block_size(num_anchors, num_contrast)

  block_fn = functools.partial(
      _anchor_losses, contrast=contrast, contrast_label=jnp.repeat(contrast_labels, views),
      summation=summation, denominator=denominator)
  anchor_loss, valid = _blockwise_anchor_losses(
      block_size, (anchors, anchor_index, jnp.repeat(anchor_labels, anchor_views)), block_fn)

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
