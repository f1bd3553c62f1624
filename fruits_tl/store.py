"""Examples stored once: chunked `.npy` files with a fingerprint, read through memory maps.

A split's decoded uint8 images (or any [N, ...] array of examples) are written as chunks of
`chunk_rows` rows, `<name>.<digest>.<k>.npy`, each atomically; once all are there they are
copied into one file, `<name>.<digest>.npy` (atomically), then `<name>.json` (the manifest:
fingerprint, count, row shape, dtype, the file) is written last and the chunks removed. So:
- nothing incomplete looks complete: without a manifest that matches, nothing is reused;
- a killed run's rerun keeps the chunks it finished (their names carry a digest of what they
  hold, so a chunk of other data is never taken for one of these) and writes only the rest;
- a reader maps the chunks (`np.load(mmap_mode="r")`): the operating system's page cache holds
  what fits in memory, the process holds only the rows it copies out, and several processes
  reading one store share the pages.

`ChunkedArray.take` copies rows out by index: what an input pipeline calls for each batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import os
from collections.abc import Callable, Sequence

import numpy as np
from absl import logging

from fruits_tl import faults, files
from fruits_tl.stopping import GracefulStop

FORMAT_VERSION = 1
# Rows per chunk: a killed run loses at most one chunk of work; 2,048 128x128 images are 100 MB.
DEFAULT_CHUNK_ROWS = 2048


class ChunkedArray:
    """Several [n_k, ...] arrays read as one [N, ...] array (rows in chunk order)."""

    def __init__(self, chunks: Sequence[np.ndarray], *, row_shape=None, dtype=None):
        """Args:
        chunks: The arrays (memory maps or in memory), all with the same row shape and dtype.
        row_shape, dtype: Needed only when there are no chunks (an empty array).
        """
        self._chunks = list(chunks)
        if self._chunks:
            row_shape, dtype = self._chunks[0].shape[1:], self._chunks[0].dtype
        if row_shape is None or dtype is None:
            raise ValueError("an empty ChunkedArray needs row_shape and dtype")
        self.row_shape = tuple(int(d) for d in row_shape)
        self.dtype = np.dtype(dtype)
        for chunk in self._chunks:
            if tuple(chunk.shape[1:]) != self.row_shape or chunk.dtype != self.dtype:
                raise ValueError("every chunk must have the same row shape and dtype")
        self._starts = np.cumsum([0] + [len(c) for c in self._chunks]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def take(self, indices) -> np.ndarray:
        """Rows `indices` as a new array; an index of -1 gives a row of zeros (padding).

        Each row is copied once, straight from its chunk into the result (fancy indexing
        would copy twice: into a temporary, then into place).
        """
        indices = np.asarray(indices, dtype=np.int64)
        valid = indices >= 0
        if len(self._chunks) == 1 and valid.all():
            return np.take(self._chunks[0], indices, axis=0)
        out = np.zeros((len(indices), *self.row_shape), self.dtype)
        chunk_of = np.searchsorted(self._starts, indices, side="right") - 1
        rows = indices - self._starts[np.maximum(chunk_of, 0)]
        for position in np.nonzero(valid)[0]:
            out[position] = self._chunks[chunk_of[position]][rows[position]]
        return out


@dataclasses.dataclass(frozen=True)
class Stored:
    """A stored array and how it was obtained.

    Attributes:
      examples: The rows, memory-mapped.
      reused: True when every chunk came from an earlier run.
      written_rows: Rows this process produced and wrote now.
    """

    examples: ChunkedArray
    reused: bool
    written_rows: int


def _manifest_path(directory: str, name: str) -> str:
    return os.path.join(directory, f"{name}.json")


def _chunk_name(name: str, digest: str, k: int) -> str:
    return f"{name}.{digest}.{k:05d}.npy"


def _open_chunk(path: str, rows: int, row_shape, dtype) -> np.ndarray | None:
    """The chunk at `path` memory-mapped if it holds `rows` rows of that shape and dtype."""
    try:
        chunk = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if chunk.shape != (rows, *row_shape) or chunk.dtype != dtype:
        return None
    return chunk


def _save_chunk(path: str, array: np.ndarray) -> None:
    with files.atomic_path(path) as temporary:
        with open(temporary, "wb") as stream:
            np.save(stream, array, allow_pickle=False)


def chunk_bounds(count: int, chunk_rows: int) -> list[tuple[int, int]]:
    """[first, last) row ranges of the chunks of `count` rows."""
    return [(first, min(first + chunk_rows, count)) for first in range(0, count, chunk_rows)]


def write_or_reuse(
    directory: str,
    name: str,
    *,
    fingerprint: str,
    count: int,
    row_shape: Sequence[int],
    dtype,
    produce: Callable[[int, int], np.ndarray],
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    writes_chunk: Callable[[int], bool] = lambda k: True,
    wait_for_writers: Callable[[], None] = lambda: None,
    writes_manifest: bool = True,
    stop: GracefulStop | None = None,
    label: str = "",
) -> Stored:
    """The stored array `name` in `directory`, written first unless its manifest matches.

    Args:
      directory: The store's folder.
      name: The array's name (e.g. "train.pixels").
      fingerprint: What the rows are a function of (e.g. the split's listing fingerprint and
        the decode version): a manifest with another fingerprint is stale.
      count, row_shape, dtype: The array's shape and type.
      produce: (first, last) -> the rows [first, last), computed (e.g. decoded).
      chunk_rows: Rows per chunk.
      writes_chunk: Whether this process writes chunk k (several workers split the chunks).
      wait_for_writers: Called once this process's chunks are written, before it reads every
        chunk (under several workers, a barrier).
      writes_manifest: This process writes the manifest (the chief; one writer only).
      stop: Checked after every chunk written: a stop request raises StopRequested there.
      label: The array's name in log lines.

    Returns:
      The Stored array.
    """
    row_shape = tuple(int(d) for d in row_shape)
    dtype = np.dtype(dtype)
    label = label or name
    bounds, paths, whole_path, manifest = _layout(
        directory, name, fingerprint, count, row_shape, dtype, chunk_rows
    )
    if count == 0:
        return Stored(
            ChunkedArray([], row_shape=row_shape, dtype=dtype), reused=True, written_rows=0
        )
    if _read_manifest(directory, name) == manifest:
        whole = _open_chunk(whole_path, count, row_shape, dtype)
        if whole is not None:
            wait_for_writers()  # Every process calls it as often, whichever way it goes.
            wait_for_writers()
            logging.warning(
                "Reusing the stored %s in %s: its fingerprint matches.", label, directory
            )
            return Stored(ChunkedArray([whole], row_shape=row_shape, dtype=dtype), True, 0)
        logging.warning("Rewriting the stored %s in %s: its file is damaged.", label, directory)
    os.makedirs(directory, exist_ok=True)
    if writes_manifest:
        # From here until the new manifest is written, nothing under this name counts.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_manifest_path(directory, name))
    written = _write_chunks(
        paths, bounds, produce, writes_chunk, row_shape, dtype, name, label, directory, stop
    )
    wait_for_writers()
    if writes_manifest:
        _publish(directory, name, label, paths, bounds, whole_path, manifest)
    wait_for_writers()  # The whole file is in place for every process.
    whole = _open_chunk(whole_path, count, row_shape, dtype)
    if whole is None:
        raise RuntimeError(f"the stored {label} is missing or damaged in {directory}")
    examples = ChunkedArray([whole], row_shape=row_shape, dtype=dtype)
    return Stored(examples=examples, reused=False, written_rows=written)


def _layout(directory, name, fingerprint, count, row_shape, dtype, chunk_rows):
    """Where an array's chunks and whole file go, and the manifest that names them: (chunk
    bounds, chunk paths, the whole file's path, the manifest)."""
    digest = hashlib.sha256(
        json.dumps([FORMAT_VERSION, fingerprint, count, row_shape, dtype.str, chunk_rows]).encode()
    ).hexdigest()[:12]
    bounds = chunk_bounds(count, chunk_rows)
    paths = [os.path.join(directory, _chunk_name(name, digest, k)) for k in range(len(bounds))]
    whole_path = os.path.join(directory, f"{name}.{digest}.npy")
    manifest = {
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "count": count,
        "row_shape": list(row_shape),
        "dtype": dtype.str,
        "chunk_rows": chunk_rows,
        "file": os.path.basename(whole_path),
    }
    return bounds, paths, whole_path, manifest


