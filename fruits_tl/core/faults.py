"""A documented fault-injection hook, so that kill tests happen at a point the test controls.

Long jobs call `point(name)` at the places where being killed matters (after a chunk of a
store is written, after a training step). When the environment variable FRUITS_TL_KILL_AT
names that point, the process sends itself SIGKILL (or the signal FRUITS_TL_KILL_SIGNAL
names, e.g. SIGTERM) right there: no sleeps, no polling races. With FRUITS_TL_KILL_PID set,
the signal goes to that process instead, which must be a sibling (a process started by the
same parent: a test kills a tf.data service worker at the moment the job starts waiting on
it). The environment is read once per process; unset, a point costs one call and one
comparison.

Points:
- `train:calling:<epoch>:<step>`: the call that runs training step `step` (from 1) of epoch
  `epoch` (from 0) is about to start (a test stops a worker there, so that a signal finds it
  blocked inside that step);
- `train:step:<epoch>:<step>`: training step `step` (from 1) of epoch `epoch` (from 0) is done
  (the checkpoint due at that step, if any, not yet written);
- `fine_tune:calling:<epoch>:<step>`, `fine_tune:step:<epoch>:<step>`: the same points in the
  fine-tuning phase (its epochs counted from 0 again);
- `bench:measured:<variant>:<repeat>`: a benchmark variant's repeat is measured;
- `evaluate:predicted`: under several workers, this worker's shard is predicted (not yet
  exchanged with the others);
- `data_service:decode`: a split is about to be decoded on the tf.data service (the client
  then waits on the service's workers);
- `data_service:received:<split>`: the first batch of a split's images came from the service
  (a test kills the dispatcher there, mid-job);
- `store:chunk:<name>:<k>`: chunk k (from 1) of a stored array is written (its marker too;
  the manifest not yet), e.g. `store:chunk:train.pixels:1`, `store:chunk:train.features:2`.
"""

from __future__ import annotations

import functools
import os
import signal

KILL_AT = "FRUITS_TL_KILL_AT"
KILL_SIGNAL = "FRUITS_TL_KILL_SIGNAL"
KILL_PID = "FRUITS_TL_KILL_PID"


@functools.cache
def _armed() -> tuple[str, int, signal.Signals] | None:
    """(point, target pid, signal) from the environment, read once per process; None unset."""
    name = os.environ.get(KILL_AT)
    if not name:
        return None
    target = int(os.environ.get(KILL_PID) or os.getpid())
    return name, target, getattr(signal, os.environ.get(KILL_SIGNAL, "SIGKILL"))


def _parent_of(pid: int) -> int:
    """The parent of process `pid` (Linux's /proc; -1 where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stream:
            return int(stream.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def point(name: str) -> None:
    """Signals this process (or its sibling FRUITS_TL_KILL_PID) if FRUITS_TL_KILL_AT is `name`.

    The hook reaches only this process or a process started by the same parent (a test's
    other worker or server): a binary never signals an arbitrary process id it is given.
    """
    armed = _armed()
    if armed is None or armed[0] != name:
        return
    _, target, kill_signal = armed
    if target != os.getpid() and _parent_of(target) != os.getppid():
        raise RuntimeError(
            f"{KILL_PID}={target} names a process that is not a sibling of this one: the fault "
            "hook signals only itself or a process started by the same parent."
        )
    os.kill(target, kill_signal)
