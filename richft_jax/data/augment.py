"""The paper's training augmentation (DomainBed's), as batched stateless TF ops.

Zhang & Bottou (2024) train with DomainBed's torchvision transforms: RandomResizedCrop(224,
scale=(0.7, 1.0)), RandomHorizontalFlip, ColorJitter(0.3, 0.3, 0.3, 0.3), RandomGrayscale(0.1);
evaluation only resizes to 224 (done when the data is loaded, see sources.load_arrays). Here
every random draw comes from stateless ops keyed by the step's seed, so the batch of step s stays
a pure function of (seed, s) and a resumed run replays it. Two departures from torchvision, both
noted where they happen: the crop is taken from the image already resized to the training size
(the data is held in memory at that size), and the four jitters are applied in a fixed order
(brightness, contrast, saturation, hue) instead of a random one per image.
"""

from __future__ import annotations

import math

from richft_jax.tf_cpu import tf as _tf
from richft_jax.tf_cpu import xla_flags_for_jax_only

tf = _tf()

CROP_SCALE = (0.7, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # torchvision's default aspect-ratio range.
CROP_ATTEMPTS = 10  # torchvision tries 10 boxes before falling back to a centre crop.
JITTER = 0.3  # Brightness, contrast, saturation factors in [0.7, 1.3]; hue shift in [-0.3, 0.3].
GRAYSCALE_P = 0.1
_GREY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale.


def _draws(shape: list, seed: tf.Tensor, rows: tuple | None, b: tf.Tensor) -> tf.Tensor:
    """Uniform [0, 1) draws for the whole global batch, sliced to this host's rows, so that an
    image gets the same draw whatever the number of hosts (see pipeline.train_dataset)."""
    start, total = rows if rows is not None else (0, b)
    return tf.random.stateless_uniform([total, *shape], seed)[start : start + b]


def crop_boxes(u: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """torchvision's RandomResizedCrop boxes from uniforms u [B, 4 * CROP_ATTEMPTS]:
    normalised [y1, x1, y2, x2] for tf.image.crop_and_resize, [B, 4].

    Attempt k draws scale, log-ratio and the offsets from u[:, 4k : 4k + 4]; the first attempt
    whose box fits is kept, else the centre crop of the whole image clamped to the ratio range.
    """
    u = tf.reshape(u, [-1, CROP_ATTEMPTS, 4])
    area = float(height * width)
    scale = CROP_SCALE[0] + u[..., 0] * (CROP_SCALE[1] - CROP_SCALE[0])
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    ratio = tf.exp(log_lo + u[..., 1] * (log_hi - log_lo))
    w = tf.round(tf.sqrt(area * scale * ratio))
    h = tf.round(tf.sqrt(area * scale / ratio))
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    top = tf.floor(u[..., 2] * (height - h + 1))
    left = tf.floor(u[..., 3] * (width - w + 1))
    # Fallback (no attempt fits): torchvision's centre crop.
    in_ratio = width / height
    if in_ratio < CROP_RATIO[0]:
        fw, fh = float(width), float(round(width / CROP_RATIO[0]))
    elif in_ratio > CROP_RATIO[1]:
        fh, fw = float(height), float(round(height * CROP_RATIO[1]))
    else:
        fw, fh = float(width), float(height)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1)
    any_fits = tf.reduce_any(fits, axis=1)

    def pick(x, fallback):
        return tf.where(any_fits, tf.gather(x, first, axis=1, batch_dims=1), fallback)

    h, w = pick(h, fh), pick(w, fw)
    top = pick(top, float((height - fh) // 2))
    left = pick(left, float((width - fw) // 2))
    # crop_and_resize samples the box corners at pixel centres: pixel p is at p / (size - 1).
    return tf.stack(
        [
            top / (height - 1),
            left / (width - 1),
            (top + h - 1) / (height - 1),
            (left + w - 1) / (width - 1),
        ],
        axis=1,
    )


def grayscale(images: tf.Tensor) -> tf.Tensor:
    """Luma of float RGB images [..., 3], kept with a trailing channel axis [..., 1]."""
    return tf.reduce_sum(images * tf.constant(_GREY, images.dtype), axis=-1, keepdims=True)


def color_jitter(images: tf.Tensor, factors: tf.Tensor) -> tf.Tensor:
    """torchvision's ColorJitter on float images in [0, 1] with per-image factors [B, 4]
    (brightness, contrast, saturation multipliers; hue shift in turns), in that fixed order."""
    f = factors[:, None, None, :]
    images = tf.clip_by_value(images * f[..., 0:1], 0.0, 1.0)
    mean = tf.reduce_mean(grayscale(images), axis=[1, 2, 3], keepdims=True)
    images = tf.clip_by_value(f[..., 1:2] * images + (1 - f[..., 1:2]) * mean, 0.0, 1.0)
    grey = grayscale(images)
    images = tf.clip_by_value(f[..., 2:3] * images + (1 - f[..., 2:3]) * grey, 0.0, 1.0)
    hsv = tf.image.rgb_to_hsv(images)
    hue = tf.math.floormod(hsv[..., 0:1] + f[..., 3:4], 1.0)
    return tf.clip_by_value(tf.image.hsv_to_rgb(tf.concat([hue, hsv[..., 1:]], -1)), 0.0, 1.0)


def domainbed_train(images: tf.Tensor, seed: tf.Tensor, rows: tuple | None = None) -> tf.Tensor:
    """The paper's train augmentation of uint8 [B, H, W, 3] images, same shape and dtype out.

    `seed` is the step's stateless seed [2]; `rows=(start, total)` marks these images as rows
    [start, start + B) of a global batch of `total` (one host's share).
    """
    b, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    if images.shape[-1] != 3:
        raise ValueError(f"config.data.augment='domainbed' needs RGB images, got {images.shape}.")
    seeds = tf.random.split(seed, 5)
    boxes = crop_boxes(_draws([4 * CROP_ATTEMPTS], seeds[0], rows, b), height, width)
    x = tf.image.crop_and_resize(
        tf.cast(images, tf.float32) / 255.0, boxes, tf.range(b), [height, width], "bilinear"
    )
    flip = _draws([1, 1, 1], seeds[1], rows, b) < 0.5
    u = _draws([4], seeds[2], rows, b)
    factors = tf.concat([1.0 + JITTER * (2 * u[:, :3] - 1), JITTER * (2 * u[:, 3:] - 1)], 1)
    grey = _draws([1, 1, 1], seeds[3], rows, b) < GRAYSCALE_P
    xla_flags_for_jax_only()  # Before TensorFlow's XLA first compiles (at run time, not here).
    return _flip_jitter_grey(x, flip, factors, grey)


# One XLA program (TF's CPU JIT): unfused, each of the ~20 element-wise ops read and wrote the
# whole float batch; fused, the augmentation takes 4.5x less CPU per image at 224 px. The rounding
# to uint8 can differ by 1 from the unfused ops' in about 1 value in 10^5.
@tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
def _flip_jitter_grey(x: tf.Tensor, flip: tf.Tensor, factors: tf.Tensor, grey: tf.Tensor):
    x = tf.where(flip, tf.reverse(x, axis=[2]), x)
    x = color_jitter(x, factors)
    x = tf.where(grey, tf.tile(grayscale(x), [1, 1, 1, 3]), x)
    return tf.cast(tf.round(x * 255.0), tf.uint8)
