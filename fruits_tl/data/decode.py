"""The one decode function: encoded image bytes to the input pipeline's uint8 pixels.

Every path that turns a file into pixels calls `decode_image`: the folder pipeline (after
`tf.io.read_file`), the TFDS pipeline (on the records' undecoded bytes), prediction, and the
exported SavedModel's `serve_jpeg` signature. Its steps are those of Keras's
`image_dataset_from_directory` loader (`keras.src.utils.image_dataset_utils.load_image`):
`tf.io.decode_image(channels=3, expand_animations=False)` and a bilinear `tf.image.resize`
to the model size, then rounding (half to even) to uint8, so the pixels are Keras's,
rounded (`tests/decode_test.py` checks this on unusual-but-valid images too).

Pure tensor functions: they work eagerly, inside `tf.data` maps and inside `tf.function`s.
"""

from __future__ import annotations

import os

import tensorflow as tf

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
    # The cast first: the bilinear kernel computes in float32 either way (it converts each
    # uint8 input as it reads it, so the output is bit for bit the same), but its float32 path
    # is about twice as fast (BENCHMARKS.md section 5b).
    image = tf.image.resize(tf.cast(image, tf.float32), (image_size, image_size), method="bilinear")
    # Round half to even, no clip: bilinear weights are in [0, 1), so every output lies
    # between two uint8 inputs up to a float rounding error, and rounding brings it into
    # [0, 255]. Same pixels, about 5% faster per image (BENCHMARKS.md section 5a).
    image = tf.cast(tf.round(image), tf.uint8)
    image.set_shape((image_size, image_size, 3))
    return image


def load_image(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """Reads and decodes one image file: `decode_image(tf.io.read_file(path), image_size)`."""
    return decode_image(tf.io.read_file(path), image_size)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity: `taskset`, a container's cpuset),
    which `os.cpu_count()` ignores."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def decode_parallelism() -> int:
    """Parallel calls for a tf.data map that reads and decodes files: twice the cores.

    Used by the input pipeline's decode step and the decode-only passes (audit, decode check).
    Reading a file blocks in system calls, so with one call per core a core sits idle while its call
    waits; and AUTOTUNE sometimes settles on too few (BENCHMARKS.md sections 5 and 7).
    """
    return 2 * available_cores()


def with_pass_options(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """The tf.data options of every pass that reads and decodes files: the decode pass that
    fills the pixel store, the decode check, the audit and the bench's decode ceiling (and its
    tf.data reference pipeline). Parallelism set, not autotuned, and no static rewrites.

    - The autotuner is off. With it on, a cold pass sometimes ran on one of two cores, with
      fixed `num_parallel_calls` too; with it off, none did (BENCHMARKS.md 5a). Decode maps take
      `decode_parallelism()` calls, AUTOTUNE elsewhere means one call per core, and prefetch
      keeps its own buffer heuristic.
    - tf.data's default static optimizations are off. These passes have nothing for them to
      rewrite (their maps and batches are already parallel, there is no repeat to fuse), but
      they ran on every new iterator, i.e. every epoch, and cost the cold pass and the warm
      epochs a few percent (BENCHMARKS.md 5c).

    A caller who wants either back applies `tf.data.Options()` with `autotune.enabled = True`
    or `experimental_optimization.apply_default_optimizations = True` through `with_options`.

    The one decoding pass left autotuned is the tf.data service's
    (`data_service.decode_through_service`): its graph is built here but runs on the service's
    workers, other machines whose cores `decode_parallelism()` cannot see from here, so the
    parallelism is left to the autotuner where the pass runs (figures in BENCHMARKS.md 10).
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.apply_default_optimizations = False
    return dataset.with_options(options)
