"""Atomic writes: the old file survives a failed write, temporaries never linger."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest

from fruits_tl.core import files
from fruits_tl.core.config import UserInputError


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


def test_a_file_is_on_disk_before_its_rename_and_the_rename_after(tmp_path, monkeypatch):
    # The order a power loss cannot undo: the new bytes synced, the rename, the folder synced.
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor):
        kind = "folder" if stat.S_ISDIR(os.fstat(descriptor).st_mode) else "file"
        events.append(f"sync {kind}")
        real_fsync(descriptor)

    def replace(source, destination):
        events.append("rename")
        real_replace(source, destination)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with files.atomic_path(tmp_path / "model.keras") as temporary:
        with open(temporary, "w") as stream:  # A writer that syncs nothing itself (Keras).
            stream.write("model")
    assert events == ["sync file", "rename", "sync folder"]
    events.clear()
    with files.atomic_directory(tmp_path / "ckpt") as temporary:
        open(os.path.join(temporary, "state.json"), "w").write("{}")
    assert events[:2] == ["sync file", "sync folder"] and events[-1] == "sync folder"
    assert events.index("rename") < len(events) - 1


def test_a_folder_replaced_in_one_exchange_is_never_missing(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (first / "a").write_text("A")
    (second / "b").write_text("B")
    if not files.exchange(str(first), str(second)):
        pytest.skip("this system or filesystem cannot exchange two paths (renameat2)")
    assert os.listdir(first) == ["b"] and os.listdir(second) == ["a"]
    # atomic_directory takes the exchange: the old folder's contents leave with its name.
    with files.atomic_directory(first) as temporary:
        open(os.path.join(temporary, "c"), "w").write("C")
    assert sorted(os.listdir(tmp_path)) == ["first", "second"] and os.listdir(first) == ["c"]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not_a_state"])
def test_a_damaged_checkpoint_state_is_one_clear_paragraph(tmp_path, damage):
    import tensorflow as tf

    from fruits_tl.training import phase

    store = phase.Checkpoints(
        str(tmp_path), objects={"v": tf.Variable(1.0)}, run_fingerprint={"seed": 7}
    )
    path = store.save({"epoch": 1, "step": 0})
    state = os.path.join(path, phase.STATE_FILE)
    text = open(state).read()
    damaged = {"garbage": "\x00" * 10, "truncated": text[: len(text) // 2], "not_a_state": "[1]"}
    open(state, "w").write(damaged[damage])
    with pytest.raises(ValueError) as error:
        store.restore_latest()
    message = str(error.value)
    assert state in message and "--restart" in message and "Traceback" not in message


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_disk_that_fills_mid_write_is_one_paragraph_and_loses_nothing(tmp_path):
    """A writer that hits a full disk (a real ENOSPC: /dev/full) leaves the old file and no
    temporary, and the error names the folder and what was being written."""
    target = tmp_path / "metrics.json"
    files.write_json(target, {"old": 1})
    with pytest.raises(UserInputError) as raised:
        with files.atomic_path(target) as temporary:
            with open(temporary, "wb") as stream:
                stream.write(b"partial")
            with open("/dev/full", "wb") as full:
                full.write(b"x" * 4096)
                full.flush()
    message = str(raised.value)
    assert f"The disk of '{tmp_path}' has no room for 'metrics.json'" in message
    assert "rerun the same command" in message and "Traceback" not in message
    assert json.loads(target.read_text()) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    # A folder (a checkpoint) the same way.
    folder = tmp_path / "ckpt-000001"
    with pytest.raises(UserInputError, match="has no room for 'ckpt-000001'"):
        with files.atomic_directory(folder):
            with open("/dev/full", "wb") as full:
                full.write(b"x" * 4096)
                full.flush()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_write_larger_than_the_free_space_is_refused_before_it_starts(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(UserInputError) as raised:
        files.check_free_space(str(tmp_path), free + 10**12, "a checkpoint (ckpt-000003)")
    message = str(raised.value)
    assert f"The disk of '{tmp_path}' has no room for a checkpoint (ckpt-000003)" in message
    needed_mb = f"{(free + 10**12) / 1e6:,.1f} MB"
    assert f"it needs {needed_mb} and" in message
    files.check_free_space(str(tmp_path), 1, "a small file")  # Room: nothing is said.
    assert list(tmp_path.iterdir()) == []


def test_the_bytes_a_model_and_its_optimizer_write_are_their_variables():
    import keras
    import numpy as np

    from fruits_tl.models import model

    dense = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    assert model.variable_bytes(dense) == (3 * 4 + 4) * 4
    optimizer = keras.optimizers.RMSprop()
    optimizer.build(dense.trainable_variables)
    counted = model.variable_bytes(dense, optimizer)
    expected = sum(np.asarray(v).nbytes for v in [*dense.variables, *optimizer.variables])
    assert counted == expected > (3 * 4 + 4) * 4 * 2
