"""The one decode function and the input pipeline that shards before it decodes."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
from conftest import write_unusual_images

from fruits_tl.data import loading, store


@pytest.mark.parametrize("image_size", [32, 128])
def test_route_pixels_equal_keras_loader_rounded(data_dir, image_size):
    added = write_unusual_images(os.path.join(data_dir, "Training", "Banana"))
    train_dir = os.path.join(data_dir, "Training")
    reference = keras.utils.image_dataset_from_directory(
        train_dir,
        batch_size=None,
        image_size=(image_size, image_size),
        shuffle=False,
        verbose=False,
    )
    expected = {
        path: np.clip(np.round(image), 0, 255).astype(np.uint8)
        for path, (image, _) in zip(
            reference.file_paths, reference.as_numpy_iterator(), strict=True
        )
    }
    splits = loading.load_dataset(data_dir, image_size=image_size)
    assert len(splits.train) == 18 + added
    for path, (image, _) in zip(
        splits.train.file_paths, splits.train.make_elements().as_numpy_iterator(), strict=True
    ):
        np.testing.assert_array_equal(image, expected[path], err_msg=path)


def test_a_chunk_decodes_only_its_own_files(data_dir):
    """A corrupt file in rows [0, 9) breaks that range's pass only: a pass over rows [9, 18)
    (another chunk, another worker's under the store's rule) never reads it."""
    train_dir = os.path.join(data_dir, "Training")
    classes = loading.list_classes(train_dir)
    first = loading.load_split(train_dir, class_names=classes, image_size=32, name="train")
    corrupt = first.file_paths[3]
    with open(corrupt, "wb") as stream:
        stream.write(b"not an image at all")
    # The listing is taken again without any check, so nothing knows the file is corrupt.
    folder = loading.load_split(train_dir, class_names=classes, image_size=32, name="train")
    assert folder.file_paths[3] == corrupt
    later = list(store.fill_pass(folder, 9, 18).as_numpy_iterator())
    np.testing.assert_array_equal(np.concatenate([p for p, _ in later]), np.arange(9, 18))
    # The pass over the range that holds it leaves the corrupt file out (a missing row).
    earlier = list(store.fill_pass(folder, 0, 9).as_numpy_iterator())
    np.testing.assert_array_equal(np.concatenate([p for p, _ in earlier]), [0, 1, 2, 4, 5, 6, 7, 8])


def test_excluded_files_are_never_decoded(data_dir):
    train_dir = os.path.join(data_dir, "Training")
    classes = loading.list_classes(train_dir)
    path = loading.load_split(
        train_dir, class_names=classes, image_size=32, name="train"
    ).file_paths[0]
    with open(path, "wb") as stream:
        stream.write(b"corrupt")
    folder = loading.load_split(
        train_dir, class_names=classes, image_size=32, name="train", exclude={path}
    )
    assert len(list(folder.make_elements())) == 17
