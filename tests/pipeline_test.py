"""The input pipeline: order, dtypes, reshuffling, file caches and the distributed input_fn."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from fruits_tl import data, distribute, image_checks, pipeline


@pytest.fixture
def splits(data_dir):
    return data.load_dataset(data_dir, image_size=32)


def _labels_of_epoch(dataset):
    return np.concatenate([labels for _, labels in dataset.as_numpy_iterator()])


def test_training_epochs_come_in_different_orders_but_same_elements(splits):
    batches = pipeline.make_batches(splits.train, batch_size=4, training=True, seed=0)

    # File order is class order; compare full element orders by the images' checksums.
    def epoch_order():
        return [
            int(image.astype(np.int64).sum())
            for images, _ in batches.as_numpy_iterator()
            for image in images
        ]

    first, second = epoch_order(), epoch_order()
    assert first != second
    assert sorted(first) == sorted(second)
    assert len(first) == len(splits.train)


def test_evaluation_batches_keep_file_order_and_uint8(splits):
    batches = pipeline.make_batches(splits.test, batch_size=4, training=False)
    images, labels = next(iter(batches))
    assert images.dtype == tf.uint8 and images.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(_labels_of_epoch(batches), splits.test.labels)


def test_float32_output_is_the_preprocessed_uint8_output(splits):
    raw = pipeline.make_batches(splits.test, batch_size=9, training=False, output="uint8")
    pre = pipeline.make_batches(splits.test, batch_size=9, training=False, output="float32")
    raw_images, _ = next(iter(raw))
    pre_images, _ = next(iter(pre))
    assert pre_images.dtype == tf.float32
    np.testing.assert_allclose(
        pre_images.numpy(), raw_images.numpy().astype(np.float32) / 127.5 - 1, atol=1e-6
    )


def test_file_cache_is_written_once_then_reused(splits, tmp_path):
    prefix = str(tmp_path / "cache" / "fruits")
    first = pipeline.make_batches(splits.test, batch_size=4, training=False, cache=prefix)
    full = pipeline.get_cache_prefix(prefix, splits.test)
    assert os.path.exists(full + ".complete") and os.path.exists(full + ".index")
    written = os.path.getmtime(full + ".index")
    expected = [images for images, _ in first.as_numpy_iterator()]
    second = pipeline.make_batches(splits.test, batch_size=4, training=False, cache=prefix)
    assert os.path.getmtime(full + ".index") == written
    for a, b in zip(expected, [images for images, _ in second.as_numpy_iterator()], strict=True):
        np.testing.assert_array_equal(a, b)


def test_file_cache_left_by_a_killed_run_is_rebuilt(splits, tmp_path):
    prefix = str(tmp_path / "fruits")
    full = pipeline.get_cache_prefix(prefix, splits.test)
    # What tf.data leaves when its writer is killed: a lockfile and a temporary data file,
    # plus our owner file naming a process that no longer exists.
    for suffix in ("_0.lockfile", "_0.data-00000-of-00001.tempstate123", ".data-00000-of-00001"):
        with open(full + suffix, "wb") as stream:
            stream.write(b"partial")
    with open(full + ".owner", "w") as stream:
        stream.write(f"{os.uname().nodename} 999999999\n")
    batches = pipeline.make_batches(splits.test, batch_size=4, training=False, cache=prefix)
    np.testing.assert_array_equal(_labels_of_epoch(batches), splits.test.labels)
    assert not glob.glob(full + "_*") and not os.path.exists(full + ".owner")
    assert os.path.exists(full + ".complete")


def test_different_listing_uses_a_different_cache(splits, data_dir, tmp_path):
    prefix = str(tmp_path / "fruits")
    pipeline.make_batches(splits.test, batch_size=4, training=False, cache=prefix)
    resized = data.load_dataset(data_dir, image_size=40)
    assert pipeline.get_cache_prefix(prefix, resized.test) != pipeline.get_cache_prefix(
        prefix, splits.test
    )


def test_make_datasets_public_api(data_dir):
    datasets = pipeline.make_datasets(data_dir, batch_size=5, image_size=32)
    images, labels = next(iter(datasets.train))
    assert images.dtype == tf.float32 and images.shape == (5, 32, 32, 3)
    assert float(tf.reduce_min(images)) >= -1.0 and float(tf.reduce_max(images)) <= 1.0
    assert datasets.class_names == ("Apple Red", "Banana", "Blueberry")
    assert sum(int(tf.shape(x)[0]) for x, _ in datasets.test) == 9


def test_input_fn_gives_each_replica_its_shard_and_per_replica_batch(splits):
    strategy = distribute.get_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    input_fn = pipeline.make_input_fn(
        splits.train, global_batch_size=4, training=True, output="uint8"
    )
    distributed = strategy.distribute_datasets_from_function(input_fn)
    seen = 0
    for images, _labels in distributed:
        per_replica = strategy.experimental_local_results(images)
        assert [tuple(x.shape) for x in per_replica] == [(2, 32, 32, 3), (2, 32, 32, 3)]
        seen += sum(int(x.shape[0]) for x in per_replica)
    # 18 images in 2 shards of 9; each shard drops its last partial batch of 1.
    assert seen == 16


def test_a_padded_last_batch_is_full_with_zero_images_labelled_minus_one(data_dir):
    splits = data.load_dataset(data_dir, image_size=32)
    kwargs = dict(batch_size=4, training=False, cache="none", output="uint8")
    plain = list(pipeline.make_batches(splits.test, **kwargs).as_numpy_iterator())
    padded = list(pipeline.make_batches(splits.test, pad_last_batch=True, **kwargs))
    assert [len(labels) for _, labels in plain] == [4, 4, 1]
    assert [tuple(images.shape) for images, _ in padded] == [(4, 32, 32, 3)] * 3
    labels = np.concatenate([labels for _, labels in padded])
    np.testing.assert_array_equal(labels[:9], np.concatenate([b for _, b in plain]))
    np.testing.assert_array_equal(labels[9:], [pipeline.PADDING_LABEL] * 3)
    np.testing.assert_array_equal(padded[2][0][:1], plain[2][0])
    assert not np.any(padded[2][0][1:])
    # The spec is static: one trace serves every batch of the split.
    spec = pipeline.make_batches(splits.test, pad_last_batch=True, **kwargs).element_spec
    assert spec[0].shape.as_list() == [4, 32, 32, 3] and spec[1].shape.as_list() == [4]


ORDER_SCRIPT = """
import hashlib, json, sys
from fruits_tl import data, pipeline
splits = data.load_dataset(sys.argv[1], image_size=16)
batches = pipeline.make_batches(splits.train, batch_size=4, training=True, seed=int(sys.argv[2]))
print(json.dumps([
    hashlib.sha256(images.numpy().tobytes()).hexdigest()[:12]
    for epoch in range(2)
    for images, _ in batches
]))
"""


@pytest.mark.slow
def test_the_same_seed_gives_the_same_order_in_another_process(tiny_dataset):
    # Each order comes from a fresh process: tf.data's shuffle also depends on TensorFlow's
    # global seed, which code run earlier in a process (a test, a job) may have set.
    def order(seed):
        result = subprocess.run(
            [sys.executable, "-c", ORDER_SCRIPT, tiny_dataset, str(seed)],
            capture_output=True,
            text=True,
            timeout=300,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    first, again, other = order(42), order(42), order(43)
    assert len(first) == 10  # 18 images in batches of 4, two epochs.
    assert first == again
    assert first != other
    assert first[:5] != first[5:]  # Reshuffled every epoch.


def test_the_route_is_not_autotuned_nor_rewritten_and_a_caller_can_turn_both_back_on(splits):
    batches = pipeline.make_batches(splits.train, batch_size=4, training=True)
    # Every pass that decodes files runs so: the input pipeline and the decode check (and the
    # bench's decode ceiling, which is the check's pass).
    for dataset in (batches, image_checks.decode_pass(list(splits.train.file_paths))):
        assert dataset.options().autotune.enabled is False  # BENCHMARKS.md 5a.
        # BENCHMARKS.md 5c: the default static rewrites cost every new iterator (every epoch).
        assert dataset.options().experimental_optimization.apply_default_optimizations is False
    options = tf.data.Options()
    options.autotune.enabled = True
    options.experimental_optimization.apply_default_optimizations = True
    again = batches.with_options(options)
    assert again.options().autotune.enabled is True
    assert again.options().experimental_optimization.apply_default_optimizations is True
    assert sum(len(labels) for _, labels in again) == len(splits.train)

    # The same epochs either way: the options change speed, not content or order.
    def first_epochs(dataset):
        return [[labels.numpy().tolist() for _, labels in dataset] for _ in range(2)]

    fresh = pipeline.make_batches(splits.train, batch_size=4, training=True)
    assert first_epochs(fresh) == first_epochs(
        pipeline.make_batches(splits.train, batch_size=4, training=True).with_options(options)
    )


def test_feature_batches_for_fit_are_float32_shuffled_and_seeded():
    import numpy as np

    features = np.arange(10 * 3, dtype=np.float16).reshape(10, 3)
    labels = np.arange(10)
    first, second = (
        list(
            pipeline.make_feature_batches(
                features, labels, batch_size=4, training=True, seed=3
            ).as_numpy_iterator()
        )
        for _ in range(2)
    )
    assert [len(y) for _, y in first] == [4, 4, 2]
    assert first[0][0].dtype == np.float32 and first[0][1].dtype == np.int32
    order = np.concatenate([y for _, y in first])
    assert sorted(order) == list(range(10)) and list(order) != list(range(10))
    np.testing.assert_array_equal(first[0][0], features[first[0][1]].astype(np.float32))
    np.testing.assert_array_equal(order, np.concatenate([y for _, y in second]))
    evaluation = pipeline.make_feature_batches(features, labels, batch_size=4, training=False)
    np.testing.assert_array_equal(
        np.concatenate([y for _, y in evaluation.as_numpy_iterator()]), labels
    )


def test_the_public_datasets_read_the_store_feed_fit_and_reshuffle_every_epoch(
    data_dir, tmp_path, caplog
):
    store_dir = tmp_path / "store"
    datasets = pipeline.make_datasets(
        data_dir, batch_size=4, image_size=32, cache=str(store_dir), output="uint8"
    )
    # The pixels are in the store folder, one file and one manifest per split.
    names = sorted(p.name for p in store_dir.iterdir())
    assert [n for n in names if n.endswith(".json")] == ["test.pixels.json", "train.pixels.json"]
    assert len([n for n in names if n.endswith(".rows")]) == 2
    # Every image, in file order, is the one decode function's pixels.
    test_images = np.concatenate([x for x, _ in datasets.test.as_numpy_iterator()])
    expected = np.stack([x for x, _ in datasets.splits.test.dataset.as_numpy_iterator()])
    np.testing.assert_array_equal(test_images, expected)
    # Two epochs of train: the same elements, in another order.
    first, second = (_labels_of_epoch(datasets.train) for _ in range(2))
    assert sorted(first) == sorted(datasets.splits.train.labels.tolist())
    assert sorted(first) == sorted(second) and list(first) != list(second)
    # model.fit takes the datasets as they are.
    model = tf.keras.Sequential(
        [tf.keras.Input((32, 32, 3)), tf.keras.layers.Rescaling(1 / 255.0)]
        + [tf.keras.layers.Flatten(), tf.keras.layers.Dense(3, activation="softmax")]
    )
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    history = model.fit(datasets.train, validation_data=datasets.validation, epochs=1, verbose=0)
    assert len(history.history["loss"]) == 1 and np.isfinite(history.history["val_loss"][0])
    # A second call on unchanged files decodes nothing: the store is reused.
    with caplog.at_level("WARNING"):
        pipeline.make_datasets(data_dir, batch_size=4, image_size=32, cache=str(store_dir))
    assert caplog.text.count("Reusing the stored") == 2
