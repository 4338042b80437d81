"""Losses: the SupCon family (L_out, L_in, SimCLR) and cross-entropy with top-k accuracy."""
import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax.ad_checkpoint import checkpoint_name

from supcon_jax import checks

CONTRAST_MODES = ("all", "one")
SUMMATIONS = ("outside", "inside")
DENOMINATORS = ("all", "one_positive", "only_negatives")


def _check_positive(name: str, value) -> None:
  # Traced values cannot be checked here; concrete ones can and should be.
  if isinstance(value, (int, float)) and not value > 0:
    raise ValueError(f"supcon_loss: {name} must be > 0, got {value}.")


# Names of the per-row statistics that a recomputed block keeps from its forward pass.
_ROW_STATS = "supcon_row_stats"
# Automatic block size: this many anchors per block (fastest on CPU from 1024 to 8192 samples
# x 2 views), fewer where their float32 logits would take more than _AUTO_BLOCK_BYTES.
_AUTO_BLOCK_ROWS = 512
_AUTO_BLOCK_BYTES = 32 * 2**20


def _masked_logsumexp(x: jax.Array, nonempty: jax.Array,
                      mask: Optional[jax.Array] = None) -> jax.Array:
  """log Σ_j exp(x_ij) along the last axis, over mask_ij if given, stable and NaN-free.

  Entries of x may be -inf (they add nothing). `nonempty` [...] says whether a row has any
  entry that is not -inf and not masked out; callers know it from counts, which saves a pass
  over x. Rows without one get lse = 0, so callers can drop them without an -inf ever
  reaching a gradient.
  """
  if mask is not None:
    # Masking before exp keeps a huge masked-out entry from overflowing into a NaN gradient.
    x = jnp.where(mask, x, -jnp.inf)
  row_max = jnp.max(x, axis=-1, keepdims=True)
  row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  row_max = checkpoint_name(row_max, _ROW_STATS)
  # The maximal entry contributes exp(0) = 1, so total >= 1 on non-empty rows.
  total = jnp.sum(jnp.exp(x - row_max), axis=-1)
  total = checkpoint_name(jnp.where(nonempty, total, 1.0), _ROW_STATS)
  lse = jnp.log(total) + row_max[..., 0]
  return jnp.where(nonempty, lse, 0.0)


@jax.custom_jvp
def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  """a @ b in float32, differentiated so that reverse mode never transposes a left operand."""
  return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


@_matmul.defjvp
def _matmul_jvp(primals, tangents):
  a, b = primals
  da, db = tangents
  # Reverse mode transposes a @ db into aᵀ @ g. XLA:CPU runs that about 2.5x slower when aᵀ is
  # a view of a, so aᵀ ([D, rows], small) is materialised; the barrier keeps XLA from folding
  # it back into the product. Elsewhere this costs next to nothing.
  a_t = jax.lax.optimization_barrier(a.T)
  return _matmul(a, b), (jnp.matmul(da, b, precision=jax.lax.Precision.HIGHEST)
                         + jnp.matmul(a_t.T, db, precision=jax.lax.Precision.HIGHEST))


class _Anchors(NamedTuple):
  """Per-anchor inputs of `_anchor_losses`; every field has a leading [anchors] axis."""
  features: jax.Array  # [b, D] divided by the temperature
  index: jax.Array  # [b] the anchor's own column in the contrast set (not in its contrast set)
  label: jax.Array  # [b]
  num_same: jax.Array  # [b] contrast views with the anchor's label, itself included
  positive_sum: Optional[jax.Array]  # [b, D] Σ_{p ∈ P(i)} z_p, where summation needs it


def _anchor_losses(anchors: _Anchors, contrast_t: jax.Array, contrast_label: jax.Array,
                   summation: str, denominator: str) -> tuple[jax.Array, jax.Array]:
  """The loss of each anchor in a block of rows: the one implementation of the per-row math.

  Args:
    anchors: a block of b anchors.
    contrast_t: [D, N] the whole contrast set, transposed; contrast_label: [N] its labels.
    summation, denominator: as in `supcon_loss`.

  Returns:
    (loss [b], valid [b]): an anchor's loss counts only where valid (see `supcon_loss`).
  """
  num_contrast = contrast_t.shape[1]
  rows = jnp.arange(anchors.index.shape[0])
  # s_ij with s_ii = -inf: the anchor is in no sum over its contrast set. The [b, N] masks
  # below are built from [b] and [N] vectors inside fused elementwise code.
  logits = _matmul(anchors.features, contrast_t).at[rows, anchors.index].set(
      -jnp.inf, unique_indices=True, indices_are_sorted=True, mode="promise_in_bounds")
  num_positives = anchors.num_same - 1
  has_positive = num_positives > 0
  has_negative = anchors.num_same < num_contrast
  safe_count = jnp.maximum(num_positives, 1).astype(jnp.float32)
  same_label = anchors.label[:, None] == contrast_label[None, :]
  positive = same_label & (anchors.index[:, None] != jnp.arange(num_contrast)[None, :])

  if denominator == "one_positive":
    # log(exp(s_ip) / den_ip) = s_ip - logaddexp(s_ip, lse_neg_i) = -softplus(lse_neg_i - s_ip),
    # and 0 when there is no negative (den_ip = exp(s_ip)).
    lse_neg = _masked_logsumexp(logits, has_negative, ~same_label)
    log_prob = jnp.where(has_negative[:, None],
                         -jax.nn.softplus(lse_neg[:, None] - logits), 0.0)
    if summation == "outside":
      anchor_loss = -jnp.sum(jnp.where(positive, log_prob, 0.0), axis=-1) / safe_count
    else:
      anchor_loss = jnp.log(safe_count) - _masked_logsumexp(log_prob, has_positive, positive)
    return anchor_loss, has_positive

  if denominator == "all":
    valid = jnp.full(has_positive.shape, num_contrast > 1)
    log_den = _masked_logsumexp(logits, valid)
  else:  # only_negatives
    valid = has_negative
    log_den = _masked_logsumexp(logits, has_negative, ~same_label)
  # den_i does not depend on p, so log(exp(s_ip) / den_i) = s_ip - log_den_i, and the mean
  # over P(i) of s_ip is z_i / τ · Σ_p z_p / |P(i)|: no pass over the [b, N] logits.
  if summation == "outside":
    positive_logits = jnp.sum(anchors.features * anchors.positive_sum, axis=-1)
    anchor_loss = log_den - positive_logits / safe_count
  else:
    anchor_loss = log_den - _masked_logsumexp(logits, has_positive, positive) + jnp.log(
        safe_count)
  return anchor_loss, valid & has_positive


