"""fruits-tl-bench --recommend: the model on made-up costs, the clocks faked; one real run."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from conftest import REPO

from fruits_tl.core.config import DataConfig
from fruits_tl.jobs import recommend

COSTS = recommend.StageCosts(
    cores=2,
    fill_images_per_second={1: 1000.0, 4: 1500.0},
    fill_fixed_seconds=0.2,
    fill_cpu_us_per_image=1000.0,
    fill_cores_busy=1.5,
    read_images_per_second=50000.0,
    read_cpu_us_per_image=20.0,
    extract_images_per_second={8: 250.0, 64: 500.0},
    extract_fixed_seconds={8: 1.0, 64: 2.0},
    list_seconds_per_image=1e-4,
    head_epoch_seconds=0.1,
    head_seconds_per_image=1e-5,
    head_trace_seconds=0.5,
    images_epoch_seconds=0.2,
    images_seconds_per_image=1e-3,
    images_trace_seconds=2.0,
    start_seconds=5.0,
    free_disk_bytes=10**12,
    available_memory_bytes=2 * 10**9,
    sample_images=1024,
)
COUNTS = recommend.Counts(
    all_images=3000, train_images=2000, validation_images=1000, epochs=10, store_bytes=1
)


def _seconds(stages):
    return {s.name: pytest.approx(s.seconds) for s in stages}


def test_the_fill_rate_is_measured_where_it_was_and_modelled_elsewhere():
    assert recommend.fill_rate(COSTS, 4) == 1500.0
    # One call keeps one core busy: 1e6 * 1 / 1000 us; two calls, up to the 1.5 cores busy.
    assert recommend.fill_rate(COSTS, 1) == 1000.0
    assert recommend.fill_rate(COSTS, 2) == pytest.approx(1500.0)


def test_each_stage_is_predicted_from_its_costs():
    features = recommend.predict(COSTS, COUNTS, recommend.Plan("features", 64, 4))
    # fill: 0.2 s fixed, 3000 images listed (1e-4 s each) and decoded at 1500/s; extract: 2 s
    # fixed + 3000 at 500/s; train: a trace, then 10 epochs of 0.1 s + 2000 images at 10 us.
    assert _seconds(features) == {"start": 5.0, "fill": 2.5, "extract": 8.0, "train": 1.7}
    assert recommend.total_seconds(features) == pytest.approx(17.2)
    images = recommend.predict(COSTS, COUNTS, recommend.Plan("images", 0, 1))
    # fill at one call: 1000/s; train: 2 s + 10 x 0.2 s + 20,000 images at 1 ms.
    assert _seconds(images) == {"start": 5.0, "fill": 3.5, "train": 24.0}


def test_the_recommendation_is_the_shortest_predicted_run():
    plan, stages = recommend.recommend(COSTS, COUNTS)
    assert plan == recommend.Plan("features", 64, 4)
    assert recommend.total_seconds(stages) == pytest.approx(17.2)
    assert len(recommend.candidates(COSTS)) == 2 * 2 + 2  # features: 2 batches x 2; images: 2
    # Where the backbone pass is slow and training on images fast, images mode wins.
    slow = dataclasses.replace(COSTS, extract_images_per_second={8: 10.0, 64: 20.0})
    fast = dataclasses.replace(slow, images_seconds_per_image=1e-5)
    assert recommend.recommend(fast, COUNTS)[0] == recommend.Plan("images", 0, 4)
    assert recommend.bottleneck(stages) == "extract (8.0 s, 47% of the run)"


def test_a_flag_leaves_its_default_only_for_a_gain_above_the_noise():
    # Batch 128 predicted 2% faster than the default 64: within the noise, the default stays.
    close = dataclasses.replace(
        COSTS,
        extract_images_per_second={64: 500.0, 128: 530.0},
        extract_fixed_seconds={64: 2.0, 128: 2.0},
    )
    assert recommend.recommend(close, COUNTS)[0] == recommend.Plan("features", 64, 4)
    # 13% faster end to end: it moves.
    far = dataclasses.replace(close, extract_images_per_second={64: 500.0, 128: 800.0})
    assert recommend.recommend(far, COUNTS)[0] == recommend.Plan("features", 128, 4)


def test_capacity_says_what_a_target_rate_takes():
    needs = recommend.capacity(COSTS, 6000.0)
    assert needs["cold_pass"] == {
        "images_per_second_here": 1500.0,
        "cores_needed": pytest.approx(6.0),  # 6000 images/s at 1 ms of CPU each.
        "service_workers_like_this_machine": 4,
        "this_machine_can": False,
    }
    assert needs["training_from_the_store"] == {
        "images_per_second_here": 50000.0,
        "cores_needed": pytest.approx(0.12),
        "input_hosts_like_this_machine": 1,
        "this_machine_can": True,
    }


def test_per_image_and_per_epoch_costs_come_apart_from_two_sizes():
    assert recommend.per_image_and_epoch((250, 0.35), (1000, 1.1)) == pytest.approx((0.1, 0.001))
    # A negative intercept (noise) is clipped, never a negative cost.
    assert recommend.per_image_and_epoch((250, 0.5), (1000, 3.0)) == pytest.approx((0.0, 2.5 / 750))


def test_timing_reads_the_clock_it_is_given():
    ticks = iter([10.0, 12.5])
    seconds, cpu = recommend.timed(lambda: None, lambda: next(ticks))
    assert seconds == 2.5 and cpu >= 0.0
    times = iter([0.0, 3.0, 3.5, 4.25])
    epochs = recommend._EpochClock(lambda: next(times))
    for epoch in range(3):
        epochs.on_epoch_begin(epoch)
        epochs.on_epoch_end(epoch, {})
    epochs.on_train_end()
    assert epochs.seconds == [3.0, 0.5, 0.75]


def test_a_run_is_compared_stage_by_stage():
    predicted = recommend.predict(COSTS, COUNTS, recommend.Plan("features", 64, 4))
    metrics = {
        "mode": "features",
        "decode_seconds": 2.2,
        "extract_seconds": 12.0,
        "head_train_seconds": 1.7,
    }
    measured = recommend.measured_stages(metrics, COUNTS, wall_seconds=20.9)
    assert _seconds(measured) == {"start": 5.0, "fill": 2.2, "extract": 12.0, "train": 1.7}
    rows = {row["stage"]: row for row in recommend.compare(predicted, measured)}
    assert (
        rows["fill"]["error"] == pytest.approx(2.5 / 2.2 - 1) and rows["fill"]["within_tolerance"]
    )
    assert rows["extract"]["error"] == pytest.approx(-1 / 3)
    assert not rows["extract"]["within_tolerance"]
    report = recommend.report_json(
        COSTS,
        COUNTS,
        recommend.Plan("features", 64, 4),
        predicted,
        target=6000.0,
        verified={"wall_seconds": 20.9, "stages": list(rows.values())},
    )
    text = recommend.render(json.loads(json.dumps(report)))
    assert "Recommended: --mode=features --decode_parallelism=4 --extract_batch_size=64" in text
    assert "extract  predicted     8.0 s, measured    12.0 s (-33%) OFF by more than 25%" in text
    assert "4 tf.data service worker(s) like this machine" in text
    assert report["storage"] == {"store_bytes": 1, "fits_on_disk": True, "fits_in_memory": True}
    big = dataclasses.replace(COUNTS, store_bytes=3 * 10**9)
    assert recommend.storage(COSTS, big) == {
        "store_bytes": 3 * 10**9,
        "fits_on_disk": True,
        "fits_in_memory": False,
    }


def test_the_job_is_counted_from_the_listing(tiny_dataset):
    counts = recommend.count_job(DataConfig(data_dir=tiny_dataset, image_size=32), epochs=7)
    assert counts == recommend.Counts(27, 18, 9, 7, 27 * 32 * 32 * 3)
    held_out = recommend.count_job(
        DataConfig(data_dir=tiny_dataset, image_size=32, validation_split=0.5), epochs=7
    )
    assert (held_out.train_images, held_out.validation_images) == (9, 9)


@pytest.mark.slow
def test_recommend_and_verify_on_a_small_folder(tiny_dataset, tmp_path):
    out = tmp_path / "rec"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fruits_tl.cli.bench_main",
            f"--data_dir={tiny_dataset}",
            "--recommend",
            "--verify",
            "--alpha=0.25",
            "--weights=none",
            "--image_size=32",
            "--epochs=2",
            "--batch_size=4",
            "--recommend_images=12",
            f"--output_dir={out}",
            "--target_images_per_second=1000",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "recommendation.json").read_text())
    assert report["counts"] == {
        "all_images": 27,
        "train_images": 18,
        "validation_images": 9,
        "epochs": 2,
        "store_bytes": 27 * 32 * 32 * 3,
    }
    stages = [s["stage"] for s in report["stages"]]
    assert stages == (
        ["start", "fill", "extract", "train"]
        if report["recommended"]["mode"] == "features"
        else ["start", "fill", "train"]
    )
    assert [row["stage"] for row in report["verified"]["stages"]] == stages
    assert all(row["measured_seconds"] > 0 for row in report["verified"]["stages"])
    assert report["capacity"]["target_images_per_second"] == 1000.0
    assert "Recommended: --mode=" in result.stdout and "Verified by running it" in result.stdout
    # Nothing of the measurement is left beside the report.
    assert sorted(p.name for p in out.iterdir()) == ["recommendation.json"]
