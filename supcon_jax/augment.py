"""Augmentation policies for training views, as pure functions of (image, seed).

A view function maps a decoded image (uint8 [h, w, C], C = 1 or 3) and a seed (int32 [2]) to a view
(float32 [S, S, C] in [0, 1]). Every random draw is derived from that seed with
`tf.random.experimental.stateless_fold_in`, so a view depends on (image, seed) alone: it is the
same inside a parallel tf.data map, after a restart and on any host.

Which implementation, and why:
* Crop, flip and colour jitter of SimCLR are tf.image's stateless ops
  (`stateless_sample_distorted_bounding_box`, `stateless_random_flip_left_right`,
  `stateless_random_brightness/contrast/saturation/hue`): the stateless forms of the ops that the
  reference SimCLR code uses, with the same parameters.
* The AutoAugment / RandAugment ops with real logic (shear, translate, rotate, equalize,
  autocontrast, sharpness, posterize) are Keras 3 preprocessing layers, maintained and tested
  upstream. tf-models-official's `augment.py` would be the other candidate, but it requires the
  `tensorflow` package (not `tensorflow-cpu`) and tf-keras, which conflicts with tensorflow-cpu
  2.21. A Keras layer's own `__call__` draws from a `tf.Variable` seed state: in a parallel map
  the draws depend on thread scheduling and cannot be replayed on resume, and
  `keras.layers.RandAugment` / `RandomColorJitter` ignore a given seed. So each layer is run as
  `get_random_transformation(seed=_Seeds(...))` + `transform_images`, and the two policies are
  composed here from those layers.
* The PIL-style enhance ops (Color, Contrast, Brightness), Solarize and Invert are one-line blends
  written here: the Keras layers parameterise them differently (RandomColorDegeneration cannot
  over-saturate; Solarization scales only the upper end of its threshold range).
* Gaussian blur is a separable convolution written here: RandomGaussianBlur draws independent x
  and y sigmas, where SimCLR uses one sigma in [0.1, 2].

One-channel images go through the policy as three equal channels and come back as the first.
Every op maps equal channels to equal channels (hue and saturation leave a gray image as it is),
so the result is a one-channel augmentation in which the colour ops act on brightness only.
"""
import functools
from collections.abc import Callable, Sequence

import keras
import ml_collections
import tensorflow as tf

from supcon_jax import checks

# (uint8 image [h, w, C], seed int32 [2]) -> float32 view [S, S, C] in [0, 1].
ViewFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]

POLICIES = ("simclr", "autoaugment", "randaugment", "stacked_randaugment", "crop_flip")

# Fill of pixels that shear/rotate/translate move in: mid-gray, as in the AutoAugment code.
_FILL = 128 / 255

# AutoAugment's ImageNet policy (Cubuk et al. 2019, appendix table): 25 sub-policies of two
# (op, probability, magnitude in 0..10) steps; one sub-policy is drawn per image.
IMAGENET_POLICY = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, 4), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, 7)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, 2)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, 8), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, 2)),
    (("Equalize", 0.0, 7), ("Equalize", 0.8, 8)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, 8)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, 9)),
    (("Color", 0.4, 0), ("Equalize", 0.6, 3)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
)

# RandAugment's 14 ops (Cubuk et al. 2020); each of the N layers picks one uniformly.
RANDAUGMENT_OPS = ("Identity", "AutoContrast", "Equalize", "Rotate", "Solarize", "Color",
                   "Posterize", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
                   "TranslateX", "TranslateY")


