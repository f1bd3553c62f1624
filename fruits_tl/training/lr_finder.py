"""A learning-rate range test (fastai's `lr_find`) and the underfit guard of the head.

The range test trains the model from its current weights for up to STEPS steps through the
training input pipeline, the learning rate rising geometrically from START to END, and
records each step's training loss, smoothed as fastai smooths it (an exponential moving
average, beta 0.98, debiased). It stops early once the smoothed loss passes 4x its minimum
(the rate is too high), and puts the model's weights back. On stored features the test takes
seconds.

The suggestion is fastai's "valley" rule: the longest stretch of the curve over which the loss
keeps falling (the longest decreasing subsequence of the smoothed losses, the first tenth and
last five points left out), and the rate half way along it (a third plus a sixth): a rate
where the loss falls fast and is still far from diverging.

Under several workers every worker runs the same test: each step's loss is summed over all
replicas, so all of them see the same curve and pick the same rate.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math

import keras
import numpy as np
import tensorflow as tf

from fruits_tl.data import train_input
from fruits_tl.training import loop

START = 1e-7
END = 10.0
STEPS = 100
SMOOTHING = 0.98
DIVERGED = 4.0


@dataclasses.dataclass(frozen=True)
class Finding:
    """What the range test measured.

    Attributes:
      learning_rates: The rate of each step.
      losses: The smoothed training loss after each step.
      suggested: The valley rule's rate.
      suggested_step: Its step (an index into both tuples).
    """

    learning_rates: tuple[float, ...]
    losses: tuple[float, ...]
    suggested: float
    suggested_step: int

    def to_csv(self) -> str:
        """lr_find.csv: step, learning_rate, smoothed_loss, suggested (1 on the chosen row)."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["step", "learning_rate", "smoothed_loss", "suggested"])
        for step, (rate, loss) in enumerate(zip(self.learning_rates, self.losses, strict=True)):
            writer.writerow([step, f"{rate:.6g}", f"{loss:.6g}", int(step == self.suggested_step)])
        return out.getvalue()


def valley(losses: list[float]) -> int:
    """fastai's valley rule on smoothed losses: the index half way along the longest decreasing
    run (longest decreasing subsequence), the first tenth and the last five
    points left out where the curve is long enough."""
    count = len(losses)
    skip_start = count // 10 if count >= 20 else 0
    skip_end = 5 if count - skip_start > 10 else 0
    values = losses[skip_start : count - skip_end]
    n = len(values)
    lengths = [1] * n
    best_start = best_end = 0
    for i in range(1, n):
        for j in range(i):
            if values[i] < values[j] and lengths[i] < lengths[j] + 1:
                lengths[i] = lengths[j] + 1
        if lengths[best_end] < lengths[i]:
            best_end = i
            best_start = best_end - lengths[best_end]
    sections = (best_end - best_start) / 3
    return skip_start + min(n - 1, max(0, best_start + int(sections) + int(sections / 2)))


def find(
    model: keras.Model,
    *,
    examples,
    labels: np.ndarray,
    strategy: tf.distribute.Strategy,
    batch_size: int,
    seed: int,
    steps: int = STEPS,
    start: float = START,
    end: float = END,
) -> Finding:
    """Runs the range test on a compiled model (its optimizer's learning rate is a variable
    set before each step) and restores the model's weights and the optimizer's rate after.

    Args:
      model: Compiled (`model.compile_classifier`) in `strategy.scope()`: a fresh optimizer,
        whose state the test changes (compile again before training).
      examples, labels: The training examples (`store.StoredArray` or an array) and labels.
      strategy: The strategy the model was built under.
      batch_size: The global batch size of the training that follows.
      seed: The order's seed (`train_input.epoch_order`).
      steps, start, end: The schedule: `steps` rates from `start` to `end`, geometrically.
    """
    examples = loop.as_examples(examples)
    labels = np.asarray(labels, np.int32)
    batching = train_input.Batching(
        count=len(labels), batch_size=batch_size, replicas=strategy.num_replicas_in_sync
    )
    epochs = -(-steps // batching.num_batches)
    iterator = iter(
        train_input.distribute(
            strategy,
            examples,
            labels,
            train_input.training_rows(batching, seed=seed, first_epoch=0, epochs=epochs),
            batching=batching,
        )
    )
    saved = model.get_weights()
    initial_rate = float(model.optimizer.learning_rate.numpy())
    with strategy.scope():
        model.optimizer.build(model.trainable_variables)
    compiled = loop.CompiledSteps(model, strategy=strategy)
    rates, smoothed = [], []
    average, best = 0.0, math.inf
    try:
        for step in range(steps):
            rate = start * (end / start) ** (step / max(steps - 1, 1))
            model.optimizer.learning_rate.assign(rate)
            position = step % batching.num_batches
            real = min(batch_size, batching.count - position * batch_size)
            loss = float(compiled.train(iterator, 1)[0]) / real
            average = SMOOTHING * average + (1 - SMOOTHING) * loss
            value = average / (1 - SMOOTHING ** (step + 1))
            if not math.isfinite(value):
                break
            rates.append(rate)
            smoothed.append(value)
            best = min(best, value)
            if value > DIVERGED * best:
                break
    finally:
        model.set_weights(saved)
        model.optimizer.learning_rate.assign(initial_rate)
    index = valley(smoothed)
    return Finding(tuple(rates), tuple(smoothed), suggested=rates[index], suggested_step=index)
