"""The store: rows of examples written once into one file, read natively by TensorFlow.

It holds decoded pixels (filled by the decode pass: `SourceStores`, `store_pixels`, below),
backbone features and their labels (`backbone_features.py`): any [N, ...] array of rows. An
array `name` in a folder is:
- `<name>.<digest>.rows`: the rows, raw (C order, no header), [count, *row_shape] of dtype;
  the digest names what the rows are (fingerprint, count, shape, dtype, chunk size), so a
  file of other data is never taken for this one;
- `<name>.json`, the manifest, written last (atomically): fingerprint, count, row shape,
  dtype, the file, and per chunk of `chunk_rows` rows its CRC-32 and the rows its producer
  could not make (an undecodable image). Without a manifest that matches, nothing counts.

Filling (`fill`): the file is created at its final size and each chunk's rows are written
straight into their place (no second copy). After a chunk is written, a marker
`<name>.<digest>.chunk-<k>.json` records its CRC; a killed run's rerun keeps every chunk
whose marker matches the bytes on disk and writes only the rest. Under several workers one
rule shares the chunks out (`owns_chunk`: chunk k to worker k mod n); the chief checks every
marker, syncs the file to disk, then writes the manifest and removes the markers.

Reading: `StoredArray.tensor()` is a zero-copy view of the file (a copy-on-write memory map
exported through DLPack): the operating system's page cache holds what fits in memory, the
process holds only the rows it gathers, and processes reading one store share the pages.
`StoredArray.gather_by_path` reads rows in the graph by the file's path (ImmutableConst), for
datasets that are serialised (the tf.data service): nothing of the store enters the graph, but
TensorFlow 2.21 folds the ImmutableConst into a constant when it instantiates the function,
so each process that runs the graph holds a copy of the store (BENCHMARKS.md 16c). Under op
determinism (`--deterministic`) TensorFlow copies the view too.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import dataclasses
import errno
import functools
import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from fruits_tl.core import files, stopping
from fruits_tl.core.config import DATA_SERVICE_TIMEOUT, UserInputError
from fruits_tl.core.stopping import GracefulStop
from fruits_tl.data import decode, loading

FORMAT_VERSION = 2
# Rows per chunk: a killed run loses at most one chunk of work; 2,048 128x128 images are 100 MB.
DEFAULT_CHUNK_ROWS = 2048
# Bytes per piece when a chunk's CRC is computed (bounded memory whatever the chunk size).
_CRC_PIECE = 16 << 20
# Syncs a file's data to disk (macOS has no fdatasync; fsync also syncs the metadata).
_SYNC_DATA = getattr(os, "fdatasync", os.fsync)


def owns_chunk(chunk: int, worker_index: int, worker_count: int) -> bool:
    """The one rule that splits a pass among workers: chunk k belongs to worker k mod n."""
    return chunk % worker_count == worker_index


def chunk_bounds(count: int, chunk_rows: int) -> list[tuple[int, int]]:
    """[first, last) row ranges of the chunks of `count` rows."""
    return [(first, min(first + chunk_rows, count)) for first in range(0, count, chunk_rows)]


@dataclasses.dataclass(frozen=True)
class StoredArray:
    """A complete stored array: [count, *row_shape] rows of `dtype` in the file at `path`."""

    path: str
    count: int
    row_shape: tuple[int, ...]
    dtype: np.dtype

    def __len__(self) -> int:
        return self.count

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.count * self.row_bytes

    def numpy(self) -> np.ndarray:
        """The rows as a copy-on-write memory map: reads share the file's pages, and nothing
        a caller writes reaches the file."""
        if self.count == 0:
            return np.zeros((0, *self.row_shape), self.dtype)
        return np.memmap(self.path, self.dtype, mode="c", shape=(self.count, *self.row_shape))

    def tensor(self) -> tf.Tensor:
        """The rows as a tensor that shares the memory map's pages (DLPack; no copy).

        A read-only map cannot be exported through DLPack; a copy-on-write one can, and
        nothing is ever written through it.
        """
        if self.count == 0:
            return tf.zeros((0, *self.row_shape), tf.as_dtype(self.dtype))
        return tf.experimental.dlpack.from_dlpack(self.numpy().__dlpack__())

    def gather_by_path(self, indices: tf.Tensor) -> tf.Tensor:
        """Rows `indices` (>= 0), read in the graph by the file's path (ImmutableConst), so a
        serialised dataset carries only the path; the process that runs it holds a copy of
        the file (TensorFlow folds the op into a constant)."""
        if self.count == 0:
            return tf.zeros([0, *self.row_shape], tf.as_dtype(self.dtype))
        whole = tf.raw_ops.ImmutableConst(
            dtype=tf.as_dtype(self.dtype),
            shape=[self.count, *self.row_shape],
            memory_region_name=self.path,
        )
        return tf.gather(whole, indices)


@dataclasses.dataclass(frozen=True, eq=False)
class StoredRows:
    """Some rows of a stored array, in a given order: a split of the rows decoded for its
    source folder (row i here is `array`'s row `rows[i]`), read through the same view."""

    array: StoredArray
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.array.row_shape

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype


@dataclasses.dataclass(frozen=True)
class Stored:
    """A stored array and how it was obtained.

    Attributes:
      examples: The rows.
      reused: True when every chunk came from an earlier run.
      written_rows: Rows this process produced and wrote now.
      missing: Rows the producer could not make (zeros in the file), in order.
      rewritten_chunks: Chunks of a complete store that failed their CRC and were written
        again (numbered from 1).
    """

    examples: StoredArray
    reused: bool
    written_rows: int
    missing: tuple[int, ...] = ()
    rewritten_chunks: tuple[int, ...] = ()


# What `fill` calls to make a chunk: (first, last) -> (row positions, rows) blocks. Positions
# are absolute; a position of [first, last) that no block names is a missing row.
Produce = Callable[[int, int], Iterable[tuple[np.ndarray, np.ndarray]]]


@dataclasses.dataclass(frozen=True)
class _Layout:
    directory: str
    name: str
    path: str
    bounds: list
    manifest: dict

    def marker(self, k: int) -> str:
        stem = os.path.basename(self.path)[: -len(".rows")]
        return os.path.join(self.directory, f"{stem}.chunk-{k:05d}.json")

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.directory, f"{self.name}.json")

    def array(self) -> StoredArray:
        m = self.manifest
        return StoredArray(self.path, m["count"], tuple(m["row_shape"]), np.dtype(m["dtype"]))


