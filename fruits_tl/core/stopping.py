"""How a long job stops: gracefully on SIGINT and SIGTERM, even while TensorFlow blocks; at
once (`exit_now`); or, in the kill tests, at a fault point the test names (`point`, below).

Inside `GracefulStop()`, the first SIGINT or SIGTERM only sets a flag: the job finishes the
step it is in, writes a checkpoint, and raises `StopRequested`, which the binaries turn into
one line saying how to resume and the conventional exit code (130 for SIGINT, 143 for
SIGTERM). A second signal stops the process at once with the same code; every file the
package writes is written atomically, so nothing is left half-written either way.

Python runs signal handlers only in the main thread, between bytecodes: a main thread blocked
inside TensorFlow's C++ (waiting on a dead tf.data service worker or a dead peer's
collective) would never see the signal. So the signals are also written to a pipe
(`signal.set_wakeup_fd`, which the interpreter's C-level handler writes whichever thread the
kernel delivers the signal to), and a thread reads it: the first signal sets the flag at
once, and if the job has not stopped `grace_seconds` later (it is blocked), the thread ends
the process with the conventional code and one line saying so; the second signal ends it at
once. `exit_now` is that exit, for any thread: it writes its message and calls `os._exit`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Seconds a job has, after the first signal, to reach a point where it saves and stops.
GRACE_SECONDS = 10.0


def exit_now(code: int, message: str = "") -> None:
    """Writes `message` to stderr and ends the process at once (`os._exit`)."""
    if message:
        print(message, file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(code)


class StopRequested(Exception):
    """A job stopped on a signal after saving its work.

    Attributes:
      signal_number: The signal that asked for the stop.
      exit_code: 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, message: str, *, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number
        self.exit_code = 128 + signal_number


class GracefulStop:
    """Context manager: the first SIGINT/SIGTERM is a request, the second stops at once.

    Outside the main thread (where Python cannot install handlers) it does nothing, and
    `requested` stays None.

    Attributes:
      requested: The signal number of the first request, or None.
    """

    def __init__(self, *, grace_seconds: float = GRACE_SECONDS):
        self.requested: int | None = None
        self.grace_seconds = grace_seconds
        self._handled = 0
        self._handled_in_main = threading.Event()
        self._active = False
        self._previous: dict = {}
        self._previous_wakeup = -1
        self._pipe: tuple[int, int] | None = None
        self._timer: threading.Timer | None = None

    def _handle(self, signal_number, frame):
        # Runs in the main thread when it is free; the reader thread sees the same signals
        # through the wakeup pipe. Each counts them itself: whichever sees the second first
        # stops the process.
        del frame
        self._handled += 1
        if self._handled > 1:  # The second signal: stop now.
            exit_now(
                128 + signal_number, f"{signal.Signals(signal_number).name} again: stopped at once."
            )
        if self.requested is None:
            self.requested = signal_number
        # Said here, in order with the job's own lines; the reader says it only when the
        # main thread is blocked and this handler does not run.
        self._notice(signal_number)
        self._handled_in_main.set()

    def _notice(self, number: int) -> None:
        with contextlib.suppress(RuntimeError):  # A print the signal interrupted: skip it.
            print(
                f"{signal.Signals(number).name}: stopping after the current step, with a "
                "checkpoint (a second signal stops at once).",
                file=sys.stderr,
                flush=True,
            )

    def _read_signals(self, read_end: int) -> None:
        seen = 0
        while True:
            try:
                data = os.read(read_end, 64)
            except OSError:
                data = b""
            if not data:
                os.close(read_end)
                return
            for number in data:
                if number not in SIGNALS:
                    continue
                seen += 1
                name = signal.Signals(number).name
                if seen == 1:
                    if self.requested is None:
                        self.requested = number
                    self._timer = threading.Timer(self.grace_seconds, self._give_up, (number,))
                    self._timer.daemon = True
                    self._timer.start()
                    if not self._handled_in_main.wait(1.0):
                        self._notice(number)
                else:
                    exit_now(128 + number, f"{name} again: stopped at once.")

    def _give_up(self, number: int) -> None:
        if not self._active:  # The job left the block: it stopped, or goes on outside it.
            return
        name = signal.Signals(number).name
        exit_now(
            128 + number,
            f"stopped on {name}: the job did not reach a point where it could save within "
            f"{self.grace_seconds:.0f} s: it is blocked inside TensorFlow (a lost worker, "
            "tf.data service worker or dispatcher?). What was saved before is kept: rerun the "
            "same command to resume.",
        )

    def __enter__(self) -> GracefulStop:
        self._active = True
        if threading.current_thread() is threading.main_thread():
            for number in SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
            read_end, write_end = os.pipe()
            os.set_blocking(write_end, False)
            self._pipe = (read_end, write_end)
            self._previous_wakeup = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
            threading.Thread(
                target=self._read_signals, args=(read_end,), name="fruits-tl-signals", daemon=True
            ).start()
        return self

    def __exit__(self, *exc) -> None:
        self._active = False
        if self._pipe is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
            os.close(self._pipe[1])  # The reader sees the end of the pipe and returns.
            self._pipe = None
        if self._timer is not None:
            self._timer.cancel()
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def check(self, resume_hint: str) -> None:
        """Raises StopRequested (with `resume_hint`) if a stop was asked for."""
        if self.requested is not None:
            name = signal.Signals(self.requested).name
            raise StopRequested(f"stopped on {name}: {resume_hint}", signal_number=self.requested)


# A documented fault-injection hook, so that kill tests happen at a point the test controls.
#
# Long jobs call `point(name)` at the places where being killed matters (after a chunk of a
# store is written, after a training step). When the environment variable FRUITS_TL_KILL_AT
# names that point, the process sends itself SIGKILL (or the signal FRUITS_TL_KILL_SIGNAL
# names, e.g. SIGTERM) right there: no sleeps, no polling races. With FRUITS_TL_KILL_PID set,
# the signal goes to that process instead, which must be a sibling (a process started by the
# same parent: a test kills a tf.data service worker at the moment the job starts waiting on
# it). The environment is read once per process; unset, a point costs one call and one
# comparison.
#
# Points:
# - `train:calling:<epoch>:<step>`: the call that runs training step `step` (from 1) of epoch
#   `epoch` (from 0) is about to start (a test stops a worker there, so that a signal finds it
#   blocked inside that step);
# - `train:step:<epoch>:<step>`: training step `step` (from 1) of epoch `epoch` (from 0) is done
#   (the checkpoint due at that step, if any, not yet written);
# - `fine_tune:calling:<epoch>:<step>`, `fine_tune:step:<epoch>:<step>`: the same points in the
#   fine-tuning phase (its epochs counted from 0 again);
# - `bench:measured:<variant>:<repeat>`: a benchmark variant's repeat is measured;
# - `evaluate:predicted`: under several workers, this worker's shard is predicted (not yet
#   exchanged with the others);
# - `data_service:decode`: a split is about to be decoded on the tf.data service (the client
#   then waits on the service's workers);
# - `data_service:received:<split>`: the first batch of a split's images came from the service
#   (a test kills the dispatcher there, mid-job);
# - `store:chunk:<name>:<k>`: chunk k (from 1) of a stored array is written (its marker too;
#   the manifest not yet), e.g. `store:chunk:train.pixels:1`, `store:chunk:train.features:2`.

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
