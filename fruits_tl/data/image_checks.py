"""Image checks: which files TensorFlow's decoder reads, and what each file really is.

`find_bad_images` decodes every file once with the call Keras's loader makes, in parallel,
before any job starts, so that bad files are named up front rather than failing mid-epoch.
`inspect_files` is fruits-tl-audit's one pass over every file (decodability, real format,
channels, JPEG components, size, content fingerprint). Both are decode-only tf.data passes
with `decode.decode_parallelism()` calls.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time

import numpy as np
import tensorflow as tf

from fruits_tl.core import progress
from fruits_tl.data import decode

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
    dataset = dataset.map(
        probe, num_parallel_calls=decode.decode_parallelism(), deterministic=False
    )
    return decode.with_pass_options(dataset.ignore_errors().batch(PROGRESS_BATCH))


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


MAGIC = {b"\xff\xd8\xff": "jpeg", b"\x89PNG": "png", b"GIF8": "gif", b"BM": "bmp", b"RIFF": "webp"}
EXTENSION_FORMATS = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".gif": "gif", ".bmp": "bmp"}


def _format_of(head: bytes) -> str:
    for magic, name in MAGIC.items():
        if head.startswith(magic):
            return name
    return "unknown"


@dataclasses.dataclass(frozen=True)
class FileFacts:
    """What the decode pass learnt about one file."""

    path: str
    split: str
    class_name: str
    decodable: bool
    reason: str = ""
    real_format: str = ""
    channels: int = 0
    jpeg_components: int = 0
    height: int = 0
    width: int = 0
    fingerprint: int = 0


@functools.cache
def _stand_in_jpeg() -> bytes:
    """A 1x1 JPEG made by TensorFlow's encoder: the header parsed in place of a non-JPEG file."""
    return tf.io.encode_jpeg(tf.zeros([1, 1, 3], tf.uint8)).numpy()


def _probe(index, path, stand_in):
    """Per file, in parallel: read, decode, and the JPEG header's component count.

    One decode op for every format and no tf.cond, so the per-file work is the decode plus a
    header parse (BENCHMARKS.md section 3 has its cost). The component count (4 for CMYK or
    YCCK, which decode to 3 channels) comes from the file's own JPEG header, or a stand-in
    header for other formats, discarded below.
    """
    contents = tf.io.read_file(path)
    image = tf.io.decode_image(contents, channels=0, expand_animations=False)
    is_jpeg = tf.io.is_jpeg(contents)
    components = tf.io.extract_jpeg_shape(tf.where(is_jpeg, contents, stand_in))[2]
    return index, tf.shape(image), tf.where(is_jpeg, components, 0), contents


def _digest_batch(indices, shapes, components, contents):
    """Per batch, vectorised: the first 4 bytes (the real format) and a 64-bit content digest."""
    return indices, shapes, components, tf.strings.substr(contents, 0, 4), tf.fingerprint(contents)


def inspect_files(entries: list[tuple[str, str, str]]) -> tuple[list[FileFacts], float]:
    """Reads and decodes every file in parallel; returns facts per file and the images/s.

    The decoder is Keras's loader's, `tf.io.decode_image(expand_animations=False)`, here with
    `channels=0` (the loader asks for 3) so that grayscale or alpha shows as 1, 2 or 4
    channels; a file that decodes here loads in training.

    Args:
      entries: (path, split, class name) per file.
    """
    paths = [e[0] for e in entries]
    if not paths:
        return [], 0.0
    stand_in = tf.constant(_stand_in_jpeg())
    dataset = tf.data.Dataset.from_tensor_slices((tf.range(len(paths), dtype=tf.int64), paths))
    dataset = dataset.map(
        tf.autograph.experimental.do_not_convert(lambda index, path: _probe(index, path, stand_in)),
        num_parallel_calls=decode.decode_parallelism(),
        deterministic=False,
    )
    dataset = (
        dataset.ignore_errors()
        .batch(PROGRESS_BATCH)
        .map(
            tf.autograph.experimental.do_not_convert(_digest_batch),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    )
    dataset = decode.with_pass_options(dataset)
    decoded = np.zeros(len(paths), dtype=bool)
    all_shapes = np.zeros((len(paths), 3), dtype=np.int64)
    all_components = np.zeros(len(paths), dtype=np.int64)
    all_fingerprints = np.zeros(len(paths), dtype=np.uint64)
    heads: list = [b""] * len(paths)
    start = time.perf_counter()
    counter = progress.Progress(len(paths), label="audit")
    for indices, shapes, components, batch_heads, fingerprints in dataset.as_numpy_iterator():
        counter.add(len(indices))
        decoded[indices] = True
        all_shapes[indices] = shapes
        all_components[indices] = components
        all_fingerprints[indices] = np.ascontiguousarray(fingerprints).view("<u8")[:, 0]
        for i, head in zip(indices.tolist(), batch_heads.tolist(), strict=True):
            heads[i] = head
    counter.finish()
    seconds = time.perf_counter() - start
    facts = []
    for index, (path, split, class_name) in enumerate(entries):
        if not decoded[index]:
            facts.append(
                FileFacts(
                    path, split, class_name, decodable=False, reason=decode_error_reason(path)
                )
            )
            continue
        height, width, channels = (int(v) for v in all_shapes[index])
        facts.append(
            FileFacts(
                path,
                split,
                class_name,
                decodable=True,
                real_format=_format_of(heads[index]),
                channels=channels,
                jpeg_components=int(all_components[index]),
                height=height,
                width=width,
                fingerprint=int(all_fingerprints[index]),
            )
        )
    return facts, len(paths) / max(seconds, 1e-9)
