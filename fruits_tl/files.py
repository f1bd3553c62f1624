"""Atomic file output: every file the package writes goes to a temporary name, then is renamed.

A reader therefore sees either the old complete file or the new complete file, never a
half-written one, even when the writing process is killed.
"""

from __future__ import annotations

import contextlib
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
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary folder beside `path`; puts it in place of `path` if the block succeeds.

    A reader sees the old complete folder or the new complete one. The swap is two renames
    (old folder aside, new folder in), then the old folder is removed; if the block raises,
    the temporary folder is removed and `path` is left untouched.
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
        previous = None
        if os.path.exists(path):
            previous = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
            os.rmdir(previous)
            os.replace(path, previous)
        os.replace(temporary, path)
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
