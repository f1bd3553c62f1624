#!/usr/bin/env python
"""Checks fruits-tl-bench --recommend against a measured grid of the flags it chooses.

Runs the recommendation (with --verify), then fruits-tl-train cold for every configuration of
the grid: --mode (features, images) x --extract_batch_size (features mode) x
--decode_parallelism, each run `--repeats` times in turn, and prints the end-to-end times
(median), the best of the grid, the recommended configuration's place against it, and the
speed-up of following the recommendation from the poor configuration (images mode, decode
parallelism 1, extraction batch 8).

  tools/recommend_grid.py --data_dir=../shared/fruits360-sample \\
      --weights=../shared/weights/mobilenet_2_5_128_tf_no_top.h5 --alpha=0.25 \\
      --learning_rate=1e-3 --output_dir=/tmp/grid
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from fruits_tl.core.config import DataConfig, ModelConfig  # noqa: E402
from fruits_tl.jobs import recommend  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--weights", default="none")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--learning_rate", default="1e-4")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--images_repeats", type=int, default=1)
    parser.add_argument("--batches", default="8,64,256")
    args = parser.parse_args()
    os.makedirs(args.output_dir, exist_ok=True)
    bench = [
        sys.executable,
        "-m",
        "fruits_tl.cli.bench_main",
        f"--data_dir={args.data_dir}",
        "--recommend",
        "--verify",
        f"--alpha={args.alpha}",
        f"--weights={args.weights}",
        f"--learning_rate={args.learning_rate}",
        f"--epochs={args.epochs}",
        f"--output_dir={args.output_dir}",
    ]
    subprocess.run(bench, check=True)
    with open(os.path.join(args.output_dir, "recommendation.json"), encoding="utf-8") as f:
        report = json.load(f)
    chosen = recommend.Plan(
        report["recommended"]["mode"],
        report["recommended"]["extract_batch_size"],
        report["recommended"]["decode_parallelism"],
    )
    cores = report["costs"]["cores"]
    batches = sorted({*map(int, args.batches.split(",")), chosen.extract_batch_size} - {0})
    parallelisms = sorted({1, 2 * cores, chosen.decode_parallelism})
    grid = [recommend.Plan("features", b, p) for b in batches for p in parallelisms]
    grid += [recommend.Plan("images", 0, p) for p in parallelisms]
    data = DataConfig(data_dir=args.data_dir)
    model = ModelConfig(alpha=args.alpha, weights=args.weights)
    times = {plan: [] for plan in grid}
    for repeat in range(args.repeats):
        for plan in grid:
            if plan.mode == "images" and repeat >= args.images_repeats:
                continue  # Minutes a run; its gap to features mode is no close call.
            extra = (f"--learning_rate={args.learning_rate}",)
            metrics, wall = recommend.run_train(data, model, plan, epochs=args.epochs, extra=extra)
            times[plan].append(wall)
            print(f"{' '.join(plan.flags()):70s} {wall:7.1f} s  acc {metrics['test_accuracy']:.4f}")
    _summarize(times, chosen, report, args.output_dir)


def _summarize(times: dict, chosen, report: dict, output_dir: str) -> None:
    medians = {plan: statistics.median(seconds) for plan, seconds in times.items()}
    best = min(medians, key=medians.get)
    poor = recommend.Plan("images", 0, 1)
    rows = sorted(medians.items(), key=lambda item: item[1])
    print("\n| configuration | end-to-end s (median) |\n| --- | ---: |")
    for plan, seconds in rows:
        mark = " (recommended)" if plan == chosen else ""
        print(f"| `{' '.join(plan.flags())}`{mark} | {seconds:.1f} |")
    summary = {
        "grid": [{"flags": p.flags(), "seconds": times[p], "median": m} for p, m in rows],
        "best": best.flags(),
        "recommended": chosen.flags(),
        "recommended_over_best": medians[chosen] / medians[best],
        "poor": poor.flags(),
        "speedup_from_poor": medians[poor] / medians[chosen],
        "predicted_seconds": report["predicted_seconds"],
        "verified": report["verified"],
    }
    print(
        f"\nrecommended {medians[chosen]:.1f} s = {summary['recommended_over_best']:.3f} x the "
        f"best of the grid ({medians[best]:.1f} s, {' '.join(best.flags())}); "
        f"{summary['speedup_from_poor']:.1f}x faster than the poor configuration "
        f"({medians[poor]:.1f} s)"
    )
    with open(os.path.join(output_dir, "grid.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
