"""Decoded pixels stored once: each source folder's uint8 images in one checksummed store file.

Decoding is the expensive part of reading an image (BENCHMARKS.md 5), so each file is decoded
once, by the one decode function, into the store under `<features_dir>/pixels` (`store.fill`,
chunk by chunk, in place), and every job reads it through a view of its memory map. For an
image folder that pass is the decode check itself (`SourceStores`: one store per source
folder, Training and Test; a file the decoder rejects is a missing row), and the splits are
rows of their source's store (`store.StoredRows`). `store_pixels` stores one split on its own
(TFDS records, the bench). A store's fingerprint is its files' (every path, size and
modification time, the image size and the decode version): a later run on unchanged files
decodes nothing.

Decoding takes one ordered pass (`decode_pass`) over each run of chunks or, with a tf.data
service address, the service's workers. Under several workers the chunks are shared out
(`store.owns_chunk`: chunk k to worker k mod n): each worker decodes only its chunks into the
one file, then all of them read every row (the store is on a folder they all reach, like the
checkpoints).
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import shutil
import tempfile
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from absl import logging

from fruits_tl.core.config import DATA_SERVICE_TIMEOUT
from fruits_tl.core.errors import UserInputError
from fruits_tl.core.stopping import GracefulStop
from fruits_tl.data import decode, loading, store

# Images per batch of the decode pass that fills a chunk.
DECODE_BATCH = 256


@functools.cache
def temporary_directory() -> str:
    """This process's temporary pixel store folder, removed when the process exits (jobs that
    keep nothing: evaluation, export, the embedding API's "memory")."""
    path = tempfile.mkdtemp(prefix="fruits-tl-store-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def decode_rows(
    folder: loading.ImageFolder,
    first: int,
    last: int,
    *,
    service: str = "",
    service_timeout: float = DATA_SERVICE_TIMEOUT,
):
    """Images [first, last) of a split, decoded: blocks of (positions, uint8 images) for the
    store to write in place. A file the decoder rejects is in no block (a missing row)."""
    if service:
        subset = _rows(folder, first, last)
        from fruits_tl.data import data_service  # Only with a service: not on the default path.

        images, delivered = data_service.decode_rows_through_service(
            subset, service, timeout=service_timeout
        )
        yield np.arange(first, last)[delivered], images[delivered]
        return
    for positions, images in decode_pass(folder, first, last).as_numpy_iterator():
        yield positions, images


def _rows(folder: loading.ImageFolder, first: int, last: int) -> loading.ImageFolder:
    if (first, last) == (0, len(folder)):
        return folder
    positions = np.arange(len(folder))
    return loading.select(folder, (positions >= first) & (positions < last), name=folder.name)


def decode_pass(folder: loading.ImageFolder, first: int, last: int) -> tf.data.Dataset:
    """The decode pass over images [first, last): batches of (positions, uint8 images), the
    split's own decoded elements (`ImageFolder.make_elements`: the one decode function, in
    parallel, in file order, so the store writes and checksums them as they come). A file the
    decoder rejects is left out (`ignore_errors`): its position never comes out."""
    elements = _rows(folder, first, last).make_elements()
    positions = tf.data.Dataset.range(first, last)
    dataset = tf.data.Dataset.zip(positions, elements).map(
        tf.autograph.experimental.do_not_convert(lambda position, element: (position, element[0]))
    )
    return decode.with_pass_options(dataset.ignore_errors().batch(DECODE_BATCH).prefetch(2))


def store_pixels(
    folder: loading.ImageFolder,
    *,
    directory: str,
    chunk_images: int = store.DEFAULT_CHUNK_ROWS,
    data_service_address: str = "",
    data_service_timeout: float = DATA_SERVICE_TIMEOUT,
    worker_index: int = 0,
    worker_count: int = 1,
    wait_for_workers=lambda: None,
    stop: GracefulStop | None = None,
    name: str = "",
    missing_ok: bool = False,
) -> store.Stored:
    """The split's decoded uint8 images, memory-mapped from the store (decoded first if needed).

    Args:
      folder: The split.
      directory: The store's folder.
      name: The stored array is `<name>.pixels` (default: `split-<the split's name>`, apart
        from the source folders' stores, which the decode check names "train" and "test").
      chunk_images: Images per chunk.
      data_service_address: Decode on the tf.data service there ("" decodes here).
      data_service_timeout: Seconds without an element before the service counts as lost.
      worker_index, worker_count: This worker among several; chunk k is decoded by worker
        k mod worker_count, and worker 0 writes the manifest.
      wait_for_workers: A barrier among the workers (called once by every worker).
      stop: A stop request is answered after the current chunk.
      missing_ok: Undecodable files are the store's missing rows (the decode check); else
        they are an error (the check passed them before).

    Returns:
      The Stored images, element for element with `folder.labels`.
    """
    size = folder.image_size
    stored = store.fill(
        directory,
        f"{name or 'split-' + folder.name}.pixels",
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
        worker_index=worker_index,
        worker_count=worker_count,
        barrier=wait_for_workers,
        stop=stop,
        label=f"{folder.name} pixels",
    )
    if stored.missing and not missing_ok:
        # The decode check passed these files: they changed, or cannot be read now.
        bad = [folder.file_paths[i] for i in stored.missing]
        raise UserInputError(
            f"{len(bad)} file(s) of the {folder.name} split could not be decoded while they were "
            f"stored, though the decode check passed them (changed since?): {', '.join(bad[:10])}"
            f"{', ...' if len(bad) > 10 else ''}. Fix or remove them, then rerun: changed files "
            "are checked again."
        )
    return stored


