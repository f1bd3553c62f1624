"""Getting Fruits-360: a resumable, verified download and a safe archive extraction.

The archive is written to `<name>.part` and renamed only when complete (and its sha256 matches,
when one is configured). A `.part` left by an interrupted download is resumed with an HTTP
Range request when the server supports ranges, and restarted otherwise. Extraction checks
every member before writing anything: absolute paths, `..` components, and links pointing
outside the destination are refused, naming the member.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable

from fruits_tl.core.config import UserInputError

# The public release of Fruits-360 (100x100 images, Training/ and Test/ folders), by Horea
# Muresan and Mihai Oltean, MIT licence. The one place this address is written.
FRUITS360_ARCHIVE_URL = (
    "https://github.com/Horea94/Fruit-Images-Dataset/archive/refs/heads/master.zip"
)
# A branch archive changes with every commit, so no digest is pinned by default; pass --sha256
# to verify a known archive.
FRUITS360_ARCHIVE_SHA256: str | None = None
CHUNK_BYTES = 1 << 20


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def download(
    url: str,
    destination: str,
    *,
    sha256: str | None = None,
    timeout: float = 60.0,
    progress: Callable[[int, int | None], None] | None = None,
) -> str:
    """Downloads `url` to `destination` via `destination.part`, resuming a partial file.

    Args:
      url: http(s) or file URL.
      destination: Final file path; reused as is if it exists and matches `sha256`.
      sha256: Expected hex digest; a mismatch deletes the download and raises.
      timeout: Socket timeout in seconds.
      progress: Called with (bytes so far, total bytes or None).

    Returns:
      `destination`.

    Raises:
      UserInputError: Network failure (one sentence naming the URL), HTTP error, or digest
        mismatch.
    """
    if os.path.exists(destination) and (sha256 is None or sha256_of(destination) == sha256.lower()):
        return destination
    os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
    partial = destination + ".part"
    offset = os.path.getsize(partial) if os.path.exists(partial) else 0
    total = _fetch(url, partial, offset=offset, timeout=timeout, progress=progress)
    if total is not None and os.path.getsize(partial) < total:
        raise UserInputError(
            f"The download of {url} ended early ({os.path.getsize(partial)} of {total} bytes); "
            "run again to resume."
        )
    if sha256 is not None:
        actual = sha256_of(partial)
        if actual != sha256.lower():
            os.unlink(partial)
            raise UserInputError(
                f"The download of {url} has sha256 {actual}, expected {sha256}; it was deleted."
            )
    os.replace(partial, destination)
    return destination


def _fetch(url: str, partial: str, *, offset: int, timeout: float, progress) -> int | None:
    """Appends `url`'s bytes from `offset` to `partial` (a Range request); returns the total
    size when the server says it."""
    request = urllib.request.Request(url, headers={"User-Agent": "fruits_tl"})
    total = None
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        # A new opener per download: `urlopen` keeps the first call's proxy settings for the
        # rest of the process, so a later change of http(s)_proxy would be ignored.
        with urllib.request.build_opener().open(request, timeout=timeout) as response:
            status = getattr(response, "status", 200)
            if offset and status != 206:
                offset = 0  # The server ignored the range: start again.
            length = response.headers.get("Content-Length")
            total = int(length) + offset if length and length.isdigit() else None
            with open(partial, "ab" if offset else "wb") as stream:
                done = offset
                for block in iter(lambda: response.read(CHUNK_BYTES), b""):
                    stream.write(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
                stream.flush()
                os.fsync(stream.fileno())
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            # Range not satisfiable: the partial file already holds every byte (the digest
            # below still checks it).
            total = offset
        else:
            raise UserInputError(
                f"Downloading {url} failed: HTTP {error.code} {error.reason}."
            ) from None
    except (TimeoutError, urllib.error.URLError, ConnectionError) as error:
        reason = getattr(error, "reason", error)
        raise UserInputError(
            f"Could not download {url} ({reason}); this machine may be offline. The partial file "
            f"'{partial}' is kept and the next run resumes it; or download the archive elsewhere "
            "and pass it with --archive."
        ) from None
    except OSError as error:
        # Not the network: the local file system (a full disk, no permission, a read-only
        # folder) failed while writing the partial file.
        raise UserInputError(
            f"Could not write the download of {url} to '{partial}': {error.strerror or error}. "
            "Free space or fix the folder's permissions (--dest), then run again to resume."
        ) from None
    return total


def _inside(root: str, path: str) -> bool:
    root = os.path.realpath(root)
    return os.path.commonpath([root, os.path.realpath(path)]) == root


def _check_member_name(name: str, archive: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UserInputError(
            f"Refusing to extract '{archive}': member '{name}' has an absolute path."
        )
    if ".." in parts:
        raise UserInputError(
            f"Refusing to extract '{archive}': member '{name}' has a '..' component."
        )


# Images barely compress (JPEG, PNG): a member, or a compressed tar stream, that expands more
# than this many times is a decompression bomb, not a dataset. Only above MIN_BOMB_BYTES: a
# small text file may compress well.
MAX_RATIO = 100
MIN_BOMB_BYTES = 1 << 20


def _check_sizes(archive: str, destination: str, sizes: dict[str, tuple[int, int]]) -> None:
    """Refuses implausible expansion: `sizes` maps each member to (bytes out, bytes in; 0 in
    for a tar's members, whose stream is compressed as a whole)."""
    for name, (size, packed) in sizes.items():
        if packed and size >= MIN_BOMB_BYTES and size > MAX_RATIO * packed:
            raise UserInputError(
                f"Refusing to extract '{archive}': member '{name}' expands from {packed:,} to "
                f"{size:,} bytes, {size / packed:,.0f} times (more than {MAX_RATIO}: images "
                "barely compress; this looks like a decompression bomb)."
            )
    total = sum(size for size, _ in sizes.values())
    archive_bytes = max(os.path.getsize(archive), 1)
    if not any(packed for _, packed in sizes.values()) and (
        total >= MIN_BOMB_BYTES and total > MAX_RATIO * archive_bytes
    ):
        raise UserInputError(
            f"Refusing to extract '{archive}': its {len(sizes):,} members expand from "
            f"{archive_bytes:,} to {total:,} bytes, {total / archive_bytes:,.0f} times (more than "
            f"{MAX_RATIO}: images barely compress; this looks like a decompression bomb)."
        )
    free = shutil.disk_usage(destination).free
    if total > free:
        raise UserInputError(
            f"Refusing to extract '{archive}': it expands to {total:,} bytes and '{destination}' "
            f"has {free:,} bytes free."
        )


def check_archive(archive: str, destination: str) -> None:
    """Raises UserInputError naming the first unsafe member of a zip or tar archive: a path
    outside the destination, a link out, a device, or an implausible expansion."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as opened:
            _check_sizes(
                archive,
                destination,
                {i.filename: (i.file_size, max(i.compress_size, 1)) for i in opened.infolist()},
            )
            for info in opened.infolist():
                _check_member_name(info.filename, archive)
                # A zip symlink: Unix mode in the high 16 bits of external_attr.
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    target = opened.read(info).decode("utf-8", "replace")
                    link_dir = os.path.dirname(os.path.join(destination, info.filename))
                    if os.path.isabs(target) or not _inside(
                        destination, os.path.join(link_dir, target)
                    ):
                        raise UserInputError(
                            f"Refusing to extract '{archive}': member '{info.filename}' links "
                            f"outside the destination ({target})."
                        )
        return
    try:
        opened = tarfile.open(archive)
    except (tarfile.TarError, OSError) as error:
        raise UserInputError(f"'{archive}' is neither a zip nor a tar archive ({error}).") from None
    with opened:
        _check_sizes(archive, destination, {m.name: (m.size, 0) for m in opened.getmembers()})
        for member in opened.getmembers():
            _check_member_name(member.name, archive)
            if member.issym() or member.islnk():
                base = (
                    destination
                    if member.islnk()
                    else os.path.dirname(os.path.join(destination, member.name))
                )
                target = os.path.join(base, member.linkname)
                if os.path.isabs(member.linkname) or not _inside(destination, target):
                    raise UserInputError(
                        f"Refusing to extract '{archive}': member '{member.name}' links "
                        f"outside the destination ({member.linkname})."
                    )
            elif not (member.isfile() or member.isdir()):
                raise UserInputError(
                    f"Refusing to extract '{archive}': member '{member.name}' is a device or fifo."
                )


def extract(archive: str, destination: str) -> str:
    """Checks every member, then extracts into a temporary folder and moves it into place.

    Returns:
      `destination`.
    """
    os.makedirs(destination, exist_ok=True)
    check_archive(archive, destination)
    staging = tempfile.mkdtemp(prefix=".extract-", dir=destination)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as opened:
                opened.extractall(staging)
        else:
            with tarfile.open(archive) as opened:
                opened.extractall(staging, filter="data")
        for name in os.listdir(staging):
            target = os.path.join(destination, name)
            if os.path.exists(target):
                shutil.rmtree(target) if os.path.isdir(target) else os.unlink(target)
            os.replace(os.path.join(staging, name), target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination


def find_data_dir(root: str, *, train_subdir: str = "Training") -> str | None:
    """The shallowest folder under `root` that holds `train_subdir/` (the --data_dir to use)."""
    for current, folders, _ in os.walk(root):
        folders.sort()
        if train_subdir in folders:
            return current
        if current.count(os.sep) - root.count(os.sep) >= 3:
            folders[:] = []
    return None