def _layout(directory, name, fingerprint, count, row_shape, dtype, chunk_rows) -> _Layout:
    digest = hashlib.sha256(
        json.dumps([FORMAT_VERSION, fingerprint, count, row_shape, dtype.str, chunk_rows]).encode()
    ).hexdigest()[:12]
    path = os.path.join(directory, f"{name}.{digest}.rows")
    manifest = {
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "count": count,
        "row_shape": list(row_shape),
        "dtype": dtype.str,
        "chunk_rows": chunk_rows,
        "file": os.path.basename(path),
    }
    return _Layout(directory, name, path, chunk_bounds(count, chunk_rows), manifest)


def fill(
    directory: str,
    name: str,
    *,
    fingerprint: str,
    count: int,
    row_shape: Sequence[int],
    dtype,
    produce: Produce,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    worker_index: int = 0,
    worker_count: int = 1,
    barrier: Callable[[], None] = lambda: None,
    stop: GracefulStop | None = None,
    verify: bool = True,
    label: str = "",
) -> Stored:
    """The stored array `name` in `directory`: reused when its manifest matches (each chunk's
    CRC checked when `verify`), otherwise written, chunk by chunk, straight into its file.

    Args:
      directory, name, label: The store's folder, the array's name (e.g. "train.pixels") and
        its name in messages.
      fingerprint: What the rows are a function of: a manifest with another one is stale.
      count, row_shape, dtype, chunk_rows: The array's shape and type; rows per chunk.
      produce: Makes a chunk's rows (`Produce`).
      worker_index, worker_count: This process among the workers that share the pass
        (`owns_chunk`); worker 0 publishes the manifest.
      barrier: Called twice by every worker, whichever way the call goes (a barrier among
        the workers, who all reach `directory`).
      stop: Checked after every chunk written: a stop request raises StopRequested there.
      verify: Check every chunk's CRC when the store is reused (a damaged chunk is written
        again and named in the log).

    Returns the Stored array; raises UserInputError when the folder's disk has no room for it.
    """
    row_shape, dtype = tuple(int(d) for d in row_shape), np.dtype(dtype)
    label = label or name
    layout = _layout(directory, name, fingerprint, count, row_shape, dtype, chunk_rows)
    if count == 0:
        return Stored(layout.array(), reused=True, written_rows=0)
    published = _read_manifest(layout, label)
    complete = _matches(published, layout)
    if not complete:
        _start_over(layout, first_worker=worker_index == 0)
    writer = _ChunkWriter(layout, produce, stop=stop, label=label)
    mine = [k for k in range(len(layout.bounds)) if owns_chunk(k, worker_index, worker_count)]
    rewritten = writer.write_all(mine, published if complete else None, verify=verify)
    barrier()
    if worker_index == 0 and (not complete or writer.wrote_any or _has_markers(layout)):
        _publish(layout, published if complete else None, label)
    barrier()  # The manifest is in place for every worker.
    manifest = _read_json(layout.manifest_path)
    if not _matches(manifest, layout):
        raise RuntimeError(f"the stored {label} is missing or incomplete in {directory}")
    reused = complete and not writer.wrote_any
    if reused:
        logging.warning("Reusing the stored %s in %s: its fingerprint matches.", label, directory)
    missing = tuple(i for chunk in manifest["chunks"] for i in chunk["missing"])
    return Stored(layout.array(), reused, writer.written_rows, missing, tuple(rewritten))


