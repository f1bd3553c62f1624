"""The downloader against a local HTTP server on 127.0.0.1, malicious archives included."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import socket
import tarfile
import threading
import zipfile

import pytest
from conftest import run_main

from fruits_tl.cli import download_main
from fruits_tl.core.config import UserInputError
from fruits_tl.data import download


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves in-memory files, honouring single byte ranges when `ranges` is on."""

    files: dict = {}
    ranges = True
    seen_ranges: list = []

    def do_GET(self):
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        header = self.headers.get("Range")
        self.seen_ranges.append(header)
        if header and self.ranges:
            start = int(header.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            body = body[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    RangeHandler.files = {}
    RangeHandler.ranges = True
    RangeHandler.seen_ranges = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    # A short poll interval: shutdown() waits for the loop's next poll (0.5 s by default).
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", RangeHandler
    httpd.shutdown()
    httpd.server_close()


def _zip(members: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _fruits_zip() -> bytes:
    return _zip(
        {
            "Fruit-Images-Dataset-master/Training/Apple/0_100.jpg": b"jpeg bytes",
            "Fruit-Images-Dataset-master/Test/Apple/1_100.jpg": b"jpeg bytes",
            "Fruit-Images-Dataset-master/LICENSE": b"MIT",
        }
    )


def test_download_verify_extract_and_find_data_dir(server, tmp_path, capsys):
    base, handler = server
    body = _fruits_zip()
    handler.files["/fruits.zip"] = body
    digest = hashlib.sha256(body).hexdigest()
    code = run_main(
        download_main, [f"--dest={tmp_path}", f"--url={base}/fruits.zip", f"--sha256={digest}"]
    )
    assert code == 0, capsys.readouterr().err
    data_dir = capsys.readouterr().out.strip()
    assert data_dir == str(tmp_path / "extracted" / "Fruit-Images-Dataset-master")
    assert (
        tmp_path / "extracted" / "Fruit-Images-Dataset-master" / "Training" / "Apple" / "0_100.jpg"
    ).read_bytes() == b"jpeg bytes"
    assert (tmp_path / "fruits.zip").read_bytes() == body and not (
        tmp_path / "fruits.zip.part"
    ).exists()
    assert [n for n in os.listdir(tmp_path / "extracted") if n.startswith(".")] == []


def test_partial_download_is_resumed_with_a_range_request(server, tmp_path):
    base, handler = server
    body = bytes(range(256)) * 4000
    handler.files["/big.zip"] = body
    (tmp_path / "big.zip.part").write_bytes(body[:300000])
    download.download(
        f"{base}/big.zip", str(tmp_path / "big.zip"), sha256=hashlib.sha256(body).hexdigest()
    )
    assert handler.seen_ranges == ["bytes=300000-"]
    assert (tmp_path / "big.zip").read_bytes() == body


def test_complete_partial_download_answered_416_is_verified_and_kept(server, tmp_path):
    base, handler = server
    body = b"all of it" * 1000
    handler.files["/done.zip"] = body
    (tmp_path / "done.zip.part").write_bytes(body)
    path = download.download(
        f"{base}/done.zip", str(tmp_path / "done.zip"), sha256=hashlib.sha256(body).hexdigest()
    )
    assert handler.seen_ranges == [f"bytes={len(body)}-"]  # The server answered 416.
    assert (tmp_path / "done.zip").read_bytes() == body and path == str(tmp_path / "done.zip")
    assert not (tmp_path / "done.zip.part").exists()


def test_a_local_write_failure_is_not_called_offline(server, tmp_path):
    base, handler = server
    handler.files["/a.zip"] = b"x" * 5000
    (tmp_path / "a.zip.part").mkdir()  # The partial file cannot be opened for writing.
    with pytest.raises(UserInputError) as raised:
        download.download(f"{base}/a.zip", str(tmp_path / "a.zip"))
    message = str(raised.value)
    assert "Could not write the download" in message and "a.zip.part" in message
    assert "offline" not in message


def test_server_without_ranges_restarts_the_download(server, tmp_path):
    base, handler = server
    handler.ranges = False
    body = b"x" * 5000
    handler.files["/a.zip"] = body
    (tmp_path / "a.zip.part").write_bytes(b"garbage")
    download.download(f"{base}/a.zip", str(tmp_path / "a.zip"))
    assert (tmp_path / "a.zip").read_bytes() == body


def test_wrong_sha256_deletes_and_fails(server, tmp_path):
    base, handler = server
    handler.files["/a.zip"] = b"content"
    with pytest.raises(UserInputError, match="expected 00"):
        download.download(f"{base}/a.zip", str(tmp_path / "a.zip"), sha256="00" * 32)
    assert os.listdir(tmp_path) == []


def test_offline_is_one_clear_sentence(tmp_path, capsys):
    with socket.socket() as probe:  # A port with nothing listening.
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = run_main(
        download_main, [f"--dest={tmp_path}", f"--url=http://127.0.0.1:{port}/x.zip", "--timeout=5"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Could not download" in err and "offline" in err and "Traceback" not in err


def test_http_error_is_named(server, tmp_path):
    base, _ = server
    with pytest.raises(UserInputError, match="HTTP 404"):
        download.download(f"{base}/missing.zip", str(tmp_path / "m.zip"))


def test_each_download_reads_the_proxy_settings_of_its_time(server, tmp_path, monkeypatch):
    # urllib's `urlopen` keeps the proxies of its first call for the whole process; a download
    # through a dead proxy must not leave the next download, without one, going through it.
    base, handler = server
    handler.files["/a.zip"] = b"zip bytes"
    with monkeypatch.context() as patched:
        for name in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"):
            patched.delenv(name, raising=False)
        patched.setenv("http_proxy", "http://127.0.0.1:9")
        with pytest.raises(UserInputError, match="Could not download"):
            download.download(f"{base}/a.zip", str(tmp_path / "through_proxy.zip"))
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    path = download.download(f"{base}/a.zip", str(tmp_path / "direct.zip"))
    assert open(path, "rb").read() == b"zip bytes"


@pytest.mark.parametrize(
    "members, refused",
    [
        ({"../evil.txt": b"x"}, "'../evil.txt' has a '..' component"),
        ({"ok/../../evil.txt": b"x"}, "'..' component"),
        ({"/tmp/evil.txt": b"x"}, "'/tmp/evil.txt' has an absolute path"),
    ],
)
def test_malicious_zip_members_are_refused_by_name(server, tmp_path, capsys, members, refused):
    base, handler = server
    handler.files["/evil.zip"] = _zip({"Training/A/1.jpg": b"fine", **members})
    code = run_main(download_main, [f"--dest={tmp_path}", f"--url={base}/evil.zip"])
    assert code == 2 and refused in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "extracted" / "Training").exists()
    assert not (tmp_path.parent / "evil.txt").exists()


def _tar_with(tmp_path, add) -> str:
    path = str(tmp_path / "evil.tar.gz")
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo("Training/A/1.jpg")
        info.size = 4
        archive.addfile(info, io.BytesIO(b"fine"))
        add(archive)
    return path


def test_tar_links_outside_the_destination_are_refused(tmp_path):
    def symlink_out(archive):
        info = tarfile.TarInfo("Training/A/link.jpg")
        info.type = tarfile.SYMTYPE
        info.linkname = "../../../../etc/passwd"
        archive.addfile(info)

    with pytest.raises(UserInputError, match="'Training/A/link.jpg' links outside"):
        download.extract(_tar_with(tmp_path, symlink_out), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "Training").exists()

    def hardlink_abs(archive):
        info = tarfile.TarInfo("Training/A/hard.jpg")
        info.type = tarfile.LNKTYPE
        info.linkname = "/etc/passwd"
        archive.addfile(info)

    with pytest.raises(UserInputError, match="'Training/A/hard.jpg' links outside"):
        download.extract(_tar_with(tmp_path, hardlink_abs), str(tmp_path / "out2"))


def test_safe_tar_with_an_inside_link_extracts(tmp_path):
    def inside_link(archive):
        info = tarfile.TarInfo("Training/A/same.jpg")
        info.type = tarfile.SYMTYPE
        info.linkname = "1.jpg"
        archive.addfile(info)

    out = tmp_path / "out"
    download.extract(_tar_with(tmp_path, inside_link), str(out))
    assert (out / "Training" / "A" / "1.jpg").read_bytes() == b"fine"
    assert download.find_data_dir(str(out)) == str(out)


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_a_decompression_bomb_is_refused_with_its_figures(tmp_path, kind):
    # 20 MB of zeros packs into about 20 KB: a ratio near 1,000, where JPEGs barely compress.
    archive = tmp_path / f"bomb.{kind}"
    zeros = b"\0" * (20 << 20)
    if kind == "zip":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as opened:
            opened.writestr("Training/Apple/0_100.jpg", b"\xff\xd8 a small real-looking file")
            opened.writestr("Training/Apple/bomb.jpg", zeros)
        expected = "member 'Training/Apple/bomb.jpg' expands from"
    else:
        with tarfile.open(archive, "w:gz") as opened:
            member = tarfile.TarInfo("Training/Apple/bomb.jpg")
            member.size = len(zeros)
            opened.addfile(member, io.BytesIO(zeros))
        expected = "its 1 members expand from"
    with pytest.raises(UserInputError, match="decompression bomb") as error:
        download.extract(str(archive), str(tmp_path / "out"))
    assert expected in str(error.value) and "20,971,520 bytes" in str(error.value)
    assert os.listdir(tmp_path / "out") == []  # Nothing extracted.
