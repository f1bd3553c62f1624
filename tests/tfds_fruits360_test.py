"""The fruits360 TFDS builder (TFDS's own builder test case) and the tfds data source."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import run_main

from fruits_tl.cli import evaluate_main, train_main
from fruits_tl.data import loading, tfds_fruits360
from fruits_tl.jobs import synthetic


def _write_fake_fruits(directory: str) -> str:
    """A fake Fruits-360 release: 3 classes, 4 training and 2 test 100x100 JPEGs each, nested
    one level down as in the release archive."""
    return synthetic.write_synthetic_dataset(
        os.path.join(directory, "Fruit-Images-Dataset-master"),
        num_classes=3,
        train_per_class=4,
        test_per_class=2,
        seed=11,
    )


class Fruits360BuilderTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = tfds_fruits360.Fruits360
    SPLITS = {"train": 12, "test": 6}
    SKIP_CHECKSUMS = True

    @classmethod
    def setUpClass(cls):
        cls._examples = tempfile.mkdtemp(prefix="fruits360-fake-")
        _write_fake_fruits(cls._examples)
        cls.EXAMPLE_DIR = cls._examples
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls._examples, ignore_errors=True)


@pytest.mark.slow
def test_tfds_source_trains_with_the_folder_class_order(tmp_path, caplog, capsys):
    manual = tmp_path / "manual"
    source = _write_fake_fruits(str(manual))
    records = tmp_path / "records"
    with caplog.at_level(logging.INFO, logger="absl"):
        splits = tfds_fruits360.load_tfds_splits(
            tfds_data_dir=str(records), manual_dir=str(manual), image_size=32
        )
    assert "Preparing the fruits360 TFDS dataset" in caplog.text
    folder = loading.load_dataset(source, image_size=32)
    assert splits.class_names == folder.class_names
    assert (len(splits.train), len(splits.test)) == (12, 6)
    # Same images and labels as the folder pipeline, file for file.
    by_name = {
        os.path.relpath(p, os.path.join(source, "Training")): (image, label)
        for p, (image, label) in zip(
            folder.train.file_paths, folder.train.make_elements().as_numpy_iterator(), strict=True
        )
    }
    for path, (image, label) in zip(
        splits.train.file_paths, splits.train.make_elements().as_numpy_iterator(), strict=True
    ):
        expected_image, expected_label = by_name[path.split("/train/", 1)[1]]
        assert label == expected_label
        np.testing.assert_array_equal(image, expected_image)
    model_dir = tmp_path / "run"
    caplog.clear()
    code = run_main(
        train_main,
        [
            "--data_source=tfds",
            f"--tfds_data_dir={records}",
            f"--manual_dir={manual}",
            f"--model_dir={model_dir}",
            "--alpha=0.25",
            "--image_size=32",
            "--weights=none",
            "--epochs=1",
            "--batch_size=4",
            "--verbose=0",
        ],
    )
    assert code == 0, capsys.readouterr().err
    assert "Preparing" not in caplog.text  # Already prepared: reused.
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert (metrics["num_train_images"], metrics["num_test_images"]) == (12, 6)
    assert (model_dir / "labels.txt").read_text().splitlines() == list(folder.class_names)
    # Evaluation of the TFDS test split: the same figures as training reported.
    out = tmp_path / "evaluation"
    code = run_main(
        evaluate_main,
        [
            "--data_source=tfds",
            f"--tfds_data_dir={records}",
            f"--model={model_dir}",
            "--split=Test",
            f"--output_dir={out}",
        ],
    )
    assert code == 0, capsys.readouterr().err
    evaluated = json.loads((out / "metrics.json").read_text())
    assert evaluated["num_images"] == 6
    assert evaluated["accuracy"] == pytest.approx(metrics["test_accuracy"], rel=1e-6)
    assert evaluated["loss"] == pytest.approx(metrics["test_loss"], rel=1e-4)
    code = run_main(
        evaluate_main,
        [
            "--data_source=tfds",
            f"--tfds_data_dir={records}",
            f"--model={model_dir}",
            "--split=Holdout",
        ],
    )
    assert (
        code == 2 and "--split=Holdout is not a split of the TFDS source" in capsys.readouterr().err
    )


def test_tfds_load_works_once_the_package_is_imported(tmp_path, caplog):
    manual = tmp_path / "manual"
    root = _write_fake_fruits(str(manual))
    # What a zip made on macOS carries is left out: no __MACOSX class, no ._ "image".
    for split in ("Training", "Test"):
        os.makedirs(os.path.join(root, split, "__MACOSX", "Banana"))
        for class_name in os.listdir(os.path.join(root, split)):
            with open(os.path.join(root, split, class_name, "._0.jpg"), "wb") as stream:
                stream.write(b"\x00\x05\x16\x07AppleDouble")
    with caplog.at_level(logging.WARNING):
        tfds_fruits360.prepare(tfds_data_dir=str(tmp_path / "records"), manual_dir=str(manual))
    assert "Skipping undecodable" not in caplog.text
    dataset, info = tfds.load(
        "fruits360", split="test", data_dir=str(tmp_path / "records"), with_info=True
    )
    example = next(iter(dataset))
    assert example["image"].shape == (100, 100, 3) and info.features["label"].num_classes == 3
    assert info.splits["train"].num_examples == 12 and info.splits["test"].num_examples == 6
    assert str(info.version) == "1.0.0"


def test_archive_in_manual_dir_is_extracted(tmp_path):
    staging = tmp_path / "staging"
    _write_fake_fruits(str(staging))
    manual = tmp_path / "manual"
    manual.mkdir()
    shutil.make_archive(str(manual / "fruits-360"), "zip", str(staging))
    splits = tfds_fruits360.load_tfds_splits(
        tfds_data_dir=str(tmp_path / "records"), manual_dir=str(manual), image_size=32
    )
    assert len(splits.train) == 12 and len(splits.class_names) == 3


@pytest.mark.slow
def test_tfds_build_command_prepares_the_records(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    manual = tmp_path / "manual"
    _write_fake_fruits(str(manual))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fruits_tl.cli.tfds_build_main",
            f"--manual_dir={manual}",
            f"--tfds_data_dir={tmp_path / 'records'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    builder = tfds.builder("fruits360", data_dir=str(tmp_path / "records"))
    assert builder.is_prepared() and builder.info.splits["train"].num_examples == 12
    assert builder.info.features["label"].names == ["Apple Red", "Banana", "Blueberry"]


def test_offline_without_manual_data_is_one_clear_error(tmp_path, monkeypatch):
    import pytest

    from fruits_tl.core.config import UserInputError

    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="Could not download"):
        tfds_fruits360.prepare(
            tfds_data_dir=str(tmp_path / "records"), manual_dir=str(tmp_path / "empty")
        )


def test_records_rebuilt_with_the_same_count_get_a_new_fingerprint(tmp_path):
    records = str(tmp_path / "records")
    first_source = tmp_path / "first"
    _write_fake_fruits(str(first_source))
    first = tfds_fruits360.load_tfds_splits(
        tfds_data_dir=records, manual_dir=str(first_source), image_size=32
    )
    again = tfds_fruits360.load_tfds_splits(
        tfds_data_dir=records, manual_dir=str(first_source), image_size=32
    )
    assert again.train.fingerprint == first.train.fingerprint
    # Same classes and counts, other pixels (another seed), prepared again in the same place.
    second_source = tmp_path / "second"
    synthetic.write_synthetic_dataset(
        str(second_source / "Fruit-Images-Dataset-master"),
        num_classes=3,
        train_per_class=4,
        test_per_class=2,
        seed=99,
    )
    shutil.rmtree(records)
    rebuilt = tfds_fruits360.load_tfds_splits(
        tfds_data_dir=records, manual_dir=str(second_source), image_size=32
    )
    assert len(rebuilt.train) == len(first.train)
    assert rebuilt.train.fingerprint != first.train.fingerprint