def _start_over(layout: _Layout, *, first_worker: bool) -> None:
    """Before a store is written again: its folder made, and (by the first worker) its manifest
    removed, so that nothing under this name counts until the new one is written."""
    os.makedirs(layout.directory, exist_ok=True)
    if first_worker:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(layout.manifest_path)


def _read_manifest(layout: _Layout, label: str) -> dict | None:
    """The published manifest, or None (one that does not parse is named in the log)."""
    manifest = _read_json(layout.manifest_path)
    if manifest is None and os.path.exists(layout.manifest_path):
        logging.warning(
            "The manifest '%s' cannot be read (damaged?): the stored %s is written again.",
            layout.manifest_path,
            label,
        )
    return manifest


def _matches(manifest: dict | None, layout: _Layout) -> bool:
    """The manifest names this array, with one entry per chunk, and its file has its size."""
    if not manifest or any(manifest.get(k) != v for k, v in layout.manifest.items()):
        return False
    if len(manifest.get("chunks", ())) != len(layout.bounds):
        return False
    try:
        return os.path.getsize(layout.path) == layout.array().nbytes
    except OSError:
        return False


class _ChunkWriter:
    """Writes chunks into the array's file (opened, and sized, on the first write)."""

    def __init__(self, layout: _Layout, produce: Produce, *, stop, label: str):
        self.layout, self.produce, self.stop, self.label = layout, produce, stop, label
        self.array = layout.array()
        self.fd = -1
        self.written_rows = 0
        self.wrote_any = False
        # Each finished chunk is synced to disk in the background while the next one is made
        # (a marker is checked against the bytes on disk when it is used, so it need not
        # wait): the sync before the manifest then has little left to do.
        self._syncing = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store-sync")
        self._synced: list[concurrent.futures.Future] = []

    def close(self) -> None:
        self._syncing.shutdown(wait=True)
        for future in self._synced:
            future.result()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _open(self) -> int:
        if self.fd < 0:
            path, size = self.layout.path, self.array.nbytes
            current = os.path.getsize(path) if os.path.exists(path) else 0
            files.check_free_space(
                self.layout.directory, size - current, f"the stored {self.label}", advice=_ADVICE
            )
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            if os.fstat(self.fd).st_size != size:
                os.ftruncate(self.fd, size)
        return self.fd

    def crc(self, k: int) -> int:
        """CRC-32 of chunk k's bytes as they are in the file."""
        return _chunk_crc(self.layout.path, self.array.row_bytes, *self.layout.bounds[k])

    def intact(self, k: int, entry: dict) -> bool:
        return self.crc(k) == entry.get("crc32")

    def write_all(self, chunks, published, *, verify: bool) -> list[int]:
        """`write_chunks`, then the file closed whichever way it went."""
        try:
            return self.write_chunks(chunks, published, verify=verify)
        finally:
            self.close()

    def write_chunks(self, chunks: list[int], published: dict | None, *, verify: bool):
        """Writes `chunks` where they are not vouched for: by the published manifest (their
        CRC checked when `verify`) or by a marker. Returns the published chunks rewritten
        (numbered from 1)."""
        rewritten, todo = [], []
        for k in chunks:
            if published is not None:
                if not verify or self.intact(k, published["chunks"][k]):
                    continue
                logging.warning(
                    "Rewriting chunk %d of %d of the stored %s in %s: its bytes do not match "
                    "their checksum.",
                    k + 1,
                    len(self.layout.bounds),
                    self.label,
                    self.layout.directory,
                )
                rewritten.append(k + 1)
            if self._marked(k):
                logging.warning(
                    "Reusing chunk %d of %d of the stored %s",
                    k + 1,
                    len(self.layout.bounds),
                    self.label,
                )
                continue
            todo.append(k)
        # One pass of the producer over each run of consecutive chunks (one pipeline, not one
        # per chunk); a stop request is answered after any chunk but the last.
        for run in _runs(todo):
            self._write_run(run, last_run=run[-1] == todo[-1])
        return rewritten

    def _marked(self, k: int) -> bool:
        first, last = self.layout.bounds[k]
        marker = _read_json(self.layout.marker(k))
        return bool(marker and marker.get("rows") == [first, last] and self.intact(k, marker))

    def _write_run(self, run: list[int], *, last_run: bool) -> None:
        """Produces chunks `run` (consecutive) in one pass and writes them in place, each
        closed by its marker as the rows pass its end."""
        bounds = self.layout.bounds
        fd = self._open()
        chunk = _OpenChunk(run[0], bounds[run[0]], self.array)
        for positions, rows in self.produce(bounds[run[0]][0], bounds[run[-1]][1]):
            positions, rows = np.asarray(positions, np.int64), np.asarray(rows)
            self._check_block(positions, rows, bounds[run[0]][0], bounds[run[-1]][1])
            while len(positions):
                if positions[0] >= chunk.last:
                    self._close(fd, chunk, final=last_run and chunk.k == run[-1])
                    chunk = _OpenChunk(chunk.k + 1, bounds[chunk.k + 1], self.array)
                    continue
                inside = int(np.searchsorted(positions, chunk.last))
                chunk.add(fd, positions[:inside], rows[:inside], self)
                positions, rows = positions[inside:], rows[inside:]
        while True:
            self._close(fd, chunk, final=last_run and chunk.k == run[-1])
            if chunk.k == run[-1]:
                break
            chunk = _OpenChunk(chunk.k + 1, bounds[chunk.k + 1], self.array)

    def _check_block(self, positions, rows, first, last) -> None:
        array = self.array
        if rows.shape != (len(positions), *array.row_shape) or rows.dtype != array.dtype:
            raise RuntimeError(
                f"{self.label} rows {first}-{last}: produced {rows.shape} {rows.dtype}, "
                f"expected {(len(positions), *array.row_shape)} {array.dtype}"
            )
        if len(positions) and (
            positions[0] < first or positions[-1] >= last or (np.diff(positions) <= 0).any()
        ):
            raise RuntimeError(
                f"{self.label}: rows produced out of order or outside {first}-{last}"
            )

    def _close(self, fd, chunk: _OpenChunk, *, final: bool) -> None:
        """The chunk's missing rows zeroed, its marker written, the fault point, a stop."""
        chunk.add(fd, np.zeros(0, np.int64), np.zeros((0, *self.array.row_shape)), self, end=True)
        files.write_json(
            self.layout.marker(chunk.k),
            {"rows": [chunk.first, chunk.last], "crc32": chunk.value, "missing": chunk.missing},
        )
        self._synced.append(self._syncing.submit(_SYNC_DATA, fd))
        self.wrote_any = True
        self.written_rows += chunk.last - chunk.first - len(chunk.missing)
        chunks = len(self.layout.bounds)
        stopping.point(f"store:chunk:{self.layout.name}:{chunk.k + 1}")
        if self.stop is not None and not final:
            self.stop.check(
                f"{chunk.k + 1} of {chunks} chunks of the stored {self.label} are saved in "
                f"{self.layout.directory}; rerun to resume"
            )


