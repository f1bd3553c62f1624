"""Random transforms of training images, on the host, keyed by (seed, epoch, example index).

`--augment` names the transforms (`config.Augmentation`); the training input pipeline applies
them to the uint8 rows it has just read from the pixel store, before they go to the devices,
as TensorFlow ops in its graph. Every example's randomness is a counter-based hash of its own
key: `draws` gives DRAWS uniform numbers per (seed, epoch, index), one per transform in a fixed
order, whether the transform is on or not. So an example is transformed the same way whatever
batch, replica, worker or resumed run reads it: two `--deterministic` runs, and a run killed
and rerun, see the same images.

The transforms, in the order they apply (strengths: `config.AUGMENT_MEANINGS`):
- flip_left_right, flip_up_down: with probability `strength`;
- rotate and zoom: one bilinear resampling about the image's centre (edges reflected, as
  Keras's RandomRotation and RandomZoom do), by an angle uniform in +-strength turns and a
  scale uniform in [1 - strength, 1 + strength];
- brightness: a shift uniform in +-strength x 255;
- contrast: each channel's distance from its mean scaled by a factor uniform in
  [1 - strength, 1 + strength];
then the pixels are rounded and clipped back to uint8.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from fruits_tl.core.config import Augmentation

# Uniform draws per example, in this order.
DRAW_NAMES = ("flip_left_right", "flip_up_down", "rotate", "zoom", "brightness", "contrast")
DRAWS = len(DRAW_NAMES)


# SplitMix64's constants (Steele, Lea and Flood, "Fast splittable pseudorandom number
# generators", 2014): the golden-ratio increment and the two multipliers of its finaliser.
_GOLDEN = 0x9E3779B97F4A7C15
_MIX_1, _MIX_2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _mix(x: tf.Tensor) -> tf.Tensor:
    """SplitMix64's finaliser on uint64 (multiplication wraps modulo 2^64)."""
    shift = tf.bitwise.right_shift
    x = tf.bitwise.bitwise_xor(x, shift(x, tf.constant(30, tf.uint64))) * tf.constant(
        _MIX_1, tf.uint64
    )
    x = tf.bitwise.bitwise_xor(x, shift(x, tf.constant(27, tf.uint64))) * tf.constant(
        _MIX_2, tf.uint64
    )
    return tf.bitwise.bitwise_xor(x, shift(x, tf.constant(31, tf.uint64)))


def draws(seed, epochs, indices) -> tf.Tensor:
    """[n, DRAWS] float32 uniforms in [0, 1) for the examples `indices` read in `epochs` (one
    epoch per index, or one for all); padding rows (index -1) get 0.5 (no flip, no change).

    Draw k of (seed, epoch, index) is the top 24 bits of
    mix(mix(mix(mix(seed + G) + epoch + G) + index + G) + (k + 1) G) over 2^24, where mix is
    SplitMix64's finaliser and G its golden-ratio increment: TensorFlow ops, so the draws are
    made in the input pipeline's graph, in parallel, with no Python.
    """
    indices = tf.convert_to_tensor(indices, tf.int64)
    epochs = tf.broadcast_to(tf.convert_to_tensor(epochs, tf.int64), tf.shape(indices))
    golden = tf.constant(_GOLDEN, tf.uint64)

    def as_u64(value):
        return tf.bitcast(tf.cast(value, tf.int64), tf.uint64)

    state = _mix(as_u64(seed) + golden)
    state = _mix(state + as_u64(epochs) + golden)
    state = _mix(state + as_u64(indices) + golden)
    # From a NumPy array: in a graph, TensorFlow converts a Python list of ints above 2^63
    # through float64 and loses their low bits.
    with np.errstate(over="ignore"):
        steps = tf.constant(np.arange(1, DRAWS + 1, dtype=np.uint64) * np.uint64(_GOLDEN))
    bits = tf.bitwise.right_shift(_mix(state[:, None] + steps), tf.constant(40, tf.uint64))
    uniforms = tf.cast(bits, tf.float32) / float(1 << 24)
    return tf.where((indices >= 0)[:, None], uniforms, 0.5)


def _centred(draw: tf.Tensor, strength: float) -> tf.Tensor:
    """A draw in [0, 1) mapped to [-strength, strength)."""
    return (2.0 * draw - 1.0) * strength


def _flip(images: tf.Tensor, flip: tf.Tensor, axis: int) -> tf.Tensor:
    return tf.where(flip[:, None, None, None], tf.reverse(images, [axis]), images)


def _rotate_and_zoom(images: tf.Tensor, angle: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    """One resampling per image: output pixel (x, y) reads the input at the point that the
    rotation by `angle` and scaling by `scale` about the centre map it from."""
    height = tf.cast(tf.shape(images)[1], tf.float32)
    width = tf.cast(tf.shape(images)[2], tf.float32)
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    # x_in = a0 x + a1 y + a2, y_in = b0 x + b1 y + b2 (ImageProjectiveTransform's layout).
    a2 = cx - cos * cx + sin * cy
    b2 = cy - sin * cx - cos * cy
    zeros = tf.zeros_like(cos)
    transforms = tf.stack([cos, -sin, a2, sin, cos, b2, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )


def apply(images: tf.Tensor, uniforms: tf.Tensor, augmentation: Augmentation) -> tf.Tensor:
    """Transforms a batch of uint8 images [n, h, w, 3] with its `draws` [n, DRAWS]."""
    column = {name: uniforms[:, k] for k, name in enumerate(DRAW_NAMES)}
    strength = augmentation.strength
    if strength("flip_left_right"):
        images = _flip(images, column["flip_left_right"] < strength("flip_left_right"), 2)
    if strength("flip_up_down"):
        images = _flip(images, column["flip_up_down"] < strength("flip_up_down"), 1)
    pixels = tf.cast(images, tf.float32)
    if strength("rotate") or strength("zoom"):
        angle = _centred(column["rotate"], strength("rotate") * 2.0 * math.pi)
        scale = 1.0 + _centred(column["zoom"], strength("zoom"))
        pixels = _rotate_and_zoom(pixels, angle, scale)
    if strength("brightness"):
        pixels += (
            255.0 * _centred(column["brightness"], strength("brightness"))[:, None, None, None]
        )
    if strength("contrast"):
        factor = 1.0 + _centred(column["contrast"], strength("contrast"))[:, None, None, None]
        mean = tf.reduce_mean(pixels, axis=[1, 2], keepdims=True)
        pixels = (pixels - mean) * factor + mean
    return tf.cast(tf.clip_by_value(tf.round(pixels), 0.0, 255.0), tf.uint8)
