"""The mode comparison (fruits-tl-bench --compare_modes): the same training recipe end to end
with --mode=images and with --mode=features, side by side.

Each run is a separate `fruits-tl-train` process, started here as `python -m
fruits_tl.cli.train_main` with flags made from the TrainConfig, as a user would run two
commands: in one process the images run's live caches and iterators slowed the features
run's extraction (BENCHMARKS.md section 7). End to end means the job's
`total_seconds` from its metrics.json: data checks, (extraction,) training and the test
evaluation. Modes alternate, repeat by repeat, so each ratio is side by side.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable

from fruits_tl.core.config import TrainConfig, UserInputError, train_config_flags


@dataclasses.dataclass(frozen=True)
class ModeComparison:
    """fruits-tl-train end to end in images mode and in features mode, same recipe, one run.

    Attributes:
      images_metrics, features_metrics: metrics.json of each mode's last repeat.
      speedup: Median over repeats of images seconds / features seconds (side by side).
      speedups: Each repeat's ratio.
      accuracy_difference: features minus images test accuracy (last repeat).
    """

    images_metrics: dict
    features_metrics: dict
    speedup: float
    speedups: tuple[float, ...]
    accuracy_difference: float

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def train_flags(config: TrainConfig, *, strategy: str) -> list[str]:
    """The fruits-tl-train flags that run `config` (every TrainConfig field is a flag)."""
    return [*train_config_flags(config), f"--strategy={strategy}"]


def _train_in_a_process(config: TrainConfig, *, strategy: str) -> dict:
    command = [
        sys.executable,
        "-m",
        "fruits_tl.cli.train_main",
        *train_flags(config, strategy=strategy),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UserInputError(
            f"training in mode {config.mode} failed (exit {result.returncode}): {last}"
        )
    with open(os.path.join(config.model_dir, "metrics.json"), encoding="utf-8") as stream:
        return json.load(stream)


def compare_train_modes(
    train_config: TrainConfig,
    *,
    strategy_name: str = "auto",
    repeats: int = 1,
    log: Callable[[str], None] = print,
) -> ModeComparison:
    """Trains the same recipe in images mode and in features mode, `repeats` times each.

    Each run writes `<model_dir>/<mode>`; the features directory is fresh every time, so
    features mode pays for its extraction.
    """
    metrics: dict = {}
    ratios = []
    for repeat in range(repeats):
        seconds = {}
        for mode in ("images", "features"):
            model_dir = os.path.join(train_config.model_dir, mode)
            shutil.rmtree(os.path.join(model_dir, "features-fresh"), ignore_errors=True)
            config = dataclasses.replace(
                train_config,
                mode=mode,
                model_dir=model_dir,
                features_dir=os.path.join(model_dir, "features-fresh"),
            )
            metrics[mode] = _train_in_a_process(config, strategy=strategy_name)
            seconds[mode] = metrics[mode]["total_seconds"]
            log(
                f"repeat {repeat + 1}/{repeats} mode {mode}: {seconds[mode]:.1f} s end to end, "
                f"test accuracy {metrics[mode]['test_accuracy']:.4f}"
            )
        ratios.append(seconds["images"] / seconds["features"])
    return ModeComparison(
        images_metrics=metrics["images"],
        features_metrics=metrics["features"],
        speedup=statistics.median(ratios),
        speedups=tuple(ratios),
        accuracy_difference=metrics["features"]["test_accuracy"]
        - metrics["images"]["test_accuracy"],
    )
