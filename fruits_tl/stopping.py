"""Graceful stop of long jobs on SIGINT and SIGTERM.

Inside `GracefulStop()`, the first SIGINT or SIGTERM only sets a flag: the job finishes the
step it is in, writes a checkpoint, and raises `StopRequested`, which the binaries turn into
one line saying how to resume and the conventional exit code (130 for SIGINT, 143 for
SIGTERM). A second signal stops the process at once with the same code; every file the
package writes is written atomically, so nothing is left half-written either way.
"""

from __future__ import annotations

import os
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


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

    def __init__(self):
        self.requested: int | None = None
        self._previous: dict = {}

    def _handle(self, signal_number, frame):
        if self.requested is not None:
            os._exit(128 + signal_number)  # The second signal: stop now.
        self.requested = signal_number

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for number in SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def check(self, resume_hint: str) -> None:
        """Raises StopRequested (with `resume_hint`) if a stop was asked for."""
        if self.requested is not None:
            name = signal.Signals(self.requested).name
            raise StopRequested(f"stopped on {name}: {resume_hint}", signal_number=self.requested)
