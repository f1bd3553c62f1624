"""Training the classifier's head on cached backbone features, epochs in one compiled loop.

On cached features a training step is a [batch, D] x [D, classes] product and an optimizer
update: a fraction of a millisecond on a CPU. Driving it the way `Model.fit` does, one
`tf.data` `get_next` per batch and Keras's metric objects per step, costs several times the
step itself (BENCHMARKS.md section 7 has the measured figures). So here
the features stay in memory as one tensor, and one `tf.function` call runs a whole epoch:
an in-graph loop over the batches that gathers each by index, runs the head with `training=True`,
takes the gradient of the loss and applies the compiled Keras optimizer, under the
distribution strategy; loss, accuracy and top-5 accuracy are summed in the same loop.

It is the computation `fit` does on the image route:
- the example order is the route's: `pipeline.make_example_orders` shuffles indices with the
  route's buffer rule, seed and reshuffling, and epochs take the same shuffles as `fit` does
  (see `fit_head`); the batch sizes are the route's too (`pipeline.batch_sizes`);
- the loss is the compiled one, sparse categorical cross-entropy, averaged over the global
  batch; under a strategy each replica takes its slice of the global batch and the Keras
  optimizer sums the replicas' gradients, as in `fit`;
- the metrics are `fit`'s: mean loss per example, top-1 and top-5 accuracy
  (`tests/features_test.py` compares the trained weights and history with image mode).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from fruits_tl import pipeline

# Validation and evaluation run over the features in slices of this many rows: the logits of
# a whole large split at once would be [N, classes] floats for no gain in speed.
EVALUATION_SLICE = 4096


@dataclasses.dataclass(frozen=True)
class HeadTraining:
    """What `fit_head` did.

    Attributes:
      history: Per-epoch `loss`, `accuracy`, `top5_accuracy` and, with validation data, the
        same with a `val_` prefix (the keys of Keras's History).
    """

    history: dict


def _replica_slice(indices: tf.Tensor) -> tf.Tensor:
    """This replica's contiguous share of a global batch of indices (the first ones get more)."""
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync
    if replicas == 1:
        return indices
    size = tf.shape(indices)[0]
    share = (size + replicas - 1) // replicas
    start = tf.minimum(context.replica_id_in_sync_group * share, size)
    return indices[start : tf.minimum(start + share, size)]


def _sums(labels: tf.Tensor, probabilities: tf.Tensor, losses: tf.Tensor, top_k: int) -> tf.Tensor:
    """[loss sum, correct, correct in top k] over a batch, for per-epoch means."""
    predicted = tf.argmax(probabilities, axis=-1, output_type=labels.dtype)
    correct = tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float32))
    in_top_k = tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, probabilities, top_k), tf.float32))
    return tf.stack([tf.reduce_sum(losses), correct, in_top_k])


class _HeadLoop:
    """The compiled epoch and evaluation functions for one head, features and strategy."""

    def __init__(self, head: keras.Model, *, strategy: tf.distribute.Strategy, top_k: int):
        self.head = head
        self.strategy = strategy
        self.top_k = top_k
        self._train_epoch = tf.function(self._train_epoch_fn)
        self._evaluate = tf.function(self._evaluate_fn)

    def _train_epoch_fn(self, features, labels, order, batch_ends):
        head, strategy, top_k = self.head, self.strategy, self.top_k
        variables = head.trainable_variables
        count = tf.shape(order)[0]

        def replica_step(batch_indices):
            global_size = tf.cast(tf.shape(batch_indices)[0], tf.float32)
            indices = _replica_slice(batch_indices)
            x = tf.gather(features, indices)
            y = tf.gather(labels, indices)
            with tf.GradientTape() as tape:
                probabilities = head(tf.cast(x, tf.float32), training=True)
                per_example = keras.losses.sparse_categorical_crossentropy(y, probabilities)
                # Averaged over the global batch: the optimizer sums the replicas' gradients.
                loss = tf.reduce_sum(per_example) / global_size
                loss += (
                    tf.add_n(head.losses) / strategy.num_replicas_in_sync if head.losses else 0.0
                )
            gradients = tape.gradient(loss, variables)
            head.optimizer.apply_gradients(zip(gradients, variables, strict=True))
            return _sums(y, tf.stop_gradient(probabilities), tf.stop_gradient(per_example), top_k)

        totals = tf.zeros([3])
        start = tf.constant(0, batch_ends.dtype)
        for end in batch_ends:
            batch_indices = order[start:end]
            start = end
            per_replica = strategy.run(replica_step, args=(batch_indices,))
            totals += strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        return totals / tf.cast(count, tf.float32)

    def _evaluate_fn(self, features, labels):
        head, strategy, top_k = self.head, self.strategy, self.top_k
        count = tf.shape(labels)[0]

        def replica_sums(slice_indices):
            indices = _replica_slice(slice_indices)
            probabilities = head(tf.cast(tf.gather(features, indices), tf.float32), training=False)
            y = tf.gather(labels, indices)
            return _sums(
                y,
                probabilities,
                keras.losses.sparse_categorical_crossentropy(y, probabilities),
                top_k,
            )

        totals = tf.zeros([3])
        for start in tf.range(0, count, EVALUATION_SLICE):
            slice_indices = tf.range(start, tf.minimum(start + EVALUATION_SLICE, count))
            per_replica = strategy.run(replica_sums, args=(slice_indices,))
            totals += strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        return totals / tf.cast(tf.maximum(count, 1), tf.float32)

    def train_epoch(
        self, features: tf.Tensor, labels: tf.Tensor, order: tf.Tensor, batch_ends: tf.Tensor
    ) -> dict[str, float]:
        loss, accuracy, top_k = self._train_epoch(features, labels, order, batch_ends).numpy()
        return {"loss": float(loss), "accuracy": float(accuracy), "top5_accuracy": float(top_k)}

    def evaluate(self, features: tf.Tensor, labels: tf.Tensor) -> dict[str, float]:
        loss, accuracy, top_k = self._evaluate(features, labels).numpy()
        return {"loss": float(loss), "accuracy": float(accuracy), "top5_accuracy": float(top_k)}


