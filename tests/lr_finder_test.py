"""The learning-rate range test, its valley rule, and the underfit guard."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from fruits_tl.models import model
from fruits_tl.training import phase


def test_valley_picks_two_thirds_along_the_longest_fall():
    # Flat, then a steady fall over steps 20..79, then divergence.
    losses = [2.0] * 20 + [2.0 - 0.02 * k for k in range(1, 61)] + [1.0 + k for k in range(20)]
    index = phase.valley(losses)
    # The longest decreasing run is steps 18..79 (from the flat part's end): fastai's rule takes
    # the point half way along it (a third plus a sixth), step 48.
    assert index == 48
    assert losses[index] < losses[20]


def test_valley_of_a_short_curve_stays_inside_it():
    assert 0 <= phase.valley([1.0, 0.9, 0.8]) < 3
    assert phase.valley([1.0]) == 0


def _separable_features(count: int = 64, classes: int = 4, dim: int = 8):
    rng = np.random.default_rng(0)
    labels = np.arange(count) % classes
    centres = rng.normal(0, 3, (classes, dim))
    features = centres[labels] + rng.normal(0, 0.3, (count, dim))
    return features.astype(np.float32), labels


def test_the_range_test_restores_the_weights_and_stops_when_the_loss_diverges():
    # Random labels: no rate fits them, and a high one makes confident mistakes (the loss
    # diverges), which ends the test before the schedule's end.
    features, _ = _separable_features()
    labels = np.random.default_rng(1).integers(0, 4, len(features))
    strategy = tf.distribute.get_strategy()
    head = model.build_head(8, 4, seed=1)
    model.compile_classifier(head, optimizer="rmsprop", learning_rate=1e-3, num_classes=4)
    before = [w.copy() for w in head.get_weights()]
    # A schedule to 1e3: far past where any rate can fit, so the loss surely diverges early.
    finding = phase.range_test(
        head, examples=features, labels=labels, strategy=strategy, batch_size=16, seed=0, end=1e3
    )
    for old, new in zip(before, head.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    assert float(head.optimizer.learning_rate.numpy()) == pytest.approx(1e-3)
    rates = np.array(finding.learning_rates)
    assert rates[0] == pytest.approx(phase.START)
    assert np.all(np.diff(rates) > 0)
    # It stopped when the loss diverged, before the schedule's end.
    assert len(rates) < phase.STEPS
    assert finding.losses[-1] > phase.DIVERGED * min(finding.losses) * 0.99
    assert finding.suggested == finding.learning_rates[finding.suggested_step]
    rows = finding.to_csv().splitlines()
    assert rows[0] == "step,learning_rate,smoothed_loss,suggested"
    assert len(rows) == len(rates) + 1
    assert sum(row.endswith(",1") for row in rows[1:]) == 1


def test_the_finders_rate_trains_a_head_the_tutorials_rate_leaves_at_chance():
    features, labels = _separable_features()
    strategy = tf.distribute.get_strategy()
    results = {}
    for name in ("tutorial", "finder"):
        head = model.build_head(8, 4, seed=1)
        model.compile_classifier(head, optimizer="rmsprop", learning_rate=1e-7, num_classes=4)
        rate = 1e-7
        if name == "finder":
            rate = phase.range_test(
                head, examples=features, labels=labels, strategy=strategy, batch_size=16, seed=0
            ).suggested
        model.compile_classifier(head, optimizer="rmsprop", learning_rate=rate, num_classes=4)
        head.fit(features, labels, epochs=5, batch_size=16, verbose=0)
        results[name] = head.evaluate(features, labels, verbose=0, return_dict=True)
    assert results["finder"]["accuracy"] >= 0.9
    assert results["tutorial"]["loss"] > results["finder"]["loss"]


@pytest.mark.parametrize(
    "accuracy, loss, warns",
    [(0.30, 1.0, True), (0.60, 1.3, True), (0.60, 1.0, False), (0.49, 0.5, True)],
)
def test_the_underfit_guard_uses_twice_chance_and_nine_tenths_of_ln_classes(accuracy, loss, warns):
    # 4 classes: chance 0.25, 2x chance 0.5; 0.9 ln 4 = 1.2477.
    history = {"accuracy": [0.9], "loss": [0.1], "val_accuracy": [accuracy], "val_loss": [loss]}
    warning = phase.underfit_warning(history, num_classes=4, learning_rate=1e-4, suggested=3e-3)
    assert bool(warning) == warns
    if warns:
        assert f"validation accuracy is {accuracy:.4f}" in warning
        assert f"ln 4 = {math.log(4):.4f}" in warning
        assert "learning rate 0.0001" in warning and "suggests 0.003" in warning
