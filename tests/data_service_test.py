"""The tf.data service: real dispatcher and worker processes (fruits-tl-data-service) on
loopback, each image decoded exactly once, the same features and training as without it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, run_main, stored_features

from fruits_tl.cli import train_main
from fruits_tl.data import data_service, loading, pipeline

# Starts processes or servers, or trains on the real sample: the slow tier.
pytestmark = pytest.mark.slow


def _serve(args: list[str]) -> tuple[subprocess.Popen, str]:
    """Starts fruits-tl-data-service; returns it once it has printed its address (no sleep)."""
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.Popen(
        [sys.executable, "-m", "fruits_tl.cli.data_service_main", *args],
        cwd=REPO,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline()
    assert " serving at " in line, (
        line,
        process.stderr.read() if process.poll() is not None else "",
    )
    return process, line.split(" serving at ", 1)[1].split()[0]


def _stop(process: subprocess.Popen, number=signal.SIGTERM) -> subprocess.CompletedProcess:
    process.send_signal(number)
    out, err = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.fixture(scope="module")
def service():
    """A dispatcher and two workers, each its own process; all stopped at the end."""
    dispatcher, address = _serve(["--port=0"])
    workers = [_serve([f"--dispatcher_address={address}", "--host=localhost"])[0] for _ in range(2)]
    yield address
    processes = [process for process in [*workers, dispatcher] if process.poll() is None]
    for process in processes:  # All at once: each takes a few seconds to stop.
        process.send_signal(signal.SIGTERM)
    for process in processes:
        process.communicate(timeout=60)


def test_every_image_is_decoded_once_with_the_routes_pixels(service, tiny_dataset):
    splits = loading.load_dataset(tiny_dataset, image_size=32)
    images = data_service.decode_through_service(splits.train, service)
    expected = np.stack([image for image, _ in splits.train.make_elements().as_numpy_iterator()])
    np.testing.assert_array_equal(images, expected)


def test_the_public_datasets_go_through_a_tf_data_service_by_path(service, tiny_dataset, tmp_path):
    # The datasets' graphs carry the store's path, not its rows: the service's workers (other
    # processes) read the file themselves, and every batch comes back as it is read here.
    datasets = pipeline.make_datasets(
        tiny_dataset,
        batch_size=4,
        image_size=96,
        cache=str(tmp_path / "store"),
        output="uint8",
        read_by_path=True,
    )
    graph = tf.data.experimental.to_variant(datasets.test)  # Serialisable as it is sent.
    assert graph.dtype == tf.variant
    here = list(datasets.test.as_numpy_iterator())
    served = datasets.test.apply(
        tf.data.experimental.service.distribute(
            processing_mode="distributed_epoch", service=service, job_name="public-test"
        )
    )

    def rows(batches):
        images = np.concatenate([images for images, _ in batches])
        labels = np.concatenate([labels for _, labels in batches])
        order = sorted(range(len(labels)), key=lambda i: images[i].tobytes())
        return images[order], labels[order]

    # distributed_epoch: each worker batches its own share of the rows; every row once.
    there_images, there_labels = rows(list(served.as_numpy_iterator()))
    here_images, here_labels = rows(here)
    assert len(there_labels) == len(here_labels) == 9
    np.testing.assert_array_equal(there_images, here_images)
    np.testing.assert_array_equal(there_labels, here_labels)
    # The serialised dataset is small: the rows stayed in the file.
    stored = sum(p.stat().st_size for p in (tmp_path / "store").glob("test.*.rows"))
    serialised = len(datasets.test._as_serialized_graph().numpy())
    assert serialised < stored // 4, (serialised, stored)


def test_training_through_the_service_is_training_without_it(
    service, tiny_dataset, informative_weights, tmp_path, capsys
):
    common = [
        "--alpha=0.25",
        "--image_size=32",
        f"--weights={informative_weights}",
        "--epochs=2",
        "--batch_size=4",
        "--verbose=0",
    ]
    # Features mode: the extraction decodes through the service; images mode and fine-tuning:
    # the pixel store is filled through it (compared bit for bit), and they train on it.
    for mode in ("features", "images", "fine_tune"):
        recipe = (
            ["--mode=features", "--fine_tune_layers=6", "--fine_tune_epochs=1"]
            if mode == "fine_tune"
            else [f"--mode={mode}"]
        )
        assert (
            run_main(
                train_main,
                [
                    f"--data_dir={tiny_dataset}",
                    f"--model_dir={tmp_path / mode / 'here'}",
                    *recipe,
                    *common,
                ],
            )
            == 0
        )
        args = [
            f"--data_dir={tiny_dataset}",
            f"--model_dir={tmp_path / mode / 'service'}",
            *recipe,
            *common,
            f"--data_service_address={service}",
        ]
        result = subprocess.run(
            [sys.executable, "-m", "fruits_tl.cli.train_main", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Decoded 18 train images through the tf.data service" in result.stderr
        here = json.loads((tmp_path / mode / "here" / "metrics.json").read_text())
        there = json.loads((tmp_path / mode / "service" / "metrics.json").read_text())
        assert (there["test_loss"], there["test_accuracy"]) == pytest.approx(
            (here["test_loss"], here["test_accuracy"]), rel=1e-6
        )
        if mode == "features":
            for split in ("train", "test"):
                np.testing.assert_array_equal(
                    stored_features(tmp_path / mode / "here" / "features", split).features,
                    stored_features(tmp_path / mode / "service" / "features", split).features,
                )
        else:
            for split in ("train", "test"):
                here_pixels, there_pixels = (
                    sorted((tmp_path / mode / run / "features" / "pixels").glob(f"{split}.*.rows"))
                    for run in ("here", "service")
                )
                assert len(here_pixels) == len(there_pixels) == 1
                assert here_pixels[0].read_bytes() == there_pixels[0].read_bytes()


def test_servers_log_their_address_and_stop_cleanly_on_sigterm_and_sigint():
    dispatcher, address = _serve(["--port=0"])
    assert address.startswith("grpc://localhost:")
    worker, worker_address = _serve([f"--dispatcher_address={address}"])
    stopped = _stop(worker, signal.SIGINT)
    assert stopped.returncode == 0 and "stopped on SIGINT" in stopped.stderr
    # One line at start says who can reach the server, for each kind, as --help does.
    text = " ".join(stopped.stderr.split())
    assert (
        f"This tf.data service worker listens on port {worker_address.rsplit(':', 1)[1]} of "
        "every network interface, without authentication or encryption" in text
    )
    stopped = _stop(dispatcher)
    assert stopped.returncode == 0 and "stopped on SIGTERM" in stopped.stderr
    text = " ".join(stopped.stderr.split())
    assert (
        f"This tf.data service dispatcher listens on port {address.rsplit(':', 1)[1]} of every "
        "network interface"
        in text
        and 'docs/many-machines.md, "Security"' in text
    )
    assert "cannot bind one" in _help("data_service_main")


def test_a_bad_address_is_refused(tiny_dataset, tmp_path, capsys):
    args = [
        f"--data_dir={tiny_dataset}",
        f"--model_dir={tmp_path}",
        "--data_service_address=localhost:5050",
    ]
    assert run_main(train_main, args) == 2
    assert "data_service_address must look like grpc://host:port" in capsys.readouterr().err


def _blocked_job(
    address: str, tmp_path, signal_name: str, *, kill_pid: int = 0, timeout: int = 120
) -> subprocess.Popen:
    """fruits-tl-train on the service at `address`: right before the client starts waiting on
    the service, the fault hook sends `signal_name` to the job itself (or to `kill_pid`)."""
    return _service_training(
        tmp_path / "data",
        tmp_path / "run",
        address,
        timeout=timeout,
        kill_at="data_service:decode",
        kill_pid=kill_pid,
        kill_signal=signal_name,
    )


def _wait_for_line(process: subprocess.Popen, text: str) -> list[str]:
    """stderr's lines up to and including the first one containing `text` (read, no sleep)."""
    lines = []
    for line in process.stderr:
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"the job ended without printing {text!r}:\n{''.join(lines)[-3000:]}")


