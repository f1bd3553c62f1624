"""TF_CPP_MIN_LOG_LEVEL for the C++ log lines TensorFlow 2.21 prints before its logging starts.

TensorFlow sets up its C++ logging (absl) only after importing and probing devices, and the
lines it writes before that ("Could not find cuda drivers", the oneDNN notice, cuInit
errors, absl's "All log messages before absl::InitializeLog() ..." preamble) ignore
TF_CPP_MIN_LOG_LEVEL (tensorflow/tensorflow#100442, open). The binaries therefore import
TensorFlow and list its devices with file descriptor 2 routed through a pipe that drops those
lines below the level TF_CPP_MIN_LOG_LEVEL asks for (0 shows everything: I, W, E lines; 2
drops I and W; 3, the binaries' default, drops E too), and only then: once TensorFlow's logging
has started, its lines honour the level themselves, so the job runs on the real descriptor 2,
with no pipe and no thread (a message written just before `os._exit` cannot be lost in a pipe).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading

# absl's C++ log prefix as it is before absl's logging is initialised: the date and clock are
# not set yet ("0000 00:00:<seconds since the epoch>"). Lines logged later carry a real date
# and honour TF_CPP_MIN_LOG_LEVEL themselves; absl's Python logging (the package's own
# warnings) uses the same prefix with a real date, so those lines always pass.
NATIVE_LINE = re.compile(r"^([IWEF])0000 00:00:\d+\.\d+\s+\d+ \S+:\d+\] ")
PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}


def hidden(line: str, level: int) -> bool:
    """Whether TF_CPP_MIN_LOG_LEVEL=`level` hides this stderr line."""
    match = NATIVE_LINE.match(line)
    if match:
        return SEVERITY[match.group(1)] < level
    if line.startswith(PREAMBLE):
        return level >= 2  # It is a warning.
    return False


def min_log_level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


@contextlib.contextmanager
def filtered_stderr():
    """Within the block, file descriptor 2 goes through a pipe whose reader drops the hidden
    lines; when the block ends, descriptor 2 is the original stream again and the reader has
    forwarded everything and finished: no pipe or thread outlives the block."""
    level = min_log_level()
    if level <= 0:
        yield
        return
    read_end, write_end = os.pipe()
    original = os.dup(2)
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward():
        with os.fdopen(read_end, "rb") as lines:
            for raw in lines:
                if not hidden(raw.decode("utf-8", "replace"), level):
                    os.write(original, raw)

    thread = threading.Thread(target=forward, name="native-log-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # Closes the pipe's only write end: the reader sees its end.
        thread.join()
        os.close(original)


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow and lists its devices (where its early, unfilterable C++ lines are
    printed) with those lines dropped below TF_CPP_MIN_LOG_LEVEL."""
    with filtered_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()
