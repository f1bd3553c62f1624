"""Progress of long passes over many images: done, total, rate and time left.

On a terminal the line is redrawn in place (at most a few times a second); in a log (stderr
not a TTY) one line is written per tenth of the work, so a 10-minute extraction leaves ten
lines, not thousands. The clock is a parameter, so tests check the arithmetic with a fake one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

REDRAW_SECONDS = 0.2


def format_seconds(seconds: float) -> str:
    """`42 s`, `3 min 05 s`, `1 h 02 min`."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Counts images through a pass and reports them.

    Attributes:
      done: Images counted so far.
    """

    def __init__(
        self,
        total: int,
        *,
        label: str,
        stream: TextIO | None = None,
        interactive: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        enabled: bool = True,
    ):
        self.total = max(int(total), 0)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.clock = clock
        self.enabled = enabled and self.total > 0
        self.done = 0
        self._start = clock()
        self._last_draw = -float("inf")
        self._next_tenth = 1

    def line(self) -> str:
        """`<label>: 300/1,000 images (30%), 150 images/s, 4 s left`."""
        elapsed = max(self.clock() - self._start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = format_seconds(left) + " left" if left != float("inf") else "time left unknown"
        if self.done >= self.total:
            eta = f"done in {format_seconds(elapsed)}"
        percent = 100 * self.done // self.total if self.total else 100
        counts = f"{self.done:,}/{self.total:,} images ({percent}%)"
        return f"{self.label}: {counts}, {rate:,.0f} images/s, {eta}"

    def add(self, count: int) -> None:
        """Counts `count` more images and reports when it is time to."""
        self.done = (
            min(self.done + int(count), self.total) if self.total else self.done + int(count)
        )
        if not self.enabled:
            return
        if self.interactive:
            now = self.clock()
            if now - self._last_draw >= REDRAW_SECONDS or self.done >= self.total:
                self._last_draw = now
                self.stream.write("\r" + self.line())
                if self.done >= self.total:
                    self.stream.write("\n")
                self.stream.flush()
            return
        tenths = 10 * self.done // self.total
        if tenths >= self._next_tenth:
            self._next_tenth = tenths + 1
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def finish(self) -> None:
        """Counts whatever is left (files a pass skipped, such as undecodable ones) as done."""
        if self.done < self.total:
            self.add(self.total - self.done)
