"""A documented fault-injection hook, so that kill tests happen at a point the test controls.

Long jobs call `point(name)` at the places where being killed matters (after a split's
features are saved, after a training step). When the environment variable FRUITS_TL_KILL_AT
names that point, the process sends itself SIGKILL (or the signal FRUITS_TL_KILL_SIGNAL
names, e.g. SIGTERM) right there: no sleeps, no polling races. Unset, a point costs one
dictionary lookup.

Points: `extraction:saved:<split>` (a split's .npz is written, the fingerprint not yet).
"""

from __future__ import annotations

import os
import signal

KILL_AT = "FRUITS_TL_KILL_AT"
KILL_SIGNAL = "FRUITS_TL_KILL_SIGNAL"


def point(name: str) -> None:
    """Kills this process with the configured signal if FRUITS_TL_KILL_AT equals `name`."""
    if os.environ.get(KILL_AT) == name:
        os.kill(os.getpid(), getattr(signal, os.environ.get(KILL_SIGNAL, "SIGKILL")))
