"""Training on examples held in memory: compiled steps, resumable, reproducible.

Both training modes run here. Features mode trains the head on the cached backbone features;
images mode trains the whole classifier (frozen backbone, new head) on the decoded uint8
images of the split, which the route has decoded once and which stay in memory as one
tensor, as a memory cache would hold them. A training step gathers its batch by index, runs
the model with `training=True`, takes the gradient of the loss averaged over the global batch
and applies the compiled Keras optimizer, under the distribution strategy (each replica takes
its slice of the global batch; the optimizer sums the replicas' gradients, as in `fit`).
Loss, accuracy and top-5 accuracy are summed in the same compiled function. One
`tf.function` call runs one step or a whole epoch of steps (an in-graph loop): one step at a
time for images, so that a stop request is answered after the current step; a whole epoch
for features, whose steps are tiny (BENCHMARKS.md section 7).

It is the computation `Model.fit` does on the image route, with what `fit` cannot give:
- the example order is the route's: `pipeline.make_example_orders` shuffles indices with the
  route's buffer rule, seed and reshuffling, and epoch e takes shuffle number 2e, as Keras 3's
  `fit` does (it draws a fresh iterator at each epoch's end); the batch sizes are the route's
  too (`pipeline.batch_sizes`). So the order of epoch e is a pure function of the seed and e,
  and a run resumed at (epoch e, step s) continues with exactly the batches an uninterrupted
  run would have fed;
- the state between steps (epoch, step, the epoch's running sums, the history, the per-epoch
  digests) is a plain dict that `checkpoint` receives with the model's and optimizer's values
  saved beside it (`checkpoints.Checkpoints`), and `resume` takes back;
- every epoch leaves a digest of its batches' example indices in feed order and of the
  trainable weights at its end (`batch_digests.csv`), so two runs compare by a diff.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from fruits_tl import faults, pipeline
from fruits_tl.stopping import GracefulStop

# Evaluation runs over the examples in slices of this many rows (features); images mode
# passes its global batch size instead (a slice of 4,096 images would not fit in memory).
EVALUATION_SLICE = 4096


@dataclasses.dataclass(frozen=True)
class Training:
    """What `fit` did.

    Attributes:
      history: Per-epoch `loss`, `accuracy`, `top5_accuracy`, with validation data the same
        with a `val_` prefix (the keys of Keras's History), and what callbacks add to the
        epoch's logs (`images_per_second`, `epoch_seconds`).
      digests: Per epoch: {"epoch", "batches", "indices_digest", "weights_digest"}.
    """

    history: dict
    digests: tuple[dict, ...]


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


class _Loop:
    """The compiled training steps and evaluation of one model under one strategy."""

    def __init__(
        self, model: keras.Model, *, strategy: tf.distribute.Strategy, evaluation_slice: int
    ):
        self.model = model
        self.strategy = strategy
        self.top_k = min(5, int(model.output.shape[-1]))
        self.num_classes = int(model.output.shape[-1])
        self.input_dtype = model.inputs[0].dtype
        self.evaluation_slice = evaluation_slice
        self._train_steps = tf.function(self._train_steps_fn, reduce_retracing=True)
        self._evaluate = tf.function(self._evaluate_fn, reduce_retracing=True)

    def _predict(self, inputs, indices, training):
        """The model on the gathered examples; an empty slice (fewer examples than replicas)
        skips the model: oneDNN's convolution fails on an empty batch on some CPUs."""
        x = tf.cast(tf.gather(inputs, indices), self.input_dtype)
        return tf.cond(
            tf.size(indices) > 0,
            lambda: self.model(x, training=training),
            lambda: tf.zeros([0, self.num_classes], self.model.output.dtype),
        )

    def _train_steps_fn(self, inputs, labels, order, starts, ends):
        model, strategy, top_k = self.model, self.strategy, self.top_k
        variables = model.trainable_variables

        def replica_step(batch_indices):
            global_size = tf.cast(tf.shape(batch_indices)[0], tf.float32)
            indices = _replica_slice(batch_indices)
            y = tf.gather(labels, indices)
            with tf.GradientTape() as tape:
                probabilities = self._predict(inputs, indices, True)
                per_example = keras.losses.sparse_categorical_crossentropy(y, probabilities)
                # Averaged over the global batch: the optimizer sums the replicas' gradients.
                loss = tf.reduce_sum(per_example) / global_size
                if model.losses:
                    loss += tf.add_n(model.losses) / strategy.num_replicas_in_sync
            gradients = tape.gradient(
                loss, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )
            model.optimizer.apply_gradients(zip(gradients, variables, strict=True))
            return _sums(y, tf.stop_gradient(probabilities), tf.stop_gradient(per_example), top_k)

        totals = tf.zeros([3])
        for i in tf.range(tf.shape(starts)[0]):
            batch_indices = order[starts[i] : ends[i]]
            per_replica = strategy.run(replica_step, args=(batch_indices,))
            totals += strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        return totals

    def _evaluate_fn(self, inputs, labels):
        strategy, top_k = self.strategy, self.top_k
        count = tf.shape(labels)[0]

        def replica_sums(slice_indices):
            indices = _replica_slice(slice_indices)
            probabilities = self._predict(inputs, indices, False)
            y = tf.gather(labels, indices)
            losses = keras.losses.sparse_categorical_crossentropy(y, probabilities)
            return _sums(y, probabilities, losses, top_k)

        totals = tf.zeros([3])
        for start in tf.range(0, count, self.evaluation_slice):
            slice_indices = tf.range(start, tf.minimum(start + self.evaluation_slice, count))
            per_replica = strategy.run(replica_sums, args=(slice_indices,))
            totals += strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        return totals / tf.cast(tf.maximum(count, 1), tf.float32)

    def train_steps(self, inputs, labels, order, starts, ends) -> np.ndarray:
        return self._train_steps(
            inputs, labels, order, tf.constant(starts, tf.int32), tf.constant(ends, tf.int32)
        ).numpy()

    def evaluate(self, inputs: tf.Tensor, labels: tf.Tensor) -> dict[str, float]:
        loss, accuracy, top_k = self._evaluate(inputs, labels).numpy()
        return {"loss": float(loss), "accuracy": float(accuracy), "top5_accuracy": float(top_k)}


def as_tensors(inputs: np.ndarray, labels: np.ndarray) -> tuple[tf.Tensor, tf.Tensor]:
    """The examples as tensors, stored as they are (uint8 images, float16 features stay so)."""
    return tf.constant(inputs), tf.constant(np.asarray(labels, dtype=np.int32))


def batch_ends(count: int, *, batch_size: int, min_batch_size: int) -> np.ndarray:
    """The end index of every batch of an epoch, with the route's rule for a short last batch."""
    sizes = pipeline.batch_sizes(count, batch_size=batch_size, min_batch_size=min_batch_size)
    if sizes is None:
        sizes = [batch_size] * (count // batch_size) + (
            [count % batch_size] if count % batch_size else []
        )
    return np.cumsum(sizes).astype(np.int32)


def weights_digest(model: keras.Model) -> str:
    """A digest of the trainable weights' values."""
    digest = hashlib.sha256()
    for weight in model.trainable_weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()[:16]


def order_digest(order: np.ndarray, ends: np.ndarray) -> str:
    """A digest of an epoch's batches: their example indices in feed order, and boundaries."""
    digest = hashlib.sha256(np.asarray(order, np.int64).tobytes())
    digest.update(np.asarray(ends, np.int64).tobytes())
    return digest.hexdigest()[:16]


class EpochOrders:
    """Epoch e's example order: iteration 2e of `pipeline.make_example_orders`, as `fit` draws."""

    def __init__(self, count: int, *, shuffle_buffer_size: int, seed: int | None):
        self._orders = pipeline.make_example_orders(
            count, shuffle_buffer_size=shuffle_buffer_size, seed=seed
        )
        self._drawn: list[np.ndarray] = []

    def __call__(self, epoch: int) -> np.ndarray:
        while len(self._drawn) <= 2 * epoch:
            self._drawn.append(next(iter(self._orders)).numpy())
        return self._drawn[2 * epoch]


def fit(
    model: keras.Model,
    *,
    inputs: np.ndarray,
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
    steps_per_call: int = 0,
    evaluation_slice: int = EVALUATION_SLICE,
    resume: dict | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    checkpoint_every_steps: int = 0,
    stop: GracefulStop | None = None,
    resume_hint: str = "rerun the same command to resume",
    heartbeat: Callable[[], None] | None = None,
) -> Training:
    """Trains a compiled model on examples in memory, as `fit` would on the image route.

    Args:
      model: Built and compiled (`model.compile_classifier`) in `strategy.scope()`; its
        optimizer is used, its loss is sparse categorical cross-entropy, computed here.
      inputs: [N, ...] training examples: uint8 images or float features.
      labels: [N] int labels.
      epochs: Passes over the examples.
      batch_size: Global batch size.
      strategy: The distribution strategy the model was built under.
      validation: (inputs, labels) evaluated after every epoch, or None.
      shuffle_buffer_size: The route's shuffle buffer; 0 for the whole split.
      seed: The route's shuffle seed.
      callbacks: Keras callbacks: `on_train_begin/end`, `on_epoch_begin/end` (with the
        epoch's logs) and `on_test_begin/end` around validation.
      verbose: Log every epoch's metrics.
      min_batch_size: The route's rule for a short last batch; None for the number of replicas.
      steps_per_call: Steps per compiled call; 0 for a whole epoch per call.
      evaluation_slice: Examples per evaluation slice.
      resume: A state `checkpoint` received earlier: training continues from it.
      checkpoint: Called with the state after every `checkpoint_every_steps` steps, after every
        epoch, and on a stop request (save the model and optimizer beside it).
      checkpoint_every_steps: 0 for once per epoch.
      stop: Checked after every call; a request checkpoints and raises StopRequested.
      resume_hint: The end of the stop message.
      heartbeat: Called after every compiled call and every validation (a watchdog's beat).

    Returns:
      The Training.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    count = len(labels)
    if count == 0:
        raise ValueError("fit needs at least one training example.")
    if getattr(model, "optimizer", None) is None:
        raise ValueError("fit needs a compiled model (model.compile_classifier).")
    with strategy.scope():
        model.optimizer.build(model.trainable_variables)
    loop = _Loop(model, strategy=strategy, evaluation_slice=evaluation_slice)
    ends = batch_ends(
        count,
        batch_size=batch_size,
        min_batch_size=strategy.num_replicas_in_sync if min_batch_size is None else min_batch_size,
    )
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int32)
    num_batches = len(ends)
    train_inputs, train_labels = as_tensors(inputs, labels)
    validation_tensors = as_tensors(*validation) if validation is not None else None
    orders = EpochOrders(count, shuffle_buffer_size=shuffle_buffer_size, seed=seed)
    state = (
        dict(resume)
        if resume
        else {"epoch": 0, "step": 0, "totals": [0.0, 0.0, 0.0], "history": {}, "digests": []}
    )
    if resume:
        logging.info(
            "Resuming at epoch %d, step %d of %d", state["epoch"] + 1, state["step"], num_batches
        )
    per_call = steps_per_call or num_batches

    def save():
        if checkpoint is not None:
            checkpoint(json_state())

    def json_state():
        return {
            "epoch": state["epoch"],
            "step": state["step"],
            "totals": [float(v) for v in state["totals"]],
            "history": state["history"],
            "digests": state["digests"],
        }

    # The callbacks are called directly, with the same logs dict: what they add to an epoch's
    # logs (ThroughputCallback's images_per_second) goes into the history, as Keras's History
    # records it (keras.callbacks.CallbackList passes copies).
    for callback in callbacks:
        callback.set_model(model)

    def call(hook: str, *args) -> None:
        for callback in callbacks:
            getattr(callback, hook)(*args)

    call("on_train_begin")
    while state["epoch"] < epochs:
        epoch = state["epoch"]
        order = tf.constant(orders(epoch))
        call("on_epoch_begin", epoch)
        while state["step"] < num_batches:
            step = state["step"]
            n = min(per_call, num_batches - step)
            if checkpoint_every_steps:
                n = min(n, checkpoint_every_steps - step % checkpoint_every_steps)
            sums = loop.train_steps(
                train_inputs, train_labels, order, starts[step : step + n], ends[step : step + n]
            )
            state["totals"] = [float(a + b) for a, b in zip(state["totals"], sums, strict=True)]
            state["step"] = step + n
            if heartbeat is not None:
                heartbeat()
            faults.point(f"train:step:{epoch}:{state['step']}")
            boundary = checkpoint_every_steps and state["step"] % checkpoint_every_steps == 0
            stopping = stop is not None and stop.requested is not None
            if state["step"] < num_batches and (boundary or stopping):
                save()
            if stopping and state["step"] < num_batches:
                stop.check(
                    f"epoch {epoch + 1}, step {state['step']} of {num_batches} is saved; "
                    f"{resume_hint}"
                )
        loss, accuracy, top_k = (v / count for v in state["totals"])
        logs = {"loss": loss, "accuracy": accuracy, "top5_accuracy": top_k}
        if validation_tensors is not None:
            call("on_test_begin")
            validation_logs = loop.evaluate(*validation_tensors)
            if heartbeat is not None:
                heartbeat()
            call("on_test_end", validation_logs)
            logs.update({f"val_{key}": value for key, value in validation_logs.items()})
        call("on_epoch_end", epoch, logs)
        for key, value in logs.items():
            state["history"].setdefault(key, []).append(float(value))
        state["digests"].append(
            {
                "epoch": epoch + 1,
                "batches": num_batches,
                "indices_digest": order_digest(order.numpy(), ends),
                "weights_digest": weights_digest(model),
            }
        )
        if verbose:
            logging.info(
                "epoch %d/%d: %s",
                epoch + 1,
                epochs,
                ", ".join(f"{k} {v:.4f}" for k, v in logs.items()),
            )
        state.update(epoch=epoch + 1, step=0, totals=[0.0, 0.0, 0.0])
        if state["epoch"] < epochs:
            save()
            if stop is not None:
                stop.check(f"epoch {epoch + 1} is saved; {resume_hint}")
    call("on_train_end")
    return Training(history=state["history"], digests=tuple(state["digests"]))


def evaluate(
    model: keras.Model,
    *,
    inputs: np.ndarray,
    labels: np.ndarray,
    strategy: tf.distribute.Strategy,
    evaluation_slice: int = EVALUATION_SLICE,
) -> dict[str, float]:
    """Loss, accuracy and top-5 accuracy of a model on examples in memory (keys as `evaluate`)."""
    loop = _Loop(model, strategy=strategy, evaluation_slice=evaluation_slice)
    return loop.evaluate(*as_tensors(inputs, labels))
