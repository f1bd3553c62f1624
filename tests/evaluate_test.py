"""Evaluation arithmetic on known predictions, and the evaluate, predict and extract binaries."""

from __future__ import annotations

import csv
import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from conftest import feature_files, run_main, store_listing

from fruits_tl.cli import evaluate_main, extract_main, predict_main, train_main
from fruits_tl.jobs import evaluate
from fruits_tl.models import model, servable
from fruits_tl.training import reporting

CLASSES = ("A", "B", "C")


def test_report_on_known_predictions():
    labels = np.array([0, 0, 1, 1, 2, 2])
    probabilities = np.array(
        [
            [0.9, 0.05, 0.05],  # right
            [0.2, 0.7, 0.1],  # A -> B, p 0.7
            [0.1, 0.8, 0.1],  # right
            [0.1, 0.8, 0.1],  # right
            [0.6, 0.1, 0.3],  # C -> A, p 0.6 (C is second: top-5 still right)
            [0.1, 0.1, 0.8],  # right
        ]
    )
    paths = tuple(f"{i}.jpg" for i in range(6))
    report = evaluate.compute_report(
        labels, probabilities, class_names=CLASSES, file_paths=paths, num_mistakes=5
    )
    assert report.metrics.accuracy == pytest.approx(4 / 6)
    assert report.metrics.top5_accuracy == 1.0
    expected_loss = -np.mean(np.log([0.9, 0.2, 0.8, 0.8, 0.3, 0.8]))
    assert report.metrics.loss == pytest.approx(expected_loss)
    np.testing.assert_array_equal(report.confusion, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    per_class = {r.class_name: r for r in report.per_class}
    assert per_class["A"].precision == pytest.approx(0.5)
    assert per_class["A"].recall == pytest.approx(0.5)
    assert per_class["B"].precision == pytest.approx(2 / 3) and per_class["B"].recall == 1.0
    assert per_class["C"].precision == 1.0 and per_class["C"].recall == 0.5
    assert per_class["B"].f1 == pytest.approx(0.8)
    assert report.metrics.macro_f1 == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert [m.file_path for m in report.mistakes] == ["1.jpg", "4.jpg"]
    assert report.mistakes[0] == evaluate.Mistake(
        file_path="1.jpg", true_class="A", predicted_class="B", probability=0.7
    )


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    """A model on the tiny dataset whose head always predicts class 'Banana' (index 1)."""
    model_dir = tmp_path_factory.mktemp("evaluated") / "run"
    args = [
        f"--data_dir={tiny_dataset}",
        f"--model_dir={model_dir}",
        "--alpha=0.25",
        "--image_size=32",
        "--weights=none",
        "--epochs=1",
        "--batch_size=4",
        "--verbose=0",
    ]
    assert run_main(train_main, args) == 0
    classifier = servable.load_model(str(model_dir))
    kernel, bias = classifier.get_layer(model.HEAD_DENSE).get_weights()
    classifier.get_layer(model.HEAD_DENSE).set_weights(
        [np.zeros_like(kernel), np.array([0.0, 3.0, 0.0], np.float32)]
    )
    classifier.save(str(model_dir / "model.keras"))
    return model_dir


@pytest.mark.slow
def test_evaluate_binary_writes_the_known_report(trained, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "report"
    code = run_main(
        evaluate_main,
        [
            f"--model={trained}",
            f"--data_dir={tiny_dataset}",
            f"--output_dir={out}",
            "--num_mistakes=4",
        ],
    )
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(1 / 3) and metrics["num_images"] == 9
    p = np.exp(3) / (np.exp(3) + 2)
    assert metrics["loss"] == pytest.approx(
        -(np.log(p) * 3 + np.log(1 / (np.exp(3) + 2)) * 6) / 9, rel=1e-4
    )
    confusion = list(csv.reader((out / "confusion_matrix.csv").read_text().splitlines()))
    assert confusion[0] == ["true \\ predicted", "Apple Red", "Banana", "Blueberry"]
    assert confusion[1:] == [
        ["Apple Red", "0", "3", "0"],
        ["Banana", "0", "3", "0"],
        ["Blueberry", "0", "3", "0"],
    ]
    per_class = list(csv.DictReader((out / "per_class.csv").read_text().splitlines()))
    assert [(r["class"], float(r["recall"]), int(r["support"])) for r in per_class] == [
        ("Apple Red", 0.0, 3),
        ("Banana", 1.0, 3),
        ("Blueberry", 0.0, 3),
    ]
    mistakes = list(csv.DictReader((out / "mistakes.csv").read_text().splitlines()))
    assert len(mistakes) == 4 and {m["predicted_class"] for m in mistakes} == {"Banana"}
    # The pictures: one tile per mistake (4 in one row), and the 14 x 9 inch matrix.
    tiles = tf.io.decode_png(tf.io.read_file(str(out / "mistakes.png")))
    assert (tiles.shape[1], tiles.shape[0]) == (640, 160)
    matrix = tf.io.decode_png(tf.io.read_file(str(out / "confusion_matrix.png")))
    assert (matrix.shape[1], matrix.shape[0]) == (14 * reporting.DPI, 9 * reporting.DPI)
    assert "accuracy 0.3333" in capsys.readouterr().out
    assert (
        run_main(
            evaluate_main,
            [
                f"--model={trained}",
                f"--data_dir={tiny_dataset}",
                f"--output_dir={out}",
                "--assert_accuracy_at_least=0.5",
            ],
        )
        == 1
    )


def test_evaluate_rejects_a_folder_whose_classes_differ(trained, data_dir, tmp_path, capsys):
    os.rename(os.path.join(data_dir, "Test", "Banana"), os.path.join(data_dir, "Test", "Bananna"))
    code = run_main(
        evaluate_main,
        [f"--model={trained}", f"--data_dir={data_dir}", f"--output_dir={tmp_path / 'r'}"],
    )
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2
    assert "'Bananna' (closest model class: 'Banana')" in err and "'Banana'" in err
    assert not (tmp_path / "r").exists()


def test_predict_classifies_good_files_and_reports_the_corrupt_one(
    trained, tiny_dataset, tmp_path, capsys
):
    good = os.path.join(tiny_dataset, "Test", "Banana")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff not really")
    code = run_main(
        predict_main, [f"--model={trained}", "--top_k=2", "--output=json", str(corrupt), good]
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1
    assert lines[0]["path"] == str(corrupt) and "cannot be decoded" in lines[0]["error"]
    assert len(lines) == 4
    for line in lines[1:]:
        assert [t["class"] for t in line["top"]][0] == "Banana" and len(line["top"]) == 2
    assert run_main(predict_main, [f"--model={trained}", good]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 3 and all("Banana 0." in row for row in table)


@pytest.mark.slow
def test_extract_binary_from_weights_and_from_a_model(trained, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "features"
    args = [
        f"--data_dir={tiny_dataset}",
        f"--features_dir={out}",
        "--alpha=0.25",
        "--image_size=32",
        "--weights=none",
        "--extract_verbose=0",
        "--strategy=mirrored",
        "--batch_size=4",
    ]
    assert run_main(extract_main, args) == 0
    assert store_listing(out) == feature_files("test", "train")
    printed = capsys.readouterr().out
    assert "train: 18 x 256 float32" in printed
    # The decode check and the extraction are timed apart, and the rate from files to
    # features counts every image over both.
    rows = sum(int(n) for n in re.findall(r"^\w+: (\d+) x 256", printed, re.M))
    timed = re.search(
        r"decode check ([\d.]+) s, extracted in ([\d.]+) s, ([\d.]+) images/s; "
        r"files to features ([\d.]+) images/s",
        printed,
    )
    decode, extracted, rate, both = (float(x) for x in timed.groups())
    assert rows > 18 and both < rate
    assert both == pytest.approx(rows / (decode + extracted), rel=0.2, abs=5)
    assert (
        run_main(
            extract_main,
            [
                f"--data_dir={tiny_dataset}",
                f"--features_dir={tmp_path / 'm'}",
                f"--model={trained}",
                "--extract_verbose=0",
            ],
        )
        == 0
    )
    assert (
        run_main(
            extract_main,
            [
                f"--data_dir={tiny_dataset}",
                f"--features_dir={tmp_path / 'm'}",
                f"--model={trained}",
                "--extract_verbose=0",
            ],
        )
        == 0
    )
    assert "reused the features" in capsys.readouterr().out


def test_predict_one_image_on_two_replicas(trained, tiny_dataset, capsys):
    """One image under MirroredStrategy: the padded last batch keeps no replica empty."""
    folder = os.path.join(tiny_dataset, "Test", "Banana")
    one = os.path.join(folder, sorted(os.listdir(folder))[0])
    code = run_main(
        predict_main, [f"--model={trained}", "--strategy=mirrored", "--output=json", one]
    )
    assert code == 0, capsys.readouterr().err
    mirrored = json.loads(capsys.readouterr().out)
    assert (
        run_main(predict_main, [f"--model={trained}", "--strategy=default", "--output=json", one])
        == 0
    )
    single = json.loads(capsys.readouterr().out)
    assert mirrored["top"][0]["class"] == single["top"][0]["class"] == "Banana"
    assert mirrored["top"][0]["probability"] == pytest.approx(
        single["top"][0]["probability"], rel=1e-5
    )


def test_a_worker_with_no_image_predicts_nothing(trained):
    """A cluster's worker with no image of a split (more workers than images) predicts an
    empty share instead of handing Keras's `predict` an empty dataset."""
    classifier = servable.load_servable(str(trained))
    probabilities = evaluate.predict_stored(
        classifier, np.zeros((0, 32, 32, 3), np.uint8), count=0, batch_size=4
    )
    assert probabilities.shape == (0, len(classifier.class_names))
    assert probabilities.dtype == np.float32
