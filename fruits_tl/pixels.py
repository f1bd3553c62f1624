"""Decoded pixels stored once: each split's uint8 images in a chunked, fingerprinted store.

Images mode trains on every image of every epoch. Decoding is the expensive part of reading an
image (BENCHMARKS.md 5), so each split is decoded once, by the one decode function, into
`store.write_or_reuse` chunks under `<features_dir>/pixels`, and training reads them through
memory maps. The store's fingerprint is the split's (every file's path, size and modification
time, the image size, the class map and the decode version): a later run on unchanged files
decodes nothing.

Decoding a chunk takes the input pipeline's evaluation pass (`pipeline.make_batches`, file order,
no cache) or, with a tf.data service address, the service's workers. Under several workers
the chunks are shared out (chunk k to worker k mod n): each worker decodes only its chunks,
then all of them read every chunk (the store is on a folder they all reach, like the
checkpoints).
"""

from __future__ import annotations

import numpy as np

from fruits_tl import data, data_service, pipeline, store
from fruits_tl.stopping import GracefulStop

# Images per batch of the decode pass that fills a chunk.
DECODE_BATCH = 256


def decode_rows(
    folder: data.ImageFolder,
    first: int,
    last: int,
    *,
    service: str = "",
    service_timeout: float = data_service.DEFAULT_TIMEOUT,
) -> np.ndarray:
    """Images [first, last) of a split, decoded in file order: [last - first, S, S, 3] uint8."""
    if (first, last) == (0, len(folder)):
        subset = folder
    else:
        positions = np.arange(len(folder))
        subset = data.select(folder, (positions >= first) & (positions < last), name=folder.name)
    if service:
        return data_service.decode_through_service(subset, service, timeout=service_timeout)
    batches = pipeline.make_batches(
        subset, batch_size=DECODE_BATCH, training=False, cache="none", output="uint8"
    )
    images = [x for x, _ in batches.as_numpy_iterator()]
    size = folder.image_size
    return np.concatenate(images) if images else np.zeros((0, size, size, 3), np.uint8)


def store_pixels(
    folder: data.ImageFolder,
    *,
    directory: str,
    chunk_images: int = store.DEFAULT_CHUNK_ROWS,
    data_service_address: str = "",
    data_service_timeout: float = data_service.DEFAULT_TIMEOUT,
    worker_index: int = 0,
    worker_count: int = 1,
    wait_for_workers=lambda: None,
    stop: GracefulStop | None = None,
) -> store.Stored:
    """The split's decoded uint8 images, memory-mapped from the store (decoded first if needed).

    Args:
      folder: The split.
      directory: The store's folder.
      chunk_images: Images per chunk.
      data_service_address: Decode on the tf.data service there ("" decodes here).
      data_service_timeout: Seconds without an element before the service counts as lost.
      worker_index, worker_count: This worker among several; chunk k is decoded by worker
        k mod worker_count, and worker 0 writes the manifest.
      wait_for_workers: A barrier among the workers (called once by every worker).
      stop: A stop request is answered after the current chunk.

    Returns:
      The Stored images, element for element with `folder.labels`.
    """
    size = folder.image_size
    return store.write_or_reuse(
        directory,
        f"{folder.name}.pixels",
        fingerprint=folder.fingerprint,
        count=len(folder),
        row_shape=(size, size, 3),
        dtype=np.uint8,
        produce=lambda first, last: decode_rows(
            folder,
            first,
            last,
            service=data_service_address,
            service_timeout=data_service_timeout,
        ),
        chunk_rows=chunk_images,
        writes_chunk=lambda k: k % worker_count == worker_index,
        wait_for_writers=wait_for_workers,
        writes_manifest=worker_index == 0,
        stop=stop,
        label=f"{folder.name} pixels",
    )