def _as_tensors(features: np.ndarray, labels: np.ndarray) -> tuple[tf.Tensor, tf.Tensor]:
    # Stored as they are (float16 stays float16, half the memory); the loop casts each batch.
    return tf.constant(features), tf.constant(np.asarray(labels, dtype=np.int32))


def fit_head(
    head: keras.Model,
    *,
    features: np.ndarray,
    labels: np.ndarray,
    epochs: int,
    batch_size: int,
    strategy: tf.distribute.Strategy,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    shuffle_buffer_size: int = 0,
    seed: int | None = 42,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: bool = False,
    min_batch_size: int | None = None,
) -> HeadTraining:
    """Trains a compiled head on cached features, as `fit` would on the image route.

    Keras 3's `fit` on a dataset of known length creates a fresh iterator when an epoch ends
    and another when the next begins (`EpochIterator._enumerate_iterator`), so epoch e sees
    the dataset's shuffle number 2e. The orders here are drawn the same way, so that with the
    same seed image mode and features mode see the same examples in the same order in every
    epoch (the equivalence test runs two epochs, so a change in Keras shows there).

    Args:
      head: A head from `model.build_head`, compiled by `model.compile_classifier` in
        `strategy.scope()` (its optimizer is used; its loss is sparse categorical
        cross-entropy, computed here).
      features: [N, D] training features (float32 or float16).
      labels: [N] int labels.
      epochs: Passes over the training features.
      batch_size: Global batch size.
      strategy: The distribution strategy the head was built under.
      validation: (features, labels) to evaluate after every epoch, or None.
      shuffle_buffer_size: The route's shuffle buffer; 0 for the whole split.
      seed: The route's shuffle seed.
      callbacks: Keras callbacks; `on_train_begin/end`, `on_epoch_begin/end` (with the
        epoch's logs) and `on_test_begin/end` around validation are called.
      verbose: Log every epoch's metrics.
      min_batch_size: The route's rule for a short last batch (`pipeline.batch_sizes`, as
        `make_batches` applies it); None for the strategy's number of replicas, as image-mode
        training passes it, so both modes batch alike.

    Returns:
      The HeadTraining.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    count = len(labels)
    if count == 0:
        raise ValueError("fit_head needs at least one training example.")
    if getattr(head, "optimizer", None) is None:
        raise ValueError("fit_head needs a compiled head (model.compile_classifier).")
    with strategy.scope():
        head.optimizer.build(head.trainable_variables)
    top_k = min(5, int(head.output.shape[-1]))
    loop = _HeadLoop(head, strategy=strategy, top_k=top_k)
    if min_batch_size is None:
        min_batch_size = strategy.num_replicas_in_sync
    sizes = pipeline.batch_sizes(count, batch_size=batch_size, min_batch_size=min_batch_size)
    if sizes is None:
        sizes = [batch_size] * (count // batch_size) + (
            [count % batch_size] if count % batch_size else []
        )
    batch_ends = tf.constant(np.cumsum(sizes), tf.int32)
    train_features, train_labels = _as_tensors(features, labels)
    validation_tensors = _as_tensors(*validation) if validation is not None else None
    orders = pipeline.make_example_orders(count, shuffle_buffer_size=shuffle_buffer_size, seed=seed)
    callback_list = keras.callbacks.CallbackList(list(callbacks), model=head)
    history: dict[str, list[float]] = {}
    callback_list.on_train_begin()
    for epoch in range(epochs):
        callback_list.on_epoch_begin(epoch)
        order = next(iter(orders))
        next(iter(orders))  # The shuffle `fit` draws and discards at an epoch's end.
        logs = loop.train_epoch(train_features, train_labels, order, batch_ends)
        if validation_tensors is not None:
            callback_list.on_test_begin()
            validation_logs = loop.evaluate(*validation_tensors)
            callback_list.on_test_end(validation_logs)
            logs.update({f"val_{key}": value for key, value in validation_logs.items()})
        callback_list.on_epoch_end(epoch, logs)
        for key, value in logs.items():
            history.setdefault(key, []).append(float(value))
        if verbose:
            logging.info(
                "epoch %d/%d: %s",
                epoch + 1,
                epochs,
                ", ".join(f"{k} {v:.4f}" for k, v in logs.items()),
            )
    callback_list.on_train_end()
    return HeadTraining(history=history)


def evaluate_head(
    head: keras.Model, *, features: np.ndarray, labels: np.ndarray, strategy: tf.distribute.Strategy
) -> dict[str, float]:
    """Loss, accuracy and top-5 accuracy of a head on cached features (keys as `evaluate`)."""
    top_k = min(5, int(head.output.shape[-1]))
    loop = _HeadLoop(head, strategy=strategy, top_k=top_k)
    return loop.evaluate(*_as_tensors(features, labels))
