"""Examples stored once: chunked `.npy` files with a fingerprint, read through memory maps.

A split's decoded uint8 images (or any [N, ...] array of examples) are written as chunks of
`chunk_rows` rows, `<name>.<digest>.<k>.npy`, each atomically, then `<name>.json` (the manifest:
fingerprint, count, row shape, dtype, chunk files) last. So:
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

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.row_shape)

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

    def to_numpy(self) -> np.ndarray:
        """All rows in one array in memory."""
        return self.take(np.arange(len(self)))


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
    digest = hashlib.sha256(
        json.dumps([FORMAT_VERSION, fingerprint, count, row_shape, dtype.str, chunk_rows]).encode()
    ).hexdigest()[:12]
    bounds = chunk_bounds(count, chunk_rows)
    paths = [os.path.join(directory, _chunk_name(name, digest, k)) for k in range(len(bounds))]
    manifest = {
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "count": count,
        "row_shape": list(row_shape),
        "dtype": dtype.str,
        "chunk_rows": chunk_rows,
        "chunks": [os.path.basename(p) for p in paths],
    }
    if _read_manifest(directory, name) == manifest:
        chunks = [
            _open_chunk(p, last - first, row_shape, dtype)
            for p, (first, last) in zip(paths, bounds, strict=True)
        ]
        if all(c is not None for c in chunks):
            wait_for_writers()  # Every process calls it once, whichever way it goes.
            logging.warning(
                "Reusing the stored %s (%d rows) in %s: its fingerprint matches.",
                label,
                count,
                directory,
            )
            examples = ChunkedArray(chunks, row_shape=row_shape, dtype=dtype)
            return Stored(examples=examples, reused=True, written_rows=0)
        logging.warning(
            "Rewriting the stored %s in %s: a chunk is missing or damaged.", label, directory
        )
    os.makedirs(directory, exist_ok=True)
    if writes_manifest:
        # From here until the new manifest is written, nothing under this name counts.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_manifest_path(directory, name))
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
    wait_for_writers()
    chunks = [
        _open_chunk(p, last - first, row_shape, dtype)
        for p, (first, last) in zip(paths, bounds, strict=True)
    ]
    missing = [os.path.basename(p) for p, c in zip(paths, chunks, strict=True) if c is None]
    if missing:
        raise RuntimeError(f"chunks of the stored {label} are missing in {directory}: {missing}")
    if writes_manifest:
        for stale in glob.glob(os.path.join(glob.escape(directory), f"{glob.escape(name)}.*.npy")):
            if stale not in paths:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(stale)
        files.write_json(_manifest_path(directory, name), manifest)
    examples = ChunkedArray(chunks, row_shape=row_shape, dtype=dtype)
    return Stored(examples=examples, reused=False, written_rows=written)


def open_complete(directory: str, name: str, *, fingerprint: str) -> ChunkedArray | None:
    """The stored array `name` if its manifest names `fingerprint` and every chunk is whole;
    None otherwise (nothing is written)."""
    manifest = _read_manifest(directory, name)
    if not manifest or manifest.get("fingerprint") != fingerprint:
        return None
    try:
        row_shape, dtype = tuple(manifest["row_shape"]), np.dtype(manifest["dtype"])
        bounds = chunk_bounds(int(manifest["count"]), int(manifest["chunk_rows"]))
        names = list(manifest["chunks"])
    except (KeyError, TypeError, ValueError):
        return None
    if len(names) != len(bounds):
        return None
    chunks = [
        _open_chunk(os.path.join(directory, chunk), last - first, row_shape, dtype)
        for chunk, (first, last) in zip(names, bounds, strict=True)
    ]
    if any(c is None for c in chunks):
        return None
    return ChunkedArray(chunks, row_shape=row_shape, dtype=dtype)


def _read_manifest(directory: str, name: str) -> dict | None:
    try:
        with open(_manifest_path(directory, name), encoding="utf-8") as stream:
            return json.load(stream)
    except (OSError, ValueError):
        return None
