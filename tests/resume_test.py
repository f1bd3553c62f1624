"""Kill, stop and resume with real processes and real signals, at points the test controls.

The kill points are the documented hook (fruits_tl.core.stopping): FRUITS_TL_KILL_AT names the
point, FRUITS_TL_KILL_SIGNAL the signal (SIGKILL unless set). No sleeps, no polling.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import REPO, feature_files, store_listing, stored_features

# Starts processes or servers, or trains on the real sample: the slow tier.
pytestmark = pytest.mark.slow


TRAIN = [
    "--alpha=0.25",
    "--image_size=32",
    "--weights=none",
    "--batch_size=4",
    "--verbose=0",
    "--deterministic",
]


def _run(
    module: str, args: list[str], *, kill_at: str = "", kill_signal: str = ""
) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FRUITS_TL_KILL")}
    environment["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if kill_at:
        environment["FRUITS_TL_KILL_AT"] = kill_at
    if kill_signal:
        environment["FRUITS_TL_KILL_SIGNAL"] = kill_signal
    command = [sys.executable, "-m", f"fruits_tl.cli.{module}", *args]
    return subprocess.run(
        command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=600
    )


def _weights(model_dir) -> list[np.ndarray]:
    return keras.saving.load_model(
        os.path.join(model_dir, "model.keras"), compile=False
    ).get_weights()


def _same_run(a, b) -> None:
    """Bit for bit: weights, per-epoch digests and the test figures."""
    assert (a / "batch_digests.csv").read_text() == (b / "batch_digests.csv").read_text()
    for left, right in zip(_weights(a), _weights(b), strict=True):
        np.testing.assert_array_equal(left, right)
    metrics_a = json.loads((a / "metrics.json").read_text())
    metrics_b = json.loads((b / "metrics.json").read_text())
    assert (metrics_a["test_loss"], metrics_a["test_accuracy"]) == (
        metrics_b["test_loss"],
        metrics_b["test_accuracy"],
    )


@pytest.fixture(scope="module")
def uninterrupted(tiny_dataset, tmp_path_factory):
    """Images mode, 3 epochs of 5 steps (18 images in batches 4, 4, 4, 4, 2), no interruption."""
    model_dir = tmp_path_factory.mktemp("resume") / "uninterrupted"
    result = _run(
        "train_main",
        [
            f"--data_dir={tiny_dataset}",
            f"--model_dir={model_dir}",
            "--mode=images",
            "--epochs=3",
            *TRAIN,
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir


def test_sigkill_in_the_second_epoch_then_rerun_is_bit_for_bit_the_uninterrupted_run(
    uninterrupted, tiny_dataset, tmp_path
):
    model_dir = tmp_path / "killed"
    args = [
        f"--data_dir={tiny_dataset}",
        f"--model_dir={model_dir}",
        "--mode=images",
        "--epochs=3",
        "--checkpoint_every_steps=2",
        *TRAIN,
    ]
    killed = _run("train_main", args, kill_at="train:step:1:3")  # Epoch 2, after its step 3.
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (model_dir / "metrics.json").exists()
    saved = sorted(os.listdir(model_dir / "checkpoints" / "images"))
    # Epoch 1: steps 2 and 4, its end; epoch 2: step 2. --keep_checkpoints=1 keeps the last.
    assert saved == ["ckpt-000003"]
    state = json.loads(
        (model_dir / "checkpoints" / "images" / saved[0] / "state.json").read_text()
    )["state"]
    assert (state["epoch"], state["step"]) == (1, 2)
    rerun = _run("train_main", args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (
        "Resuming from the checkpoint" in rerun.stderr
        and "1 of 3 epochs done, step 2" in rerun.stderr
    )
    _same_run(uninterrupted, model_dir)
    assert not (model_dir / "checkpoints").exists()  # Removed once the job succeeded.


def test_sigterm_saves_and_exits_143_and_a_changed_flag_is_refused(
    uninterrupted, tiny_dataset, tmp_path
):
    model_dir = tmp_path / "stopped"
    args = [
        f"--data_dir={tiny_dataset}",
        f"--model_dir={model_dir}",
        "--mode=images",
        "--epochs=3",
        *TRAIN,
    ]
    stopped = _run("train_main", args, kill_at="train:step:1:1", kill_signal="SIGTERM")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "fruits-tl-train: stopped on SIGTERM: epoch 2, step 1 of 5 is saved; rerun"
    )
    assert not (model_dir / "metrics.json").exists()
    assert [n for n in os.listdir(model_dir) if ".tmp-" in n] == []
    changed = _run("train_main", [*args, "--learning_rate=0.01"])
    assert changed.returncode == 2
    assert "--learning_rate (0.0001, now 0.01)" in changed.stderr and "--restart" in changed.stderr
    resumed = _run("train_main", args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _same_run(uninterrupted, model_dir)


def test_another_seed_is_another_run(uninterrupted, tiny_dataset, tmp_path):
    model_dir = tmp_path / "seed"
    args = [
        f"--data_dir={tiny_dataset}",
        f"--model_dir={model_dir}",
        "--mode=images",
        "--epochs=3",
        *TRAIN,
        "--seed=43",
    ]
    assert _run("train_main", args).returncode == 0
    ours = (model_dir / "batch_digests.csv").read_text().splitlines()
    theirs = (uninterrupted / "batch_digests.csv").read_text().splitlines()
    assert ours[0] == theirs[0] == "epoch,batches,indices_digest,weights_digest" and len(ours) == 4
    assert all(a != b for a, b in zip(ours[1:], theirs[1:], strict=True))


def _extract_args(data_dir, features_dir) -> list[str]:
    """fruits-tl-extract of the tiny set in 3 chunks of 8 training images (18 in all)."""
    return [
        f"--data_dir={data_dir}",
        f"--features_dir={features_dir}",
        "--alpha=0.25",
        "--image_size=32",
        "--weights=none",
        "--batch_size=4",
        "--extract_chunk_images=8",
        "--extract_verbose=0",
    ]


def test_extraction_killed_after_chunk_1_reuses_it_and_ends_identical(tiny_dataset, tmp_path):
    def extract(features_dir, **kill):
        return _run("extract_main", _extract_args(tiny_dataset, features_dir), **kill)

    whole = extract(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = extract(tmp_path / "killed", kill_at="store:chunk:train.features:1")
    assert killed.returncode == -signal.SIGKILL
    # The pixels of train are stored; of its features, chunk 1 and its marker only.
    assert store_listing(tmp_path / "killed") == [
        "pixels",
        "train.features.chunk-00000.json",
        "train.features.rows",
    ]
    rerun = extract(tmp_path / "killed")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Reusing chunk 1 of 3 of the stored train features" in rerun.stderr
    assert "Reusing the stored train pixels" in rerun.stderr
    assert store_listing(tmp_path / "killed") == feature_files("test", "train")
    for split in ("train", "test"):
        a = stored_features(tmp_path / "whole", split)
        b = stored_features(tmp_path / "killed", split)
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.labels, b.labels)


def test_sigterm_during_extraction_and_sigint_during_a_benchmark(tiny_dataset, tmp_path):
    features_dir = tmp_path / "features"
    args = _extract_args(tiny_dataset, features_dir)
    stopped = _run(
        "extract_main", args, kill_at="store:chunk:train.features:2", kill_signal="SIGTERM"
    )
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert (
        stopped.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "fruits-tl-extract: stopped on SIGTERM: 2 of 3 chunks of the stored train features "
            "are saved"
        )
    )
    assert store_listing(features_dir) == [
        "pixels",
        "train.features.chunk-00000.json",
        "train.features.chunk-00001.json",
        "train.features.rows",
    ]
    resumed = _run("extract_main", args)
    assert resumed.returncode == 0 and "Reusing chunk 2 of 3 of the stored train features" in (
        resumed.stderr
    )
    bench = [
        f"--data_dir={tiny_dataset}",
        "--image_size=32",
        "--repeats=2",
        "--epochs=2",
        "--variants=decode,idfd",
    ]
    interrupted = _run("bench_main", bench, kill_at="bench:measured:decode:1", kill_signal="SIGINT")
    assert interrupted.returncode == 130, interrupted.stderr[-3000:]
    assert "stopped on SIGINT: after decode in repeat 1 of 2" in interrupted.stderr
    assert "repeat 1/2 idfd" not in interrupted.stdout


def test_a_second_signal_stops_at_once():
    code = (
        "import os, signal\n"
        "from fruits_tl.core.stopping import GracefulStop\n"
        "with GracefulStop() as stop:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    assert stop.requested == signal.SIGINT\n"
        "    print('first signal noted', flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    print('not reached', flush=True)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 130
    assert result.stdout == "first signal noted\n"


FINE_TUNE = [
    "--epochs=2",
    "--fine_tune_layers=6",
    "--fine_tune_epochs=2",
    "--augment=flip_left_right,brightness",
]


def _fine_tune_args(data_dir, model_dir, weights) -> list[str]:
    return [
        f"--data_dir={data_dir}",
        f"--model_dir={model_dir}",
        *FINE_TUNE,
        *TRAIN,
        f"--weights={weights}",  # Features that do not vanish: the block learns.
    ]


@pytest.fixture(scope="module")
def fine_tuned(tiny_dataset, informative_weights, tmp_path_factory):
    """The head on features (2 epochs), then 2 epochs of fine-tuning the last block on the
    augmented images, under --deterministic, uninterrupted."""
    model_dir = tmp_path_factory.mktemp("fine_tune") / "uninterrupted"
    args = _fine_tune_args(tiny_dataset, model_dir, informative_weights)
    result = _run("train_main", args)
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir


def test_two_deterministic_fine_tuning_runs_with_augmentation_are_identical(
    fine_tuned, tiny_dataset, informative_weights, tmp_path
):
    model_dir = tmp_path / "again"
    args = _fine_tune_args(tiny_dataset, model_dir, informative_weights)
    result = _run("train_main", args)
    assert result.returncode == 0, result.stderr[-3000:]
    _same_run(fine_tuned, model_dir)
    # Phase 2 trained the last block: it moved away from the starting backbone's.
    from fruits_tl.models import model

    start = model.build_backbone(image_size=32, alpha=0.25, weights=informative_weights)
    tuned = keras.saving.load_model(model_dir / "model.keras", compile=False)
    kernel = tuned.get_layer(model.BACKBONE_NAME).get_layer("conv_pw_13").kernel.numpy()
    assert not np.array_equal(kernel, start.get_layer("conv_pw_13").kernel.numpy())
    first = json.loads((fine_tuned / "metrics.json").read_text())
    second = json.loads((model_dir / "metrics.json").read_text())
    drop = ("seconds", "per_second")
    assert {k: v for k, v in first.items() if not k.endswith(drop)} == {
        k: v for k, v in second.items() if not k.endswith(drop)
    }


@pytest.mark.parametrize("kill_signal", ["SIGKILL", "SIGTERM"])
def test_killed_or_stopped_in_fine_tuning_then_rerun_is_bit_for_bit_the_uninterrupted_run(
    fine_tuned, tiny_dataset, informative_weights, tmp_path, kill_signal
):
    model_dir = tmp_path / "killed"
    args = _fine_tune_args(tiny_dataset, model_dir, informative_weights)
    # Phase 2, epoch 2 (from 0: 1), after its step 3: the head's phase is finished.
    killed = _run("train_main", args, kill_at="fine_tune:step:1:3", kill_signal=kill_signal)
    if kill_signal == "SIGKILL":
        assert killed.returncode == -signal.SIGKILL
        resumed_at = "1 of 2 epochs done, step 0 of the next"
    else:  # A graceful stop: the step is saved.
        assert killed.returncode == 128 + signal.SIGTERM, killed.stderr[-3000:]
        assert "epoch 2, step 3 of 5 is saved; rerun the same command to resume" in " ".join(
            killed.stderr.split()
        )
        resumed_at = "1 of 2 epochs done, step 3 of the next"
    assert not (model_dir / "metrics.json").exists()
    assert sorted(os.listdir(model_dir / "checkpoints")) == ["features", "fine_tune"]
    rerun = _run("train_main", args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    text = " ".join(rerun.stderr.split())
    assert "(the head): 2 of 2 epochs done, step 0 of the next" in text
    assert f"(fine-tuning): {resumed_at}" in text
    _same_run(fine_tuned, model_dir)


def test_the_fault_hook_signals_only_itself_or_a_sibling(tmp_path):
    """A binary given FRUITS_TL_KILL_PID of a process that is not its sibling (here its own
    parent) refuses instead of signalling it; a sibling is signalled."""
    code = (
        "import os, sys\n"
        "from fruits_tl.core import stopping\n"
        "try:\n"
        "    stopping.point('p')\n"
        "except RuntimeError as error:\n"
        "    print('refused:', error)\n"
    )
    env = dict(os.environ, FRUITS_TL_KILL_AT="p", FRUITS_TL_KILL_SIGNAL="SIGTERM")
    env["FRUITS_TL_KILL_PID"] = str(os.getpid())  # The pytest process: the child's parent.
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0 and "refused: FRUITS_TL_KILL_PID=" in result.stdout
    sibling = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
    try:
        env["FRUITS_TL_KILL_PID"] = str(sibling.pid)
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
        assert result.returncode == 0, result.stderr
        assert sibling.wait(timeout=60) == -signal.SIGTERM
    finally:
        sibling.kill()