def _write_chunks(
    paths, bounds, produce, writes_chunk, row_shape, dtype, name, label, directory, stop
) -> int:
    """Writes this process's missing chunks (each atomically); returns the rows written."""
    written = 0
    for k, ((first, last), path) in enumerate(zip(bounds, paths, strict=True)):
        if not writes_chunk(k):
            continue
        if _open_chunk(path, last - first, row_shape, dtype) is not None:
            logging.warning("Reusing chunk %d of %d of the stored %s", k + 1, len(bounds), label)
            continue
        rows = np.asarray(produce(first, last))
        if rows.shape != (last - first, *row_shape) or rows.dtype != dtype:
            raise RuntimeError(
                f"{label} rows {first}-{last}: produced {rows.shape} {rows.dtype}, expected "
                f"{(last - first, *row_shape)} {dtype}"
            )
        _save_chunk(path, rows)
        written += last - first
        faults.point(f"store:chunk:{name}:{k + 1}")
        if stop is not None and k + 1 < len(bounds):
            stop.check(
                f"{k + 1} of {len(bounds)} chunks of the stored {label} are saved in "
                f"{directory}; rerun to resume"
            )
    return written


def _publish(directory, name, label, paths, bounds, whole_path, manifest) -> None:
    """The one writer's last step: the chunks merged into the whole file, the manifest
    written (from then on the array counts), and older files of this name removed."""
    missing = [os.path.basename(p) for p in paths if not os.path.exists(p)]
    if missing:
        raise RuntimeError(f"chunks of the stored {label} are missing in {directory}: {missing}")
    row_shape, dtype = tuple(manifest["row_shape"]), np.dtype(manifest["dtype"])
    _merge(paths, bounds, whole_path, count=manifest["count"], row_shape=row_shape, dtype=dtype)
    files.write_json(_manifest_path(directory, name), manifest)
    for stale in glob.glob(os.path.join(glob.escape(directory), f"{glob.escape(name)}.*.npy")):
        if stale != whole_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)


