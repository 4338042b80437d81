"""Augmentation policies for training views, as pure functions of (image, seed).

A view function maps a decoded image (uint8 [h, w, C], C = 1 or 3) and a seed (int32 [2]) to a view
(float32 [S, S, C] in [0, 1]). Every random draw is derived from that seed with
`tf.random.experimental.stateless_fold_in`, so a view depends on (image, seed) alone: it is the
same inside a parallel tf.data map, after a restart and on any host.

What each policy is, and where its definition comes from (the released TF SupCon code is
google-research `supcon/preprocessing.py`, which takes AutoAugment and RandAugment from
tensorflow/models `official/vision/image_classification/augment.py`):
* The crop samples `tf.image.sample_distorted_bounding_box` like the released `_distorted_crop_window`
  (whole image as the box, minimum object coverage 0.1, aspect ratio (0.75, 1.33), 100 attempts) and,
  when sampling fails (the op then returns the whole image), takes the central square.
* Colour jitter (p = 0.8, strength s) has two definitions, chosen by `data.color_jitter_impl`:
  "torchvision" is `torchvision.transforms.ColorJitter(0.8 s, 0.8 s, 0.8 s, 0.2 s)`: brightness,
  contrast and saturation factors uniform in [max(0, 1 - 0.8 s), 1 + 0.8 s], brightness scaling the
  image, contrast blending it with the mean of its grayscale, saturation with its grayscale; hue
  shifted by a uniform draw in [-0.2 s, 0.2 s]. The released code calls this
  `use_pytorch_color_jitter` and sets it for CIFAR-10. "simclr_tf" is the released default (its
  ImageNet runs) and SimCLR's: brightness *adds* a delta in [-0.8 s, 0.8 s], contrast blends each
  channel with that channel's own mean (tf.image.adjust_contrast), saturation scales S in HSV space
  and clips it, hue as above. Both apply the four in a uniformly random order, clipping to [0, 1]
  after each.
* AutoAugment is the released policy: tensorflow/models' `policy_v0` (the TPU models' ImageNet
  policy), not the table of the AutoAugment paper. RandAugment is the released one: each of N
  layers picks one of 16 ops or the identity uniformly (17 choices), all at magnitude M; stacked
  RandAugment is SimCLR's jitter, RandAugment, grayscale (p = 0.2) and blur, in that order.
* The AutoAugment/RandAugment ops act on uint8 images and follow PIL's definitions (ImageOps,
  ImageEnhance, Image.transform with nearest resampling), as the released ops mean to; the tests
  compare them with PIL. Where the released TF ops differ from PIL we follow PIL: their Contrast
  blends towards (number of pixels / 256) instead of the mean gray (a bug: 196 for 224 x 224
  images), their Color/Contrast gray is tf.image's float luma rather than PIL's integer one, their
  Sharpness truncates the smoothed image where PIL rounds, and their geometric ops map pixel
  corners where PIL maps pixel centres (up to half a pixel of shift). Magnitudes are the released
  ones, quirks included: Posterize keeps int(4 M / 10) bits (0 at M < 2.5: a black image),
  Translate moves by 250 M / 10 pixels in AutoAugment and 100 M / 10 in RandAugment, Cutout is a
  square of side 2 * int(40 M / 10) pixels; those pixel counts are for 224-pixel images and scale
  with the image side here.
* Gaussian blur: sigma uniform in [0.1, 2], radius image_size // 20 (the released kernel side
  image_size // 10, made odd); the border is reflected, where the released code zero-pads.
* The released warp (`warp_probability`, 0 in every released script) is left out.

One-channel images go through the policy as three equal channels and come back as the first.
Every op maps equal channels to equal channels (hue and saturation leave a gray image as it is),
so the result is a one-channel augmentation in which the colour ops act on brightness only.
"""
import functools
import math
from collections.abc import Callable, Sequence

import ml_collections
import tensorflow as tf

from supcon_jax import checks

# (uint8 image [h, w, C], seed int32 [2]) -> float32 view [S, S, C] in [0, 1].
ViewFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]

POLICIES = ("simclr", "autoaugment", "randaugment", "stacked_randaugment", "crop_flip")

# Fill of pixels that shear/rotate/translate/cutout move in: mid-gray, as in the released code.
_FILL = 128