class _Seeds(keras.random.SeedGenerator):
  """A stateless stream of seeds: the k-th `next()` is fold_in(seed, k).

  It subclasses Keras' SeedGenerator only so that Keras layers accept it as `seed=`; it holds no
  tf.Variable (the base __init__, which would create one, is deliberately not called). The counter
  advances while the graph is traced, so every draw in the traced graph gets its own seed.
  """

  def __init__(self, seed: tf.Tensor):  # pylint: disable=super-init-not-called
    self._seed = seed
    self._count = 0

  def next(self, ordered: bool = True) -> tf.Tensor:
    """int32 [2]."""
    del ordered  # Keras' flag for its own state update; there is none here.
    self._count += 1
    return tf.random.experimental.stateless_fold_in(self._seed, self._count)

  def uniform(self) -> tf.Tensor:
    """float32 [] in [0, 1)."""
    return tf.random.stateless_uniform([], self.next())

  def randint(self, n: int) -> tf.Tensor:
    """int32 [] in [0, n)."""
    return tf.random.stateless_uniform([], self.next(), 0, n, dtype=tf.int32)


# (float32 image [H, W, 3] in [0, 1], seeds) -> same shape.
_Op = Callable[[tf.Tensor, _Seeds], tf.Tensor]


def _switch(index: tf.Tensor, branches: Sequence[Callable[[], tf.Tensor]],
            image: tf.Tensor) -> tf.Tensor:
  """tf.switch_case over ops that keep the shape of `image`, with its static shape restored
  (the next op may need it, e.g. Equalization loops over the channels)."""
  return tf.ensure_shape(tf.switch_case(index, branches), image.shape)


def _random_apply(op: _Op, prob: float) -> _Op:
  if prob >= 1:
    return op
  if prob <= 0:
    return lambda image, seeds: image
  return lambda image, seeds: _switch(tf.cast(seeds.uniform() < prob, tf.int32),
                                      [lambda: image, lambda: op(image, seeds)], image)


def _random_sign(positive: _Op, negative: _Op) -> _Op:
  return lambda image, seeds: _switch(seeds.randint(2), [lambda: positive(image, seeds),
                                                         lambda: negative(image, seeds)], image)


def _keras_op(layer: keras.layers.Layer) -> _Op:
  """Runs a Keras image layer with draws from `seeds` instead of its own seed state."""
  layer.backend.set_backend("tensorflow")  # Whatever KERAS_BACKEND is: this runs in tf.data.

  def apply(image: tf.Tensor, seeds: _Seeds) -> tf.Tensor:
    images = image[None]  # Some layers only take batches.
    transformation = layer.get_random_transformation(images, training=True, seed=seeds)
    return layer.transform_images(images, transformation, training=True)[0]

  return apply


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: float) -> tf.Tensor:
  """PIL's ImageEnhance: factor 0 gives `degenerate`, 1 the image, > 1 extrapolates."""
  return tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 1.0)


def _gray(image: tf.Tensor) -> tf.Tensor:
  return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


def _affine_keras_op(make_layer: Callable[[float], keras.layers.Layer], amount: float) -> _Op:
  """A geometric layer applied by +amount or -amount, with equal probability."""
  return _random_sign(_keras_op(make_layer(amount)), _keras_op(make_layer(-amount)))


def _op_key(name: str, level: float) -> tuple[str, float | None]:
  """(name, level), with level None for the ops that have no magnitude."""
  return name, None if name in ("Identity", "AutoContrast", "Equalize", "Invert") else level