@dataclasses.dataclass(eq=False)
class SourceStores:
    """The decode check as the pixel store's fill: each source folder's files (Training, Test)
    decoded once, in the check's one pass, into `<source>.pixels`, and every split read as
    rows of its source's store (`rows`), so a cold run decodes each file once.

    Pass `check` as `loading.load_dataset`'s check. A file the decoder rejects is a missing row
    of the store (its manifest records it, so a later run on unchanged files decodes nothing
    to know it) and comes back as a BadImage with its reason.

    Attributes:
      directory: The pixel store's folder.
      image_size: Images are image_size x image_size.
      chunk_images: Images per chunk.
      data_service_address, data_service_timeout: Decode on the tf.data service there.
      worker_index, worker_count, wait_for_workers: This worker among several (`store.fill`).
      stop: A stop request is answered after the current chunk.
    """

    directory: str
    image_size: int
    chunk_images: int = store.DEFAULT_CHUNK_ROWS
    data_service_address: str = ""
    data_service_timeout: float = DATA_SERVICE_TIMEOUT
    worker_index: int = 0
    worker_count: int = 1
    wait_for_workers: Callable[[], None] = lambda: None
    stop: GracefulStop | None = None
    _sources: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def for_job(
        cls, data_config, *, directory: str, chunk_images: int, role, wait_for_workers, stop=None
    ) -> SourceStores:
        """The stores of a job on `data_config`'s image folder, for the worker `role` (its
        index and count among the job's workers)."""
        return cls(
            directory=directory,
            image_size=data_config.image_size,
            chunk_images=chunk_images,
            data_service_address=data_config.data_service_address,
            data_service_timeout=data_config.data_service_timeout,
            worker_index=role.index,
            worker_count=role.count,
            wait_for_workers=wait_for_workers,
            stop=stop,
        )

    def check(self, source: str, paths: list[str]) -> tuple[decode.BadImage, ...]:
        """Decodes the source's files into its store (or reuses it); returns the bad ones."""
        folder = loading.folder_of_files(paths, image_size=self.image_size, name=source)
        stored = store_pixels(
            folder, directory=self.directory, name=source, missing_ok=True, **self._job()
        )
        self._sources[source] = (stored.examples, {path: i for i, path in enumerate(paths)})
        if stored.written_rows or stored.missing and not stored.reused:
            logging.info(
                "Decode check: %d %s images decoded into the pixel store in %s (%d undecodable)",
                stored.written_rows,
                source,
                self.directory,
                len(stored.missing),
            )
        bad = []
        for i in stored.missing:
            reason = decode.undecodable_reason(paths[i])
            if reason is None:
                raise UserInputError(
                    f"'{paths[i]}' decodes here but did not come back from the tf.data service "
                    f"at {self.data_service_address} (a service worker lost?). Restart "
                    "fruits-tl-data-service and rerun the same command."
                )
            bad.append(decode.BadImage(paths[i], reason))
        return tuple(bad)

    def _source_of(self, folder: loading.ImageFolder):
        if folder.image_size != self.image_size:
            return None
        for array, row_of in self._sources.values():
            if all(path in row_of for path in folder.file_paths):
                return array, row_of
        return None

    def holds(self, folder: loading.ImageFolder) -> bool:
        """Whether one source's store holds every file of the split, at its size."""
        return self._source_of(folder) is not None

    def _job(self) -> dict:
        """`store_pixels`' settings of this job's worker."""
        return dict(
            chunk_images=self.chunk_images,
            data_service_address=self.data_service_address,
            data_service_timeout=self.data_service_timeout,
            worker_index=self.worker_index,
            worker_count=self.worker_count,
            wait_for_workers=self.wait_for_workers,
            stop=self.stop,
        )

    def rows_or_stored(self, folder: loading.ImageFolder) -> store.StoredRows:
        """A split's images: rows of its source's store, or (a split this decode check did not
        see: TFDS records) the split decoded into its own store in the same folder."""
        if self.holds(folder):
            return self.rows(folder)
        stored = store_pixels(folder, directory=self.directory, **self._job())
        return store.StoredRows(stored.examples, np.arange(len(folder), dtype=np.int64))

    def rows(self, folder: loading.ImageFolder) -> store.StoredRows:
        """A split's images as rows of its source folder's store."""
        found = self._source_of(folder)
        if found is None:
            raise KeyError(f"no source store holds the {folder.name} split's files")
        array, row_of = found
        return store.StoredRows(array, np.asarray([row_of[p] for p in folder.file_paths], np.int64))
