"""Checkpoints of long jobs: written atomically, the last K kept, refused when stale.

A checkpoint is a folder `<directory>/ckpt-<n>` holding `variables.*` (a
`tf.train.Checkpoint` of the model and its optimizer) and `state.json` (where the job is,
and the run fingerprint: the flags and data it was made with). It is written to a temporary
folder and renamed into place (`files.atomic_directory`), so a killed job leaves either the
old checkpoints or the new one complete. A rerun whose fingerprint differs is refused with a
message naming what changed and the way out (`--restart`).
"""

from __future__ import annotations

import json
import os
import re
import shutil

import tensorflow as tf
from absl import logging

from fruits_tl.core import distribute, files
from fruits_tl.core.errors import UserInputError
from fruits_tl.models import model

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
    flag name), the weights it started from, and the data. `phase`: a `phase.Phase`, `splits`:
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
