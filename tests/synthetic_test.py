"""The embedded synthetic dataset: layout, determinism, decodability, class signal."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fruits_tl.core.config import UserInputError
from fruits_tl.data import decode, loading
from fruits_tl.jobs import synthetic


def test_layout_and_reuse(tmp_path):
    path = str(tmp_path / "syn")
    synthetic.write_synthetic_dataset(
        path, num_classes=4, train_per_class=3, test_per_class=2, seed=5
    )
    assert sorted(os.listdir(os.path.join(path, "Training"))) == sorted(synthetic.FRUIT_NAMES[:4])
    assert len(os.listdir(os.path.join(path, "Test", "Banana"))) == 2
    listed = sorted(
        p
        for paths in loading.list_image_files(
            os.path.join(path, "Training"), synthetic.FRUIT_NAMES[:4]
        ).values()
        for p in paths
    )
    assert len(listed) == 12 and decode.find_bad_images(listed) == ()
    before = os.path.getmtime(listed[0])
    synthetic.write_synthetic_dataset(
        path, num_classes=4, train_per_class=3, test_per_class=2, seed=5
    )
    assert os.path.getmtime(listed[0]) == before
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []
    # Other settings are not this dataset: refused, naming both, nothing rewritten.
    for other in ({"num_classes": 5}, {"seed": 6}):
        settings = {"num_classes": 4, "train_per_class": 3, "test_per_class": 2, "seed": 5}
        with pytest.raises(UserInputError, match="written with other settings") as error:
            synthetic.write_synthetic_dataset(path, **{**settings, **other})
        assert "num_classes=4" in str(error.value) and "seed=5" in str(error.value)
    assert os.path.getmtime(listed[0]) == before


def test_generation_is_deterministic_and_classes_differ():
    style_a = synthetic._class_style(0, np.random.default_rng(0))
    first = synthetic.render_fruit(style_a, np.random.default_rng(1))
    again = synthetic.render_fruit(
        synthetic._class_style(0, np.random.default_rng(0)), np.random.default_rng(1)
    )
    np.testing.assert_array_equal(first, again)
    assert first.shape == (100, 100, 3) and first.dtype == np.uint8
    assert (first[0, 0] > 200).all()  # white background in the corner
    other = synthetic.render_fruit(
        synthetic._class_style(1, np.random.default_rng(0)), np.random.default_rng(1)
    )
    fruit = (first < 200).any(axis=2)
    other_fruit = (other < 200).any(axis=2)
    assert np.abs(first[fruit].mean(axis=0) - other[other_fruit].mean(axis=0)).max() > 20


def test_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(UserInputError, match="is not a synthetic dataset"):
        synthetic.write_synthetic_dataset(str(tmp_path))
    assert (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.mark.slow
def test_synthetic_binary_writes_a_dataset_that_trains(tmp_path, capsys):
    from conftest import run_main

    from fruits_tl.cli import synthetic_main, train_main

    dest = tmp_path / "syn"
    args = [
        f"--dest={dest}",
        "--num_classes=3",
        "--train_per_class=4",
        "--test_per_class=2",
        "--seed=9",
    ]
    assert run_main(synthetic_main, args) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(dest)
    assert sorted(os.listdir(dest / "Training")) == sorted(synthetic.FRUIT_NAMES[:3])
    assert sum(len(os.listdir(dest / "Test" / c)) for c in synthetic.FRUIT_NAMES[:3]) == 6
    digest = {
        p.name: p.read_bytes() for p in (dest / "Training" / synthetic.FRUIT_NAMES[0]).iterdir()
    }
    # The same seed writes the same files; another seed others.
    assert run_main(synthetic_main, [f"--dest={tmp_path / 'again'}", *args[1:]]) == 0
    again = tmp_path / "again" / "Training" / synthetic.FRUIT_NAMES[0]
    assert {p.name: p.read_bytes() for p in again.iterdir()} == digest
    assert run_main(synthetic_main, [f"--dest={tmp_path / 'other'}", *args[1:-1], "--seed=10"]) == 0
    other = tmp_path / "other" / "Training" / synthetic.FRUIT_NAMES[0]
    assert {p.name: p.read_bytes() for p in other.iterdir()} != digest
    model_dir = tmp_path / "run"
    train_args = [
        f"--data_dir={dest}",
        f"--model_dir={model_dir}",
        "--alpha=0.25",
        "--image_size=32",
        "--weights=none",
        "--epochs=1",
        "--batch_size=4",
        "--verbose=0",
    ]
    assert run_main(train_main, train_args) == 0
    metrics = json.loads((model_dir / "metrics.json").read_text())
    counts = (metrics["num_classes"], metrics["num_train_images"], metrics["num_test_images"])
    assert counts == (3, 12, 6)  # 3 classes of 4 training and 2 test images.
