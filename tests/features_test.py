"""Features once: equivalence with image mode, fingerprint reuse and invalidation, kills."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, feature_files, store_listing

from fruits_tl.core import config, distribute
from fruits_tl.data import loading, store
from fruits_tl.jobs import train
from fruits_tl.models import backbone_features, model


def _config(data_dir, model_dir, weights, **overrides):
    values = dict(
        data=config.DataConfig(data_dir=data_dir, image_size=32, seed=7),
        model=config.ModelConfig(alpha=0.25, weights=weights),
        model_dir=str(model_dir),
        batch_size=4,
        epochs=1,
        learning_rate=1e-2,
        verbose=0,
    )
    values.update(overrides)
    return config.TrainConfig(**values)


@pytest.mark.slow
def test_features_mode_is_the_same_computation_as_images_mode(
    data_dir, tmp_path, informative_weights
):
    strategy = distribute.get_strategy("default")
    # Two epochs: the second epoch's order (a reshuffle) must match as well as the first's.
    by_images = train.train(
        _config(data_dir, tmp_path / "images", informative_weights, mode="images", epochs=2),
        strategy=strategy,
    )
    by_features = train.train(
        _config(data_dir, tmp_path / "features", informative_weights, mode="features", epochs=2),
        strategy=strategy,
    )
    assert by_images.metrics.mode == "images" and by_features.metrics.mode == "features"
    # The same per-epoch history: training and validation loss and accuracies.
    for key in (
        "loss",
        "accuracy",
        "top5_accuracy",
        "val_loss",
        "val_accuracy",
        "val_top5_accuracy",
    ):
        np.testing.assert_allclose(
            by_features.history[key], by_images.history[key], rtol=1e-4, atol=1e-6, err_msg=key
        )
    kernel_images, bias_images = by_images.model.get_layer(model.HEAD_DENSE).get_weights()
    kernel_features, bias_features = by_features.model.get_layer(model.HEAD_DENSE).get_weights()
    initial = model.build_head(256, 3, seed=7).get_layer(model.HEAD_DENSE).get_weights()[0]
    # Training moved the weights, by the same amount in both modes.
    assert np.abs(kernel_features - initial).max() > 1e-3
    np.testing.assert_allclose(kernel_features, kernel_images, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bias_features, bias_images, rtol=1e-4, atol=1e-5)
    # Another example order gives other weights: the comparison above can fail.
    shuffled = train.train(
        _config(
            data_dir,
            tmp_path / "order",
            informative_weights,
            mode="features",
            data=config.DataConfig(data_dir=data_dir, image_size=32, seed=7, shuffle_buffer_size=1),
        ),
        strategy=strategy,
    )
    assert (
        np.abs(shuffled.model.get_layer(model.HEAD_DENSE).get_weights()[0] - kernel_features).max()
        > 1e-5
    )
    # The assembled model on images predicts what the head predicts on the cached features.
    test_set = backbone_features.load_split(str(tmp_path / "features" / "features"), "test")
    head = model.build_head(256, 3)
    head.get_layer(model.HEAD_DENSE).set_weights([kernel_features, bias_features])
    splits = loading.load_dataset(data_dir, image_size=32)
    images = np.stack([image for image, _ in splits.test.make_elements().as_numpy_iterator()])
    np.testing.assert_allclose(
        by_features.model.predict(images, verbose=0),
        head.predict(test_set.features, verbose=0),
        rtol=1e-4,
        atol=1e-6,
    )
    # The same test figures; only features mode spends time extracting.
    assert by_features.metrics.test_accuracy == by_images.metrics.test_accuracy
    assert by_features.metrics.test_loss == pytest.approx(by_images.metrics.test_loss, rel=1e-4)
    assert by_images.metrics.extract_seconds == 0
    assert 0 < by_features.metrics.extract_seconds < by_features.metrics.train_seconds
    assert set(by_images.history) == set(by_features.history)


def _extract(splits, backbone, features_dir, **kwargs):
    return backbone_features.extract_or_reuse(
        {"train": splits.train, "test": splits.test},
        backbone=backbone,
        alpha=0.25,
        image_size=32,
        strategy=distribute.get_strategy("default"),
        settings=backbone_features.ExtractionSettings(
            features_dir=str(features_dir), batch_size=4, verbose=False, **kwargs
        ),
    )


@pytest.mark.slow
def test_fingerprint_reuse_and_invalidation(data_dir, tmp_path, informative_weights):
    backbone = model.build_backbone(image_size=32, alpha=0.25, weights=informative_weights)
    splits = loading.load_dataset(data_dir, image_size=32)
    first = _extract(splits, backbone, tmp_path / "f")
    assert not first.reused and first.feature_sets["train"].features.shape == (18, 256)
    np.testing.assert_array_equal(first.feature_sets["train"].labels, splits.train.labels)
    assert first.feature_sets["train"].file_paths == splits.train.file_paths
    second = _extract(splits, backbone, tmp_path / "f")
    assert second.reused
    np.testing.assert_array_equal(
        second.feature_sets["test"].features, first.feature_sets["test"].features
    )
    # A changed file changes the listing digest: recompute.
    path = splits.train.file_paths[0]
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    changed = loading.load_dataset(data_dir, image_size=32)
    assert not _extract(changed, backbone, tmp_path / "f").reused
    # Other backbone weights: recompute. float16 halves the bytes.
    other = model.build_backbone(image_size=32, alpha=0.25, weights="none")
    assert not _extract(changed, other, tmp_path / "f").reused
    half = _extract(changed, backbone, tmp_path / "f", feature_dtype="float16")
    assert not half.reused and half.feature_sets["train"].features.dtype == np.float16
    # One pixel store per split (stored on its own: `split-<name>`): the file of the changed
    # split replaced, not kept beside.
    assert store_listing(tmp_path / "f" / "pixels") == [
        "split-test.pixels.json",
        "split-test.pixels.rows",
        "split-train.pixels.json",
        "split-train.pixels.rows",
    ]


@pytest.mark.slow
def test_killed_extraction_leaves_nothing_that_looks_complete(tmp_path):
    from fruits_tl.jobs import synthetic

    data_dir = synthetic.write_synthetic_dataset(
        str(tmp_path / "data"), num_classes=3, train_per_class=150, test_per_class=100, seed=3
    )
    features_dir = tmp_path / "features"
    command = [
        sys.executable,
        "-m",
        "fruits_tl.cli.extract_main",
        f"--data_dir={data_dir}",
        f"--features_dir={features_dir}",
        "--alpha=0.25",
        "--image_size=64",
        "--weights=none",
        "--batch_size=2",
        "--extract_verbose=0",
    ]
    # The documented hook (fruits_tl.core.stopping) kills the process when the train labels' only
    # chunk is written: the train features are complete, their labels not yet.
    environment = dict(os.environ, FRUITS_TL_KILL_AT="store:chunk:train.labels:1")
    result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    names = store_listing(features_dir)
    assert "train.features.json" in names, "extraction did not get as far as the first split"
    assert "train.labels.json" not in names and "labels.txt" not in names
    with pytest.raises(ValueError, match="no complete features of the train split"):
        backbone_features.load_split(str(features_dir), "train")
    splits = loading.load_dataset(data_dir, image_size=64)
    backbone = model.build_backbone(image_size=64, alpha=0.25, weights="none")
    rerun = backbone_features.extract_or_reuse(
        {"train": splits.train, "test": splits.test},
        backbone=backbone,
        alpha=0.25,
        image_size=64,
        strategy=distribute.get_strategy("default"),
        settings=backbone_features.ExtractionSettings(
            features_dir=str(features_dir), batch_size=32, verbose=False
        ),
    )
    assert not rerun.reused
    assert len(rerun.feature_sets["test"]) == 300
    assert store_listing(features_dir) == feature_files("test", "train")
    np.testing.assert_array_equal(
        backbone_features.load_split(str(features_dir), "train").labels, splits.train.labels
    )


def test_a_split_with_fewer_images_than_replicas_extracts(data_dir, tmp_path):
    # One image on two replicas: one replica's batch is empty, and oneDNN's convolution fails
    # on empty batches on some CPUs; the padded last batch feeds both (PADDING_LABEL).
    strategy = distribute.get_strategy("mirrored")
    splits = loading.load_dataset(data_dir, image_size=32)
    one = loading.select(splits.test, np.arange(len(splits.test)) == 0, name="one")
    with strategy.scope():
        backbone = model.build_classifier(3, image_size=32, alpha=0.25, weights="none").get_layer(
            model.BACKBONE_NAME
        )
        extractor = model.build_feature_extractor(backbone, image_size=32)
    images = store.store_pixels(one, directory=str(tmp_path)).examples
    features = backbone_features.extract_stored(images, extractor, strategy=strategy, batch_size=4)
    assert strategy.num_replicas_in_sync == 2
    assert features.shape == (1, 256)
    decoded = np.stack([image for image, _ in one.make_elements().as_numpy_iterator()])
    np.testing.assert_allclose(
        features, extractor(decoded, training=False).numpy(), rtol=1e-5, atol=1e-6
    )


def test_a_folder_without_features_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError) as error:
        backbone_features.load_split(str(tmp_path), "train")
    assert str(tmp_path) in str(error.value) and "run fruits-tl-extract" in str(error.value)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_feature_file_under_a_matching_fingerprint_is_recomputed(
    tiny_dataset, tmp_path, caplog, damage
):
    splits = loading.load_dataset(tiny_dataset, image_size=32)
    backbone = model.build_backbone(image_size=32, alpha=0.25, weights="none")
    first = _extract(splits, backbone, tmp_path / "f", chunk_images=8)
    expected = np.array(first.feature_sets["train"].features)
    (path,) = (tmp_path / "f").glob("train.features.*.rows")
    content = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(content[: len(content) // 2])
    else:  # Row 9, in chunk 2 of 3 (rows 8-15), overwritten.
        row = 256 * 4
        path.write_bytes(content[: 9 * row] + b"\x00" * row + content[10 * row :])
    with caplog.at_level(logging.WARNING, logger="absl"):
        again = _extract(splits, backbone, tmp_path / "f", chunk_images=8)
    assert not again.reused
    if damage == "garbage":
        assert "Rewriting chunk 2 of 3 of the stored train features" in caplog.text
        assert "chunk 1 of 3" not in caplog.text and "chunk 3 of 3" not in caplog.text
    np.testing.assert_array_equal(again.feature_sets["train"].features, expected)
    assert _extract(splits, backbone, tmp_path / "f", chunk_images=8).reused  # Whole again.


@pytest.mark.slow
def test_features_from_the_pixel_store_equal_the_extractor_on_decoded_images(
    data_dir, tmp_path, informative_weights, caplog
):
    splits = loading.load_dataset(data_dir, image_size=32)
    # The training split's pixels stored already (as images mode leaves them), in chunks of 5
    # (not a multiple of the batch of 4); the test split's are not, so they are decoded now.
    store.store_pixels(splits.train, directory=str(tmp_path / "f" / "pixels"), chunk_images=5)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with mirrored.scope():
        replicated = model.build_backbone(image_size=32, alpha=0.25, weights=informative_weights)
    with caplog.at_level(logging.WARNING, logger="absl"):
        stored = backbone_features.extract_or_reuse(
            {"train": splits.train, "test": splits.test},
            backbone=replicated,
            alpha=0.25,
            image_size=32,
            strategy=mirrored,
            settings=backbone_features.ExtractionSettings(
                features_dir=str(tmp_path / "f"), batch_size=4, verbose=False, chunk_images=5
            ),
        )
    assert "Reusing the stored train pixels" in caplog.text
    assert "Reusing the stored test pixels" not in caplog.text
    extractor = model.build_feature_extractor(
        model.build_backbone(image_size=32, alpha=0.25, weights=informative_weights),
        image_size=32,
    )
    for split in ("train", "test"):
        folder = getattr(splits, split)
        ours = stored.feature_sets[split]
        np.testing.assert_array_equal(ours.labels, folder.labels)
        assert ours.file_paths == folder.file_paths
        decoded = np.stack([image for image, _ in folder.make_elements().as_numpy_iterator()])
        np.testing.assert_allclose(
            ours.features, extractor(decoded, training=False).numpy(), rtol=1e-4, atol=1e-5
        )
