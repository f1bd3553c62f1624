"""Progress lines: one per tenth in a log, redrawn in place on a terminal, with a fake clock."""

from __future__ import annotations

import io

from conftest import FakeClock

from fruits_tl.core import progress


def test_a_log_gets_one_line_per_tenth_with_rate_and_time_left():
    clock, stream = FakeClock(), io.StringIO()
    counter = progress.Progress(
        1000, label="decode check", stream=stream, interactive=False, clock=clock
    )
    for _ in range(40):  # 40 batches of 25 images, 0.5 s each: 50 images/s.
        clock.now += 0.5
        counter.add(25)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[0] == "decode check: 100/1,000 images (10%), 50 images/s, 18 s left"
    assert lines[4] == "decode check: 500/1,000 images (50%), 50 images/s, 10 s left"
    assert lines[-1] == "decode check: 1,000/1,000 images (100%), 50 images/s, done in 20 s"


def test_a_terminal_line_is_redrawn_at_most_five_times_a_second():
    clock, stream = FakeClock(), io.StringIO()
    counter = progress.Progress(100, label="extract", stream=stream, interactive=True, clock=clock)
    for _ in range(100):
        clock.now += 0.01  # 1 s in all: at most 5 redraws plus the final one.
        counter.add(1)
    text = stream.getvalue()
    assert 5 <= text.count("\r") <= 6 and text.endswith("done in 1 s\n")
    assert "extract: 100/100 images (100%), 100 images/s" in text


def test_format_seconds():
    assert progress.format_seconds(42) == "42 s"
    assert progress.format_seconds(185) == "3 min 05 s"
    assert progress.format_seconds(3720) == "1 h 02 min"