# tensorflow/models official/vision/image_classification/augment.py, AutoAugment.policy_v0
# (commit 3617973260592c3a85aceeaab7576d198246784f): 25 sub-policies of two
# (op, probability, magnitude in 0..10) steps; one sub-policy is drawn per image.
POLICY_V0 = (
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)),
    (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)),
    (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)),
    (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)),
    (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)),
    (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)),
    (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)),
    (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)),
    (("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)),
    (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)),
    (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)),
    (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)),
    (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
    (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)

# The released RandAugment's ops (same file, RandAugment.available_ops); a layer picks one of
# these or the identity, uniformly.
RANDAUGMENT_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize",
                   "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
                   "TranslateX", "TranslateY", "Cutout", "SolarizeAdd")

# Pixel constants of the released policies at magnitude 10, for 224-pixel images (the
# AutoAugment/RandAugment constructors' defaults in the same file).
_AUTOAUGMENT_CONSTS = dict(translate=250.0, cutout=100.0)
RANDAUGMENT_CONSTS = dict(translate=100.0, cutout=40.0)
_REFERENCE_SIDE = 224


class Seeds:
  """A stateless stream of seeds: the k-th `next()` is fold_in(seed, k).

  The counter advances while the graph is traced, so every draw in the traced graph gets its own
  seed.
  """

  def __init__(self, seed: tf.Tensor):
    self._seed = seed
    self._count = 0

  def next(self) -> tf.Tensor:
    """int32 [2]."""
    self._count += 1
    return tf.random.experimental.stateless_fold_in(self._seed, self._count)

  def uniform(self, low: float = 0.0, high: float = 1.0) -> tf.Tensor:
    """float32 [] in [low, high)."""
    return tf.random.stateless_uniform([], self.next(), low, high)

  def randint(self, n: int) -> tf.Tensor:
    """int32 [] in [0, n)."""
    return tf.random.stateless_uniform([], self.next(), 0, n, dtype=tf.int32)


# (image [H, W, 3], seeds) -> same shape and dtype.
_Op = Callable[[tf.Tensor, Seeds], tf.Tensor]


def _switch(index: tf.Tensor, branches: Sequence[Callable[[], tf.Tensor]],
            image: tf.Tensor) -> tf.Tensor:
  """tf.switch_case over ops that keep the shape of `image`, with its static shape restored."""
  return tf.ensure_shape(tf.switch_case(index, branches), image.shape)


def _random_apply(op: _Op, prob: float) -> _Op:
  if prob >= 1:
    return op
  if prob <= 0:
    return lambda image, seeds: image
  return lambda image, seeds: _switch(tf.cast(seeds.uniform() < prob, tf.int32),
                                      [lambda: image, lambda: op(image, seeds)], image)


# --- uint8 ops, as PIL defines them: image uint8 [H, W, C] -> uint8 [H, W, C] -----------------

def _luma(image: tf.Tensor) -> tf.Tensor:
  """PIL's convert("L") of uint8 [H, W, 3] (ITU-R 601-2 in 16-bit fixed point, rounded):
  uint8 [H, W, 1]. A one-channel image is its own luma."""
  if image.shape[-1] == 1:
    return image
  rgb = tf.cast(image, tf.int32)
  weighted = rgb[..., 0:1] * 19595 + rgb[..., 1:2] * 38470 + rgb[..., 2:3] * 7471
  return tf.cast((weighted + 32768) // 65536, tf.uint8)


def blend(degenerate: tf.Tensor, image: tf.Tensor, factor: float | tf.Tensor) -> tf.Tensor:
  """PIL's Image.blend as ImageEnhance uses it: factor 0 gives `degenerate`, 1 the image, > 1
  extrapolates; computed in float32, clipped to [0, 255] and truncated."""
  degenerate = tf.cast(tf.broadcast_to(degenerate, tf.shape(image)), tf.float32)
  out = degenerate + tf.cast(factor, tf.float32) * (tf.cast(image, tf.float32) - degenerate)
  return tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)  # Truncates, as PIL's C casts.


