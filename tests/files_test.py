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