class _OpenChunk:
    """A chunk being written in order: its next position, running CRC and missing rows."""

    def __init__(self, k: int, bound: tuple[int, int], array: StoredArray):
        self.k, (self.first, self.last) = k, bound
        self.next, self.value, self.missing = self.first, 0, []
        self.row_bytes = array.row_bytes
        self.zero_row = bytes(self.row_bytes)

    def add(self, fd, positions, rows, writer: _ChunkWriter, *, end: bool = False) -> None:
        """Writes rows at `positions` (ascending, in this chunk); the positions skipped before
        them (or before the chunk's end, with `end`) are missing rows, written as zeros. The
        CRC follows the bytes in file order."""
        row_bytes = self.row_bytes
        data = memoryview(np.ascontiguousarray(rows)).cast("B") if len(positions) else None
        # One CRC call per run of consecutive positions (a whole block, unless a file failed
        # to decode): a call per row, with the row size computed per row, took 0.25 s of a
        # 0.94 s fill of 5,700 images (cProfile, BENCHMARKS 18b).
        breaks = np.flatnonzero(np.diff(positions) != 1) + 1
        for start, stop in zip([0, *breaks], [*breaks, len(positions)], strict=True):
            if start == stop:
                continue
            self._zeros_until(int(positions[start]), fd, writer)
            self.value = zlib.crc32(data[start * row_bytes : stop * row_bytes], self.value)
            self.next = int(positions[stop - 1]) + 1
        if end:
            self._zeros_until(self.last, fd, writer)
        if data is not None:
            offset = int(positions[0]) * row_bytes
            _pwrite(fd, data, offset, writer.layout.directory, writer.label, rows=positions)

    def _zeros_until(self, position: int, fd, writer: _ChunkWriter) -> None:
        """Missing rows up to `position`: zeros, whatever an earlier run left there."""
        row_bytes = self.row_bytes
        while self.next < position:
            _pwrite(fd, self.zero_row, self.next * row_bytes, writer.layout.directory, writer.label)
            self.value = zlib.crc32(self.zero_row, self.value)
            self.missing.append(self.next)
            self.next += 1


