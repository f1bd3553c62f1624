"""Atomic, durable file output: every file the package writes goes to a temporary name, is
synced to disk, then renamed into place, and the rename is synced too.

A reader therefore sees either the old complete file or the new complete file, never a
half-written one, even when the writing process is killed; and after a power loss a file that
marks work complete (a manifest, metrics.json, a checkpoint's state) names only data that
reached the disk before it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from fruits_tl.core.config import UserInputError

# What a full disk (or a full quota) says, as an errno or in a library's message.
_NO_ROOM_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_NO_ROOM_WORDS = ("No space left on device", "Disk quota exceeded")


def is_no_room(error: BaseException) -> bool:
    """Whether a write failed because the disk or the user's quota is full (an OSError, or a
    TensorFlow or HDF5 error that carries the system's words)."""
    if isinstance(error, OSError) and error.errno in _NO_ROOM_ERRNOS:
        return True
    return any(words in str(error) for words in _NO_ROOM_WORDS)


def no_room(directory: str, what: str, *, needed: int = 0, advice: str = "") -> UserInputError:
    """The one paragraph for a disk without room: the folder, what was being written, the
    bytes needed (when known) and free, and what to do (`advice`, or: nothing half-written is
    left, free space or write elsewhere, rerun)."""
    free = shutil.disk_usage(directory).free if os.path.isdir(directory) else 0
    need = (
        f"it needs {needed / 1e6:,.1f} MB and {free / 1e6:,.1f} MB are free"
        if needed
        else f"the disk filled while it was written ({free / 1e6:,.1f} MB free now)"
    )
    advice = advice or (
        "Nothing of it was left behind. Free some space or write it elsewhere, then rerun the "
        "same command: what was finished before is kept."
    )
    return UserInputError(f"The disk of '{directory}' has no room for {what}: {need}. {advice}")


def check_free_space(directory: str, needed: int, what: str, *, advice: str = "") -> None:
    """Refuses (`no_room`) to start writing `needed` bytes into `directory` when its disk has
    fewer free."""
    os.makedirs(directory, exist_ok=True)
    if needed > shutil.disk_usage(directory).free:
        raise no_room(directory, what, needed=needed, advice=advice)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary path beside `path`; renames it onto `path` if the block succeeds.

    The temporary name keeps the final suffix (Keras chooses the format by suffix: `.keras`,
    `.h5`). If the block raises, the temporary file is removed and `path` is left untouched; a
    full disk is then one paragraph (`no_room`), not a traceback.

    Args:
      path: The final file path.

    Yields:
      A path in the same folder to write to.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    suffix = ".weights.h5" if base.endswith(".weights.h5") else os.path.splitext(base)[1]
    handle, temporary = tempfile.mkstemp(prefix=f".{base}.tmp-", suffix=suffix, dir=directory)
    os.close(handle)
    # Some writers (Keras) refuse to overwrite or expect to create the file themselves.
    os.unlink(temporary)
    try:
        yield temporary
        if not os.path.exists(temporary):
            raise FileNotFoundError(f"nothing was written to the temporary file for {path}")
        sync_tree(temporary)  # Whoever wrote it (Keras, NumPy), its bytes are on disk first.
        os.replace(temporary, path)
        sync_directory(directory)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        if is_no_room(error):
            raise no_room(directory, f"'{base}'") from None
        raise


def sync_directory(path: str) -> None:
    """Syncs a folder's entries (a rename or a new file in it) to disk, where the system can."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # Some filesystems cannot sync a folder.
            os.fsync(descriptor)
    finally:
        os.close(descriptor)


def sync_tree(path: str) -> None:
    """Syncs a file, or a folder with every file and folder in it, to disk."""
    if not os.path.isdir(path):
        with open(path, "rb") as stream:
            os.fsync(stream.fileno())
        return
    for root, _, names in os.walk(path, topdown=False):
        for name in names:
            with open(os.path.join(root, name), "rb") as stream:
                os.fsync(stream.fileno())
        sync_directory(root)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.cache
def _renameat2():
    """glibc's renameat2 (Linux 3.15+, glibc 2.28+), or None where there is none."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        function = ctypes.CDLL(name, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    return function


def exchange(first: str, second: str) -> bool:
    """Swaps two existing paths in one atomic step (renameat2 RENAME_EXCHANGE); False where the
    system or filesystem cannot, and nothing then changed."""
    function = _renameat2()
    if function is None:
        return False
    result = function(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), second)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary folder beside `path`; puts it in place of `path` if the block succeeds.

    The new folder's files are synced to disk first. Where `path` exists, the two folders are
    exchanged in one atomic step (`exchange`, Linux), so a reader sees the old complete folder
    or the new complete one and never no folder; the old one is then removed. Where the system
    cannot exchange, the old folder is renamed aside and the new one renamed in: between the
    two renames `path` is missing for an instant (a reader then finds no folder, never a
    partial one). If the block raises, the temporary folder is removed and `path` is left
    untouched (a full disk: one paragraph, `no_room`).
    """
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    temporary = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    # mkdtemp makes the folder private (0700); give it the permissions os.makedirs would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o777 & ~umask)
    try:
        yield temporary
        sync_tree(temporary)
        previous = None
        if os.path.exists(path) and exchange(temporary, path):
            previous = temporary  # It now holds the old folder.
        else:
            if os.path.exists(path):
                previous = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
                os.rmdir(previous)
                os.replace(path, previous)
            os.replace(temporary, path)
        sync_directory(parent)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    except BaseException as error:
        shutil.rmtree(temporary, ignore_errors=True)
        if is_no_room(error):
            raise no_room(parent, f"'{os.path.basename(path)}'") from None
        raise


def stat_digest(paths, *, header: str = "") -> str:
    """A digest of files as they stand: each path (absolute), size and modification time.

    Equal digests mean the same files, unchanged (the rule every stored result is reused by).
    """
    digest = hashlib.sha256(f"{header}\n".encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` atomically (flushed and fsynced before the rename)."""
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes UTF-8 `text` to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, value: Any) -> None:
    """Writes `value` as indented, key-sorted JSON to `path` atomically."""
    write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def write_lines(path: str | os.PathLike, lines: list[str]) -> None:
    """Writes one item per line to `path` atomically."""
    write_text(path, "".join(f"{line}\n" for line in lines))
