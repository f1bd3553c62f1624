"""A full disk, on a real small filesystem (a tmpfs; skipped where one cannot be mounted).

The job is a real process; the disk fills at a point the test controls: the fault hook stops
the job (SIGSTOP) right after the first chunk of the pixel store is written, the test fills
the filesystem, and the job goes on (SIGCONT) into a write that the kernel refuses (ENOSPC).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

TRAIN = ["--alpha=0.25", "--image_size=32", "--epochs=2", "--batch_size=4", "--verbose=0"]


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs, unmounted at the end."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()[:200]}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _command(data_dir, model_dir, features_dir, weights):
    return [
        sys.executable,
        "-m",
        "fruits_tl.cli.train_main",
        f"--data_dir={data_dir}",
        f"--model_dir={model_dir}",
        f"--features_dir={features_dir}",
        f"--weights={weights}",
        "--extract_chunk_images=6",
        "--deterministic",
        *TRAIN,
    ]


def _fill(directory) -> None:
    """Writes into `directory` until its filesystem is full."""
    descriptor = os.open(os.path.join(directory, "filler"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while os.write(descriptor, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _result(model_dir) -> dict:
    metrics = json.loads((model_dir / "metrics.json").read_text())
    return {k: metrics[k] for k in ("test_accuracy", "test_loss", "num_train_images")}


def test_a_disk_that_fills_mid_store_ends_in_one_paragraph_and_the_rerun_resumes(
    small_disk, data_dir, informative_weights, tmp_path
):
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="3",
        FRUITS_TL_KILL_AT="store:chunk:train.pixels:1",
        FRUITS_TL_KILL_SIGNAL="SIGSTOP",
    )
    model_dir = tmp_path / "run"
    command = _command(data_dir, model_dir, small_disk, informative_weights)
    job = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status = os.waitpid(job.pid, os.WUNTRACED)  # Stopped after chunk 1 of 3 is written.
    assert os.WIFSTOPPED(status), status
    _fill(small_disk)
    job.send_signal(signal.SIGCONT)
    _, err = job.communicate(timeout=300)
    err = err.decode()
    paragraph = " ".join(err.split())
    assert job.returncode == 2, err[-3000:]
    assert f"The disk of '{small_disk / 'pixels'}' has no room for the stored train pixels" in (
        paragraph
    )
    assert "Traceback" not in err
    assert not model_dir.exists() or not (model_dir / "metrics.json").exists()
    # Room again: the same command resumes after the chunk it had written.
    os.unlink(small_disk / "filler")
    env.pop("FRUITS_TL_KILL_AT")
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Reusing chunk 1 of 3 of the stored train pixels" in rerun.stderr
    # The same result as a run that no full disk interrupted.
    plain_dir = tmp_path / "plain"
    plain = subprocess.run(
        _command(data_dir, plain_dir, tmp_path / "features", informative_weights),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert _result(model_dir) == _result(plain_dir)


def test_a_store_larger_than_the_free_space_is_refused_before_anything_is_written(
    small_disk, data_dir, informative_weights, tmp_path
):
    _fill(small_disk)
    os.truncate(small_disk / "filler", os.path.getsize(small_disk / "filler") - 40 * 1024)
    command = _command(data_dir, tmp_path / "run", small_disk, informative_weights)
    result = subprocess.run(
        command,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    paragraph = " ".join(result.stderr.split())
    assert result.returncode == 2, result.stderr[-3000:]
    needed = f"{18 * 32 * 32 * 3 / 1e6:,.1f} MB"
    assert f"has no room for the stored train pixels: it needs {needed} and" in paragraph
    assert "Traceback" not in result.stderr
    assert sorted(os.listdir(small_disk / "pixels")) == []
