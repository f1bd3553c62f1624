"""The public input pipeline: order, dtypes, reshuffling, the store and the distributed input_fn."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_json_script

from fruits_tl.core import distribute
from fruits_tl.data import decode, loading, pipeline, store, train_input


@pytest.fixture
def splits(data_dir):
    return loading.load_dataset(data_dir, image_size=32)


def _labels_of_epoch(dataset):
    return np.concatenate([labels for _, labels in dataset.as_numpy_iterator()])


def test_evaluation_batches_keep_file_order_and_uint8_and_float32_is_their_preprocessing(
    data_dir, tmp_path
):
    kwargs = dict(batch_size=4, image_size=32, cache=str(tmp_path / "store"))
    raw = pipeline.make_datasets(data_dir, output="uint8", **kwargs)
    pre = pipeline.make_datasets(data_dir, output="float32", **kwargs)
    images, _ = next(iter(raw.test))
    assert images.dtype == tf.uint8 and images.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(_labels_of_epoch(raw.test), raw.splits.test.labels)
    assert [len(y) for _, y in raw.test.as_numpy_iterator()] == [4, 4, 1]  # The last is short.
    raw_images = np.concatenate([x for x, _ in raw.test.as_numpy_iterator()])
    pre_images = np.concatenate([x for x, _ in pre.test.as_numpy_iterator()])
    assert pre_images.dtype == np.float32
    np.testing.assert_allclose(pre_images, raw_images.astype(np.float32) / 127.5 - 1, atol=1e-6)


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


def test_inference_batches_are_full_the_last_padded_with_the_first_image_labelled_minus_one():
    images = np.arange(9 * 2 * 2 * 3, dtype=np.uint8).reshape(9, 2, 2, 3)
    labels = np.arange(9) % 3
    padded = list(train_input.file_order_batches(images, labels, batch_size=4))
    assert [tuple(x.shape) for x, _ in padded] == [(4, 2, 2, 3)] * 3
    got = np.concatenate([y for _, y in padded])
    np.testing.assert_array_equal(got, [*labels, *[pipeline.PADDING_LABEL] * 3])
    np.testing.assert_array_equal(np.concatenate([x for x, _ in padded])[:9], images)
    np.testing.assert_array_equal(padded[2][0][1:], np.stack([images[0]] * 3))
    # The spec is static: one trace serves every batch of the split.
    spec = train_input.file_order_batches(images, labels, batch_size=4).element_spec
    assert spec[0].shape.as_list() == [4, 2, 2, 3] and spec[1].shape.as_list() == [4]


ORDER_SCRIPT = """
import hashlib, json, sys
from fruits_tl.data import pipeline
seed = int(sys.argv[2])
batches = pipeline.make_datasets(sys.argv[1], batch_size=4, image_size=16, seed=seed).train
print(json.dumps([
    hashlib.sha256(images.numpy().tobytes()).hexdigest()[:12]
    for epoch in range(2)
    for images, _ in batches
]))
"""


@pytest.mark.slow
def test_the_same_seed_gives_the_same_order_in_another_process(tiny_dataset):
    # Each order comes from a fresh process: the order is a function of the seed and the pass
    # alone (nothing of TensorFlow's global seed, which code run earlier may have set).
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


def test_decode_passes_are_not_autotuned_and_store_reads_not_rewritten(splits, data_dir):
    # Every pass that decodes files: the pass that fills the store and the decode check's
    # (the bench's decode ceiling is the check's pass).
    passes = (store.fill_pass(splits.train, 0, 4), decode.decode_pass(["x.jpg"]))
    for dataset in passes:
        assert dataset.options().autotune.enabled is False  # BENCHMARKS.md 5a.
        # BENCHMARKS.md 5c: the default static rewrites cost every new iterator (every epoch).
        assert dataset.options().experimental_optimization.apply_default_optimizations is False
    # A read of the store: tf.data's default rewrites would copy a captured view into memory.
    train = pipeline.make_datasets(data_dir, batch_size=4, image_size=32).train
    assert train.options().experimental_optimization.apply_default_optimizations is False
    assert train.options().deterministic is True


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
    expected = np.stack([x for x, _ in datasets.splits.test.make_elements().as_numpy_iterator()])
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


COPY_SCRIPT = """
import json, sys
from conftest import anonymous_bytes
from fruits_tl.data import pipeline
data_dir, store, by_path = sys.argv[1], sys.argv[2], sys.argv[3] == "path"
kwargs = dict(batch_size=64, image_size=128, cache=store, output="uint8")
def growth(**extra):
    train = pipeline.make_datasets(data_dir, **kwargs, **extra).train
    before = anonymous_bytes()
    seen = sum(int(labels.shape[0]) for _ in range(2) for _, labels in train)
    return anonymous_bytes() - before, seen
growth()  # The first pipeline of a process sets up TensorFlow's runtime.
print(json.dumps(growth(read_by_path=by_path)))
"""


@pytest.mark.slow  # A fresh process per measurement: memory a test before freed is not counted.
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux's /proc")
def test_the_public_datasets_never_copy_the_store_into_the_process(tmp_path):
    """Two passes over 60 MB of stored images grow the process's own memory by far less than
    the store; the same datasets read by path (for a tf.data service) copy it (TF folds the
    ImmutableConst into a constant), which is why that is not the default."""
    from fruits_tl.jobs import synthetic

    data_dir = tmp_path / "data"
    synthetic.write_synthetic_dataset(str(data_dir), train_per_class=150, test_per_class=1)

    def growth(read: str) -> tuple[int, int]:
        grown, seen = run_json_script(COPY_SCRIPT, str(data_dir), str(tmp_path / "store"), read)
        return grown, seen

    grown, seen = growth("view")
    stored = os.path.getsize(next((tmp_path / "store").glob("train.pixels.*.rows")))
    assert seen == 2 * stored // (128 * 128 * 3)
    assert grown < stored // 4, (grown, stored)
    by_path, _ = growth("path")
    assert by_path > stored // 2, (by_path, stored)
