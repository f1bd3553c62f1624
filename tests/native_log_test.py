"""The binaries hide TensorFlow's early C++ log lines below TF_CPP_MIN_LOG_LEVEL."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fruits_tl.cli import common

ONEDNN = (
    "I0000 00:00:1795961381.708766   10823 port.cc:153] oneDNN custom operations are on. "
    "You may see slightly different numerical results.\n"
)
CUINIT = (
    "E0000 00:00:1795961382.864567   10823 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error\n"
)
# absl's Python logging (and TensorFlow's C++ logging once started) carry a real date: the
# binaries' own warnings must always pass.
LATER = "W1129 13:44:09.960997 139911330737024 train.py:412] Resuming from the checkpoint\n"


def test_levels_follow_tensorflows_meaning():
    assert [common.hidden(line, 0) for line in (ONEDNN, CUINIT, LATER)] == [False] * 3
    assert [common.hidden(line, 2) for line in (ONEDNN, CUINIT, LATER)] == [True, False, False]
    assert [common.hidden(line, 3) for line in (ONEDNN, CUINIT, LATER)] == [True, True, False]
    assert common.hidden(common.PREAMBLE + "\n", 2)
    assert not common.hidden("fruits-tl-predict: error: There is no model\n", 3)


@pytest.mark.slow
def test_a_binary_shows_its_error_and_hides_tensorflows_start_up_lines(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "fruits-tl-predict")
    image = tmp_path / "x.jpg"
    image.write_bytes(b"not read")
    command = [script, f"--model={tmp_path / 'nowhere'}", str(image)]
    quiet = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(command, capture_output=True, text=True, env=quiet, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("fruits-tl-predict: error: There is no model at"), (
        result.stderr
    )
    loud = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=dict(quiet, TF_CPP_MIN_LOG_LEVEL="0"),
        timeout=300,
    )
    assert loud.returncode == 2 and "There is no model at" in loud.stderr
    # TensorFlow 2.21 on a CPU-only machine logs its CUDA probing at import: shown at level 0.
    assert any(common.NATIVE_LINE.match(line) for line in loud.stderr.splitlines()), loud.stderr


@pytest.mark.slow
def test_a_training_log_has_one_line_per_epoch_and_none_of_tensorflows_info(tiny_dataset, tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "fruits-tl-train")
    command = [
        script,
        f"--data_dir={tiny_dataset}",
        f"--model_dir={tmp_path / 'run'}",
        "--alpha=0.25",
        "--image_size=32",
        "--weights=none",
        "--epochs=3",
        "--batch_size=4",
        "--mode=images",  # A checkpoint after every epoch: TensorFlow logs "Sharding ...".
    ]
    quiet = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(command, capture_output=True, text=True, env=quiet, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    for epoch in (1, 2, 3):
        assert sum(f"epoch {epoch}/3" in line for line in lines) == 1, result.stderr
    assert "Sharding callback" not in result.stderr
    assert "images/s" in next(line for line in lines if "train epoch 3/3:" in line)