def _auto_block_size(num_contrast: int) -> int:
  return max(8, min(_AUTO_BLOCK_ROWS, _AUTO_BLOCK_BYTES // (4 * num_contrast) // 8 * 8))


def _blockwise_anchor_losses(block_size: int, anchors: _Anchors,
                             block_fn) -> tuple[jax.Array, jax.Array]:
  """Applies block_fn to consecutive blocks of block_size anchors.

  Each block is recomputed in the backward pass, keeping only its per-row statistics, so
  memory is O(block_size × contrast set) whatever the number of anchors. The last block is
  padded with copies of the last anchor, whose results are dropped.
  """
  num_anchors = anchors.index.shape[0]
  if block_size >= num_anchors:
    return block_fn(anchors)
  block_fn = jax.checkpoint(
      block_fn, prevent_cse=False,  # safe under scan, and lets XLA share work
      policy=jax.checkpoint_policies.save_only_these_names(_ROW_STATS))
  num_blocks = -(-num_anchors // block_size)
  pad = num_blocks * block_size - num_anchors
  blocks = jax.tree.map(
      lambda r: jnp.pad(r, [(0, pad)] + [(0, 0)] * (r.ndim - 1), mode="edge").reshape(
          num_blocks, block_size, *r.shape[1:]), anchors)
  loss, valid = jax.lax.map(block_fn, blocks)
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
      blocks of this many (the last one padded), and each block is recomputed in the
      backward pass rather than stored, so peak memory is O(block_size × contrast set)
      instead of O(anchors × contrast set); the loss and its gradients are those of the dense
      form (block_size >= anchors) up to float32 round-off. None picks 512 anchors (fewer
      where their logits would take over 32 MiB), which was fastest on CPU; on an
      accelerator a larger block may be faster. Sharded, it counts local anchors.

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
  checks.check_choice("supcon_loss contrast_mode", contrast_mode, CONTRAST_MODES)
  checks.check_choice("supcon_loss summation", summation, SUMMATIONS)
  checks.check_choice("supcon_loss denominator", denominator, DENOMINATORS)
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
  contrast = all_features.reshape(global_batch * views, -1)
  contrast_labels = jnp.repeat(contrast_labels, views)
  anchor_labels = jnp.repeat(anchor_labels, anchor_views)
  anchor_index = (local_ids[:, None] * views + jnp.arange(anchor_views)[None, :]).reshape(-1)
  # Class sizes (and sums) from the sorted labels, rather than from passes over [b, N] masks.
  sorted_labels = jnp.sort(contrast_labels)
  first_same = jnp.searchsorted(sorted_labels, anchor_labels, side="left")
  num_same = jnp.searchsorted(sorted_labels, anchor_labels, side="right") - first_same
  positive_sum = None
  if summation == "outside" and denominator != "one_positive":
    class_sums = jax.ops.segment_sum(
        contrast, jnp.searchsorted(sorted_labels, contrast_labels, side="left"),
        num_segments=contrast.shape[0])
    positive_sum = class_sums[first_same] - contrast[anchor_index]
  anchors = _Anchors(
      # Dividing the [A, D] anchors by τ is cheaper than dividing the [A, N] logits.
      features=features[:, :anchor_views].reshape(batch * anchor_views, -1) / temperature,
      index=anchor_index, label=anchor_labels, num_same=num_same, positive_sum=positive_sum)
  if block_size is None:
    block_size = _auto_block_size(contrast.shape[0])

  block_fn = functools.partial(
      _anchor_losses, contrast_t=contrast.T, contrast_label=contrast_labels,
      summation=summation, denominator=denominator)
  anchor_loss, valid = _blockwise_anchor_losses(block_size, anchors, block_fn)

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