def _op(name: str, level: float) -> _Op:
  """An AutoAugment/RandAugment op at magnitude `level` in [0, 10], mapped as in the papers."""
  enhance = 0.1 + 1.8 * level / 10  # Color, Contrast, Brightness, Sharpness: [0.1, 1.9].
  geometric = dict(interpolation="bilinear", fill_mode="constant", fill_value=_FILL)
  if name == "Identity":
    return lambda image, seeds: image
  if name == "AutoContrast":
    return _keras_op(keras.layers.AutoContrast(value_range=(0, 1)))
  if name == "Equalize":
    return _keras_op(keras.layers.Equalization(value_range=(0, 1)))
  if name == "Invert":
    return lambda image, seeds: 1.0 - image
  if name == "Posterize":
    # Keep 4..8 bits, the paper's range (as timm's "original" AutoAugment reads it).
    bits = 4 + int(level * 4 / 10)
    return _keras_op(keras.layers.RandomPosterization(factor=(bits, bits), value_range=(0, 1)))
  if name == "Solarize":
    threshold = 256 * level / 10 / 255  # Invert the pixels at or above it.
    return lambda image, seeds: tf.where(image < threshold, image, 1.0 - image)
  if name == "Color":
    return lambda image, seeds: _blend(_gray(image), image, enhance)
  if name == "Contrast":
    return lambda image, seeds: _blend(tf.reduce_mean(_gray(image)), image, enhance)
  if name == "Brightness":
    return lambda image, seeds: _blend(tf.zeros_like(image), image, enhance)
  if name == "Sharpness":
    # The layer's sharpness is 2 * factor, blended like PIL's.
    return _keras_op(keras.layers.RandomSharpness(factor=(enhance / 2, enhance / 2),
                                                  value_range=(0, 1)))
  if name in ("ShearX", "ShearY"):
    shear = 0.3 * level / 10  # RandomShear draws the sign itself.
    xy = dict(x_factor=(shear, shear), y_factor=0.0) if name == "ShearX" else dict(
        x_factor=0.0, y_factor=(shear, shear))
    return _keras_op(keras.layers.RandomShear(**xy, **geometric))
  if name == "Rotate":
    return _affine_keras_op(lambda a: keras.layers.RandomRotation((a, a), **geometric),
                            30 * level / 10 / 360)  # Degrees as a fraction of a full turn.
  if name in ("TranslateX", "TranslateY"):
    shift = 150 / 331 * level / 10  # 150 pixels of the paper's 331 at level 10.
    if name == "TranslateX":
      make = lambda a: keras.layers.RandomTranslation(0.0, (a, a), **geometric)
    else:
      make = lambda a: keras.layers.RandomTranslation((a, a), 0.0, **geometric)
    return _affine_keras_op(make, shift)
  raise ValueError(f"Unknown augmentation op {name!r}.")


def autoaugment_imagenet() -> _Op:
  """AutoAugment's ImageNet policy: one of the 25 sub-policies, uniformly, per image.

  Each of the two steps is one switch over the distinct ops that step uses (15 and 12), rather
  than 50 op instances: the graph traces and optimises several times faster.
  """
  plans = []
  for step in range(2):
    keys = [_op_key(name, level) for name, _, level in (sub[step] for sub in IMAGENET_POLICY)]
    distinct = sorted(set(keys), key=str)
    ops = [_op(name, 0 if level is None else level) for name, level in distinct]
    branch = [1 + distinct.index(key) for key in keys]  # Branch 0 skips the step.
    probs = [sub[step][1] for sub in IMAGENET_POLICY]
    plans.append((ops, branch, probs))

  def apply(image: tf.Tensor, seeds: _Seeds) -> tf.Tensor:
    sub = seeds.randint(len(IMAGENET_POLICY))
    for ops, branch, probs in plans:
      index = tf.where(seeds.uniform() < tf.gather(probs, sub), tf.gather(branch, sub), 0)
      image = _switch(index, [lambda: image] + [functools.partial(op, image, seeds)
                                                for op in ops], image)
    return image

  return apply


def randaugment(num_ops: int, magnitude: float) -> _Op:
  """RandAugment(N=num_ops, M=magnitude): N ops drawn uniformly from the 14, each at M."""
  ops = [_op(name, magnitude) for name in RANDAUGMENT_OPS]

  def apply(image: tf.Tensor, seeds: _Seeds) -> tf.Tensor:
    for _ in range(num_ops):
      image = _switch(seeds.randint(len(ops)),
                      [functools.partial(op, image, seeds) for op in ops], image)
    return image

  return apply


