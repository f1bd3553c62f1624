"""The store: one file per array written in place, resumable, checksummed, read natively."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from conftest import run_json_script

from fruits_tl.data import store

ROWS = np.arange(10 * 3, dtype=np.uint8).reshape(10, 3)


class Producer:
    """Rows of ROWS in blocks of 3 (blocks that straddle chunks), counting what it was asked
    for; `fail_at` raises when the pass reaches that row (an interrupted run)."""

    def __init__(self, rows=ROWS, *, fail_at: int | None = None, leave_out=()):
        self.rows, self.fail_at, self.leave_out = rows, fail_at, set(leave_out)
        self.asked: list[tuple[int, int]] = []

    def __call__(self, first, last):
        self.asked.append((first, last))
        for start in range(first, last, 3):
            if self.fail_at is not None and start + 3 > self.fail_at:
                raise KeyboardInterrupt("interrupted")
            keep = [i for i in range(start, min(start + 3, last)) if i not in self.leave_out]
            yield np.asarray(keep, np.int64), self.rows[keep]


def _fill(directory, produce, **kwargs):
    return store.fill(
        str(directory),
        "x",
        fingerprint="f1",
        count=len(ROWS),
        row_shape=(3,),
        dtype=np.uint8,
        produce=produce,
        chunk_rows=4,
        **kwargs,
    )


def test_an_array_is_written_in_place_into_one_file_and_reused(tmp_path):
    produce = Producer()
    stored = _fill(tmp_path, produce)
    assert (stored.reused, stored.written_rows, stored.missing) == (False, 10, ())
    assert produce.asked == [(0, 10)]  # One pass over consecutive chunks.
    # One data file and its manifest: no chunk files, no second copy, no markers left.
    assert sorted(os.listdir(tmp_path)) == sorted(
        [os.path.basename(stored.examples.path), "x.json"]
    )
    assert os.path.getsize(stored.examples.path) == ROWS.nbytes
    np.testing.assert_array_equal(stored.examples.numpy(), ROWS)
    np.testing.assert_array_equal(stored.examples.tensor().numpy(), ROWS)
    np.testing.assert_array_equal(
        stored.examples.gather_by_path([9, 0, 4]).numpy(), ROWS[[9, 0, 4]]
    )
    again = Producer()
    reused = _fill(tmp_path, again)
    assert (reused.reused, reused.written_rows, again.asked) == (True, 0, [])
    # Another fingerprint is other data: written again.
    other = store.fill(
        str(tmp_path),
        "x",
        fingerprint="f2",
        count=10,
        row_shape=(3,),
        dtype=np.uint8,
        produce=Producer(ROWS + 1),
        chunk_rows=4,
    )
    np.testing.assert_array_equal(other.examples.numpy(), ROWS + 1)
    assert len([n for n in os.listdir(tmp_path) if n.endswith(".rows")]) == 1


def test_an_interrupted_fill_resumes_with_the_chunks_it_had_written(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _fill(tmp_path, Producer(fail_at=9))
    assert not os.path.exists(tmp_path / "x.json")  # Nothing incomplete looks complete.
    produce = Producer()
    stored = _fill(tmp_path, produce)
    assert produce.asked == [(8, 10)]
    np.testing.assert_array_equal(stored.examples.numpy(), ROWS)


def test_changed_bytes_are_found_by_their_checksum_and_only_their_chunk_is_rewritten(tmp_path):
    stored = _fill(tmp_path, Producer())
    with open(stored.examples.path, "r+b") as stream:
        stream.seek(5 * 3 + 1)  # Row 5: chunk 2.
        stream.write(b"\xff")
    produce = Producer()
    repaired = _fill(tmp_path, produce)
    assert produce.asked == [(4, 8)]
    assert (repaired.reused, repaired.rewritten_chunks) == (False, (2,))
    np.testing.assert_array_equal(repaired.examples.numpy(), ROWS)
    # Without verification the damage would have been read as data.
    with open(stored.examples.path, "r+b") as stream:
        stream.seek(1)
        stream.write(b"\xff")
    unchecked = _fill(tmp_path, Producer(), verify=False)
    assert unchecked.reused and unchecked.examples.numpy()[0, 1] == 0xFF


def test_a_damaged_manifest_is_named_and_the_array_written_again(tmp_path, caplog):
    stored = _fill(tmp_path, Producer())
    manifest = tmp_path / "x.json"
    manifest.write_text('{"format_version": 2, "fingerp')  # Cut short.
    produce = Producer()
    with caplog.at_level("WARNING"):
        again = _fill(tmp_path, produce)
    assert f"The manifest '{manifest}' cannot be read (damaged?)" in caplog.text
    assert produce.asked == [(0, 10)] and not again.reused
    np.testing.assert_array_equal(again.examples.numpy(), ROWS)
    assert again.examples.path == stored.examples.path


def test_rows_the_producer_cannot_make_are_zeros_and_named(tmp_path):
    stored = _fill(tmp_path, Producer(leave_out={2, 9}))
    assert stored.missing == (2, 9)
    expected = ROWS.copy()
    expected[[2, 9]] = 0
    np.testing.assert_array_equal(stored.examples.numpy(), expected)
    assert _fill(tmp_path, Producer()).missing == (2, 9)  # Recorded in the manifest.


def test_workers_write_their_own_chunks_of_one_file_and_the_chief_publishes(tmp_path):
    producers = [Producer(), Producer()]
    barrier = threading.Barrier(2, timeout=60)
    results: list = [None, None]

    def work(index):
        results[index] = _fill(
            tmp_path,
            producers[index],
            worker_index=index,
            worker_count=2,
            barrier=barrier.wait,
        )

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # The one rule: chunk k to worker k mod 2.
    assert producers[0].asked == [(0, 4), (8, 10)] and producers[1].asked == [(4, 8)]
    for result in results:
        np.testing.assert_array_equal(result.examples.numpy(), ROWS)
    assert [store.owns_chunk(k, 1, 3) for k in range(6)] == [False, True, False] * 2


READ_SCRIPT = """
import json, sys
import numpy as np
import tensorflow as tf
from conftest import anonymous_bytes
from fruits_tl.data import store, train_input
examples = store.open_complete(sys.argv[1], "pixels")
labels = np.zeros(len(examples), np.int32)
batching = train_input.Batching(count=len(examples), batch_size=64, replicas=1)
def growth(options):
    dataset = train_input.make_replica_dataset(
        examples,
        labels,
        train_input.training_rows(batching, seed=1, first_epoch=0, epochs=2),
        batching=batching,
        input_context=tf.distribute.InputContext(),
    )
    if options is not None:
        dataset = dataset.with_options(options)
    before = anonymous_bytes()
    seen = sum(int(rows.shape[0]) for rows, _, _ in dataset)
    return anonymous_bytes() - before, seen
