"""Atomic writes: the old file survives a failed write, temporaries never linger."""

from __future__ import annotations

import json
import os

import pytest

from fruits_tl import files


def test_write_json_replaces_whole_file(tmp_path):
    path = tmp_path / "metrics.json"
    files.write_json(path, {"a": 1})
    files.write_json(path, {"b": 2})
    assert json.loads(path.read_text()) == {"b": 2}
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "model.keras"
    path.write_text("old model")
    with pytest.raises(RuntimeError):
        with files.atomic_path(path) as temporary:
            assert temporary.endswith(".keras") and os.path.dirname(temporary) == str(tmp_path)
            with open(temporary, "w") as stream:
                stream.write("half a mod")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old model"
    assert os.listdir(tmp_path) == ["model.keras"]


def test_writer_that_wrote_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        with files.atomic_path(tmp_path / "x.txt"):
            pass
    assert os.listdir(tmp_path) == []


def test_weights_suffix_is_kept(tmp_path):
    with files.atomic_path(tmp_path / "a.weights.h5") as temporary:
        assert temporary.endswith(".weights.h5")
        open(temporary, "w").close()


def test_atomic_directory_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "artifact"
    with files.atomic_directory(target) as temporary:
        open(os.path.join(temporary, "a"), "w").write("first")
    assert sorted(os.listdir(tmp_path)) == ["artifact"] and (target / "a").read_text() == "first"
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(target).st_mode & 0o777 == 0o777 & ~umask  # Not mkdtemp's private 0700.
    try:
        with files.atomic_directory(target) as temporary:
            open(os.path.join(temporary, "b"), "w").write("half")
            raise RuntimeError("conversion failed")
    except RuntimeError:
        pass
    assert sorted(os.listdir(tmp_path)) == ["artifact"] and sorted(os.listdir(target)) == ["a"]
    with files.atomic_directory(target) as temporary:
        open(os.path.join(temporary, "c"), "w").write("second")
    assert sorted(os.listdir(tmp_path)) == ["artifact"] and sorted(os.listdir(target)) == ["c"]
