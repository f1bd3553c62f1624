"""The one decode function: encoded image bytes to the input pipeline's uint8 pixels; the
decode check (which files the decoder reads, below); and the one MobileNet preprocessing.

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

import dataclasses
import os
import re

import numpy as np
import tensorflow as tf

from fruits_tl.core import progress

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


def decode_parallelism(requested: int = 0) -> int:
    """Parallel calls for a tf.data map that reads and decodes files: twice the cores.

    Used by the input pipeline's decode step and the decode-only passes (audit, decode check).
    `requested` (a `--decode_parallelism`) wins where it is not 0. Reading a file blocks in
    system calls, so with one call per core a core sits idle while its call
    waits; and AUTOTUNE sometimes settles on too few (BENCHMARKS.md sections 5 and 7).
    """
    return requested or 2 * available_cores()


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


# Pure tensor functions: the one MobileNet preprocessing used on every path.
#
# The models apply it as their first layer, Keras's built-in `Rescaling(1/127.5, offset=-1)`,
# which is bit for bit `mobilenet_inputs` in float32 (fruits_tl.models.model); embedding users
# who want float32 batches get `mobilenet_inputs` as the last map of the input pipeline.

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


# Image checks: which files TensorFlow's decoder reads, and what each file really is.
#
# `find_bad_images` decodes every file once with the call Keras's loader makes, in parallel,
# before any job starts, so that bad files are named up front rather than failing mid-epoch.
# `inspect_files` is fruits-tl-audit's one pass over every file (decodability, real format,
# channels, JPEG components, size, content fingerprint). Both are decode-only tf.data passes
# with `decode_parallelism()` calls.

# Files per batch of the decode-only passes: small enough for a progress line every few
# hundred files, large enough that the per-batch work stays vectorised.
PROGRESS_BATCH = 256
# How a read error's reason begins (`undecodable_reason`).
READ_ERROR = "cannot be read"


@dataclasses.dataclass(frozen=True)
class BadImage:
    """A file that TensorFlow's image decoder cannot read."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"

    @property
    def unreadable(self) -> bool:
        """The file could not be read at all: a read error, not a bad image."""
        return self.reason.startswith(READ_ERROR)


def undecodable_reason(path: str) -> str | None:
    """Why TensorFlow cannot decode `path`, in one line; None when it can.

    A file the job cannot read at all (permission denied, an I/O error, gone) is a read
    error, `READ_ERROR (...)`: not a bad image, and never left out by --skip_bad_images.
    """
    try:
        with open(path, "rb") as stream:
            head = stream.read(1)
    except OSError as error:
        return f"{READ_ERROR} ({error.strerror or error})"
    if not head:
        return "empty file (0 bytes)"
    try:
        tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except (tf.errors.OpError, ValueError) as error:
        message = getattr(error, "message", str(error))
        # Drop TensorFlow's "{{function_node ...}}" prefix; keep the decoder's own words.
        message = re.sub(r"\{\{[^}]*\}\}\s*", "", message).strip().splitlines()[0]
        message = re.sub(r"\s*\[Op:\w+\].*$", "", message)
        return f"cannot be decoded as an image ({message})"
    return None


def decode_error_reason(path: str) -> str:
    """Describes why TensorFlow cannot decode `path`, in one line (a file that decodes now
    failed before: it changed, or its read failed then)."""
    return undecodable_reason(path) or "cannot be decoded as an image"


def decode_pass(paths: list[str]) -> tf.data.Dataset:
    """TensorFlow's decoder alone over `paths`, in parallel: batches of (index, shape).

    The decode call is the one Keras's loader makes (`decode_image(channels=3,
    expand_animations=False)`); a file it rejects is left out (`ignore_errors`), so its index
    never comes out. This is the decode check's pass, and the bench's decode ceiling.
    """

    @tf.autograph.experimental.do_not_convert
    def probe(index, path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        # Returning the shape keeps the decode from being pruned as dead code.
        return index, tf.shape(image)

    dataset = tf.data.Dataset.from_tensor_slices((tf.range(len(paths), dtype=tf.int64), paths))
    dataset = dataset.map(probe, num_parallel_calls=decode_parallelism(), deterministic=False)
    return with_pass_options(dataset.ignore_errors().batch(PROGRESS_BATCH))


def find_bad_images(file_paths: list[str] | tuple[str, ...]) -> tuple[BadImage, ...]:
    """Decodes every file with TensorFlow's decoder, in parallel, and returns the failures.

    The decode call is the one Keras's loader makes (`decode_image(channels=3,
    expand_animations=False)`), so a file that passes here loads in training. Grayscale, CMYK,
    progressive JPEG and PNG with alpha all decode to RGB and pass.

    Args:
      file_paths: Files to check.

    Returns:
      The files that failed, with a reason each, in input order.
    """
    paths = list(file_paths)
    if not paths:
        return ()
    decoded = np.zeros(len(paths), dtype=bool)
    counter = progress.Progress(len(paths), label="decode check")
    for indices, shapes in decode_pass(paths).as_numpy_iterator():
        counter.add(len(indices))
        good = np.all(shapes > 0, axis=1)
        decoded[indices[good]] = True
    counter.finish()
    return tuple(
        BadImage(path, decode_error_reason(path))
        for path, ok in zip(paths, decoded, strict=True)
        if not ok
    )


def describe_bad_images(bad: tuple[BadImage, ...]) -> str:
    return "; ".join(str(item) for item in bad)