def _chunk_crc(path: str, row_bytes: int, first: int, last: int) -> int:
    """CRC-32 of rows [first, last) of the file as they are on disk (-1 if it is short)."""
    value = 0
    with open(path, "rb") as stream:
        stream.seek(first * row_bytes)
        remaining = (last - first) * row_bytes
        while remaining:
            piece = stream.read(min(_CRC_PIECE, remaining))
            if not piece:
                return -1
            value = zlib.crc32(piece, value)
            remaining -= len(piece)
    return value


@dataclasses.dataclass(frozen=True)
class Verified:
    """One stored array checked against its manifest's checksums.

    Attributes:
      manifest: The manifest's path.
      rows, chunks, nbytes: Its size.
      damaged: Chunks (numbered from 1) whose bytes do not match their CRC.
      problem: Why the array could not be checked at all ("" when it was).
    """

    manifest: str
    rows: int = 0
    chunks: int = 0
    nbytes: int = 0
    damaged: tuple[int, ...] = ()
    problem: str = ""


def verify(directory: str) -> list[Verified]:
    """Checks every stored array under `directory` (its folder and the folders below) against
    the CRC of each chunk in its manifest, reading every byte once; nothing is written (a job
    that reuses the store rewrites what is damaged)."""
    results = []
    for root, _, names in sorted(os.walk(directory)):
        for name in sorted(n for n in names if n.endswith(".json")):
            manifest_path = os.path.join(root, name)
            manifest = _read_json(manifest_path)
            stem = glob.escape(os.path.join(root, name[: -len(".json")]))
            if manifest is None and glob.glob(f"{stem}.*.rows"):
                results.append(Verified(manifest_path, problem="cannot be read (damaged?)"))
                continue
            if manifest is None or "row_shape" not in manifest:
                continue  # Another JSON file (a chunk marker, a report, a checkpoint's state).
            layout = _layout_of(root, name[: -len(".json")], manifest)
            if layout is None:
                results.append(Verified(manifest_path, problem="is not a store manifest"))
                continue
            array = layout.array()
            if not _matches(manifest, layout):
                results.append(
                    Verified(manifest_path, problem=f"names a missing or short {layout.path}")
                )
                continue
            damaged = tuple(
                k + 1
                for k, (first, last) in enumerate(layout.bounds)
                if _chunk_crc(layout.path, array.row_bytes, first, last)
                != manifest["chunks"][k].get("crc32")
            )
            results.append(
                Verified(manifest_path, array.count, len(layout.bounds), array.nbytes, damaged)
            )
    return results


