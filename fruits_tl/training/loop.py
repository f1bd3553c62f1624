"""Training on stored examples: compiled steps over the training input pipeline, resumable;
and the callback that measures images/s per epoch (with TensorBoard scalars, below).

Both training modes run here. Features mode trains the head on the stored backbone features;
images mode trains the whole classifier (frozen backbone, new head) on the stored uint8
images. Either way the examples stay on the host and reach the devices only as batches, through
`train_input` (epoch order -> batches of indices -> each replica's slice -> rows read on the
host -> prefetch -> `distribute_datasets_from_function`). A training step runs the model with
`training=True` on the replica's slice, takes the gradient of the loss averaged over the
global batch (padding rows count for nothing) and applies the compiled Keras optimizer, under
the distribution strategy (the optimizer sums the replicas' gradients, as in `fit`). Loss,
accuracy and top-5 accuracy are summed in the same compiled function. One `tf.function` call
runs one step (images: a stop request is answered after the current step) or many steps over
the distributed iterator (features, whose steps are tiny, as Keras's `steps_per_execution`).

What `Model.fit` cannot give:
- the example order of epoch e is `train_input.epoch_order(seed, e)`, a pure function, so a run
  resumed at (epoch e, step s) continues with exactly the batches an uninterrupted run would
  have fed;
- the state between steps (epoch, step, the epoch's running sums, the history, the per-epoch
  digests) is a plain dict that `checkpoint` receives with the model's and optimizer's values
  saved beside it (`phase.Checkpoints`), and `resume` takes back;
- every epoch leaves a digest of its batches' example indices in feed order and of the
  trainable weights at its end (`batch_digests.csv`), so two runs compare by a diff.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from fruits_tl.core import stopping
from fruits_tl.core.config import NO_AUGMENTATION, Augmentation
from fruits_tl.core.stopping import GracefulStop
from fruits_tl.data import decode, train_input
from fruits_tl.models import model as model_lib

_METRICS = ("loss", "accuracy", "top5_accuracy")
# Evaluation of features runs in batches of this many rows; images mode passes its global
# batch size instead (a batch of 4,096 images would not fit in memory).
EVALUATION_SLICE = 4096


@dataclasses.dataclass(frozen=True)
class Training:
    """What `fit` did.

    Attributes:
      history: Per-epoch `loss`, `accuracy`, `top5_accuracy`, with validation data the same
        with a `val_` prefix (the keys of Keras's History), and what callbacks add to the
        epoch's logs (`images_per_second`, `epoch_seconds`).
      digests: Per epoch: {"epoch", "batches", "indices_digest", "weights_digest"}.
      test: Loss, accuracy and top-5 accuracy on the test examples after training (None
        without them).
    """

    history: dict
    digests: tuple[dict, ...]
    test: dict | None = None


def _sums(labels: tf.Tensor, probabilities: tf.Tensor, losses: tf.Tensor, top_k: int) -> tf.Tensor:
    """[loss sum, correct, correct in top k] over a replica's slice; labels -1 count nothing."""
    real = tf.cast(labels >= 0, tf.float32)
    labels = tf.maximum(labels, 0)
    predicted = tf.argmax(probabilities, axis=-1, output_type=labels.dtype)
    correct = tf.reduce_sum(real * tf.cast(tf.equal(predicted, labels), tf.float32))
    in_top_k = tf.cast(tf.math.in_top_k(labels, probabilities, top_k), tf.float32)
    return tf.stack([tf.reduce_sum(real * losses), correct, tf.reduce_sum(real * in_top_k)])


def _losses(labels: tf.Tensor, probabilities: tf.Tensor) -> tf.Tensor:
    """Per-example cross-entropy, 0 for padding rows (label -1)."""
    real = tf.cast(labels >= 0, probabilities.dtype)
    per_example = keras.losses.sparse_categorical_crossentropy(tf.maximum(labels, 0), probabilities)
    return real * per_example


class CompiledSteps:
    """The compiled training steps and evaluation of one model under one strategy.

    `train_step(iterator)` runs one step, `train_steps(iterator, n)` and
    `evaluate_steps(iterator, n)` n steps, over a distributed iterator of `train_input`.
    """

    def __init__(self, model: keras.Model, *, strategy: tf.distribute.Strategy):
        self.model = model
        self.strategy = strategy
        self.top_k = model_lib.top_k(model.output.shape[-1])
        self.input_dtype = model.inputs[0].dtype
        self.train_step = tf.function(self._train_step_fn)
        self.train_steps = tf.function(self._train_steps_fn)
        self.evaluate_steps = tf.function(self._evaluate_steps_fn)

    def replica_train_step(self, examples, labels, global_count):
        """One replica's step on its slice: gradients of the global batch's mean loss."""
        model = self.model
        variables = model.trainable_variables
        with tf.GradientTape() as tape:
            probabilities = model(tf.cast(examples, self.input_dtype), training=True)
            per_example = _losses(labels, probabilities)
            # Averaged over the global batch: the optimizer sums the replicas' gradients.
            loss = tf.reduce_sum(per_example) / tf.cast(global_count, per_example.dtype)
            if model.losses:
                loss += tf.add_n(model.losses) / self.strategy.num_replicas_in_sync
        gradients = tape.gradient(
            loss, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        model.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        return _sums(labels, tf.stop_gradient(probabilities), per_example, self.top_k)

    def replica_evaluate_step(self, examples, labels, global_count):
        del global_count  # Sums only: the means are taken over the whole pass.
        probabilities = self.model(tf.cast(examples, self.input_dtype), training=False)
        return _sums(labels, probabilities, _losses(labels, probabilities), self.top_k)

    def _run(self, replica_fn, iterator) -> tf.Tensor:
        per_replica = self.strategy.run(replica_fn, args=next(iterator))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def _train_step_fn(self, iterator):
        return self._run(self.replica_train_step, iterator)

    def _train_steps_fn(self, iterator, steps):
        totals = tf.zeros([3])
        for _ in tf.range(steps):
            totals += self._run(self.replica_train_step, iterator)
        return totals

    def _evaluate_steps_fn(self, iterator, steps):
        totals = tf.zeros([3])
        for _ in tf.range(steps):
            totals += self._run(self.replica_evaluate_step, iterator)
        return totals

    def train(self, iterator, steps: int) -> np.ndarray:
        if steps == 1:
            return self.train_step(iterator).numpy()
        return self.train_steps(iterator, tf.constant(steps)).numpy()

    def evaluation(self, examples, labels, *, batch_size: int) -> Evaluation:
        """Repeatable evaluation passes over these examples (one pipeline, read in file order)."""
        return Evaluation(self, examples, labels, batch_size=batch_size)


class Evaluation:
    """Loss, accuracy and top-5 accuracy over a split, pass after pass through one iterator
    (the pipeline repeats the split's batches, so every pass reads them in file order)."""

    def __init__(self, steps: CompiledSteps, examples, labels, *, batch_size: int):
        self.steps = steps
        self.count = len(labels)
        if self.count == 0:
            raise ValueError("evaluation needs at least one example.")
        strategy = steps.strategy
        self.batching = train_input.Batching(
            count=self.count, batch_size=batch_size, replicas=strategy.num_replicas_in_sync
        )
        index_batches = train_input.epoch_index_batches(
            self.batching, seed=0, epoch=0, shuffle=False
        )
        distributed = train_input.distribute(
            strategy,
            as_examples(examples),
            labels,
            train_input.fixed_rows(index_batches, repeat=True),
            batching=self.batching,
        )
        self._iterator = iter(distributed)

    def __call__(self) -> dict[str, float]:
        totals = self.steps.evaluate_steps(self._iterator, tf.constant(self.batching.num_batches))
        loss, accuracy, top_k = totals.numpy() / self.count
        return {"loss": float(loss), "accuracy": float(accuracy), "top5_accuracy": float(top_k)}


def seed_everything(seed: int, *, deterministic: bool) -> None:
    """Seeds Python, NumPy, TensorFlow and Keras from `seed`; with `deterministic`, makes every
    op deterministic too (and logs the thread counts results can still depend on)."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        # Seeds Python, NumPy and TensorFlow (tf.random.set_seed alone does not seed Keras 3:
        # keras-team/keras#22620) and makes every op deterministic. Results can still depend on
        # the thread counts, so they are logged.
        tf.config.experimental.enable_op_determinism()
        logging.info(
            "Deterministic: seed %d; %d cores, inter-op threads %d, intra-op threads %d (0: "
            "TF's default)",
            seed,
            decode.available_cores(),
            tf.config.threading.get_inter_op_parallelism_threads(),
            tf.config.threading.get_intra_op_parallelism_threads(),
        )


def as_examples(examples) -> train_input.Examples:
    """Stored examples as they are; anything else as an array in memory."""
    if isinstance(examples, train_input.STORED):
        return examples
    return np.asarray(examples)


def weights_digest(model: keras.Model) -> str:
    """A digest of the trainable weights' values."""
    digest = hashlib.sha256()
    for weight in model.trainable_weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()[:16]


def epoch_line(name: str, epoch: int, epochs: int, logs: dict, count: int) -> str:
    """The one log line of an epoch: its metrics, validation's, and its training speed."""
    parts = [f"{name} epoch {epoch + 1}/{epochs}:"]
    parts.append(", ".join(f"{k} {logs[k]:.4f}" for k in _METRICS if k in logs))
    if f"val_{_METRICS[0]}" in logs:
        validation = ", ".join(f"{k} {logs[f'val_{k}']:.4f}" for k in _METRICS)
        parts[-1] += f"; validation {validation}"
    if "epoch_seconds" in logs:
        parts[-1] += (
            f"; {count} images in {logs['epoch_seconds']:.2f} s, "
            f"{logs['images_per_second']:,.0f} images/s"
        )
    return " ".join(parts)


def order_digest(index_batches: np.ndarray) -> str:
    """A digest of an epoch's batches: their example indices in feed order (-1: padding)."""
    return hashlib.sha256(np.asarray(index_batches, np.int64).tobytes()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Checkpointing:
    """How `fit` resumes, saves, stops and reports that it lives.

    Attributes:
      resume: A state `save` received earlier: training continues from it.
      save: Called with the state after every `every_steps` steps, after every epoch (the last
        one too), and on a stop request (save the model and optimizer beside it).
      every_steps: 0 for once per epoch.
      stop: Checked after every call; a request saves and raises StopRequested.
      resume_hint: The end of the stop message.
      heartbeat: Called after every compiled call and every validation (a watchdog's beat).
    """

    resume: dict | None = None
    save: Callable[[dict], None] | None = None
    every_steps: int = 0
    stop: GracefulStop | None = None
    resume_hint: str = "rerun the same command to resume"
    heartbeat: Callable[[], None] | None = None

    def beat(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat()


def fit(
    model: keras.Model,
    *,
    examples,
    labels: np.ndarray,
    epochs: int,
    batch_size: int,
    strategy: tf.distribute.Strategy,
    validation: tuple | None = None,
    test: tuple | None = None,
    shuffle_buffer_size: int = 0,
    seed: int = 42,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: bool = False,
    steps_per_call: int = 0,
    evaluation_batch_size: int = EVALUATION_SLICE,
    checkpointing: Checkpointing = Checkpointing(),
    augmentation: Augmentation = NO_AUGMENTATION,
    fault_name: str = "train",
) -> Training:
    """Trains a compiled model on stored examples through the training input pipeline.

    Args:
      model: Compiled (`model.compile_classifier`) in `strategy.scope()`: its optimizer is
        used; the loss is sparse categorical cross-entropy.
      examples, labels: [N, ...] training examples (uint8 images or float features: a
        `store.StoredArray`, read through a view of its file, or an array in memory) and
        their [N] int labels.
      epochs, batch_size, strategy: Passes over the examples; the global batch size; the
        strategy the model was built under.
      validation, test: (examples, labels) evaluated after every epoch, and once at the end
        (the last validation figures when `test` is `validation`); or None.
      shuffle_buffer_size, seed: Each epoch's order (`train_input.epoch_order`; 0: uniform).
      callbacks: Keras callbacks: `on_train_begin/end`, `on_epoch_begin/end`, `on_test_*`.
      verbose, steps_per_call: Log each epoch's metrics; steps per compiled call (0: epoch).
      evaluation_batch_size: Global batch size of the validation passes.
      checkpointing: Resume, save, stop and heartbeat (`Checkpointing`).
      augmentation: Random transforms of the training images (uint8 only), keyed by (seed,
        epoch, example index).
      fault_name: The first part of the fault points (`stopping.point`): "train", "fine_tune".
    """
    examples, labels = _checked_inputs(model, examples, labels, batch_size=batch_size)
    replicas = strategy.num_replicas_in_sync
    run = _Fitting(
        model,
        strategy=strategy,
        batching=train_input.Batching(count=len(labels), batch_size=batch_size, replicas=replicas),
        epochs=epochs,
        seed=seed,
        shuffle_buffer_size=shuffle_buffer_size,
        callbacks=callbacks,
        checkpointing=checkpointing,
        fault_name=fault_name,
    )
    iterator = run.iterator(examples, labels, augmentation)
    evaluation = validation and run.steps.evaluation(*validation, batch_size=evaluation_batch_size)
    run.epochs_left(iterator, evaluation, steps_per_call=steps_per_call, verbose=verbose)
    history = run.state["history"]
    test_logs = _test_figures(run, test, validation, history, evaluation_batch_size)
    return Training(history, tuple(run.state["digests"]), test_logs)


def _test_figures(run, test, validation, history: dict, batch_size: int) -> dict | None:
    """The test figures after training: the last validation figures when the test examples
    are the validation ones (the same weights, the same examples), else computed now."""
    if test is None:
        return None
    if test is validation and history.get("val_loss"):
        return {k: history[f"val_{k}"][-1] for k in _METRICS}
    return run.steps.evaluation(*test, batch_size=batch_size)()


def _checked_inputs(model, examples, labels, *, batch_size: int):
    """`fit`'s examples and labels, checked and converted."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    examples, labels = as_examples(examples), np.asarray(labels, np.int32)
    if len(labels) == 0:
        raise ValueError("fit needs at least one training example.")
    if len(examples) != len(labels):
        raise ValueError(f"{len(examples)} examples but {len(labels)} labels.")
    if getattr(model, "optimizer", None) is None:
        raise ValueError("fit needs a compiled model (model.compile_classifier).")
    return examples, labels


class _Fitting:
    """One `fit` run: its compiled steps, its state (what a checkpoint holds) and callbacks."""

    def __init__(
        self,
        model,
        *,
        strategy,
        batching,
        epochs,
        seed,
        shuffle_buffer_size,
        callbacks,
        checkpointing,
        fault_name,
    ):
        self.model, self.batching, self.epochs = model, batching, epochs
        self.seed, self.shuffle_buffer_size = seed, shuffle_buffer_size
        self.checkpointing, self.fault_name = checkpointing, fault_name
        with strategy.scope():
            model.optimizer.build(model.trainable_variables)
        self.steps = CompiledSteps(model, strategy=strategy)
        resume = checkpointing.resume
        self.state = (
            dict(resume)
            if resume
            else {"epoch": 0, "step": 0, "totals": [0.0, 0.0, 0.0], "history": {}, "digests": []}
        )
        if resume:
            logging.info(
                "Resuming at epoch %d, step %d of %d",
                self.state["epoch"] + 1,
                self.state["step"],
                batching.num_batches,
            )
        # The callbacks are called directly, with the same logs dict: what they add to an
        # epoch's logs (ThroughputCallback's images_per_second) goes into the history, as
        # Keras's History records it (keras.callbacks.CallbackList passes copies).
        self.callbacks = tuple(callbacks)
        for callback in self.callbacks:
            callback.set_model(model)

    def epochs_left(self, iterator, evaluation, *, steps_per_call: int, verbose: bool) -> None:
        """The epochs from the state's (0, or a checkpoint's) to the last, with callbacks."""
        self.call("on_train_begin")
        while self.state["epoch"] < self.epochs:
            self.call("on_epoch_begin", self.state["epoch"])
            self.train_epoch(iterator, steps_per_call or self.batching.num_batches)
            self.end_epoch(evaluation, verbose=verbose)
        self.call("on_train_end")

    def call(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

    def iterator(self, examples, labels, augmentation):
        """One pipeline for the whole run, from where the state says: a resumed run reads only
        the rest, and the host reads the next epoch's first batches while validation runs."""
        rows = train_input.training_rows(
            self.batching,
            seed=self.seed,
            first_epoch=self.state["epoch"],
            epochs=self.epochs,
            shuffle_buffer_size=self.shuffle_buffer_size,
            start_step=self.state["step"],
        )
        distributed = train_input.distribute(
            self.steps.strategy,
            examples,
            labels,
            rows,
            batching=self.batching,
            augmentation=augmentation,
            seed=self.seed,
        )
        return iter(distributed)

    def save(self) -> None:
        if self.checkpointing.save is not None:
            state = self.state
            self.checkpointing.save(
                {
                    "epoch": state["epoch"],
                    "step": state["step"],
                    "totals": [float(v) for v in state["totals"]],
                    "history": state["history"],
                    "digests": state["digests"],
                }
            )

    def train_epoch(self, iterator, per_call: int) -> None:
        """The rest of the current epoch's steps, `per_call` (or fewer) per compiled call, saving
        at every `every_steps` boundary and stopping (saved) on a request."""
        state, num_batches = self.state, self.batching.num_batches
        every, stop = self.checkpointing.every_steps, self.checkpointing.stop
        epoch = state["epoch"]
        while state["step"] < num_batches:
            step = state["step"]
            n = min(per_call, num_batches - step)
            if every:
                n = min(n, every - step % every)
            stopping.point(f"{self.fault_name}:calling:{epoch}:{step + 1}")
            sums = self.steps.train(iterator, n)
            state["totals"] = [float(a + b) for a, b in zip(state["totals"], sums, strict=True)]
            state["step"] = step + n
            self.checkpointing.beat()
            stopping.point(f"{self.fault_name}:step:{epoch}:{state['step']}")
            boundary = every and state["step"] % every == 0
            stop_asked = stop is not None and stop.requested is not None
            if state["step"] < num_batches and (boundary or stop_asked):
                self.save()
            if stop_asked and state["step"] < num_batches:
                stop.check(
                    f"epoch {epoch + 1}, step {state['step']} of {num_batches} is saved; "
                    f"{self.checkpointing.resume_hint}"
                )

    def end_epoch(self, evaluation, *, verbose: bool) -> None:
        """Validation, the callbacks, the history and digests, the log line, and a save."""
        state, count = self.state, self.batching.count
        epoch = state["epoch"]
        loss, accuracy, top_k = (v / count for v in state["totals"])
        logs = {"loss": loss, "accuracy": accuracy, "top5_accuracy": top_k}
        if evaluation is not None:
            self.call("on_test_begin")
            validation_logs = evaluation()
            self.checkpointing.beat()
            self.call("on_test_end", validation_logs)
            logs.update({f"val_{key}": value for key, value in validation_logs.items()})
        self.call("on_epoch_end", epoch, logs)
        for key, value in logs.items():
            state["history"].setdefault(key, []).append(float(value))
        order = train_input.epoch_index_batches(
            self.batching, seed=self.seed, epoch=epoch, shuffle_buffer_size=self.shuffle_buffer_size
        )
        state["digests"].append(
            {
                "epoch": epoch + 1,
                "batches": self.batching.num_batches,
                "indices_digest": order_digest(order),
                "weights_digest": weights_digest(self.model),
            }
        )
        if verbose:
            logging.info("%s", epoch_line(self.fault_name, epoch, self.epochs, logs, count))
        state.update(epoch=epoch + 1, step=0, totals=[0.0, 0.0, 0.0])
        # The last epoch too: a finished phase that a later phase follows (fine-tuning) is
        # resumed as finished.
        self.save()
        stop = self.checkpointing.stop
        if stop is not None and state["epoch"] < self.epochs:
            stop.check(f"epoch {epoch + 1} is saved; {self.checkpointing.resume_hint}")


def evaluate(
    model: keras.Model,
    *,
    examples,
    labels: np.ndarray,
    strategy: tf.distribute.Strategy,
    batch_size: int = EVALUATION_SLICE,
) -> dict[str, float]:
    """Loss, accuracy and top-5 accuracy of a model on stored examples (keys as `evaluate`)."""
    return CompiledSteps(model, strategy=strategy).evaluation(
        examples, labels, batch_size=batch_size
    )()


# Keras callbacks: per-epoch training throughput in images per second.
#
# The clock is a parameter so tests can check the arithmetic with a fake clock.


def write_scalar(tag: str, value: float, *, step: int) -> None:
    """Writes one TensorBoard scalar with core TensorFlow only.

    `tf.summary.scalar` lives in the tensorboard package, which TensorFlow 2.21 no longer
    installs; `tf.summary.write` with the scalars plugin's metadata (the public
    `tf.compat.v1.SummaryMetadata` proto) writes the same event.
    """
    import tensorflow as tf

    metadata = tf.compat.v1.SummaryMetadata(
        plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars")
    )
    tf.summary.write(
        tag, tf.constant(float(value), tf.float32), step=step, metadata=metadata.SerializeToString()
    )


class ThroughputCallback(keras.callbacks.Callback):
    """Measures training images/s for every epoch and adds it to the epoch's logs (the training
    loop's one line per epoch shows it).

    The training phase of an epoch runs from `on_epoch_begin` to the start of validation
    (`on_test_begin`), or to `on_epoch_end` when there is no validation, so validation time
    does not dilute the figure.

    With `tensorboard_dir`, images/s and the epoch's other logs are also written there as
    TensorBoard scalars, one step per epoch, laid out as Keras's own TensorBoard callback lays
    them out so that the curves overlay: `<dir>/train` and `<dir>/validation` runs, tags
    `epoch_<metric>` (the `val_` prefix dropped in the validation run), plus
    `epoch_images_per_second` in the train run.

    `epoch_offset` (the epochs of an earlier phase) is added to the epoch of the TensorBoard
    steps, so that fine-tuning's curves continue the head's.

    Attributes:
      epoch_seconds: Training-phase seconds of each finished epoch.
      images_per_second: num_images / epoch_seconds of each finished epoch.
    """

    def __init__(
        self,
        num_images: int,
        *,
        clock: Callable[[], float] = time.perf_counter,
        tensorboard_dir: str = "",
        epoch_offset: int = 0,
    ):
        super().__init__()
        self.epoch_offset = epoch_offset
        self.num_images = num_images
        self.tensorboard_dir = tensorboard_dir
        self._writers: dict = {}
        self.clock = clock
        self.epoch_seconds: list[float] = []
        self.images_per_second: list[float] = []
        self._start: float | None = None
        self._training_end: float | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = self.clock()
        self._training_end = None

    def on_test_begin(self, logs=None):
        # Validation inside fit; a standalone evaluate() call has no epoch in progress.
        if self._start is not None and self._training_end is None:
            self._training_end = self.clock()

    def on_epoch_end(self, epoch, logs=None):
        epoch += self.epoch_offset
        end = self._training_end if self._training_end is not None else self.clock()
        seconds = max(end - self._start, 1e-9)
        rate = self.num_images / seconds
        self.epoch_seconds.append(seconds)
        self.images_per_second.append(rate)
        if logs is not None:
            logs["images_per_second"] = rate
            logs["epoch_seconds"] = seconds
        if self.tensorboard_dir:
            self._write_scalars(epoch, rate, logs or {})
        self._start = None

    def _write_scalars(self, epoch: int, rate: float, logs: dict) -> None:
        import tensorflow as tf

        runs: dict[str, dict[str, float]] = {"train": {"images_per_second": rate}, "validation": {}}
        for key, value in logs.items():
            if not isinstance(value, (int, float)) or key in ("images_per_second", "epoch_seconds"):
                continue
            if key.startswith("val_"):
                runs["validation"][key[len("val_") :]] = value
            else:
                runs["train"][key] = value
        for run, scalars in runs.items():
            if not scalars:
                continue
            if run not in self._writers:
                self._writers[run] = tf.summary.create_file_writer(
                    os.path.join(self.tensorboard_dir, run)
                )
            with self._writers[run].as_default():
                for key, value in scalars.items():
                    write_scalar(f"epoch_{key}", value, step=epoch)
            self._writers[run].flush()
