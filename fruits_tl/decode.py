"""The one decode function: encoded image bytes to the route's uint8 pixels.

Every path that turns a file into pixels calls `decode_image`: the folder route (after
`tf.io.read_file`), the TFDS route (on the records' undecoded bytes), prediction, and the
exported SavedModel's `serve_jpeg` signature. Its steps are those of Keras's
`image_dataset_from_directory` loader (`keras.src.utils.image_dataset_utils.load_image`):
`tf.io.decode_image(channels=3, expand_animations=False)` and a bilinear `tf.image.resize`
to the model size, followed by rounding to uint8 (`preprocess.to_uint8`), so the pixels are
Keras's, rounded (`tests/decode_test.py` checks this on unusual-but-valid images too).

Pure tensor functions: they work eagerly, inside `tf.data` maps and inside `tf.function`s.
"""

from __future__ import annotations

import tensorflow as tf

from fruits_tl import preprocess

# Bumped whenever the decoded pixels for the same file could change (decoder, resize, cast);
# part of every cache and feature fingerprint.
DECODE_VERSION = "keras-idfd-bilinear-round-uint8-v1"


def decode_image(contents: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decodes one encoded image (JPEG, PNG, BMP, GIF) to uint8 [image_size, image_size, 3].

    Grayscale and CMYK JPEGs, progressive JPEGs and PNGs with alpha all come out as RGB, as
    in Keras's loader; an animated GIF gives its first frame.

    Args:
      contents: A scalar string tensor holding the file's bytes.
      image_size: Output height and width.

    Returns:
      The uint8 image.
    """
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image = tf.image.resize(image, (image_size, image_size), method="bilinear")
    image = preprocess.to_uint8(image)
    image.set_shape((image_size, image_size, 3))
    return image


def load_image(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """Reads and decodes one image file: `decode_image(tf.io.read_file(path), image_size)`."""
    return decode_image(tf.io.read_file(path), image_size)
