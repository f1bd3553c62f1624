"""One training phase: its recipe, its learning rate (the finder's where asked), its
checkpoints (resumed when a rerun matches them), and `loop.fit` under the strategy.

A job runs a list of phases: the head (on features or on the stored images), then, where
asked, fine-tuning (`FINE_TUNE`) of the backbone's last blocks with the head.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from typing import TYPE_CHECKING

import keras
import tensorflow as tf
from absl import logging

from fruits_tl.core import distribute, stopping
from fruits_tl.core.config import NO_AUGMENTATION, Augmentation, TrainConfig
from fruits_tl.data import loading, train_input
from fruits_tl.models import model
from fruits_tl.training import checkpoints, loop

if TYPE_CHECKING:
    from fruits_tl.training import lr_finder

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
    finding: lr_finder.Finding | None
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
    store: checkpoints.Checkpoints
    learning_rate: float
    finding: lr_finder.Finding | None


def find_rate(config, trainable, *, arrays, strategy) -> lr_finder.Finding:
    """The range test on the training examples, from `trainable`'s current weights."""
    from fruits_tl.training import lr_finder  # Only where the finder runs.

    start = time.perf_counter()
    finding = lr_finder.find(
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
    store = checkpoints.Checkpoints(
        os.path.join(config.resolved_checkpoint_dir(), phase.name),
        objects={"model": trainable, "optimizer": trainable.optimizer},
        run_fingerprint=checkpoints.run_fingerprint(
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
        from fruits_tl.training import lr_finder

        with strategy.scope():  # The finder's own optimizer; it sets the rate of every step.
            model.compile_classifier(
                trainable,
                optimizer=phase.optimizer,
                learning_rate=lr_finder.START,
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


def _resume(config, store: checkpoints.Checkpoints, *, phase: Phase, strategy) -> dict | None:
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
