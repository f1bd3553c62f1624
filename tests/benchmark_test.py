"""Benchmark arithmetic with a fake clock, aggregation, verdict, and the binary end to end."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import FakeClock, run_main

from fruits_tl import benchmark
from fruits_tl.cli import bench_main, train_main


def test_time_epochs_counts_every_batch_and_times_whole_epochs():
    clock = FakeClock()
    created = []

    def make_epoch():
        created.append(clock.now)
        clock.now += 0.5  # creating the iterator costs time and is counted

        def batches():
            for size, cost in ((4, 1.0), (4, 1.0), (2, 0.5)):
                clock.now += cost
                yield np.zeros((size, 2, 2, 3)), np.zeros(size)

        return batches()

    times = benchmark.time_epochs(make_epoch, epochs=3, clock=clock)
    assert len(created) == 3
    assert times.epoch_images == (10, 10, 10)
    assert times.epoch_seconds == pytest.approx((3.0, 3.0, 3.0))
    assert times.time_to_first_batch == pytest.approx(1.5)
    assert times.images_per_second == pytest.approx((10 / 3,) * 3)


def test_summarize_separates_the_cold_epoch_and_ratios_are_side_by_side():
    run_a = benchmark.EpochTimes(0.1, (10.0, 1.0, 2.0, 1.0), (100, 100, 100, 100))
    run_b = benchmark.EpochTimes(0.1, (20.0, 2.0, 2.0, 4.0), (100, 100, 100, 100))
    result = benchmark.summarize("x", [run_a, run_b])
    assert result.first_epoch_images_per_second == pytest.approx(7.5)  # median of 10 and 5
    assert result.steady_min == pytest.approx(25.0) and result.steady_max == pytest.approx(100.0)
    assert result.steady_median == pytest.approx(50.0)
    assert result.repeats == pytest.approx((100.0, 50.0))
    legacy = benchmark.summarize(
        "legacy",
        [
            benchmark.EpochTimes(0, (1, 2, 2), (10, 10, 10)),
            benchmark.EpochTimes(0, (1, 1, 1), (10, 10, 10)),
        ],
    )
    # Per repeat: 100/5 = 20 and 50/10 = 5; the median of side-by-side ratios is 12.5.
    assert benchmark.median_ratio(result, legacy) == pytest.approx(12.5)


def test_verdict_names_the_bound():
    def fixed(name, rate):
        return benchmark.summarize(name, [benchmark.EpochTimes(0, (1.0, 1.0), (rate, rate))])

    verdict = benchmark.make_verdict(
        {
            "pipeline-memory-uint8": fixed("p", 5000),
            "model-train": fixed("m", 500),
            "train": fixed("t", 450),
        }
    )
    assert verdict.startswith("model-bound") and "10.0x" in verdict and "90%" in verdict
    assert benchmark.make_verdict(
        {"pipeline-memory-uint8": fixed("p", 100), "model-train": fixed("m", 500)}
    ).startswith("input-bound")


def test_bench_binary_end_to_end(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = run_main(
        bench_main,
        [
            f"--data_dir={tiny_dataset}",
            "--image_size=32",
            "--alpha=0.25",
            "--repeats=1",
            "--epochs=2",
            "--model_steps=2",
            "--batch_size=4",
            f"--output_json={out}",
            f"--output_dir={tmp_path / 'scratch'}",
        ],
    )
    assert code == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert set(report["results"]) == set(benchmark.ALL_VARIANTS)
    for name, result in report["results"].items():
        assert result["steady_median"] > 0 and result["peak_rss_bytes"] > 0, name
    assert report["results"]["legacy"]["images_per_epoch"] == 18
    assert report["results"]["model-train"]["images_per_epoch"] == 8
    assert report["results"]["pipeline-file-uint8"]["cache_bytes"] >= 18 * 32 * 32 * 3
    assert report["environment"]["tensorflow"] and report["environment"]["replicas"] == 1
    assert set(report["ratios_to_legacy"]) == set(
        benchmark.INPUT_VARIANTS + benchmark.DECODE_VARIANTS
    )
    assert (
        report["results"]["audit"]["images_per_epoch"] == 18
        and report["results"]["decode"]["images_per_epoch"] == 18
    )
    table = capsys.readouterr().out
    assert "pipeline-memory-uint8" in table and ("model-bound" in table or "input-bound" in table)
    code = run_main(
        bench_main,
        [
            f"--data_dir={tiny_dataset}",
            "--image_size=32",
            "--repeats=1",
            "--epochs=2",
            "--variants=legacy,pipeline-memory-uint8",
            "--assert_min_speedup=1000000",
        ],
    )
    assert code == 1 and "below --assert_min_speedup" in capsys.readouterr().out


def test_bench_rejects_unknown_variants(tiny_dataset, capsys):
    assert run_main(bench_main, [f"--data_dir={tiny_dataset}", "--variants=legacy,turbo"]) == 2
    assert "unknown --variants turbo" in capsys.readouterr().err


def test_compare_modes_end_to_end(tiny_dataset, tmp_path, capsys, informative_weights):
    code = run_main(
        bench_main,
        [
            f"--data_dir={tiny_dataset}",
            "--compare_modes",
            "--image_size=32",
            "--alpha=0.25",
            f"--weights={informative_weights}",
            "--epochs=2",
            "--batch_size=4",
            "--repeats=1",
            f"--output_dir={tmp_path / 'modes'}",
            f"--output_json={tmp_path / 'modes.json'}",
        ],
    )
    assert code == 0, capsys.readouterr().err
    comparison = json.loads((tmp_path / "modes.json").read_text())
    assert (
        comparison["images_metrics"]["mode"] == "images"
        and comparison["features_metrics"]["mode"] == "features"
    )
    assert comparison["speedup"] > 0
    assert "faster end to end" in capsys.readouterr().out


def test_tensorboard_scalars_from_training(tiny_dataset, tmp_path, capsys):
    board = tmp_path / "tb"
    code = run_main(
        train_main,
        [
            f"--data_dir={tiny_dataset}",
            f"--model_dir={tmp_path / 'run'}",
            "--alpha=0.25",
            "--image_size=32",
            "--weights=none",
            "--epochs=2",
            "--batch_size=4",
            "--verbose=0",
            f"--tensorboard_dir={board}",
        ],
    )
    assert code == 0, capsys.readouterr().err
    import tensorflow as tf

    tags = set()
    for name in os.listdir(board):
        for event in tf.compat.v1.train.summary_iterator(str(board / name)):
            tags |= {value.tag for value in event.summary.value}
    assert {"images_per_second", "loss", "val_accuracy"} <= tags
