"""fruits-tl-audit on a folder seeded with every problem, and the exclude list round trip."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from conftest import FRUITS_SAMPLE, needs_fruits_sample, run_main
from PIL import Image

from fruits_tl.cli import audit_main, train_main
from fruits_tl.data import loading, store


def _seed_problems(data_dir):
    train, test = os.path.join(data_dir, "Training"), os.path.join(data_dir, "Test")
    banana = os.path.join(train, "Banana")
    first = os.path.join(banana, sorted(os.listdir(banana))[0])
    seeded = {
        "empty": os.path.join(banana, "empty.jpg"),
        "text": os.path.join(banana, "text.jpg"),
        "png_as_jpg": os.path.join(banana, "png_named.jpg"),
        "gray": os.path.join(banana, "gray.jpg"),
        "cmyk": os.path.join(banana, "cmyk.jpg"),
        "alpha": os.path.join(banana, "alpha.png"),
        "duplicate": os.path.join(banana, "copy.jpg"),
        "leak": os.path.join(test, "Banana", "leak.jpg"),
    }
    open(seeded["empty"], "wb").close()
    with open(seeded["text"], "w") as stream:
        stream.write("not an image")
    pixels = (np.random.default_rng(0).random((30, 30, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(seeded["png_as_jpg"], format="PNG")
    Image.fromarray(pixels).convert("L").save(seeded["gray"])
    Image.fromarray(pixels).convert("CMYK").save(seeded["cmyk"])
    Image.fromarray(np.dstack([pixels, pixels[..., :1]])).save(seeded["alpha"])
    shutil.copy(first, seeded["duplicate"])
    shutil.copy(first, seeded["leak"])
    os.makedirs(os.path.join(train, "Durian"))
    os.rename(os.path.join(test, "Blueberry"), os.path.join(test, "Blueberries"))
    return seeded, first


def test_audit_reports_every_seeded_problem(data_dir, tmp_path, capsys):
    seeded, first = _seed_problems(data_dir)
    report_path, exclude_path = tmp_path / "audit.json", tmp_path / "exclude.txt"
    code = run_main(
        audit_main,
        [
            f"--data_dir={data_dir}",
            f"--output_json={report_path}",
            f"--write_exclude_list={exclude_path}",
            "--min_images_per_class=4",
        ],
    )
    assert code == 0, capsys.readouterr().err
    report = json.loads(report_path.read_text())
    assert sorted(i["path"] for i in report["undecodable"]) == sorted(
        [seeded["empty"], seeded["text"]]
    )
    assert report["extension_mismatch"] == [
        {"path": seeded["png_as_jpg"], "extension": ".jpg", "actual_format": "png"}
    ]
    assert report["grayscale"] == [seeded["gray"]]
    assert report["cmyk"] == [seeded["cmyk"]]
    assert report["alpha"] == [seeded["alpha"]]
    assert {"split": "Training", "paths": sorted([first, seeded["duplicate"]])} in report[
        "duplicates_within_split"
    ]
    assert report["duplicates_across_train_test"] == [
        {"train": sorted([first, seeded["duplicate"]]), "test": [seeded["leak"]]}
    ]
    assert {"split": "Training", "class": "Durian", "images": 0} in report["small_or_empty_classes"]
    assert {"split": "Test", "class": "Apple Red", "images": 3} in report["small_or_empty_classes"]
    assert report["class_mismatch"]["test_only"] == [
        {"class": "Blueberries", "closest_training_class": "Blueberry"}
    ]
    assert report["class_mismatch"]["train_only"] == ["Blueberry", "Durian"]
    assert report["splits"]["Training"]["images_per_class"]["Banana"] == 6 + 8 - 1
    assert sorted(exclude_path.read_text().splitlines()) == sorted(
        [seeded["empty"], seeded["text"]]
    )
    out = capsys.readouterr().out
    assert (
        "undecodable files: 2" in out
        and "train/test duplicates (leakage): 1" in out
        and "closest: 'Blueberry'" in out
    )


@pytest.mark.slow
def test_exclude_list_leaves_files_out_of_training(data_dir, tmp_path, capsys):
    banana = os.path.join(data_dir, "Training", "Banana")
    broken = os.path.join(banana, "broken.jpg")
    open(broken, "wb").close()
    fine = os.path.join(banana, sorted(os.listdir(banana))[0])
    exclude = tmp_path / "exclude.txt"
    exclude.write_text(f"{broken}\n{fine}\n")
    splits = loading.load_dataset(
        data_dir, image_size=32, exclude_files=loading.load_exclude_list(str(exclude))
    )
    assert (
        len(splits.train) == 17 and fine not in splits.train.file_paths and splits.bad_images == ()
    )
    labels = [label for _, label in splits.train.make_elements().as_numpy_iterator()]
    np.testing.assert_array_equal(labels, splits.train.labels)
    code = run_main(
        train_main,
        [
            f"--data_dir={data_dir}",
            f"--model_dir={tmp_path / 'run'}",
            f"--exclude_list={exclude}",
            "--alpha=0.25",
            "--image_size=32",
            "--weights=none",
            "--epochs=1",
            "--batch_size=4",
            "--verbose=0",
        ],
    )
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["num_train_images"] == 17
    assert (
        run_main(
            train_main,
            [
                f"--data_dir={data_dir}",
                f"--model_dir={tmp_path / 'r2'}",
                f"--exclude_list={tmp_path / 'nope.txt'}",
            ],
        )
        == 2
    )
    assert "exclude list" in capsys.readouterr().err


@pytest.mark.slow
@needs_fruits_sample
def test_audit_counts_the_real_sample(tmp_path, capsys):
    assert (
        run_main(
            audit_main, [f"--data_dir={FRUITS_SAMPLE}", f"--output_json={tmp_path / 'a.json'}"]
        )
        == 0
    )
    report = json.loads((tmp_path / "a.json").read_text())
    assert (
        report["splits"]["Training"]["num_classes"] == 95
        and report["splits"]["Training"]["num_images"] == 5700
    )
    assert (
        report["splits"]["Test"]["num_classes"] == 95
        and report["splits"]["Test"]["num_images"] == 1900
    )
    assert report["undecodable"] == []


def test_the_store_is_checked_against_its_checksums(data_dir, tmp_path, capsys):
    store_dir = tmp_path / "store"
    # A store as the jobs fill it: each source folder's decoded pixels (the decode check).
    stores = store.SourceStores(str(store_dir), 32, chunk_images=8)
    loading.load_dataset(data_dir, image_size=32, check=stores.check)
    (store_dir / "report.json").write_text("{}")  # Other JSON files are not arrays.
    assert run_main(audit_main, [f"--store_dir={store_dir}"]) == 0
    out = capsys.readouterr().out
    assert "train.pixels.json: ok, 3 chunk(s), 18 rows" in out
    assert "test.pixels.json: ok, 2 chunk(s), 9 rows" in out
    assert "2 stored array(s)" in out and "0 with problems" in out
    # One byte changed in the 10th training image (chunk 2 of 3): named, exit 1.
    (rows,) = store_dir.glob("train.pixels.*.rows")
    with open(rows, "r+b") as stream:
        stream.seek(9 * 32 * 32 * 3 + 5)
        value = stream.read(1)
        stream.seek(9 * 32 * 32 * 3 + 5)
        stream.write(bytes([value[0] ^ 0xFF]))
    report = tmp_path / "store.json"
    assert run_main(audit_main, [f"--store_dir={store_dir}", f"--output_json={report}"]) == 1
    out = capsys.readouterr().out
    assert "train.pixels.json: DAMAGED chunk(s) 2 of 3 (18 rows)" in out
    arrays = {os.path.basename(a["manifest"]): a for a in json.loads(report.read_text())["arrays"]}
    assert (
        arrays["train.pixels.json"]["damaged"] == [2]
        and arrays["test.pixels.json"]["damaged"] == []
    )
    # A manifest cut short is named too.
    (store_dir / "test.pixels.json").write_text('{"count": 9, "ro')
    assert run_main(audit_main, [f"--store_dir={store_dir}"]) == 1
    assert "test.pixels.json: cannot be read (damaged?)" in capsys.readouterr().out


def test_a_store_folder_without_arrays_is_one_clear_error(tmp_path, capsys):
    assert run_main(audit_main, [f"--store_dir={tmp_path}"]) == 2
    err = " ".join(capsys.readouterr().err.split())  # The paragraph is wrapped.
    assert f"'{tmp_path}' holds no stored array (--store_dir)" in err
