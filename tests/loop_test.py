"""Head training on cached features: the same computation as Keras's fit, on any strategy."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from fruits_tl import distribute, loop, model, pipeline

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


def test_loop_fit_matches_keras_fit_on_the_feature_route():
    features, labels = _features(19)
    validation = _features(7, seed=1)
    strategy = distribute.get_strategy("default")
    by_keras = _compiled_head(strategy)
    keras_history = by_keras.fit(
        pipeline.make_feature_batches(features, labels, batch_size=4, training=True, seed=11),
        validation_data=pipeline.make_feature_batches(*validation, batch_size=4, training=False),
        epochs=3,
        shuffle=False,
        verbose=0,
    ).history
    by_loop = _compiled_head(strategy)
    loop_history = loop.fit(
        by_loop,
        inputs=features,
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
    got = loop.evaluate(by_loop, inputs=validation[0], labels=validation[1], strategy=strategy)
    for key in ("loss", "accuracy", "top5_accuracy"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6)


# Last batches of 3 (split 2 + 1 between the replicas) and of 1, which the route's rule for two
# replicas turns into batches of 3 and 2 (so one replica never gets nothing): the one-replica
# run is given the same rule.
@pytest.mark.parametrize("count", [19, 17])
def test_two_replicas_train_as_one(count):
    features, labels = _features(count)
    results = {}
    for name in ("default", "mirrored"):
        strategy = distribute.get_strategy(name)
        trained = _compiled_head(strategy)
        history = loop.fit(
            trained,
            inputs=features,
            labels=labels,
            validation=_features(5, seed=2),
            epochs=2,
            batch_size=4,
            strategy=strategy,
            seed=5,
            min_batch_size=2,
        ).history
        results[name] = (strategy.num_replicas_in_sync, trained.get_weights(), history)
    assert results["mirrored"][0] == 2
    for ours, theirs in zip(results["mirrored"][1], results["default"][1], strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    for key, values in results["default"][2].items():
        np.testing.assert_allclose(
            results["mirrored"][2][key], values, rtol=1e-5, atol=1e-6, err_msg=key
        )


def test_batches_follow_the_route_rule_for_the_strategy():
    # 17 examples in batches of 4 on two replicas: the route batches 4, 4, 4, 3, 2, not
    # 4, 4, 4, 4, 1.
    features, labels = _features(17)
    strategy = distribute.get_strategy("default")
    weights = {}
    for rule in (1, 2):
        trained = _compiled_head(strategy)
        loop.fit(
            trained,
            inputs=features,
            labels=labels,
            epochs=1,
            batch_size=4,
            strategy=strategy,
            min_batch_size=rule,
        )
        weights[rule] = trained.get_weights()[0]
    assert np.abs(weights[1] - weights[2]).max() > 1e-5
    mirrored = distribute.get_strategy("mirrored")
    by_default_rule = _compiled_head(mirrored)
    loop.fit(
        by_default_rule, inputs=features, labels=labels, epochs=1, batch_size=4, strategy=mirrored
    )
    np.testing.assert_allclose(by_default_rule.get_weights()[0], weights[2], rtol=1e-5, atol=1e-6)


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
        inputs=features,
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
    loop.fit(by_half, inputs=half, labels=labels, epochs=1, batch_size=4, strategy=strategy)
    by_float = _compiled_head(strategy)
    loop.fit(
        by_float,
        inputs=half.astype(np.float32),
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
            inputs=features,
            labels=labels,
            epochs=1,
            batch_size=2,
            strategy=distribute.get_strategy("default"),
        )
