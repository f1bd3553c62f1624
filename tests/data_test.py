"""Folder checks, label map, bad and unusual images, and the uint8 splits."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import write_unusual_images
from PIL import Image

from fruits_tl.core.config import UserInputError
from fruits_tl.data import decode, loading


def _first_jpeg(data_dir, split="Training", class_name="Banana"):
    folder = os.path.join(data_dir, split, class_name)
    return os.path.join(folder, sorted(os.listdir(folder))[0])


def test_load_dataset_gives_uint8_splits_with_aligned_paths(data_dir):
    splits = loading.load_dataset(data_dir, image_size=32)
    assert splits.class_names == ("Apple Red", "Banana", "Blueberry")
    assert (len(splits.train), len(splits.test)) == (18, 9)
    assert splits.validation is splits.test and splits.validation_source == "test folder"
    images, labels = [], []
    for image, label in splits.train.make_elements().as_numpy_iterator():
        images.append(image)
        labels.append(label)
    assert images[0].dtype == np.uint8 and images[0].shape == (32, 32, 3)
    np.testing.assert_array_equal(labels, splits.train.labels)
    for path, label in zip(splits.train.file_paths, labels, strict=True):
        assert os.path.basename(os.path.dirname(path)) == splits.class_names[label]


def test_missing_data_dir_is_named(tmp_path):
    with pytest.raises(UserInputError, match=r"data directory '.*nowhere' does not exist"):
        loading.load_dataset(str(tmp_path / "nowhere"))


def test_data_dir_without_training_folder_lists_what_it_found(tmp_path):
    (tmp_path / "Apple").mkdir()
    with pytest.raises(UserInputError, match=r"training folder .*Training' does not exist.*Apple"):
        loading.load_dataset(str(tmp_path))


def test_empty_training_folder(tmp_path):
    (tmp_path / "Training").mkdir()
    (tmp_path / "Test").mkdir()
    with pytest.raises(UserInputError, match="has no class folders"):
        loading.load_dataset(str(tmp_path))


def test_no_test_folder_needs_validation_split(data_dir):
    import shutil

    shutil.rmtree(os.path.join(data_dir, "Test"))
    with pytest.raises(UserInputError, match="--validation_split"):
        loading.load_dataset(data_dir)
    splits = loading.load_dataset(data_dir, validation_split=0.34, image_size=32, seed=3)
    assert splits.validation_source == "validation_split"
    assert len(splits.train) + len(splits.validation) == 18
    # Class-mixed: every class is in the validation split, and no file is in both.
    assert set(splits.validation.labels.tolist()) == {0, 1, 2}
    assert not set(splits.train.file_paths) & set(splits.validation.file_paths)
    labels = [label for _, label in splits.validation.make_elements().as_numpy_iterator()]
    np.testing.assert_array_equal(labels, splits.validation.labels)
    again = loading.load_dataset(data_dir, validation_split=0.34, image_size=32, seed=3)
    assert again.validation.file_paths == splits.validation.file_paths


def test_empty_class_folders_are_all_named(data_dir):
    os.makedirs(os.path.join(data_dir, "Training", "Durian"))
    os.makedirs(os.path.join(data_dir, "Test", "Durian"))
    with open(os.path.join(data_dir, "Training", "Durian", "notes.txt"), "w") as stream:
        stream.write("not an image")
    with pytest.raises(
        UserInputError, match=r"2 class folder\(s\) hold no images.*Training/Durian.*Test/Durian"
    ):
        loading.load_dataset(data_dir)


def test_test_class_missing_from_training_names_closest(data_dir):
    os.rename(os.path.join(data_dir, "Test", "Banana"), os.path.join(data_dir, "Test", "banana"))
    with pytest.raises(UserInputError, match=r"'banana' \(closest training class: 'Banana'\)"):
        loading.load_dataset(data_dir)


def test_training_class_absent_from_test_is_a_warning_and_labels_still_align(data_dir):
    import shutil

    shutil.rmtree(os.path.join(data_dir, "Test", "Banana"))
    splits = loading.load_dataset(data_dir, image_size=32)
    assert len(splits.warnings) == 1 and "Banana" in splits.warnings[0]
    labels = [label for _, label in splits.test.make_elements().as_numpy_iterator()]
    # Blueberry keeps its training index 2 although the test folder has only 2 classes.
    assert sorted(set(labels)) == [0, 2]
    for path, label in zip(splits.test.file_paths, labels, strict=True):
        assert os.path.basename(os.path.dirname(path)) == splits.class_names[label]


def test_hidden_folders_are_not_classes(data_dir):
    hidden = os.path.join(data_dir, "Training", ".ipynb_checkpoints")
    os.makedirs(hidden)
    Image.new("RGB", (10, 10)).save(os.path.join(hidden, "x.jpg"))
    splits = loading.load_dataset(data_dir, image_size=32)
    assert ".ipynb_checkpoints" not in splits.class_names and len(splits.class_names) == 3


def _write_bad_files(data_dir):
    banana = os.path.join(data_dir, "Training", "Banana")
    empty = os.path.join(banana, "empty.jpg")
    open(empty, "wb").close()
    text = os.path.join(banana, "text.jpg")
    with open(text, "w") as stream:
        stream.write("this is not a JPEG")
    truncated = os.path.join(data_dir, "Test", "Apple Red", "truncated.jpg")
    content = open(_first_jpeg(data_dir, "Test", "Apple Red"), "rb").read()
    with open(truncated, "wb") as stream:
        stream.write(content[: len(content) // 2])
    return [empty, text, truncated]


def test_every_undecodable_file_is_listed(data_dir):
    bad = _write_bad_files(data_dir)
    with pytest.raises(UserInputError) as raised:
        loading.load_dataset(data_dir)
    message = str(raised.value)
    assert "3 file(s) cannot be decoded" in message and "--skip_bad_images" in message
    for path in bad:
        assert path in message
    assert "empty file (0 bytes)" in message
    assert "Traceback" not in message and "function_node" not in message


def test_skip_bad_images_leaves_them_out_and_keeps_alignment(data_dir):
    bad = _write_bad_files(data_dir)
    splits = loading.load_dataset(data_dir, image_size=32, skip_bad_images=True)
    assert sorted(b.path for b in splits.bad_images) == sorted(bad)
    assert (len(splits.train), len(splits.test)) == (18, 9)
    assert not set(bad) & set(splits.train.file_paths + splits.test.file_paths)
    labels = [label for _, label in splits.train.make_elements().as_numpy_iterator()]
    np.testing.assert_array_equal(labels, splits.train.labels)


def test_unusual_but_valid_images_load_as_rgb(data_dir):
    banana = os.path.join(data_dir, "Training", "Banana")
    added = write_unusual_images(banana)
    assert decode.find_bad_images(sorted(os.path.join(banana, f) for f in os.listdir(banana))) == ()
    splits = loading.load_dataset(data_dir, image_size=32)
    assert len(splits.train) == 18 + added
    shapes = {image.shape for image, _ in splits.train.make_elements().as_numpy_iterator()}
    assert shapes == {(32, 32, 3)}


def test_fingerprint_changes_with_content(data_dir):
    first = loading.load_dataset(data_dir, image_size=32).train.fingerprint
    assert loading.load_dataset(data_dir, image_size=32).train.fingerprint == first
    assert loading.load_dataset(data_dir, image_size=48).train.fingerprint != first
    path = _first_jpeg(data_dir)
    with open(path, "ab") as stream:
        stream.write(b"\0")
    assert loading.load_dataset(data_dir, image_size=32).train.fingerprint != first


def test_a_listed_path_relative_to_its_folder_is_what_relpath_gives():
    for path, directory in [
        ("d/c/x.jpg", "d"),
        ("d/c/x.jpg", "d/"),
        ("d//c/x.jpg", "d"),
        ("/tmp/d/c/x.jpg", "/tmp/d"),
        ("d/../d/c/x.jpg", "d/../d"),
        ("e/c/x.jpg", "d"),
    ]:
        assert loading.relative(path, directory) == os.path.relpath(path, directory)