def _channel_histograms(image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Pixels per channel int32 [C, H*W] and their histograms int32 [C, 256]."""
  pixels = tf.transpose(tf.reshape(tf.cast(image, tf.int32), [-1, image.shape[-1]]))
  return pixels, tf.math.bincount(pixels, minlength=256, maxlength=256, axis=-1)


def _apply_luts(image: tf.Tensor, pixels: tf.Tensor, luts: tf.Tensor) -> tf.Tensor:
  """Maps each channel c through luts[c] (int [C, 256])."""
  out = tf.gather(tf.clip_by_value(luts, 0, 255), pixels, batch_dims=1)
  return tf.reshape(tf.cast(tf.transpose(out), tf.uint8), tf.shape(image))


def equalize(image: tf.Tensor) -> tf.Tensor:
  """PIL ImageOps.equalize, per channel: with step = (pixels - count of the top used value) //
  255, value v maps to (step // 2 + number of pixels below v) // step; unchanged if step is 0."""
  pixels, hist = _channel_histograms(image)
  last_used = tf.reduce_max(tf.where(hist > 0, tf.range(256), 0), axis=1, keepdims=True)
  top_count = tf.gather(hist, last_used, batch_dims=1)
  step = (tf.reduce_sum(hist, axis=1, keepdims=True) - top_count) // 255
  below = tf.cumsum(hist, axis=1, exclusive=True)
  luts = tf.where(step > 0, (step // 2 + below) // tf.maximum(step, 1), tf.range(256)[None])
  return _apply_luts(image, pixels, luts)


def autocontrast(image: tf.Tensor) -> tf.Tensor:
  """PIL ImageOps.autocontrast (cutoff 0), per channel: the lowest used value maps to 0, the
  highest to 255, linearly in between (float64, truncated); constant channels are unchanged."""
  pixels, hist = _channel_histograms(image)
  values = tf.range(256)
  lo = tf.reduce_min(tf.where(hist > 0, values, 255), axis=1, keepdims=True)
  hi = tf.reduce_max(tf.where(hist > 0, values, 0), axis=1, keepdims=True)
  scale = 255.0 / tf.cast(tf.maximum(hi - lo, 1), tf.float64)
  offset = -tf.cast(lo, tf.float64) * scale
  stretched = tf.cast(tf.cast(values, tf.float64)[None] * scale + offset, tf.int32)
  luts = tf.where(hi > lo, stretched, values[None])
  return _apply_luts(image, pixels, luts)


def posterize(image: tf.Tensor, bits: int) -> tf.Tensor:
  """PIL ImageOps.posterize: keeps the `bits` high bits of each value (0 bits: all zero)."""
  unit = 2**(8 - bits)
  return tf.cast(tf.cast(image, tf.int32) // unit * unit, tf.uint8)


def solarize(image: tf.Tensor, threshold: int) -> tf.Tensor:
  """PIL ImageOps.solarize: values >= threshold are inverted."""
  return tf.where(tf.cast(image, tf.int32) < threshold, image, 255 - image)


def solarize_add(image: tf.Tensor, addition: int, threshold: int = 128) -> tf.Tensor:
  """The released SolarizeAdd: values < threshold get `addition` added (clipped at 255)."""
  added = tf.cast(tf.minimum(tf.cast(image, tf.int32) + addition, 255), tf.uint8)
  return tf.where(image < threshold, added, image)


def invert(image: tf.Tensor) -> tf.Tensor:
  """PIL ImageOps.invert."""
  return 255 - image


def color(image: tf.Tensor, factor: float | tf.Tensor) -> tf.Tensor:
  """PIL ImageEnhance.Color: blends with the image's luma (0: gray, > 1: more saturated)."""
  return blend(_luma(image), image, factor)


def contrast(image: tf.Tensor, factor: float | tf.Tensor) -> tf.Tensor:
  """PIL ImageEnhance.Contrast: blends with the mean luma, rounded to an integer."""
  mean = tf.floor(tf.reduce_mean(tf.cast(_luma(image), tf.float64)) + 0.5)
  return blend(mean, image, factor)


def brightness(image: tf.Tensor, factor: float | tf.Tensor) -> tf.Tensor:
  """PIL ImageEnhance.Brightness: blends with black."""
  return blend(tf.zeros([], tf.float32), image, factor)


def sharpness(image: tf.Tensor, factor: float | tf.Tensor) -> tf.Tensor:
  """PIL ImageEnhance.Sharpness: blends with ImageFilter.SMOOTH (3x3 kernel [[1, 1, 1],
  [1, 5, 1], [1, 1, 1]] / 13, rounded; border pixels keep their values)."""
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13
  channels = image.shape[-1]
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, channels, 1])
  smooth = tf.nn.depthwise_conv2d(tf.cast(image, tf.float32)[None], kernel, [1, 1, 1, 1],
                                  "VALID")[0]
  smooth = tf.cast(tf.clip_by_value(tf.floor(smooth + 0.5), 0, 255), tf.uint8)
  inside = tf.pad(tf.ones_like(smooth, tf.bool), [[1, 1], [1, 1], [0, 0]])
  degenerate = tf.where(inside, tf.pad(smooth, [[1, 1], [1, 1], [0, 0]]), image)
  return blend(degenerate, image, factor)


def _float64(value: float | tf.Tensor) -> tf.Tensor:
  """A Python float exactly (tf.cast would pass it through float32 first)."""
  return tf.cast(value, tf.float64) if tf.is_tensor(value) else tf.constant(value, tf.float64)


def affine(image: tf.Tensor, coeffs: Sequence[float | tf.Tensor]) -> tf.Tensor:
  """PIL's Image.transform(size, AFFINE, coeffs, NEAREST, fillcolor=128).

  Output pixel (x, y) takes the input pixel that contains (a x' + b y' + c, d x' + e y' + f),
  where (x', y') = (x + 0.5, y + 0.5) is the pixel's centre; pixels that come from outside the
  image are 128. Computed in float64 like PIL; where a mapped coordinate is exactly an integer,
  PIL's running sums may land on either neighbour. (TF's transform op would round float32
  coordinates instead, which differs from PIL on every half-pixel translation.)
  """
  a, b, c, d, e, f = [_float64(v) for v in coeffs]
  height, width = image.shape[0], image.shape[1]
  y = tf.range(height, dtype=tf.float64)[:, None] + 0.5
  x = tf.range(width, dtype=tf.float64)[None, :] + 0.5
  col = tf.cast(tf.floor(a * x + b * y + c), tf.int32)
  row = tf.cast(tf.floor(d * x + e * y + f), tf.int32)
  inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
  taken = tf.gather_nd(image, tf.stack([tf.clip_by_value(row, 0, height - 1),
                                        tf.clip_by_value(col, 0, width - 1)], axis=-1))
  return tf.where(inside[..., None], taken, tf.constant(_FILL, image.dtype))


def shear_x(image: tf.Tensor, shear: float | tf.Tensor) -> tf.Tensor:
  """The AutoAugment ShearX of PIL: affine (1, shear, 0, 0, 1, 0)."""
  return affine(image, (1.0, shear, 0.0, 0.0, 1.0, 0.0))


def shear_y(image: tf.Tensor, shear: float | tf.Tensor) -> tf.Tensor:
  """The AutoAugment ShearY of PIL: affine (1, 0, 0, shear, 1, 0)."""
  return affine(image, (1.0, 0.0, 0.0, shear, 1.0, 0.0))


def translate_x(image: tf.Tensor, pixels: float | tf.Tensor) -> tf.Tensor:
  """The AutoAugment TranslateX of PIL: affine (1, 0, pixels, 0, 1, 0), content moves left."""
  return affine(image, (1.0, 0.0, pixels, 0.0, 1.0, 0.0))


def translate_y(image: tf.Tensor, pixels: float | tf.Tensor) -> tf.Tensor:
  """The AutoAugment TranslateY of PIL: affine (1, 0, 0, 0, 1, pixels), content moves up."""
  return affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, pixels))


def rotate(image: tf.Tensor, degrees: float | tf.Tensor) -> tf.Tensor:
  """PIL's Image.rotate(degrees, NEAREST, fillcolor=128): counter-clockwise about the centre."""
  theta = _float64(degrees) * (math.pi / 180)
  cos, sin = tf.cos(theta), tf.sin(theta)
  cx, cy = image.shape[1] / 2, image.shape[0] / 2  # In PIL's continuous coordinates.
  return affine(image, (cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy))


def cutout(image: tf.Tensor, center: tf.Tensor, half_side: int) -> tf.Tensor:
  """The released Cutout: pixels within `half_side` of center (int32 [2], row and column),
  rows and columns [center - half_side, center + half_side), become 128."""
  rows = tf.range(image.shape[0])[:, None, None]
  cols = tf.range(image.shape[1])[None, :, None]
  inside = ((rows >= center[0] - half_side) & (rows < center[0] + half_side)
            & (cols >= center[1] - half_side) & (cols < center[1] + half_side))
  return tf.where(inside, tf.constant(_FILL, image.dtype), image)


def _random_sign(value: float, seeds: Seeds) -> tf.Tensor:
  """value or -value with equal probability, as the released ops negate their magnitudes."""
  return tf.where(seeds.uniform() < 0.5, _float64(value), _float64(-value))


def released_op(name: str, level: float, consts: dict[str, float]) -> _Op:
  """A released AutoAugment/RandAugment op at magnitude `level` in [0, 10] (uint8 images).

  `consts` holds the translate and cutout pixel counts at level 10 for 224-pixel images.
  """
  m = level / 10
  enhance = 0.1 + 1.8 * m
  pixels = lambda image, axis: consts["translate"] * m * image.shape[axis] / _REFERENCE_SIDE
  ops: dict[str, _Op] = {
      "Identity": lambda image, seeds: image,
      "AutoContrast": lambda image, seeds: autocontrast(image),
      "Equalize": lambda image, seeds: equalize(image),
      "Invert": lambda image, seeds: invert(image),
      "Posterize": lambda image, seeds: posterize(image, int(m * 4)),
      "Solarize": lambda image, seeds: solarize(image, int(m * 256)),
      "SolarizeAdd": lambda image, seeds: solarize_add(image, int(m * 110)),
      "Color": lambda image, seeds: color(image, enhance),
      "Contrast": lambda image, seeds: contrast(image, enhance),
      "Brightness": lambda image, seeds: brightness(image, enhance),
      "Sharpness": lambda image, seeds: sharpness(image, enhance),
      "Rotate": lambda image, seeds: rotate(image, _random_sign(30 * m, seeds)),
      "ShearX": lambda image, seeds: shear_x(image, _random_sign(0.3 * m, seeds)),
      "ShearY": lambda image, seeds: shear_y(image, _random_sign(0.3 * m, seeds)),
      "TranslateX": lambda image, seeds: translate_x(image, _random_sign(pixels(image, 1), seeds)),
      "TranslateY": lambda image, seeds: translate_y(image, _random_sign(pixels(image, 0), seeds)),
      "Cutout": lambda image, seeds: cutout(
          image, tf.stack([seeds.randint(image.shape[0]), seeds.randint(image.shape[1])]),
          int(consts["cutout"] * m * min(image.shape[:2]) / _REFERENCE_SIDE)),
  }
  if name not in ops:
    raise ValueError(f"Unknown augmentation op {name!r}; known: {sorted(ops)}.")
  return ops[name]


def autoaugment() -> _Op:
  """The released AutoAugment (policy_v0) on uint8 images: one of the 25 sub-policies, uniformly,
  per image; each step applied with its probability.

  Each of the two steps is one switch over the distinct (op, magnitude) pairs that step uses,
  rather than 50 op instances: the graph traces and optimises several times faster.
  """
  plans = []
  for step in range(2):
    keys = [(name, level) for name, _, level in (sub[step] for sub in POLICY_V0)]
    distinct = sorted(set(keys))
    ops = [released_op(name, level, _AUTOAUGMENT_CONSTS) for name, level in distinct]
    branch = [1 + distinct.index(key) for key in keys]  # Branch 0 skips the step.
    probs = [sub[step][1] for sub in POLICY_V0]
    plans.append((ops, branch, probs))

  def apply(image: tf.Tensor, seeds: Seeds) -> tf.Tensor:
    sub = seeds.randint(len(POLICY_V0))
    for ops, branch, probs in plans:
      index = tf.where(seeds.uniform() < tf.gather(probs, sub), tf.gather(branch, sub), 0)
      image = _switch(index, [lambda: image] + [functools.partial(op, image, seeds)
                                                for op in ops], image)
    return image

  return apply


def randaugment(num_ops: int, magnitude: float) -> _Op:
  """The released RandAugment(N=num_ops, M=magnitude) on uint8 images: N times, one of the 16
  ops or the identity, uniformly, at magnitude M."""
  ops = [released_op(name, magnitude, RANDAUGMENT_CONSTS)
         for name in ("Identity",) + RANDAUGMENT_OPS]

  def apply(image: tf.Tensor, seeds: Seeds) -> tf.Tensor:
    for _ in range(num_ops):
      image = _switch(seeds.randint(len(ops)),
                      [functools.partial(op, image, seeds) for op in ops], image)
    return image

  return apply


def _on_uint8(op: _Op) -> _Op:
  """Runs a uint8 op on a float32 [0, 1] image (rounded to 256 levels, as the released code runs
  its policies on uint8 crops)."""
  return lambda image, seeds: tf.cast(
      op(tf.cast(tf.round(image * 255), tf.uint8), seeds), tf.float32) / 255


# --- colour jitter on float32 [H, W, 3] images in [0, 1] -----------------------------------

def _gray(image: tf.Tensor) -> tf.Tensor:
  """Luma with weights (0.2989, 0.587, 0.114), those of torchvision and tf.image: [H, W, 1]."""
  return tf.image.rgb_to_grayscale(image)


def adjust_brightness(image: tf.Tensor, factor: float | tf.Tensor) -> tf.Tensor:
  """torchvision's adjust_brightness: the image times factor, clipped."""
  return tf.clip_by_value(image * factor, 0.0, 1.0)


def adjust_contrast(image: tf.Tensor, factor: float | tf.Tensor) -> tf.Tensor:
  """torchvision's adjust_contrast: blended with the mean of the grayscale image, clipped."""
  mean = tf.reduce_mean(_gray(image))
  return tf.clip_by_value(factor * image + (1 - factor) * mean, 0.0, 1.0)


def adjust_saturation(image: tf.Tensor, factor: float | tf.Tensor) -> tf.Tensor:
  """torchvision's adjust_saturation: blended with the grayscale image, clipped."""
  return tf.clip_by_value(factor * image + (1 - factor) * _gray(image), 0.0, 1.0)


# The four adjustments of each definition, in torchvision's order (brightness, contrast,
# saturation, hue), as (image, factor) -> image. tf.image.adjust_hue is torchvision's hue shift
# (HSV, modulo one turn) to float32 rounding, and twice as fast as an HSV round trip written here.
JITTER_ADJUSTS = {
    "torchvision": (adjust_brightness, adjust_contrast, adjust_saturation, tf.image.adjust_hue),
    "simclr_tf": (tf.image.adjust_brightness, tf.image.adjust_contrast, tf.image.adjust_saturation,
                  tf.image.adjust_hue),
}


def color_jitter(strength: float, impl: str) -> _Op:
  """Colour jitter of strength s in the definition `impl` (see the module docstring): random
  brightness, contrast, saturation (0.8 s) and hue (0.2 s), in a random order."""
  s, h = 0.8 * strength, 0.2 * strength
  if h > 0.5:
    raise ValueError(f"Colour jitter strength {strength} gives a hue range of +-{h} turns; it "
                     "must be <= 0.5 (strength <= 2.5).")
  if impl == "torchvision":
    ranges = ((max(0.0, 1 - s), 1 + s),) * 3 + ((-h, h),)
  elif impl == "simclr_tf":
    if s > 1:
      raise ValueError(f"Colour jitter strength {strength} with data.color_jitter_impl="
                       "'simclr_tf' gives a negative contrast factor; use strength <= 1.25.")
    ranges = ((-s, s), (1 - s, 1 + s), (1 - s, 1 + s), (-h, h))
  else:
    raise ValueError(f"Unknown data.color_jitter_impl={impl!r}; known: {tuple(JITTER_ADJUSTS)}.")
  adjusts = JITTER_ADJUSTS[impl]
  if strength <= 0:
    return lambda image, seeds: image

  def apply(image: tf.Tensor, seeds: Seeds) -> tf.Tensor:
    factors = [seeds.uniform(low, high) for low, high in ranges]
    order = tf.argsort(tf.random.stateless_uniform([len(adjusts)], seeds.next()))
    for slot in range(len(adjusts)):
      branches = [functools.partial(lambda f, x, v: tf.clip_by_value(f(x, v), 0.0, 1.0),
                                    adjust, image, factor)
                  for adjust, factor in zip(adjusts, factors)]
      image = _switch(order[slot], branches, image)
    return image

  return apply


def gaussian_blur(image_size: int) -> _Op:
  """SimCLR's blur: sigma uniform in [0.1, 2], kernel about a tenth of the image side."""
  radius = max(1, image_size // 20)

  def apply(image: tf.Tensor, seeds: Seeds) -> tf.Tensor:
    sigma = seeds.uniform(0.1, 2.0)
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-x**2 / (2 * sigma**2))
    kernel /= tf.reduce_sum(kernel)
    channels = image.shape[-1]
    kernel_h = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
    kernel_w = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, channels, 1])
    padded = tf.pad(image, [[radius, radius], [radius, radius], [0, 0]], mode="REFLECT")[None]
    out = tf.nn.depthwise_conv2d(padded, kernel_h, [1, 1, 1, 1], "VALID")
    out = tf.nn.depthwise_conv2d(out, kernel_w, [1, 1, 1, 1], "VALID")
    return out[0]

  return apply