@pytest.mark.parametrize("second_signal", [False, True])
def test_a_job_blocked_on_the_service_stops_soon_after_a_signal(
    tiny_dataset, tmp_path, second_signal
):
    shutil.copytree(tiny_dataset, tmp_path / "data")
    dispatcher, address = _serve(["--port=0"])  # No worker: the client waits forever.
    job = _blocked_job(address, tmp_path, "SIGTERM")
    try:
        _wait_for_line(job, "SIGTERM: stopping after the current step")
        start = time.monotonic()
        if second_signal:
            job.send_signal(signal.SIGTERM)
        rest = job.communicate(timeout=60)[1]
        elapsed = time.monotonic() - start
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
        _stop(dispatcher)
    assert job.returncode == 128 + signal.SIGTERM, rest[-3000:]
    if second_signal:
        assert "SIGTERM again: stopped at once." in rest
        assert elapsed < 5, elapsed
    else:
        # The job never reaches a step boundary: after the grace period it ends itself and
        # says why; nothing half-written is left in model_dir.
        assert "did not reach a point where it could save within 10 s" in rest
        assert "rerun the same command to resume" in rest
        assert elapsed < 15, elapsed
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_killed_service_worker_ends_the_job_with_a_message_naming_the_service(
    tiny_dataset, tmp_path
):
    shutil.copytree(tiny_dataset, tmp_path / "data")
    dispatcher, address = _serve(["--port=0"])
    worker, _ = _serve([f"--dispatcher_address={address}", "--host=localhost"])
    # The job SIGKILLs the service's only worker as it starts waiting on it.
    job = _blocked_job(address, tmp_path, "SIGKILL", kill_pid=worker.pid, timeout=5)
    try:
        start = time.monotonic()
        error = job.communicate(timeout=120)[1]
        elapsed = time.monotonic() - start
        assert worker.wait(timeout=60) == -signal.SIGKILL
    finally:
        for process in (job, worker):
            if process.poll() is None:
                process.kill()
                process.communicate()
        _stop(dispatcher)
    assert job.returncode == 2, error[-3000:]
    assert f"The tf.data service at {address} delivered no image of train for 5 s" in error
    assert "--data_service_timeout" in error and "rerun the same command" in error
    # Bounded: start-up, the decode check and the 5 s timeout, not a hang.
    assert elapsed < 90, elapsed
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_dispatcher_restarted_with_its_work_dir_lets_the_job_finish_as_if_undisturbed(tmp_path):
    from fruits_tl.jobs import synthetic

    # 180 training images: three batches of 64 from the service, so the dispatcher dies with
    # the split partly delivered.
    data_dir = synthetic.write_synthetic_dataset(
        str(tmp_path / "data"), num_classes=3, train_per_class=60, test_per_class=10, seed=5
    )
    port = data_service.free_port()
    serve = [f"--port={port}", f"--work_dir={tmp_path / 'journal'}"]
    dispatcher, address = _serve(serve)
    worker, _ = _serve([f"--dispatcher_address={address}", "--host=localhost"])

    def job(name: str, **kill) -> subprocess.Popen:
        return _service_training(
            data_dir,
            tmp_path / name,
            address,
            timeout=120,
            kill_at="data_service:received:train" if kill else "",
            kill_pid=kill.get("pid", 0),
        )

    processes = [worker, dispatcher]
    try:
        undisturbed = job("undisturbed")
        assert undisturbed.wait(timeout=300) == 0, undisturbed.stderr.read()[-3000:]
        disturbed = job("disturbed", pid=dispatcher.pid)
        processes.append(disturbed)
        # Returns when the job has killed the dispatcher (an event): start it again.
        assert dispatcher.wait(timeout=300) == -signal.SIGKILL
        start = time.monotonic()
        dispatcher, again = _serve(serve)
        processes.append(dispatcher)
        assert again == address
        error = disturbed.communicate(timeout=300)[1]
        waited = time.monotonic() - start
        assert disturbed.returncode == 0, error[-3000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.communicate(timeout=60)
    print(f"the job finished {waited:.1f} s after the dispatcher was started again")
    # Every image came: through the service, or (an element in flight when the dispatcher died
    # is not handed out again) decoded here, and said so.
    served = int(re.search(r"Decoded (\d+) train images through the tf.data service", error)[1])
    assert served == 180 or f"did not deliver {180 - served} image(s) of train" in error, error
    here = json.loads((tmp_path / "undisturbed" / "metrics.json").read_text())
    there = json.loads((tmp_path / "disturbed" / "metrics.json").read_text())
    assert (there["test_loss"], there["test_accuracy"]) == (
        here["test_loss"],
        here["test_accuracy"],
    )
    for split in ("train", "test"):
        np.testing.assert_array_equal(
            stored_features(tmp_path / "undisturbed" / "features", split).features,
            stored_features(tmp_path / "disturbed" / "features", split).features,
        )


def _help(module: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", f"fruits_tl.cli.{module}", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return " ".join((result.stdout + result.stderr).split())


def test_a_dispatcher_without_work_dir_that_dies_ends_the_job_and_a_rerun_reuses_its_work(
    tmp_path,
):
    from fruits_tl.jobs import synthetic

    data_dir = synthetic.write_synthetic_dataset(
        str(tmp_path / "data"), num_classes=3, train_per_class=60, test_per_class=30, seed=5
    )
    dispatcher, address = _serve(["--port=0"])  # No journal: its jobs die with it.
    worker, _ = _serve([f"--dispatcher_address={address}", "--host=localhost"])
    processes = [worker]
    try:
        # The train split is decoded and stored; the test split's first batch has come.
        first = _service_training(
            data_dir,
            tmp_path / "run",
            address,
            timeout=10,
            kill_at="data_service:received:test",
            kill_pid=dispatcher.pid,
        )
        processes.append(first)
        assert dispatcher.wait(timeout=300) == -signal.SIGKILL
        error = first.communicate(timeout=300)[1]
        # The worker, its dispatcher gone, still stops cleanly and at once.
        start = time.monotonic()
        stopped = _stop(worker)
        assert stopped.returncode == 0 and "stopped on SIGTERM" in stopped.stderr
        assert time.monotonic() - start < 10
        # A new service; the rerun decodes only what the first run had not stored.
        dispatcher, again = _serve(["--port=0"])
        worker, _ = _serve([f"--dispatcher_address={again}", "--host=localhost"])
        processes += [dispatcher, worker]
        rerun = _service_training(data_dir, tmp_path / "run", again, timeout=10)
        processes.append(rerun)
        rerun_error = rerun.communicate(timeout=300)[1]
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.communicate(timeout=60)
    assert first.returncode == 2, error[-3000:]
    text = " ".join(error.split())
    assert f"The tf.data service at {address} delivered no image of test for 10 s" in text
    assert "Traceback" not in error
    assert rerun.returncode == 0, rerun_error[-3000:]
    assert "Reusing the stored train pixels" in rerun_error
    assert "Decoded 90 test images through the tf.data service" in rerun_error
    assert "train images through the tf.data service" not in rerun_error
    assert (tmp_path / "run" / "metrics.json").exists()


def _service_training(
    data_dir,
    model_dir,
    service: str,
    *,
    timeout: int,
    kill_at: str = "",
    kill_pid: int = 0,
    kill_signal: str = "SIGKILL",
) -> subprocess.Popen:
    """fruits-tl-train on the tf.data service at `service`; with `kill_at`, the fault hook
    sends `kill_signal` at that point to process `kill_pid` (a server), or to the job itself."""
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if kill_at:
        environment.update(FRUITS_TL_KILL_AT=kill_at, FRUITS_TL_KILL_SIGNAL=kill_signal)
    if kill_pid:
        environment["FRUITS_TL_KILL_PID"] = str(kill_pid)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fruits_tl.cli.train_main",
            f"--data_dir={data_dir}",
            f"--model_dir={model_dir}",
            "--alpha=0.25",
            "--image_size=32",
            "--weights=none",
            "--epochs=1",
            "--verbose=0",
            f"--data_service_timeout={timeout}",
            f"--data_service_address={service}",
        ],
        cwd=REPO,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
