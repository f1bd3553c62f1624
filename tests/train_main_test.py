"""fruits-tl-train end to end: outputs, strategies, flags and every bad-input exit."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import keras
import numpy as np
import pytest
from conftest import feature_files, run_main, store_listing, stored_features

from fruits_tl.cli import evaluate_main, train_main
from fruits_tl.models import servable
from fruits_tl.training import reporting

TINY = [
    "--alpha=0.25",
    "--image_size=32",
    "--weights=none",
    "--epochs=1",
    "--batch_size=4",
    "--verbose=0",
]


def metrics_text(model_dir) -> str:
    return (model_dir / "metrics.json").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("strategy, replicas", [("default", 1), ("mirrored", 2)])
def test_trains_and_writes_everything(data_dir, tmp_path, capsys, strategy, replicas):
    model_dir = tmp_path / "run"
    code = run_main(
        train_main,
        [
            f"--data_dir={data_dir}",
            f"--model_dir={model_dir}",
            f"--strategy={strategy}",
            "--save_h5",
            *TINY,
        ],
    )
    assert code == 0, capsys.readouterr().err
    assert sorted(os.listdir(model_dir)) == sorted(
        [
            "model.keras",
            "labels.txt",
            "history.csv",
            "flags.txt",
            "metrics.json",
            "MobileNet_TransferLearning.h5",
            "features",
            "batch_digests.csv",
            "training_curves.png",
            # One epoch on random weights leaves the head at chance: the underfit guard runs
            # the learning-rate finder, whose curve is written too.
            "lr_find.csv",
            "lr_find.png",
        ]
    )  # No checkpoints: they are removed when the job succeeds.
    assert "underfit" in metrics_text(model_dir)
    assert store_listing(model_dir / "features") == feature_files("test", "train")
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert set(metrics) == {field.name for field in dataclasses.fields(reporting.TrainMetrics)}
    assert metrics["strategy"] == strategy and metrics["num_replicas"] == replicas
    assert metrics["mode"] == "features" and metrics["mode_reason"].startswith(
        "auto: the head trains on a frozen backbone"
    )
    assert metrics["global_batch_size"] == 4 and metrics["per_replica_batch_size"] == 4 // replicas
    assert (metrics["num_classes"], metrics["num_train_images"], metrics["num_test_images"]) == (
        3,
        18,
        9,
    )
    assert metrics["train_images_per_second"] == pytest.approx(18 * 1 / metrics["train_seconds"])
    # The saved model, evaluated on its own, reproduces the job's test figures.
    out = tmp_path / "evaluation"
    assert (
        run_main(
            evaluate_main, [f"--model={model_dir}", f"--data_dir={data_dir}", f"--output_dir={out}"]
        )
        == 0
    )
    evaluated = json.loads((out / "metrics.json").read_text())
    assert evaluated["accuracy"] == pytest.approx(metrics["test_accuracy"], rel=1e-6)
    assert evaluated["loss"] == pytest.approx(metrics["test_loss"], rel=1e-4)
    assert (model_dir / "labels.txt").read_text().splitlines() == [
        "Apple Red",
        "Banana",
        "Blueberry",
    ]
    assert "--strategy=" + strategy in (model_dir / "flags.txt").read_text()
    history = (model_dir / "history.csv").read_text().splitlines()
    assert (
        history[0].startswith("epoch,") and "images_per_second" in history[0] and len(history) == 2
    )
    loaded = servable.load_model(str(model_dir))
    probabilities = loaded.predict(np.zeros((1, 32, 32, 3), np.uint8), verbose=0)
    assert probabilities.shape == (1, 3)
    assert "test_accuracy=" in capsys.readouterr().out


@pytest.mark.slow
def test_images_mode_under_two_replicas_with_a_last_batch_smaller_than_the_replicas(
    data_dir, tmp_path, capsys
):
    # 9 test images in batches of 4: the last batch has 1 image, so one replica gets none.
    model_dir = tmp_path / "run"
    code = run_main(
        train_main,
        [
            f"--data_dir={data_dir}",
            f"--model_dir={model_dir}",
            "--strategy=mirrored",
            "--mode=images",
            *TINY,
        ],
    )
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert (
        metrics["mode"] == "images"
        and metrics["num_replicas"] == 2
        and metrics["num_test_images"] == 9
    )


@pytest.mark.slow
def test_flagfile_and_skip_bad_images(data_dir, tmp_path, capsys):
    bad = os.path.join(data_dir, "Training", "Banana", "broken.jpg")
    open(bad, "wb").close()
    model_dir = tmp_path / "run"
    flagfile = tmp_path / "flags.cfg"
    flagfile.write_text(
        "\n".join([f"--data_dir={data_dir}", f"--model_dir={model_dir}", *TINY]) + "\n"
    )
    assert run_main(train_main, [f"--flagfile={flagfile}"]) == 2
    assert bad in capsys.readouterr().err
    # The check was the pixel store's fill: the store is kept (nothing else is written), so
    # the rerun that leaves the file out decodes nothing.
    written = [p for p in model_dir.rglob("*") if p.is_file()]
    assert written and all(p.parent == model_dir / "features" / "pixels" for p in written)
    assert run_main(train_main, [f"--flagfile={flagfile}", "--skip_bad_images"]) == 0
    assert "decode check" not in capsys.readouterr().err
    assert bad in (model_dir / "skipped_images.txt").read_text()
    assert json.loads((model_dir / "metrics.json").read_text())["num_skipped_images"] == 1


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--batch_size=0"], "batch_size must be in"),
        (["--validation_split=1.5"], "validation_split must be in [0, 1)"),
        (["--alpha=-1"], "alpha must be in"),
        (["--epochs=0"], "epochs must be >= 1"),
        (["--learning_rate=0"], "learning_rate must be 'auto' or a number in (0, 10]"),
        (["--learning_rate=fast"], "--learning_rate must be a number or 'auto', got 'fast'"),
        (["--augment=spin"], "augment: unknown transform 'spin'"),
        (["--augment=rotate=0.9"], "augment: rotate=0.9 is out of range"),
        (["--augment=flip_left_right", "--mode=features"], "but --mode=features trains the head"),
        (["--fine_tune_layers=-1"], "fine_tune_layers must be from 0"),
        (["--fine_tune_learning_rate=2"], "fine_tune_learning_rate must be in (0, 1]"),
        (["--dropout=1"], "dropout must be in"),
        (["--image_size=2"], "image_size must be an integer"),
        (["--strategy=tpu"], "strategy"),
        (["--weights=/no/such/file.h5"], "weights file '/no/such/file.h5' does not exist"),
        (["--strategy=mirrored", "--batch_size=5"], "divisible by the 2 replicas"),
    ],
)
def test_bad_flags_exit_non_zero_with_one_clear_message(
    data_dir, tmp_path, capsys, extra, expected
):
    model_dir = tmp_path / "run"
    code = run_main(
        train_main, [f"--data_dir={data_dir}", f"--model_dir={model_dir}", *TINY, *extra]
    )
    err = capsys.readouterr().err
    assert code != 0
    assert expected in " ".join(err.split())
    assert "Traceback" not in err
    assert not model_dir.exists()


def test_missing_required_flags_and_data_dir(tmp_path, capsys):
    assert run_main(train_main, []) == 2
    assert "--data_dir, --model_dir" in capsys.readouterr().err
    assert (
        run_main(train_main, [f"--data_dir={tmp_path / 'none'}", f"--model_dir={tmp_path / 'm'}"])
        == 2
    )
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_a_failed_run_leaves_an_existing_model_dir_untouched(data_dir, tmp_path, capsys):
    model_dir = tmp_path / "run"
    assert run_main(train_main, [f"--data_dir={data_dir}", f"--model_dir={model_dir}", *TINY]) == 0

    def snapshot():
        return {
            os.path.relpath(os.path.join(root, name), model_dir): open(
                os.path.join(root, name), "rb"
            ).read()
            for root, _, names in os.walk(model_dir)
            for name in names
        }

    before = snapshot()
    assert "features/train.features.json" in before
    os.rename(os.path.join(data_dir, "Test", "Banana"), os.path.join(data_dir, "Test", "Bananas"))
    assert run_main(train_main, [f"--data_dir={data_dir}", f"--model_dir={model_dir}", *TINY]) == 2
    assert "'Bananas' (closest training class: 'Banana')" in capsys.readouterr().err
    assert snapshot() == before


@pytest.mark.slow
def test_validation_split_beside_a_test_folder(data_dir, tmp_path, capsys):
    model_dir = tmp_path / "run"
    args = [f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--validation_split=0.34", *TINY]
    assert run_main(train_main, args) == 0, capsys.readouterr().err
    metrics = json.loads((model_dir / "metrics.json").read_text())
    # 6 training images per class: 2 of each held out (seeded, stratified); Test stays the test.
    assert (
        metrics["num_train_images"],
        metrics["num_validation_images"],
        metrics["num_test_images"],
    ) == (
        12,
        6,
        9,
    )
    assert metrics["test_source"] == "test folder"
    assert store_listing(model_dir / "features") == feature_files("test", "train", "validation")
    history = (model_dir / "history.csv").read_text().splitlines()[0].split(",")
    assert "val_accuracy" in history
    validation = stored_features(model_dir / "features", "validation")
    train_files = set(stored_features(model_dir / "features", "train").file_paths)
    assert len(validation) == 6 and not train_files & set(validation.file_paths)
    assert all(os.sep + "Training" + os.sep in path for path in validation.file_paths)


@pytest.mark.slow
def test_a_second_images_mode_run_decodes_nothing(data_dir, tmp_path, capsys, caplog):
    args = [
        f"--data_dir={data_dir}",
        f"--model_dir={tmp_path / 'run'}",
        "--mode=images",
        "--extract_chunk_images=8",
        *TINY,
    ]
    assert run_main(train_main, args) == 0, capsys.readouterr().err
    pixels = tmp_path / "run" / "features" / "pixels"
    stored = sorted(p.name for p in pixels.iterdir())
    # 18 training images decoded in chunks of 8, 9 test images: one file and a manifest each
    # (the chunks, merged, are gone).
    assert len(stored) == 4 and "train.pixels.json" in stored and "test.pixels.json" in stored
    first = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # Damage a training image without changing its size or modification time: a run that
    # decoded it (in the check or the pipeline) would fail; this one must not even look.
    victim = os.path.join(data_dir, "Training", sorted(os.listdir(f"{data_dir}/Training"))[0])
    victim = os.path.join(victim, sorted(os.listdir(victim))[0])
    stat = os.stat(victim)
    with open(victim, "r+b") as stream:
        stream.write(b"\0" * stat.st_size)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="absl"):
        assert run_main(train_main, [*args, "--restart"]) == 0, capsys.readouterr().err
    log = caplog.text
    assert "Reusing the stored train pixels" in log and "Reusing the stored test pixels" in log
    second = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert second["test_accuracy"] == first["test_accuracy"]
    assert sorted(p.name for p in pixels.iterdir()) == stored
    # A changed modification time is a changed file: it is checked, and found undecodable.
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert run_main(train_main, [*args, "--restart"]) == 2
    assert os.path.basename(victim) in capsys.readouterr().err


@pytest.mark.slow
def test_fine_tuning_trains_the_last_block_and_reports_both_phases(data_dir, tmp_path, capsys):
    model_dir = tmp_path / "run"
    code = run_main(
        train_main,
        [
            f"--data_dir={data_dir}",
            f"--model_dir={model_dir}",
            *TINY,
            "--fine_tune_layers=4",
            "--fine_tune_epochs=2",
            "--augment=flip_left_right",
        ],
    )
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["mode"] == "features"
    assert (
        "then fine-tuning (--fine_tune_layers=4) runs on the images, augmented"
        in (metrics["mode_reason"])
    )
    # 4 layers round up to the whole last block.
    assert metrics["fine_tuned_layers"] == ["conv_dw_13", "conv_pw_13"]
    assert (metrics["fine_tune_epochs"], metrics["fine_tune_optimizer"]) == (2, "adam")
    assert metrics["augment"] == "flip_left_right=0.5"
    assert set(metrics) >= {"head_test_accuracy", "head_test_loss", "fine_tune_seconds"}
    # history.csv: 1 head epoch, then 2 of fine-tuning, each row with its phase.
    rows = (model_dir / "history.csv").read_text().splitlines()
    header = rows[0].split(",")
    phases = [row.split(",")[header.index("phase")] for row in rows[1:]]
    assert phases == ["1", "2", "2"]
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2", "3"]
    # The saved model loads in plain Keras, built-in layers only (no augmentation in it).
    loaded = keras.saving.load_model(model_dir / "model.keras", compile=False)
    classes = {type(layer).__module__.split(".")[0] for layer in loaded.layers}
    assert classes == {"keras"}
    assert "Random" not in " ".join(type(layer).__name__ for layer in loaded.layers)
    assert (model_dir / "training_curves.png").is_file()
    assert not (model_dir / "checkpoints").exists()


def _add_macos_metadata(data_dir) -> int:
    """What a zip made on macOS adds: __MACOSX/ trees and AppleDouble ._<name> files (not
    images, though named .jpg). Returns the number of ._ files added inside the splits."""
    added = 0
    for split in ("Training", "Test"):
        for class_dir in sorted((data_dir / split).iterdir()):
            for image in sorted(class_dir.glob("*.jpg"))[:2]:
                (class_dir / f"._{image.name}").write_bytes(b"\x00\x05\x16\x07AppleDouble")
                added += 1
        junk = data_dir / split / "__MACOSX" / "Banana"
        junk.mkdir(parents=True)
        (junk / "._x.jpg").write_bytes(b"\x00\x05\x16\x07")
    (data_dir / "__MACOSX" / "Training").mkdir(parents=True)
    return added


def test_a_folder_zipped_on_macos_trains_without_skip_bad_images(
    data_dir, tmp_path, capsys, caplog
):
    from pathlib import Path

    from fruits_tl.cli import audit_main

    assert _add_macos_metadata(Path(data_dir)) == 12
    model_dir = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        code = run_main(
            train_main,
            [f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--verbosity=0", *TINY],
        )
    lines = [record.getMessage() for record in caplog.records]
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert (metrics["num_classes"], metrics["num_train_images"], metrics["num_test_images"]) == (
        3,
        18,
        9,
    )
    assert metrics["num_skipped_images"] == 0
    assert (model_dir / "labels.txt").read_text().split("\n")[:3] == [
        "Apple Red",
        "Banana",
        "Blueberry",
    ]
    left_out = [line for line in lines if "Left out operating-system metadata" in line]
    assert any("the folder __MACOSX/" in line and "6 file(s)" in line for line in left_out)
    report = tmp_path / "audit.json"
    assert run_main(audit_main, [f"--data_dir={data_dir}", f"--output_json={report}"]) == 0
    assert json.loads(report.read_text())["undecodable"] == []


@pytest.mark.slow
def test_a_cold_run_decodes_each_file_once_and_a_warm_one_none(data_dir, tmp_path, caplog, capsys):
    # Features mode with a validation split: the decode check fills one store per source
    # folder, and validation, training and extraction all read rows of it.
    args = [
        f"--data_dir={data_dir}",
        f"--model_dir={tmp_path / 'run'}",
        "--validation_split=0.34",
        "--verbosity=0",  # The decode check's lines are INFO.
        *TINY,
    ]
    with caplog.at_level(logging.INFO, logger="absl"):
        assert run_main(train_main, args) == 0
    cold = caplog.text
    assert "Decode check: 18 train images decoded into the pixel store" in cold
    assert "Decode check: 9 test images decoded into the pixel store" in cold
    assert "Reusing the stored" not in cold
    assert "decode check:" not in capsys.readouterr().err  # No separate pass decoded them.
    assert store_listing(tmp_path / "run" / "features" / "pixels") == [
        "test.pixels.json",
        "test.pixels.rows",
        "train.pixels.json",
        "train.pixels.rows",
    ]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="absl"):
        assert run_main(train_main, [*args, "--restart", "--mode=images"]) == 0
    warm = caplog.text
    assert "images decoded into the pixel store" not in warm
    assert "Reusing the stored train pixels" in warm and "Reusing the stored test pixels" in warm


def test_a_file_that_cannot_be_read_is_a_read_error_even_with_skip_bad_images(
    data_dir, tmp_path, capsys
):
    # Reading /proc/self/mem from its start fails with an I/O error (EIO) on Linux: a file
    # listed as an image that the job cannot read, as a failing disk would give.
    try:
        open("/proc/self/mem", "rb").read(1)
        pytest.skip("/proc/self/mem reads here: no way to make an I/O error")
    except OSError:
        pass
    victim = os.path.join(data_dir, "Training", "Banana", "unreadable.jpg")
    os.symlink("/proc/self/mem", victim)
    args = [f"--data_dir={data_dir}", f"--model_dir={tmp_path / 'run'}", "--skip_bad_images"]
    assert run_main(train_main, [*args, *TINY]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{victim}: cannot be read (Input/output error)" in err
    assert "not bad images, so --skip_bad_images does not leave them out" in err
    assert "Traceback" not in err