def crop_window(shape: tf.Tensor, seed: tf.Tensor, area: Sequence[float],
                aspect_ratio: Sequence[float], min_object_covered: float,
                max_attempts: int) -> tuple[tf.Tensor, tf.Tensor]:
  """The released random crop window of an image of shape int32 [3]: (begin, size), int32 [3]
  each, for tf.slice.

  A box covering a fraction `area` of the image (and at least `min_object_covered` of it) with
  width/height in `aspect_ratio`, from `tf.image.sample_distorted_bounding_box`. When the op
  returns the whole image (its answer when `max_attempts` samples failed) the window is the
  central square, as in the released code.
  """
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.zeros([1, 0, 4]), seed=seed,
      min_object_covered=min_object_covered, aspect_ratio_range=tuple(aspect_ratio),
      area_range=tuple(area), max_attempts=max_attempts, use_image_if_no_bounding_boxes=True)
  side = tf.minimum(shape[0], shape[1])
  center_begin = tf.stack([(shape[0] - side + 1) // 2, (shape[1] - side + 1) // 2, 0])
  center_size = tf.stack([side, side, -1])
  failed = tf.reduce_all(tf.equal(size[:2], shape[:2]))
  return tf.where(failed, center_begin, begin), tf.where(failed, center_size, size)


def random_resized_crop(image: tf.Tensor, seed: tf.Tensor,
                        data: ml_collections.ConfigDict) -> tf.Tensor:
  """uint8 [h, w, C] -> float32 [S, S, C] in [0, 1], S = data.image_size: the window of
  `crop_window` with the data.crop_* parameters, resized."""
  begin, size = crop_window(tf.shape(image), seed, data.crop_area, data.crop_aspect_ratio,
                            data.crop_min_object_covered, data.crop_max_attempts)
  crop = tf.slice(image, begin, size)
  # Bilinear without antialiasing, as the released code resizes: antialiased resizing costs ~5x
  # more (ImageNet-sized crops) and would make input the bottleneck.
  out = tf.image.resize(crop, [data.image_size, data.image_size]) / 255.0
  return tf.ensure_shape(out, [data.image_size, data.image_size, image.shape[-1]])


def make_view_fn(data: ml_collections.ConfigDict) -> ViewFn:
  """The view function of policy `data.augment` (config section `data`, see configs/base.py).

  Every policy starts with a random resized crop to `data.image_size` and a horizontal flip.
  """
  checks.check_choice("config.data.augment", data.augment, POLICIES)
  colour = data.augment in ("simclr", "stacked_randaugment")
  steps: list[_Op] = []
  if colour:
    steps.append(_random_apply(color_jitter(data.color_jitter_strength,
                                            data.color_jitter_impl), 0.8))
  if data.augment == "autoaugment":
    steps.append(_on_uint8(autoaugment()))
  if data.augment in ("randaugment", "stacked_randaugment"):
    steps.append(_on_uint8(randaugment(data.randaugment_num_ops, data.randaugment_magnitude)))
  if colour:
    steps.append(_random_apply(lambda image, seeds: tf.tile(_gray(image), [1, 1, 3]), 0.2))
    if data.blur:
      steps.append(_random_apply(gaussian_blur(data.image_size), 0.5))

  def view(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    seeds = Seeds(seed)
    channels = image.shape[-1]
    out = random_resized_crop(image, seeds.next(), data)
    out = tf.image.stateless_random_flip_left_right(out, seeds.next())
    if steps:
      out = tf.tile(out, [1, 1, 3 // channels])
      for step in steps:
        out = step(out, seeds)
      out = out[..., :channels]
    return tf.ensure_shape(out, [data.image_size, data.image_size, channels])

  return view