def _runs(chunks: list[int]) -> list[list[int]]:
    """Consecutive chunk numbers grouped: [0, 1, 3] -> [[0, 1], [3]]."""
    runs: list[list[int]] = []
    for k in chunks:
        if runs and runs[-1][-1] == k - 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    return runs


def _pwrite(fd, data, offset: int, directory: str, label: str, rows=None) -> None:
    """Writes `data` at `offset`: one system call per run of consecutive rows (`rows`, their
    positions; None for one run), a full disk reported as the user's problem."""
    if rows is not None and len(rows) > 1 and rows[-1] - rows[0] != len(rows) - 1:
        row_bytes = len(data) // len(rows)
        breaks = np.nonzero(np.diff(rows) != 1)[0] + 1
        for run in np.split(np.arange(len(rows)), breaks):
            piece = data[run[0] * row_bytes : (run[-1] + 1) * row_bytes]
            _pwrite(fd, piece, int(rows[run[0]]) * row_bytes, directory, label)
        return
    data = memoryview(data).cast("B")
    try:
        while data:
            done = os.pwrite(fd, data, offset)
            data, offset = data[done:], offset + done
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise files.no_room(directory, f"the stored {label}", advice=_ADVICE) from None
        raise


# What to do when the store's disk is full (`files.no_room`).
_ADVICE = (
    "Free some space or point the store elsewhere (--features_dir), then rerun: the chunks "
    "already written are kept and reused."
)


def _has_markers(layout: _Layout) -> bool:
    return any(os.path.exists(layout.marker(k)) for k in range(len(layout.bounds)))