growth(None)  # The first pipeline of a process sets up TensorFlow's runtime (~20 MB).
options = None
if sys.argv[2] == "rewrites":  # tf.data's default rewrites copy a captured view.
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = True
print(json.dumps(growth(options)))
"""


@pytest.mark.slow  # Two processes.
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux's /proc")
def test_reading_the_store_never_copies_it_into_the_process(tmp_path):
    """Each measurement in a fresh process: memory an earlier test freed but the allocator
    kept would hide a copy."""
    count, size = 1536, 128  # 75 MB of images.
    images = np.random.default_rng(0).integers(0, 256, (count, size, size, 3), np.uint8)

    def produce(first, last):
        yield np.arange(first, last), images[first:last]

    stored = store.fill(
        str(tmp_path),
        "pixels",
        fingerprint="f",
        count=count,
        row_shape=(size, size, 3),
        dtype=np.uint8,
        produce=produce,
        chunk_rows=512,
    )

    def growth(options: str) -> int:
        grown, seen = run_json_script(READ_SCRIPT, str(tmp_path), options)
        assert seen == 2 * count
        return grown

    assert growth("plain") < stored.examples.nbytes // 4
    # The check fails on a pipeline that copies the store: tf.data's default rewrites do.
    assert growth("rewrites") > stored.examples.nbytes // 2


def test_images_the_service_did_not_deliver_are_decoded_here(data_dir, caplog):
    from fruits_tl.data import loading

    train_dir = os.path.join(data_dir, "Training")
    classes = loading.list_classes(train_dir)
    folder = loading.load_split(train_dir, class_names=classes, image_size=16, name="train")
    with open(folder.file_paths[4], "wb") as f:
        f.write(b"not an image")  # A bad file stays undelivered.
    expected = {}
    for positions, images in store.fill_pass(folder, 0, len(folder)).as_numpy_iterator():
        expected.update(zip(positions.tolist(), images, strict=True))
    images = np.zeros((len(folder), 16, 16, 3), np.uint8)
    delivered = np.ones(len(folder), bool)
    delivered[[1, 4, 7]] = False  # What a lost element leaves: no row, not delivered.
    for i in np.flatnonzero(delivered):
        images[i] = expected[i]
    store._decode_lost_here(folder, "grpc://lost:1", images, delivered, parallelism=2)
    assert delivered.tolist() == [i != 4 for i in range(len(folder))]
    for i in (1, 7):
        np.testing.assert_array_equal(images[i], expected[i])
    assert not images[4].any()
    assert "did not deliver 3 image(s) of train" in caplog.text
    assert "2 of them decoded here" in caplog.text
