"""One training phase: its recipe, its learning rate (the finder's where asked), its
checkpoints (resumed when a rerun matches them), and `loop.fit` under the strategy.

A job runs a list of phases: the head (on features or on the stored images), then, where
asked, fine-tuning (`FINE_TUNE`) of the backbone's last blocks with the head.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import re
import shutil
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from fruits_tl.core import distribute, files, stopping
from fruits_tl.core.config import NO_AUGMENTATION, Augmentation, TrainConfig, UserInputError
from fruits_tl.data import loading, train_input
from fruits_tl.models import model
from fruits_tl.training import loop

# What a worker that lost the others says to do next.
RESTART_HINT = "Start every worker again: the job resumes from the chief's last checkpoint."


# The fine-tuning phase's name (its checkpoint folder, its rows' phase in history.csv: 2).
FINE_TUNE = "fine_tune"


@dataclasses.dataclass(frozen=True)
class Phase:
    """One training phase: the head ("features" or "images" mode), or fine-tuning.

    Attributes:
      name: "features", "images" or FINE_TUNE: the checkpoint folder and the fingerprint.
      epochs, optimizer: The phase's recipe.
      given_rate: Its learning rate as asked for: a number, or "auto" (the finder's).
      augmentation: Transforms of the training images (images only).
      epoch_offset: Epochs of earlier phases (TensorBoard steps and log lines continue).
    """

    name: str
    epochs: int
    optimizer: str
    given_rate: float | str
    augmentation: Augmentation = NO_AUGMENTATION
    epoch_offset: int = 0


@dataclasses.dataclass(frozen=True)
class FineTuned:
    """What fine-tuning did: the layers it trained and its seconds."""

    layers: tuple[str, ...]
    seconds: float


@dataclasses.dataclass(frozen=True, eq=False)
class Trained:
    """What the job's phases return to it (`of_head`, then `then` for a second phase)."""

    history: dict
    digests: tuple
    test: dict
    head_test: dict
    extract_seconds: float
    head_train_seconds: float
    train_seconds: float
    features_reused: bool
    checkpoints: tuple
    learning_rate: float
    finding: Finding | None
    underfit_warning: str
    fine_tune: FineTuned | None

    @classmethod
    def of_head(cls, head: PhaseResult, **figures) -> Trained:
        """The head phase's result; `figures`: the extraction's and the head's seconds, whether
        features were reused, the finder's finding and the underfit warning."""
        history = head.training.history
        return cls(
            history={**history, "phase": [1.0] * len(history["loss"])},
            digests=head.training.digests,
            test=head.training.test,
            head_test=head.training.test,
            train_seconds=0.0,
            checkpoints=(head.store,),
            learning_rate=head.learning_rate,
            fine_tune=None,
            **figures,
        )

    def then(self, second: PhaseResult, fine_tune: FineTuned) -> Trained:
        """This result followed by a second phase: the histories and digests one after the
        other (the second's epochs numbered on), the second's test figures."""
        epochs = len(self.history["loss"])
        history = dict(self.history)
        for key, values in second.training.history.items():
            history[key] = list(history.get(key, [])) + list(values)
        history["phase"] = [1.0] * epochs + [2.0] * len(second.training.history["loss"])
        digests = self.digests + tuple(
            {**row, "epoch": row["epoch"] + epochs} for row in second.training.digests
        )
        return dataclasses.replace(
            self,
            history=history,
            digests=digests,
            test=second.training.test,
            checkpoints=(*self.checkpoints, second.store),
            fine_tune=fine_tune,
        )


@dataclasses.dataclass(frozen=True, eq=False)
class PhaseResult:
    """One phase's training, its checkpoints, its learning rate and the finder's curve."""

    training: loop.Training
    store: Checkpoints
    learning_rate: float
    finding: Finding | None


def find_rate(config, trainable, *, arrays, strategy) -> Finding:
    """The range test on the training examples, from `trainable`'s current weights."""

    start = time.perf_counter()
    finding = range_test(
        trainable,
        examples=arrays["train"][0],
        labels=arrays["train"][1],
        strategy=strategy,
        batch_size=config.batch_size,
        seed=config.data.seed,
    )
    logging.info(
        "Learning-rate finder: %d steps from %.1g to %.3g in %.1f s; the valley rule suggests %.3g",
        len(finding.learning_rates),
        finding.learning_rates[0],
        finding.learning_rates[-1],
        time.perf_counter() - start,
        finding.suggested,
    )
    return finding


def fit(
    config: TrainConfig,
    splits: loading.Splits,
    trainable: keras.Model,
    *,
    phase: Phase,
    arrays: dict,
    strategy: tf.distribute.Strategy,
    stop: stopping.GracefulStop,
    start_digest: str,
) -> PhaseResult:
    """Trains `trainable` for one phase on stored examples, choosing its learning rate first
    where it is "auto", resuming from and writing the phase's checkpoints."""
    rate, finding = _compile(
        config, splits, trainable, phase=phase, arrays=arrays, strategy=strategy
    )
    store = Checkpoints(
        os.path.join(config.resolved_checkpoint_dir(), phase.name),
        objects={"model": trainable, "optimizer": trainable.optimizer},
        run_fingerprint=run_fingerprint(
            config, splits, phase=phase, strategy=strategy, start_digest=start_digest
        ),
        keep=config.keep_checkpoints,
    )
    resume = _resume(config, store, phase=phase, strategy=strategy)
    # Under several workers only the chief writes checkpoints (in model_dir's folder, which
    # they all must reach); every worker resumes from the chief's latest.
    chief = distribute.worker_role(strategy).is_chief
    throughput = loop.ThroughputCallback(
        len(splits.train),
        tensorboard_dir=config.tensorboard_dir if chief else "",
        epoch_offset=phase.epoch_offset,
    )
    with _watch_workers(strategy, config.collective_timeout) as watchdog:
        training = _fit_loop(
            config,
            trainable,
            arrays=arrays,
            phase=phase,
            strategy=strategy,
            throughput=throughput,
            resume=resume,
            store=store if chief else None,
            stop=stop,
            heartbeat=watchdog.beat if watchdog is not None else None,
        )
    return PhaseResult(training, store, rate, finding)


def _compile(config, splits, trainable, *, phase: Phase, arrays: dict, strategy):
    """Compiles `trainable` with the phase's optimizer and learning rate (the finder's, run
    first, where the rate is "auto"); returns (the rate, the finder's Finding or None)."""
    finding = None
    rate = phase.given_rate
    if rate == "auto":
        with strategy.scope():  # The finder's own optimizer; it sets the rate of every step.
            model.compile_classifier(
                trainable,
                optimizer=phase.optimizer,
                learning_rate=START,
                num_classes=len(splits.class_names),
            )
        finding = find_rate(config, trainable, arrays=arrays, strategy=strategy)
        rate = finding.suggested
    with strategy.scope():  # A fresh optimizer: the finder's state is not carried over.
        model.compile_classifier(
            trainable,
            optimizer=phase.optimizer,
            learning_rate=_schedule(config, phase, float(rate), arrays, strategy),
            num_classes=len(splits.class_names),
        )
        trainable.optimizer.build(trainable.trainable_variables)
    return float(rate), finding


def _resume(config, store: Checkpoints, *, phase: Phase, strategy) -> dict | None:
    """The phase's latest checkpoint restored (None: none, or --restart removed them)."""
    if config.restart and distribute.worker_role(strategy).is_chief:
        store.remove()
    # No worker restores before the chief has removed them.
    distribute.barrier(strategy, timeout=config.collective_timeout)
    resume = store.restore_latest()
    if resume is not None:
        logging.warning(
            "Resuming from the checkpoint in %s (%s): %d of %d epochs done, step %d of the next",
            store.directory,
            "fine-tuning" if phase.name == FINE_TUNE else "the head",
            resume["epoch"],
            phase.epochs,
            resume["step"],
        )
    return resume


def _schedule(config, phase: Phase, rate: float, arrays: dict, strategy):
    """The phase's learning rate: constant for the head; for fine-tuning, a cosine decay to 0
    over the phase's steps, so the last epochs move the weights least and the result does not
    hang on one epoch's noise (the optimizer's step count is in its checkpoint, so a resumed
    run continues the schedule where it stopped)."""
    if phase.name != FINE_TUNE:
        return rate
    batching = train_input.Batching(
        count=len(arrays["train"][1]),
        batch_size=config.batch_size,
        replicas=strategy.num_replicas_in_sync,
    )
    return keras.optimizers.schedules.CosineDecay(
        rate, decay_steps=phase.epochs * batching.num_batches
    )


def _fit_loop(
    config, trainable, *, arrays, phase, strategy, throughput, resume, store, stop, heartbeat
):
    """`loop.fit` with the job's settings."""
    validation = "validation" if "validation" in arrays else "test"
    on_images = phase.name != "features"
    return loop.fit(
        trainable,
        examples=arrays["train"][0],
        labels=arrays["train"][1],
        validation=arrays[validation],
        test=arrays["test"],
        epochs=phase.epochs,
        batch_size=config.batch_size,
        strategy=strategy,
        shuffle_buffer_size=config.data.shuffle_buffer_size,
        seed=config.data.seed,
        callbacks=[throughput],
        verbose=config.verbose != 0,
        # Images: one step per call, so a stop request is answered after the current step.
        steps_per_call=1 if on_images else 0,
        # Images are evaluated in training-size batches; features in large ones (tiny rows).
        evaluation_batch_size=config.batch_size if on_images else loop.EVALUATION_SLICE,
        checkpointing=loop.Checkpointing(
            resume=resume,
            save=store.save if store is not None else None,
            every_steps=config.checkpoint_every_steps,
            stop=stop,
            heartbeat=heartbeat,
        ),
        augmentation=phase.augmentation,
        fault_name="fine_tune" if phase.name == FINE_TUNE else "train",
    )


def _watch_workers(strategy: tf.distribute.Strategy, timeout: float):
    """Under several workers, a watchdog that stops this process when the cluster stalls."""
    role = distribute.worker_role(strategy)
    if role.count <= 1:
        return contextlib.nullcontext(None)

    def stalled():
        # Blocked in a collective: no exception will come, so stop here. Every file is written
        # atomically, so nothing is left half-written.
        logging.error(
            "%s",
            distribute.lost_worker_message(
                role,
                f"no step finished for {timeout:.0f} s, --collective_timeout",
                hint=RESTART_HINT,
            ),
        )
        stopping.exit_now(2)

    return distribute.Watchdog(timeout, stalled)


def underfit_guard(config, splits, trainable, head: PhaseResult, *, arrays, strategy):
    """The underfit guard after the head: a warning naming the figures and the finder's rate
    (the finder runs now, from the trained head, when it has not run already)."""
    history = head.training.history
    num_classes = len(splits.class_names)
    finding = head.finding
    if not underfit_warning(
        history, num_classes=num_classes, learning_rate=head.learning_rate, suggested=None
    ):
        return finding, ""
    if finding is None:
        finding = find_rate(config, trainable, arrays=arrays, strategy=strategy)
    warning = underfit_warning(
        history,
        num_classes=num_classes,
        learning_rate=head.learning_rate,
        suggested=finding.suggested,
    )
    logging.warning("%s", warning)
    return finding, warning


def head_phase(config: TrainConfig, mode: str) -> Phase:
    """The head's phase: on features ("features") or on the stored images ("images")."""
    return Phase(
        name=mode,
        epochs=config.epochs,
        optimizer=config.optimizer,
        given_rate=config.learning_rate,
        augmentation=config.augment if mode == "images" else NO_AUGMENTATION,
    )


def fine_tune_phase(config: TrainConfig, classifier: keras.Model) -> tuple[Phase, tuple]:
    """Unfreezes the backbone's last blocks (BatchNorm kept frozen) and returns the
    fine-tuning phase with the layers it trains."""
    layers = model.unfreeze_top(classifier, config.fine_tune_layers)
    parameters = model.count_parameters(classifier)
    logging.info(
        "Fine-tuning: --fine_tune_layers=%d rounded to whole MobileNet blocks: %s trained with "
        "the head (%d trainable parameters; BatchNorm frozen), %s %.3g, %d epochs%s.",
        config.fine_tune_layers,
        ", ".join(layers),
        parameters["trainable"],
        config.fine_tune_optimizer,
        config.fine_tune_learning_rate,
        config.fine_tune_epochs,
        f", --augment={config.augment.spec()}" if config.augment else "",
    )
    phase = Phase(
        name=FINE_TUNE,
        epochs=config.fine_tune_epochs,
        optimizer=config.fine_tune_optimizer,
        given_rate=config.fine_tune_learning_rate,
        augmentation=config.augment,
        epoch_offset=config.epochs,
    )
    return phase, layers


def underfit_warning(
    history: dict, *, num_classes: int, learning_rate: float, suggested: float | None
) -> str:
    """The guard: a warning when the head's last epoch is below 2x chance accuracy, or its loss
    above 0.9 x ln(classes) (near a uniform guess); "" when it learnt.

    Uses the validation figures where there are any, else the training figures.
    """
    prefix = "val_" if history.get("val_accuracy") else ""
    accuracy = history[f"{prefix}accuracy"][-1]
    loss = history[f"{prefix}loss"][-1]
    chance = 1.0 / num_classes
    uniform = math.log(num_classes)
    if accuracy >= 2 * chance and loss <= 0.9 * uniform:
        return ""
    which = "validation" if prefix else "training"
    advice = (
        f"the learning-rate finder suggests {suggested:.3g} (--learning_rate=auto uses it)"
        if suggested is not None
        else "try --learning_rate=auto"
    )
    return (
        f"The head looks underfit: after {len(history[f'{prefix}accuracy'])} epochs its "
        f"{which} accuracy is {accuracy:.4f} (chance {chance:.4f}, 2x chance {2 * chance:.4f}) "
        f"and its {which} loss {loss:.4f} (a uniform guess: ln {num_classes} = {uniform:.4f}) "
        f"at learning rate {learning_rate:.3g}: {advice}."
    )


# A learning-rate range test (fastai's `lr_find`) and the underfit guard of the head.
#
# The range test trains the model from its current weights for up to STEPS steps through the
# training input pipeline, the learning rate rising geometrically from START to END, and
# records each step's training loss, smoothed as fastai smooths it (an exponential moving
# average, beta 0.98, debiased). It stops early once the smoothed loss passes 4x its minimum
# (the rate is too high), and puts the model's weights back. On stored features the test takes
# seconds.
#
# The suggestion is fastai's "valley" rule: the longest stretch of the curve over which the loss
# keeps falling (the longest decreasing subsequence of the smoothed losses, the first tenth and
# last five points left out), and the rate half way along it (a third plus a sixth): a rate
# where the loss falls fast and is still far from diverging.
#
# Under several workers every worker runs the same test: each step's loss is summed over all
# replicas, so all of them see the same curve and pick the same rate.

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


def _sweep(compiled, iterator, optimizer, schedule: list[float], batching) -> tuple[list, list]:
    """One training step at each rate of `schedule`: the rates reached and the smoothed,
    bias-corrected loss at each; stops where the loss is not finite or diverges."""
    rates, smoothed = [], []
    average, best = 0.0, math.inf
    for step, rate in enumerate(schedule):
        optimizer.learning_rate.assign(rate)
        position = step % batching.num_batches
        real = min(batching.batch_size, batching.count - position * batching.batch_size)
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
    return rates, smoothed


def range_test(
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
    schedule = [start * (end / start) ** (step / max(steps - 1, 1)) for step in range(steps)]
    try:
        rates, smoothed = _sweep(compiled, iterator, model.optimizer, schedule, batching)
    finally:
        model.set_weights(saved)
        model.optimizer.learning_rate.assign(initial_rate)
    index = valley(smoothed)
    return Finding(tuple(rates), tuple(smoothed), suggested=rates[index], suggested_step=index)


# Checkpoints of long jobs: written atomically, the last K kept, refused when stale.
#
# A checkpoint is a folder `<directory>/ckpt-<n>` holding `variables.*` (a
# `tf.train.Checkpoint` of the model and its optimizer) and `state.json` (where the job is,
# and the run fingerprint: the flags and data it was made with). It is written to a temporary
# folder and renamed into place (`files.atomic_directory`), so a killed job leaves either the
# old checkpoints or the new one complete. A rerun whose fingerprint differs is refused with a
# message naming what changed and the way out (`--restart`).

FORMAT_VERSION = 1
STATE_FILE = "state.json"
VARIABLES = "variables"
_NAME = re.compile(r"^ckpt-(\d+)$")


def describe_changes(saved: dict, current: dict) -> list[str]:
    """`--name (saved value, now value)` for every key whose value differs."""
    changes = []
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            label = key if key.startswith("data ") else f"--{key}"
            changes.append(f"{label} ({saved.get(key, 'unset')}, now {current.get(key, 'unset')})")
    return changes


def run_fingerprint(
    config,
    splits,
    *,
    phase,
    strategy: tf.distribute.Strategy,
    start_digest: str,
) -> dict:
    """What a training phase's checkpoint must have been made with to be resumed: flags (by
    flag name), the weights it started from, and the data. `phase`: a `Phase`, `splits`:
    the job's `loading.Splits`, `config`: its TrainConfig."""
    fingerprint = {
        "mode": phase.name,
        "image_size": config.data.image_size,
        "alpha": config.model.alpha,
        "weights": f"{config.model.weights} (start digest {start_digest})",
        "dropout": config.model.dropout,
        "batch_size": config.batch_size,
        "epochs": phase.epochs,
        "learning_rate": phase.given_rate,
        "optimizer": phase.optimizer,
        "augment": phase.augmentation.spec(),
        "fine_tune_layers": config.fine_tune_layers if phase.name == "fine_tune" else 0,
        "seed": config.data.seed,
        "shuffle_buffer": config.data.shuffle_buffer_size,
        "feature_dtype": config.feature_dtype if phase.name == "features" else "",
        "deterministic": config.deterministic,
        "strategy": f"{distribute.describe(strategy)}, {strategy.num_replicas_in_sync} replica(s)",
    }
    for name, folder in splits.named().items():
        fingerprint[f"data {name}"] = folder.fingerprint
    return fingerprint


class Checkpoints:
    """The checkpoints of one job in one folder.

    Args:
      directory: Where the `ckpt-<n>` folders go.
      objects: What to save and restore (e.g. model=..., optimizer=...): trackable objects.
      run_fingerprint: The flags and data fingerprints a resumable run must match (JSON-able).
      keep: How many of the most recent checkpoints to keep.
    """

    def __init__(self, directory: str, *, objects: dict, run_fingerprint: dict, keep: int = 1):
        if keep < 1:
            raise UserInputError(f"keep_checkpoints must be >= 1, got {keep}.")
        self.directory = directory
        self.objects = objects
        self.run_fingerprint = json.loads(json.dumps(run_fingerprint))
        self.keep = keep

    def _numbers(self) -> list[int]:
        if not os.path.isdir(self.directory):
            return []
        found = []
        for name in os.listdir(self.directory):
            match = _NAME.match(name)
            if match and os.path.isfile(os.path.join(self.directory, name, STATE_FILE)):
                found.append(int(match.group(1)))
        return sorted(found)

    def _path(self, number: int) -> str:
        return os.path.join(self.directory, f"ckpt-{number:06d}")

    def restore_latest(self) -> dict | None:
        """Restores the newest checkpoint into the objects; returns its job state, or None.

        Raises:
          UserInputError: The checkpoint was made with other flags or data (named), or it is
            unreadable.
        """
        numbers = self._numbers()
        if not numbers:
            return None
        path = self._path(numbers[-1])
        saved = _read_state(os.path.join(path, STATE_FILE))
        changes = describe_changes(saved.get("run", {}), self.run_fingerprint)
        if changes:
            raise UserInputError(
                f"The checkpoint in '{path}' was made with other settings: {'; '.join(changes)}. "
                "Rerun with the same flags and data to resume, or pass --restart to start again "
                "(the checkpoints are then removed)."
            )
        try:
            status = tf.train.Checkpoint(**self.objects).read(os.path.join(path, VARIABLES))
            status.assert_existing_objects_matched()
        except (tf.errors.OpError, AssertionError, ValueError) as error:
            raise UserInputError(
                f"The checkpoint '{path}' cannot be restored ({str(error).splitlines()[0][:200]}); "
                "pass --restart to start again."
            ) from None
        logging.info("Restored the checkpoint %s", path)
        return saved["state"]

    def save(self, state: dict) -> str:
        """Writes a new checkpoint with the objects' current values and `state`; prunes old ones."""
        numbers = self._numbers()
        path = self._path((numbers[-1] + 1) if numbers else 0)
        # The new checkpoint is written beside the old ones, then they are pruned.
        files.check_free_space(
            self.directory,
            model.variable_bytes(*self.objects.values()) + (1 << 20),
            f"a checkpoint ({os.path.basename(path)})",
        )
        with files.atomic_directory(path) as temporary:
            tf.train.Checkpoint(**self.objects).write(os.path.join(temporary, VARIABLES))
            files.write_json(
                os.path.join(temporary, STATE_FILE),
                {"format_version": FORMAT_VERSION, "run": self.run_fingerprint, "state": state},
            )
        for old in self._numbers()[: -self.keep]:
            shutil.rmtree(self._path(old), ignore_errors=True)
        return path

    def remove(self) -> None:
        """Removes every checkpoint (and the folder, when nothing else is in it)."""
        for number in self._numbers():
            shutil.rmtree(self._path(number), ignore_errors=True)
        if os.path.isdir(self.directory):
            leftovers = [n for n in os.listdir(self.directory) if n.startswith(".ckpt-")]
            for name in leftovers:  # Temporary folders of a killed save.
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
            if not os.listdir(self.directory):
                os.rmdir(self.directory)


def _read_state(path: str) -> dict:
    """A checkpoint's state file, or one paragraph saying it is damaged and what to do."""
    try:
        with open(path, encoding="utf-8") as stream:
            saved = json.load(stream)
        if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
            raise ValueError("it does not hold the job's state")
        return saved
    except (OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0][:200]
        raise UserInputError(
            f"The checkpoint's state file '{path}' is damaged or unreadable ({reason}), so it "
            "cannot say where the job stopped. Pass --restart to start again (the checkpoints "
            f"are removed), or remove the folder '{os.path.dirname(path)}' to resume from an "
            "older checkpoint if --keep_checkpoints kept one."
        ) from None
