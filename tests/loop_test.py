"""The training loop: the same computation as Keras's fit on the same batches, on any strategy."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from fruits_tl.core import distribute
from fruits_tl.data import train_input
from fruits_tl.models import model
from fruits_tl.training import loop

NUM_CLASSES = 6
FEATURE_DIM = 8


def _features(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, count).astype(np.int32)
    centres = rng.normal(size=(NUM_CLASSES, FEATURE_DIM)).astype(np.float32)
    features = centres[labels] + 0.5 * rng.normal(size=(count, FEATURE_DIM)).astype(np.float32)
    return features, labels


def _compiled_head(strategy, *, learning_rate=0.05):
    keras.utils.set_random_seed(3)
    with strategy.scope():
        classifier_head = model.build_head(FEATURE_DIM, NUM_CLASSES, seed=3)
        model.compile_classifier(
            classifier_head,
            optimizer="rmsprop",
            learning_rate=learning_rate,
            num_classes=NUM_CLASSES,
        )
    return classifier_head


def test_loop_fit_matches_keras_fit_on_the_same_batches():
    # 19 examples in batches of 4: the last batch of each epoch has 3 real examples and one
    # padding row, which must count for nothing.
    features, labels = _features(19)
    validation = _features(7, seed=1)
    strategy = distribute.get_strategy("default")
    by_keras = _compiled_head(strategy)
    keras_history = {}
    for epoch in range(3):
        # The loop's documented order: a pure function of the seed and the epoch.
        order = train_input.epoch_order(19, seed=11, epoch=epoch)
        logs = by_keras.fit(
            features[order],
            labels[order],
            validation_data=validation,
            batch_size=4,
            epochs=1,
            shuffle=False,
            verbose=0,
        ).history
        for key, values in logs.items():
            keras_history.setdefault(key, []).extend(values)
    by_loop = _compiled_head(strategy)
    loop_history = loop.fit(
        by_loop,
        examples=features,
        labels=labels,
        validation=validation,
        epochs=3,
        batch_size=4,
        strategy=strategy,
        seed=11,
    ).history
    for ours, theirs in zip(by_loop.get_weights(), by_keras.get_weights(), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert np.abs(by_loop.get_weights()[0] - _compiled_head(strategy).get_weights()[0]).max() > 1e-2
    assert set(loop_history) == {
        "loss",
        "accuracy",
        "top5_accuracy",
        "val_loss",
        "val_accuracy",
        "val_top5_accuracy",
    }
    for key, values in loop_history.items():
        assert len(values) == 3
        np.testing.assert_allclose(values, keras_history[key], rtol=1e-5, atol=1e-6, err_msg=key)
    # And the evaluation matches Keras's evaluate.
    expected = by_keras.evaluate(*validation, batch_size=3, return_dict=True, verbose=0)
    got = loop.evaluate(
        by_loop, examples=validation[0], labels=validation[1], strategy=strategy, batch_size=3
    )
    for key in ("loss", "accuracy", "top5_accuracy"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6)


# 19 examples in batches of 4 end with a batch of 3 (2 + 1 on two replicas); 17 end with a
# batch of 1, so one replica's slice is all padding: it must train as one replica does.
@pytest.mark.parametrize("count", [19, 17])
def test_two_replicas_train_as_one(count):
    features, labels = _features(count)
    results = {}
    for name in ("default", "mirrored"):
        strategy = distribute.get_strategy(name)
        trained = _compiled_head(strategy)
        history = loop.fit(
            trained,
            examples=features,
            labels=labels,
            validation=_features(5, seed=2),
            epochs=2,
            batch_size=4,
            strategy=strategy,
            seed=5,
        ).history
        results[name] = (strategy.num_replicas_in_sync, trained.get_weights(), history)
    assert results["mirrored"][0] == 2
    for ours, theirs in zip(results["mirrored"][1], results["default"][1], strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    for key, values in results["default"][2].items():
        np.testing.assert_allclose(
            results["mirrored"][2][key], values, rtol=1e-5, atol=1e-6, err_msg=key
        )


def test_callbacks_see_every_epoch_and_validation():
    events = []

    class Recorder(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            events.append(("begin", epoch))

        def on_test_begin(self, logs=None):
            events.append(("test", None))

        def on_epoch_end(self, epoch, logs=None):
            events.append(("end", epoch, sorted(logs)))

    features, labels = _features(8)
    strategy = distribute.get_strategy("default")
    loop.fit(
        _compiled_head(strategy),
        examples=features,
        labels=labels,
        validation=(features, labels),
        epochs=2,
        batch_size=4,
        strategy=strategy,
        callbacks=[Recorder()],
    )
    keys = ["accuracy", "loss", "top5_accuracy", "val_accuracy", "val_loss", "val_top5_accuracy"]
    assert events == [
        ("begin", 0),
        ("test", None),
        ("end", 0, keys),
        ("begin", 1),
        ("test", None),
        ("end", 1, keys),
    ]


def test_float16_features_train_like_their_float32_values():
    features, labels = _features(12)
    half = features.astype(np.float16)
    strategy = distribute.get_strategy("default")
    by_half = _compiled_head(strategy)
    loop.fit(by_half, examples=half, labels=labels, epochs=1, batch_size=4, strategy=strategy)
    by_float = _compiled_head(strategy)
    loop.fit(
        by_float,
        examples=half.astype(np.float32),
        labels=labels,
        epochs=1,
        batch_size=4,
        strategy=strategy,
    )
    np.testing.assert_allclose(
        by_half.get_weights()[0], by_float.get_weights()[0], rtol=1e-6, atol=1e-7
    )


def test_an_uncompiled_head_is_refused():
    features, labels = _features(4)
    with pytest.raises(ValueError, match="compiled"):
        loop.fit(
            model.build_head(FEATURE_DIM, NUM_CLASSES),
            examples=features,
            labels=labels,
            epochs=1,
            batch_size=2,
            strategy=distribute.get_strategy("default"),
        )
