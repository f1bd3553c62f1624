"""Benchmark arithmetic with a fake clock, aggregation, verdict, and the binary end to end."""

from __future__ import annotations

import json

import pytest
from conftest import run_main

from fruits_tl.cli import bench_main
from fruits_tl.core import config, timing
from fruits_tl.jobs import benchmark


def test_verdict_names_the_bound():
    def fixed(name, rate):
        return timing.summarize(name, [timing.EpochTimes(0, (1.0, 1.0), (rate, rate))])

    verdict = benchmark.make_verdict(
        {
            "train-input": fixed("p", 5000),
            "model-train": fixed("m", 500),
            "train": fixed("t", 450),
        }
    )
    assert verdict.startswith("model-bound") and "10.0x" in verdict and "90%" in verdict
    assert benchmark.make_verdict(
        {"train-input": fixed("p", 100), "model-train": fixed("m", 500)}
    ).startswith("input-bound")


@pytest.mark.slow
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
    # The stores were written (train-input's cache_bytes below) and removed: a rerun's cold
    # pass must fill them again.
    assert list((tmp_path / "scratch" / "cache").iterdir()) == []
    report = json.loads(out.read_text())
    assert set(report["results"]) == set(config.BENCH_VARIANTS)
    for name, result in report["results"].items():
        # One repeat: its steady epochs' median lies between their extremes, and the peak is a
        # process that holds TensorFlow (over 100 MB).
        assert 0 < result["steady_min"] <= result["steady_median"] <= result["steady_max"], name
        assert result["peak_rss_bytes"] > 100 * 2**20, name
    assert report["results"]["legacy"]["images_per_epoch"] == 18
    assert report["results"]["model-train"]["images_per_epoch"] == 8
    # The store of 18 images of 32x32x3 and its manifest.
    stored = report["results"]["train-input"]["cache_bytes"]
    assert 18 * 32 * 32 * 3 < stored < 18 * 32 * 32 * 3 + 4096
    assert report["environment"]["tensorflow"] and report["environment"]["replicas"] == 1
    assert set(report["ratios_to_legacy"]) == set(
        config.BENCH_INPUT_VARIANTS + config.BENCH_DECODE_VARIANTS
    )
    assert (
        report["results"]["audit"]["images_per_epoch"] == 18
        and report["results"]["decode"]["images_per_epoch"] == 18
    )
    # The verdict states the measured figures it rests on.
    route = report["results"]["train-input"]["steady_median"]
    step = report["results"]["model-train"]["steady_median"]
    bound = "model-bound" if route >= step else "input-bound"
    assert report["verdict"].startswith(
        f"{bound}: the input pipeline delivers {route:.0f} images/s"
    )
    assert f"({step:.0f} images/s on in-memory tensors)" in report["verdict"]
    table = capsys.readouterr().out
    assert report["verdict"] in table
    # The cold ratio (issue 9's figure) is in the table, not only in the JSON.
    cold = report["ratios_to_legacy"]["pipeline-memory-uint8"]["cold"]
    row = next(line for line in table.splitlines() if line.startswith("pipeline-memory-uint8 "))
    assert f" {cold:.2f}x " in row
    # So are the cold epoch's CPU time per image and cores, which say why the ratio is what
    # it is: images/s = cores / CPU time per image, for every variant timed per epoch.
    for name in ("legacy", "pipeline-memory-uint8", "decode"):
        result = report["results"][name]
        assert result["cold_cpu_us_per_image"] > 0, name
        # One repeat: images/s = cores / CPU time per image, exactly.
        assert result["cold_cores"] == pytest.approx(
            result["first_epoch_images_per_second"] * result["cold_cpu_us_per_image"] / 1e6,
            rel=1e-9,
        ), name
        row = next(line for line in table.splitlines() if line.startswith(f"{name} "))
        cells = f" {' '.join(row.split())} "
        figures = f" {result['cold_cpu_us_per_image']:.0f} {result['cold_cores']:.2f} "
        assert figures in cells, row
    # The model-step variants' epochs are timed by the training loop's callback: no CPU figure.
    assert report["results"]["model-train"]["cold_cpu_us_per_image"] is None
    assert "cold CPU us/img: the process's CPU time" in table
    code = run_main(
        bench_main,
        [
            f"--data_dir={tiny_dataset}",
            "--image_size=32",
            "--repeats=1",
            "--epochs=2",
            "--variants=legacy,train-input",
            "--assert_min_speedup=1000000",
        ],
    )
    assert code == 1 and "below --assert_min_speedup" in capsys.readouterr().out


def test_bench_rejects_unknown_variants(tiny_dataset, capsys):
    assert run_main(bench_main, [f"--data_dir={tiny_dataset}", "--variants=legacy,turbo"]) == 2
    assert "unknown --variants turbo" in capsys.readouterr().err


@pytest.mark.slow
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
    # The two modes are the same computation (tests/features_test.py), so the same accuracy.
    assert comparison["accuracy_difference"] == 0.0
    assert comparison["speedups"] == [
        comparison["images_metrics"]["total_seconds"]
        / comparison["features_metrics"]["total_seconds"]
    ]
    assert "faster end to end" in capsys.readouterr().out


@pytest.mark.slow
def test_service_variants_decode_the_split_through_local_workers(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = [
        f"--data_dir={tiny_dataset}",
        "--image_size=32",
        "--repeats=1",
        "--epochs=2",
        "--variants=legacy,service-1,service-2",
        f"--output_json={out}",
    ]
    assert run_main(bench_main, args) == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    for name in ("service-1", "service-2"):
        assert report["results"][name]["images_per_epoch"] == 18
        assert name in report["ratios_to_legacy"]
