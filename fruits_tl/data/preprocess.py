"""Pure tensor functions: the one MobileNet preprocessing used on every path.

The models apply it as their first layer, Keras's built-in `Rescaling(1/127.5, offset=-1)`,
which is bit for bit `mobilenet_inputs` in float32 (fruits_tl.models.model); embedding users
who want float32 batches get `mobilenet_inputs` as the last map of the input pipeline.
"""

from __future__ import annotations

import tensorflow as tf

# Recorded in feature fingerprints; change it whenever `mobilenet_inputs` changes.
PREPROCESSING_VERSION = "mobilenet_v1_tf_mode:x/127.5-1"


def mobilenet_inputs(images: tf.Tensor) -> tf.Tensor:
    """Maps raw pixels in [0, 255] (uint8 or float) to float32 in [-1, 1].

    This is Keras's `keras.applications.mobilenet.preprocess_input` ("tf" mode), written as one
    multiply-add on float32.

    Args:
      images: Pixels of any shape, uint8 or float, in [0, 255].

    Returns:
      float32 tensor of the same shape, `images / 127.5 - 1`.
    """
    images = tf.cast(images, tf.float32)
    return images * (1.0 / 127.5) - 1.0
