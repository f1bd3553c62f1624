"""Augmentation: each example's transform is a function of (seed, epoch, example index) alone,
each transform does what its name says, and the training pipeline applies it to the rows it
reads."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from fruits_tl.core.config import Augmentation
from fruits_tl.data import augment, train_input


def _images(count: int, size: int = 8) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def _apply(images, epochs, indices, spec: str, seed: int = 5) -> np.ndarray:
    uniforms = augment.draws(seed, np.asarray(epochs), np.asarray(indices))
    return augment.apply(tf.constant(images), uniforms, Augmentation.parse(spec))


ALL = "flip_left_right,flip_up_down,rotate=0.1,zoom=0.2,brightness=0.2,contrast=0.3"


def test_an_examples_transform_depends_on_seed_epoch_and_index_only():
    images = _images(4)
    together = _apply(images, [3] * 4, [10, 11, 12, 13], ALL).numpy()
    # The same examples read one at a time, in another order: the same pixels.
    for position in (2, 0, 3, 1):
        alone = _apply(images[position : position + 1], [3], [10 + position], ALL).numpy()
        np.testing.assert_array_equal(alone[0], together[position])
    # Another epoch or another seed draws again.
    assert not np.array_equal(_apply(images, [4] * 4, [10, 11, 12, 13], ALL), together)
    assert not np.array_equal(_apply(images, [3] * 4, [10, 11, 12, 13], ALL, seed=6), together)


def _splitmix_reference(seed: int, epoch: int, index: int) -> np.ndarray:
    """The documented draws, in NumPy's uint64 arithmetic (wrapping, as TensorFlow's)."""
    golden = np.uint64(0x9E3779B97F4A7C15)

    def mix(x):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))

    with np.errstate(over="ignore"):
        state = mix(np.uint64(seed) + golden)
        state = mix(state + np.uint64(epoch) + golden)
        state = mix(state + np.uint64(index) + golden)
        steps = np.arange(1, augment.DRAWS + 1, dtype=np.uint64) * golden
        bits = mix(state + steps) >> np.uint64(40)
    return (bits.astype(np.float32) / np.float32(1 << 24)).astype(np.float32)


def test_draws_are_the_documented_generator_and_padding_changes_nothing():
    uniforms = augment.draws(7, np.array([2, 2, 9]), np.array([5, -1, 123456])).numpy()
    np.testing.assert_array_equal(uniforms[0], _splitmix_reference(7, 2, 5))
    np.testing.assert_array_equal(uniforms[2], _splitmix_reference(7, 9, 123456))
    np.testing.assert_array_equal(uniforms[1], np.full(augment.DRAWS, 0.5, np.float32))
    assert ((uniforms >= 0) & (uniforms < 1)).all()
    # Made in a graph (as the input pipeline makes them), the same numbers.
    in_graph = tf.data.Dataset.from_tensors(np.array([5, -1, 123456])).map(
        lambda indices: augment.draws(7, tf.constant([2, 2, 9], tf.int64), indices)
    )
    np.testing.assert_array_equal(next(iter(in_graph)).numpy(), uniforms)
    images = _images(1)
    padded = _apply(images, [0], [-1], ALL).numpy()
    np.testing.assert_array_equal(padded, images)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("flip_left_right=1", lambda x: x[:, :, ::-1]),
        ("flip_up_down=1", lambda x: x[:, ::-1]),
    ],
)
def test_flips_with_probability_one_always_flip(spec, expected):
    images = _images(3)
    np.testing.assert_array_equal(_apply(images, [0] * 3, [0, 1, 2], spec), expected(images))


def test_brightness_shifts_within_its_strength_and_contrast_keeps_the_mean():
    flat = np.full((64, 4, 4, 3), 128, np.uint8)
    shifted = _apply(flat, [0] * 64, np.arange(64), "brightness=0.1").numpy().astype(int)
    shifts = shifted[:, 0, 0, 0] - 128
    assert np.all(np.abs(shifts) <= round(0.1 * 255))
    assert shifts.min() < -10 and shifts.max() > 10  # Both ways, over 64 draws.
    assert np.all(shifted == shifted[:, :1, :1, :1])  # One shift per image.
    images = _images(8, size=16)
    contrasted = _apply(images, [0] * 8, np.arange(8), "contrast=0.5").numpy()
    means = images.reshape(8, -1, 3).mean(1)
    np.testing.assert_allclose(contrasted.reshape(8, -1, 3).mean(1), means, atol=6)


def test_a_rotation_by_zero_strength_is_refused_and_a_small_one_moves_pixels():
    with pytest.raises(ValueError, match="rotate=0.0 is out of range"):
        Augmentation.parse("rotate=0")
    images = _images(2, size=16)
    turned = _apply(images, [0, 0], [0, 1], "rotate=0.25").numpy()
    assert turned.shape == images.shape and turned.dtype == np.uint8
    assert not np.array_equal(turned, images)


def test_the_training_pipeline_augments_what_it_reads():
    images = _images(6)
    examples = images
    labels = np.arange(6) % 2
    batching = train_input.Batching(count=6, batch_size=3, replicas=1)
    spec = Augmentation.parse("flip_left_right=1")
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0)
    rows = train_input.training_rows(batching, seed=1, first_epoch=0, epochs=1)
    read = list(
        train_input.make_replica_dataset(
            examples, labels, rows, batching=batching, input_context=context, augmentation=spec
        )
    )
    order = train_input.epoch_order(6, seed=1, epoch=0)
    got = np.concatenate([batch[0].numpy() for batch in read])
    np.testing.assert_array_equal(got, images[order][:, :, ::-1])


def test_features_cannot_be_augmented():
    features = np.zeros((4, 8), np.float32)
    batching = train_input.Batching(count=4, batch_size=2, replicas=1)
    with pytest.raises(ValueError, match="augmentation needs uint8 images"):
        train_input.make_replica_dataset(
            features,
            np.zeros(4),
            train_input.fixed_rows(batching.index_batches(np.arange(4))),
            batching=batching,
            input_context=tf.distribute.InputContext(),
            augmentation=Augmentation.parse("brightness"),
        )
