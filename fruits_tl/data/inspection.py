"""What each file really is: fruits-tl-audit's one pass over every file of a folder.

One decode-only tf.data pass (`decode.decode_parallelism()` calls) reads every file and
records whether it decodes, its real format (from its first bytes, whatever its extension),
its channels, its JPEG components, its size and a fingerprint of its content (for duplicates).
The bench's `audit` variant times the same pass.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import numpy as np
import tensorflow as tf

from fruits_tl.core import progress
from fruits_tl.data.decode import (
    PROGRESS_BATCH,
    decode_error_reason,
    decode_parallelism,
    with_pass_options,
)

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
    start = time.perf_counter()
    found = _read_all(paths)
    seconds = time.perf_counter() - start
    facts = []
    for index, (path, split, class_name) in enumerate(entries):
        if not found["decoded"][index]:
            reason = decode_error_reason(path)
            facts.append(FileFacts(path, split, class_name, decodable=False, reason=reason))
            continue
        height, width, channels = (int(v) for v in found["shapes"][index])
        facts.append(
            FileFacts(
                path,
                split,
                class_name,
                decodable=True,
                real_format=_format_of(found["heads"][index]),
                channels=channels,
                jpeg_components=int(found["components"][index]),
                height=height,
                width=width,
                fingerprint=int(found["fingerprints"][index]),
            )
        )
    return facts, len(paths) / max(seconds, 1e-9)


def _read_all(paths: list[str]) -> dict:
    """The pass itself: per file, whether it decoded, its shape, JPEG components, first bytes
    and content fingerprint (arrays indexed like `paths`)."""
    stand_in = tf.constant(_stand_in_jpeg())
    dataset = tf.data.Dataset.from_tensor_slices((tf.range(len(paths), dtype=tf.int64), paths))
    dataset = dataset.map(
        tf.autograph.experimental.do_not_convert(lambda index, path: _probe(index, path, stand_in)),
        num_parallel_calls=decode_parallelism(),
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
    found = {
        "decoded": np.zeros(len(paths), dtype=bool),
        "shapes": np.zeros((len(paths), 3), dtype=np.int64),
        "components": np.zeros(len(paths), dtype=np.int64),
        "fingerprints": np.zeros(len(paths), dtype=np.uint64),
        "heads": [b""] * len(paths),
    }
    counter = progress.Progress(len(paths), label="audit")
    for indices, shapes, components, heads, fingerprints in with_pass_options(
        dataset
    ).as_numpy_iterator():
        counter.add(len(indices))
        found["decoded"][indices] = True
        found["shapes"][indices] = shapes
        found["components"][indices] = components
        found["fingerprints"][indices] = np.ascontiguousarray(fingerprints).view("<u8")[:, 0]
        for i, head in zip(indices.tolist(), heads.tolist(), strict=True):
            found["heads"][i] = head
    counter.finish()
    return found
