"""The training input pipeline: the epoch order, replica slices, and only batches on devices."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from fruits_tl.data import train_input
from fruits_tl.models import model
from fruits_tl.training import loop

# Two replicas on the two logical CPUs of conftest, named explicitly: the same on a GPU host.
REPLICA_DEVICES = ["/cpu:0", "/cpu:1"]


def test_the_epoch_order_is_the_documented_pure_function_of_seed_and_epoch():
    for epoch in (0, 1, 7):
        draws = tf.random.stateless_uniform(
            [50], seed=[3, epoch], minval=None, maxval=None, dtype=tf.int64, alg="philox"
        ).numpy()
        np.testing.assert_array_equal(
            train_input.epoch_order(50, seed=3, epoch=epoch), np.argsort(draws, kind="stable")
        )
    assert not np.array_equal(
        train_input.epoch_order(50, seed=3, epoch=0), train_input.epoch_order(50, seed=3, epoch=1)
    )
    np.testing.assert_array_equal(
        train_input.epoch_order(50, seed=3, epoch=2, shuffle=False), np.arange(50)
    )
    # A buffer of 1 keeps file order; a buffer of k moves no example more than k places, and
    # each order is still a permutation.
    np.testing.assert_array_equal(
        train_input.epoch_order(50, seed=3, epoch=0, shuffle_buffer_size=1), np.arange(50)
    )
    buffered = train_input.epoch_order(50, seed=3, epoch=0, shuffle_buffer_size=5)
    assert sorted(buffered) == list(range(50))
    assert all(abs(int(example) - place) <= 5 for place, example in enumerate(buffered))
    assert not np.array_equal(buffered, np.arange(50))


def test_batches_are_padded_to_one_shape_and_cut_into_contiguous_replica_slices():
    batching = train_input.Batching(count=9, batch_size=4, replicas=2)
    assert (batching.num_batches, batching.per_replica) == (3, 2)
    rows = batching.index_batches(np.arange(9)[::-1])
    np.testing.assert_array_equal(rows, [[8, 7, 6, 5], [4, 3, 2, 1], [0, -1, -1, -1]])
    # An odd global batch is padded to a multiple of the replicas.
    odd = train_input.Batching(count=5, batch_size=3, replicas=2)
    np.testing.assert_array_equal(odd.index_batches(np.arange(5)), [[0, 1, 2, -1], [3, 4, -1, -1]])


def test_each_input_pipeline_reads_its_own_replicas_slices_on_the_host():
    examples = np.arange(9 * 2, dtype=np.float32).reshape(9, 2)
    labels = np.arange(9, dtype=np.int32) + 100
    batching = train_input.Batching(count=9, batch_size=4, replicas=2)
    rows = batching.index_batches(np.arange(9)[::-1])
    # Two workers of one replica each: the second reads only the second half of each batch.
    context = tf.distribute.InputContext(
        num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=2
    )
    dataset = train_input.make_replica_dataset(
        examples,
        labels,
        train_input.fixed_rows(rows),
        batching=batching,
        input_context=context,
    )
    got = list(dataset.as_numpy_iterator())
    assert [list(y) for _, y, _ in got] == [[106, 105], [102, 101], [-1, -1]]
    assert [int(n) for _, _, n in got] == [4, 4, 1]
    np.testing.assert_array_equal(got[0][0], examples[[6, 5]])
    # Padding rows repeat the first row; their label marks them.
    np.testing.assert_array_equal(got[2][0], examples[[0, 0]])


def _split_sized_tensors(function: tf.types.experimental.ConcreteFunction, count: int):
    """What a traced step takes in or places on a replica's device with the split's length."""

    def split_sized(shape) -> bool:
        return shape.rank is not None and shape.rank > 0 and shape[0] == count

    found = [f"input {t.name} {t.shape}" for t in function.inputs if split_sized(t.shape)]
    found += [f"variable {v.name} {v.shape}" for v in function.variables if split_sized(v.shape)]
    for op in function.graph.get_operations():
        if "device:CPU" in op.device or "device:GPU" in op.device:
            found += [
                f"{op.type} {op.name} on {op.device} takes {t.shape}"
                for t in op.inputs
                if split_sized(t.shape)
            ]
    return found


def test_only_each_replicas_slice_enters_the_traced_training_step():
    strategy = tf.distribute.MirroredStrategy(REPLICA_DEVICES)
    count, batch_size = 37, 4  # 37: a length no batch or layer has.
    examples = np.zeros((count, 32, 32, 3), np.uint8)
    labels = np.arange(count, dtype=np.int32) % 3
    with strategy.scope():
        classifier = model.build_classifier(3, image_size=32, alpha=0.25, weights="none")
        model.compile_classifier(classifier, optimizer="adam", learning_rate=1e-3, num_classes=3)
        classifier.optimizer.build(classifier.trainable_variables)
    batching = train_input.Batching(count=count, batch_size=batch_size, replicas=2)
    distributed = train_input.distribute(
        strategy,
        examples,
        labels,
        train_input.fixed_rows(batching.index_batches(np.arange(count))),
        batching=batching,
    )
    steps = loop.CompiledSteps(classifier, strategy=strategy)
    traced = steps.train_step.get_concrete_function(iter(distributed))
    assert _split_sized_tensors(traced, count) == []
    # Each replica's model input is its slice: 2 of the global batch of 4, on its own device.
    casts = {
        op.device[-5:]: tuple(op.inputs[0].shape)
        for op in traced.graph.get_operations()
        if op.type == "Cast" and op.inputs[0].dtype == tf.uint8
    }
    assert casts == {"CPU:0": (2, 32, 32, 3), "CPU:1": (2, 32, 32, 3)}

    # The check fails on the design it replaced: the whole split handed to every replica,
    # which gathered its batch by index.
    @tf.function
    def gather_in_replicas(split, indices):
        def replica(batch_indices):
            return tf.reduce_sum(tf.cast(tf.gather(split, batch_indices), tf.float32))

        return strategy.run(replica, args=(indices,))

    old = gather_in_replicas.get_concrete_function(
        tf.constant(examples), tf.TensorSpec([batch_size], tf.int32)
    )
    found = _split_sized_tensors(old, count)
    assert any(f.startswith("input") for f in found)
    assert any("GatherV2" in f and "CPU:1" in f for f in found)
