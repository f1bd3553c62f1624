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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary path beside `path`; renames it onto `path` if the block succeeds.

    The temporary name keeps the final suffix (Keras chooses the format by suffix: `.keras`,
    `.h5`). If the block raises, the temporary file is removed and `path` is left untouched.

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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
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
    untouched.
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
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
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