def _merge(paths, bounds, path: str, *, count: int, row_shape, dtype) -> None:
    """Copies the chunks, in order, into one file (atomically): one memory map to read, whose
    row copies run outside Python's lock (faster than reading across chunk files row by row;
    BENCHMARKS.md 11)."""
    with files.atomic_path(path) as temporary:
        whole = np.lib.format.open_memmap(
            temporary, mode="w+", dtype=dtype, shape=(count, *row_shape)
        )
        for chunk_path, (first, last) in zip(paths, bounds, strict=True):
            whole[first:last] = np.load(chunk_path, mmap_mode="r", allow_pickle=False)
        whole.flush()
        del whole


def open_complete(directory: str, name: str, *, fingerprint: str) -> ChunkedArray | None:
    """The stored array `name` if its manifest names `fingerprint` and its file is whole;
    None otherwise (nothing is written)."""
    manifest = _read_manifest(directory, name)
    if not manifest or manifest.get("fingerprint") != fingerprint:
        return None
    try:
        row_shape, dtype = tuple(manifest["row_shape"]), np.dtype(manifest["dtype"])
        count, path = int(manifest["count"]), os.path.join(directory, manifest["file"])
    except (KeyError, TypeError, ValueError):
        return None
    whole = _open_chunk(path, count, row_shape, dtype)
    return None if whole is None else ChunkedArray([whole], row_shape=row_shape, dtype=dtype)


def _read_manifest(directory: str, name: str) -> dict | None:
    try:
        with open(_manifest_path(directory, name), encoding="utf-8") as stream:
            return json.load(stream)
    except (OSError, ValueError):
        return None