def color_jitter(strength: float) -> _Op:
  """SimCLR's colour jitter of strength s: brightness, contrast and saturation 0.8 s, hue 0.2 s,
  applied in a random order."""
  if strength <= 0:
    return lambda image, seeds: image
  delta = 0.8 * strength
  jitters = (
      lambda x, seed: tf.image.stateless_random_brightness(x, delta, seed),
      lambda x, seed: tf.image.stateless_random_contrast(x, max(0.0, 1 - delta), 1 + delta, seed),
      lambda x, seed: tf.image.stateless_random_saturation(x, max(0.0, 1 - delta), 1 + delta,
                                                           seed),
      lambda x, seed: tf.image.stateless_random_hue(x, min(0.5, 0.2 * strength), seed),
  )

  def apply(image: tf.Tensor, seeds: _Seeds) -> tf.Tensor:
    order = tf.argsort(tf.random.stateless_uniform([len(jitters)], seeds.next()))
    for slot in range(len(jitters)):
      branches = [functools.partial(lambda f, x: tf.clip_by_value(f(x, seeds.next()), 0.0, 1.0),
                                    jitter, image) for jitter in jitters]
      image = _switch(order[slot], branches, image)
    return image

  return apply


def gaussian_blur(image_size: int) -> _Op:
  """SimCLR's blur: sigma uniform in [0.1, 2], kernel about a tenth of the image side."""
  radius = max(1, image_size // 20)

  def apply(image: tf.Tensor, seeds: _Seeds) -> tf.Tensor:
    sigma = tf.random.stateless_uniform([], seeds.next(), 0.1, 2.0)
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


def random_resized_crop(image: tf.Tensor, seed: tf.Tensor, size: int,
                        area: Sequence[float], aspect_ratio: Sequence[float]) -> tf.Tensor:
  """Inception-style crop of uint8 [h, w, C], resized to float32 [size, size, C] in [0, 1].

  The crop covers a fraction `area` of the image with width/height in `aspect_ratio`; after 10
  failed tries it is the whole image.
  """
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
      min_object_covered=0.0, aspect_ratio_range=tuple(aspect_ratio), area_range=tuple(area),
      max_attempts=10, use_image_if_no_bounding_boxes=True)
  crop = tf.slice(image, begin, crop_size)
  # Bilinear without antialiasing, as the TF SimCLR/SupCon code resizes: antialiased resizing
  # costs ~5x more (ImageNet-sized crops) and would make input the bottleneck.
  out = tf.image.resize(crop, [size, size]) / 255.0
  return tf.ensure_shape(out, [size, size, image.shape[-1]])


def make_view_fn(data: ml_collections.ConfigDict) -> ViewFn:
  """The view function of policy `data.augment` (config section `data`, see configs/base.py).

  Every policy starts with a random resized crop to `data.image_size` and a horizontal flip.
  """
  checks.check_choice("config.data.augment", data.augment, POLICIES)
  colour = data.augment in ("simclr", "stacked_randaugment")
  steps: list[_Op] = []
  if colour:
    steps.append(_random_apply(color_jitter(data.color_jitter_strength), 0.8))
  if data.augment == "autoaugment":
    steps.append(autoaugment_imagenet())
  if data.augment in ("randaugment", "stacked_randaugment"):
    steps.append(randaugment(data.randaugment_num_ops, data.randaugment_magnitude))
  if colour:
    steps.append(_random_apply(lambda image, seeds: _gray(image), 0.2))
    if data.blur:
      steps.append(_random_apply(gaussian_blur(data.image_size), 0.5))

  def view(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    seeds = _Seeds(seed)
    channels = image.shape[-1]
    out = random_resized_crop(image, seeds.next(), data.image_size, data.crop_area,
                              data.crop_aspect_ratio)
    out = tf.image.stateless_random_flip_left_right(out, seeds.next())
    if steps:
      out = tf.tile(out, [1, 1, 3 // channels])
      for step in steps:
        out = step(out, seeds)
      out = out[..., :channels]
    return tf.ensure_shape(out, [data.image_size, data.image_size, channels])

  return view