def _publish(layout: _Layout, published: dict | None, label: str) -> None:
    """The one writer's last step: every chunk vouched for (by its marker, or the manifest it
    replaces), the file synced to disk, the manifest written, markers and stale files gone."""
    chunks = []
    for k, (first, last) in enumerate(layout.bounds):
        marker = _read_json(layout.marker(k))
        if marker and marker.get("rows") == [first, last]:
            chunks.append({"crc32": marker["crc32"], "missing": marker["missing"]})
        elif published is not None:
            chunks.append(published["chunks"][k])
        else:
            raise RuntimeError(
                f"chunk {k + 1} of the stored {label} is missing in {layout.directory}"
            )
    fd = os.open(layout.path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    files.write_json(layout.manifest_path, {**layout.manifest, "chunks": chunks})
    for k in range(len(layout.bounds)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(layout.marker(k))
    pattern = os.path.join(glob.escape(layout.directory), f"{glob.escape(layout.name)}.*")
    for stale in glob.glob(pattern):
        if stale not in (layout.path, layout.manifest_path) and stale.endswith((".rows", ".json")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)


def open_complete(
    directory: str, name: str, *, fingerprint: str | None = None
) -> StoredArray | None:
    """The stored array `name` if its manifest is complete (and names `fingerprint`, unless
    None) and its file is whole; None otherwise (nothing is written or checked beyond the
    file's size)."""
    manifest = _read_json(os.path.join(directory, f"{name}.json"))
    if not manifest or fingerprint not in (None, manifest.get("fingerprint")):
        return None
    layout = _layout_of(directory, name, manifest)
    return layout.array() if layout is not None and _matches(manifest, layout) else None


def _layout_of(directory: str, name: str, manifest: dict) -> _Layout | None:
    """The layout a published manifest describes; None if it is not a store manifest."""
    try:
        return _layout(
            directory,
            name,
            manifest["fingerprint"],
            int(manifest["count"]),
            tuple(manifest["row_shape"]),
            np.dtype(manifest["dtype"]),
            int(manifest["chunk_rows"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as stream:
            value = json.load(stream)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


# Decoded pixels stored once: each source folder's uint8 images in one checksummed store
# file.
#
# Decoding is the expensive part of reading an image (BENCHMARKS.md 5), so each file is decoded
# once, by the one decode function, into the store under `<features_dir>/pixels` (`fill`,
# chunk by chunk, in place), and every job reads it through a view of its memory map. For an
# image folder that pass is the decode check itself (`SourceStores`: one store per source
# folder, Training and Test; a file the decoder rejects is a missing row), and the splits are
# rows of their source's store (`StoredRows`). `store_pixels` stores one split on its own
# (TFDS records, the bench). A store's fingerprint is its files' (every path, size and
# modification time, the image size and the decode version): a later run on unchanged files
# decodes nothing.
#
# Decoding takes one ordered pass (`fill_pass`) over each run of chunks or, with a tf.data
# service address, the service's workers. Under several workers the chunks are shared out
# (`owns_chunk`: chunk k to worker k mod n): each worker decodes only its chunks into the
# one file, then all of them read every row (the store is on a folder they all reach, like the
# checkpoints).

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
    parallelism: int = 0,
):
    """Images [first, last) of a split, decoded: blocks of (positions, uint8 images) for the
    store to write in place (`parallelism` calls here; 0: twice the cores). A file the decoder
    rejects is in no block (a missing row)."""
    if service:
        subset = _rows(folder, first, last)
        from fruits_tl.data import data_service  # Only with a service: not on the default path.

        images, delivered = data_service.decode_rows_through_service(
            subset, service, timeout=service_timeout
        )
        _decode_lost_here(subset, service, images, delivered, parallelism)
        yield np.arange(first, last)[delivered], images[delivered]
        return
    for positions, images in fill_pass(folder, first, last, parallelism).as_numpy_iterator():
        yield positions, images


def _decode_lost_here(subset, service: str, images, delivered, parallelism: int) -> None:
    """Decodes here the images the tf.data service did not deliver, in place. An element in
    flight when a service worker or the dispatcher went away is not handed out again
    (`distributed_epoch`); a file that fails here too stays undelivered: a bad file."""
    lost = np.flatnonzero(~delivered)
    if not len(lost):
        return
    missing = np.zeros(len(subset), bool)
    missing[lost] = True
    folder = loading.select(subset, missing, name=subset.name)
    for positions, decoded in fill_pass(folder, 0, len(folder), parallelism).as_numpy_iterator():
        images[lost[positions]] = decoded
        delivered[lost[positions]] = True
    logging.warning(
        "The tf.data service at %s did not deliver %d image(s) of %s (in flight when a service "
        "worker or the dispatcher went away); %d of them decoded here.",
        service,
        len(lost),
        subset.name,
        int(delivered[lost].sum()),
    )


def _rows(folder: loading.ImageFolder, first: int, last: int) -> loading.ImageFolder:
    if (first, last) == (0, len(folder)):
        return folder
    positions = np.arange(len(folder))
    return loading.select(folder, (positions >= first) & (positions < last), name=folder.name)


def fill_pass(
    folder: loading.ImageFolder, first: int, last: int, parallelism: int = 0
) -> tf.data.Dataset:
    """The decode pass over images [first, last): batches of (positions, uint8 images), the
    split's own decoded elements (`ImageFolder.make_elements`: the one decode function, in
    parallel, in file order, so the store writes and checksums them as they come). A file the
    decoder rejects is left out (`ignore_errors`): its position never comes out."""
    elements = _rows(folder, first, last).make_elements(parallelism)
    positions = tf.data.Dataset.range(first, last)
    dataset = tf.data.Dataset.zip(positions, elements).map(
        tf.autograph.experimental.do_not_convert(lambda position, element: (position, element[0]))
    )
    return decode.with_pass_options(dataset.ignore_errors().batch(DECODE_BATCH).prefetch(2))


def store_pixels(
    folder: loading.ImageFolder,
    *,
    directory: str,
    chunk_images: int = DEFAULT_CHUNK_ROWS,
    data_service_address: str = "",
    data_service_timeout: float = DATA_SERVICE_TIMEOUT,
    worker_index: int = 0,
    worker_count: int = 1,
    wait_for_workers=lambda: None,
    stop: GracefulStop | None = None,
    name: str = "",
    missing_ok: bool = False,
    decode_parallelism: int = 0,
) -> Stored:
    """The split's decoded uint8 images, memory-mapped from the store (decoded first if
    needed), element for element with `folder.labels`.

    Args:
      folder, directory: The split; the store's folder.
      name: The stored array is `<name>.pixels` (default: `split-<the split's name>`, apart
        from the source folders' stores, which the decode check names "train" and "test").
      chunk_images, decode_parallelism: Images per chunk; decode calls (0: twice the cores).
      data_service_address, data_service_timeout: Decode on the tf.data service there (""
        decodes here); seconds without an element before the service counts as lost.
      worker_index, worker_count, wait_for_workers: This worker among several (chunk k is
        decoded by worker k mod worker_count, worker 0 writes the manifest); a barrier.
      stop: A stop request is answered after the current chunk.
      missing_ok: Undecodable files are the store's missing rows (the decode check); else
        they are an error (the check passed them before).
    """
    size = folder.image_size
    service = dict(service=data_service_address, service_timeout=data_service_timeout)
    decoding = dict(service, parallelism=decode_parallelism)
    stored = fill(
        directory,
        f"{name or 'split-' + folder.name}.pixels",
        fingerprint=folder.fingerprint,
        count=len(folder),
        row_shape=(size, size, 3),
        dtype=np.uint8,
        produce=lambda first, last: decode_rows(folder, first, last, **decoding),
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
    to know it) and comes back as a decode.BadImage with its reason.

    Attributes:
      directory: The pixel store's folder.
      image_size: Images are image_size x image_size.
      chunk_images: Images per chunk.
      data_service_address, data_service_timeout: Decode on the tf.data service there.
      worker_index, worker_count, wait_for_workers: This worker among several (`fill`).
      stop: A stop request is answered after the current chunk.
      decode_parallelism: Parallel decode calls (0: twice the cores).
    """

    directory: str
    image_size: int
    chunk_images: int = DEFAULT_CHUNK_ROWS
    data_service_address: str = ""
    data_service_timeout: float = DATA_SERVICE_TIMEOUT
    worker_index: int = 0
    worker_count: int = 1
    wait_for_workers: Callable[[], None] = lambda: None
    stop: GracefulStop | None = None
    decode_parallelism: int = 0
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
            decode_parallelism=data_config.decode_parallelism,
        )

    def load_splits(self, data_config) -> tuple[loading.Splits, float]:
        """The job's checked splits (`loading.load_splits`) and the check's seconds: for an
        image folder the check is this store's fill, so a cold run decodes each file once and a
        warm one none; TFDS records are checked by their builder."""
        start = time.perf_counter()
        folder = data_config.data_source == "folder"
        splits = loading.load_splits(data_config, check=self.check if folder else None)
        return splits, time.perf_counter() - start

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
            decode_parallelism=self.decode_parallelism,
        )

    def rows_or_stored(self, folder: loading.ImageFolder) -> StoredRows:
        """A split's images: rows of its source's store, or (a split this decode check did not
        see: TFDS records) the split decoded into its own store in the same folder."""
        if self.holds(folder):
            return self.rows(folder)
        stored = store_pixels(folder, directory=self.directory, **self._job())
        return StoredRows(stored.examples, np.arange(len(folder), dtype=np.int64))

    def rows(self, folder: loading.ImageFolder) -> StoredRows:
        """A split's images as rows of its source folder's store."""
        found = self._source_of(folder)
        if found is None:
            raise KeyError(f"no source store holds the {folder.name} split's files")
        array, row_of = found
        return StoredRows(array, np.asarray([row_of[p] for p in folder.file_paths], np.int64))
