"""Runs a command and reports its peak anonymous and file-backed resident memory, and its time.

Usage: python tools/peak_memory.py [--interval=0.02] -- COMMAND [ARGS...]

The kernel keeps a peak of the whole resident set (VmHWM), which counts the file pages a
process maps: a memory-mapped store read through the page cache would count as the process's
own, though the kernel reclaims those pages as it needs. So this samples /proc/<pid>/status
every `interval` seconds and keeps the peaks of RssAnon (memory only the process holds) and
RssFile (mapped file pages) apart, with VmHWM beside them. A spike shorter than the interval
can be missed; the command's exit code is passed on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def _status(pid: int) -> dict[str, int]:
    """The process's memory fields in bytes (kB in /proc)."""
    values = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as stream:
            for line in stream:
                name, _, rest = line.partition(":")
                if name in ("RssAnon", "RssFile", "VmHWM", "VmRSS"):
                    values[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    start = time.perf_counter()
    process = subprocess.Popen(command)
    peaks = {"RssAnon": 0, "RssFile": 0, "VmHWM": 0, "VmRSS": 0}
    while process.poll() is None:
        for name, value in _status(process.pid).items():
            peaks[name] = max(peaks[name], value)
        time.sleep(args.interval)
    report = {
        "seconds": round(time.perf_counter() - start, 2),
        "exit_code": process.returncode,
        **{f"peak_{name}_mb": round(value / 2**20, 1) for name, value in peaks.items()},
    }
    print(json.dumps(report), file=sys.stderr)
    return process.returncode


if __name__ == "__main__":
    sys.exit(main())
