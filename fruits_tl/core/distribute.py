"""tf.distribute strategies, chosen by name in one factory.

The strategy is always a parameter of the library functions, never a global: binaries call
`get_strategy(FLAGS.strategy)` and pass the result down. `devices` is the seam tests use to run
MirroredStrategy over logical CPU devices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
import time

import numpy as np
import tensorflow as tf
from absl import logging

from fruits_tl.core.config import UserInputError, WorkerLost

STRATEGY_NAMES = ("auto", "default", "one_device", "mirrored", "multi_worker_mirrored")


@dataclasses.dataclass(frozen=True)
class WorkerRole:
    """This process's place in the cluster.

    Attributes:
      index: Its task index among the workers (0 in a single process).
      count: How many workers train together (1 in a single process).
      is_chief: It writes model_dir (task 0, or the "chief" task when the cluster has one).
    """

    index: int = 0
    count: int = 1
    is_chief: bool = True


def tf_config_workers() -> int:
    """How many tasks (chief and workers) the TF_CONFIG environment variable names; 0 if unset."""
    text = os.environ.get("TF_CONFIG", "")
    if not text:
        return 0
    try:
        cluster = json.loads(text).get("cluster", {})
    except ValueError:
        raise UserInputError(f"TF_CONFIG is not valid JSON: {text[:200]!r}.") from None
    return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def worker_role(strategy: tf.distribute.Strategy) -> WorkerRole:
    """This process's WorkerRole under `strategy`."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return WorkerRole()
    resolver = strategy.cluster_resolver
    spec = resolver.cluster_spec().as_dict()
    has_chief = bool(spec.get("chief"))
    count = len(spec.get("chief", [])) + len(spec.get("worker", []))
    index = resolver.task_id + (1 if has_chief and resolver.task_type == "worker" else 0)
    chief = resolver.task_type == "chief" or (not has_chief and resolver.task_id == 0)
    return WorkerRole(index=index, count=count, is_chief=chief)


def _sum_over_workers(
    strategy: tf.distribute.Strategy, role: WorkerRole, value: np.ndarray, timeout: float | None
) -> np.ndarray:
    """One all-reduce (SUM) of each worker's `value`, taken from its first replica only.

    The collective runs inside a `tf.function`: eager `strategy.run` runs replicas in threads
    whose coordinator logs a traceback of its own when a peer is lost, before the clear
    message (`clear_worker_errors`). One collective per call, so a timeout is affordable here
    (see Watchdog for why loops differ).
    """
    options = (
        tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout)
        if timeout
        else None
    )
    first_replica = role.index * (strategy.num_replicas_in_sync // role.count)

    @tf.function
    def all_reduce(tensor):
        def contribute():
            context = tf.distribute.get_replica_context()
            mine = tf.equal(context.replica_id_in_sync_group, first_replica)
            return context.all_reduce(
                tf.distribute.ReduceOp.SUM,
                tf.where(mine, tensor, tf.zeros_like(tensor)),
                options=options,
            )

        return strategy.run(contribute)

    result = all_reduce(tf.constant(value))
    return strategy.experimental_local_results(result)[0].numpy()


def barrier(strategy: tf.distribute.Strategy, *, timeout: float | None = None) -> None:
    """Waits until every worker reaches this point: an all-reduce of a constant.

    Args:
      strategy: The strategy; a no-op unless it spans several workers.
      timeout: Seconds to wait for the others before failing (a worker that died).
    """
    role = worker_role(strategy)
    if role.count > 1:
        _sum_over_workers(strategy, role, np.ones(1, np.float32), timeout)


def lost_worker_message(role: WorkerRole, what: str, *, hint: str) -> str:
    """The one paragraph a worker prints when the cluster lost one of its workers."""
    return (
        f"Worker {role.index} of {role.count} lost contact with the other workers ({what}). A "
        f"worker died or is unreachable. {hint}"
    )


@contextlib.contextmanager
def clear_worker_errors(strategy: tf.distribute.Strategy, *, hint: str):
    """Under several workers, a lost worker becomes one clear message, not a deep traceback.

    Args:
      strategy: The job's strategy; a no-op unless it spans several workers.
      hint: What to do next, e.g. "Start every worker again: ...".
    """
    try:
        yield
    except (
        tf.errors.UnavailableError,
        tf.errors.DeadlineExceededError,
        tf.errors.CancelledError,
        tf.errors.AbortedError,
        tf.errors.InternalError,
    ) as error:
        role = worker_role(strategy)
        if role.count <= 1:
            raise
        raise WorkerLost(
            lost_worker_message(role, f"{type(error).__name__} in a collective", hint=hint)
        ) from None


class Watchdog:
    """Calls `on_timeout` when `beat()` has not been called for `timeout` seconds.

    Under several workers a dead or frozen peer leaves the others blocked in a collective.
    TensorFlow's per-collective timeout (CommunicationOptions.timeout_seconds on the
    strategy) starts a thread for every collective that lives for the whole timeout: at a few
    hundred steps a second TensorFlow 2.21 ran out of threads ("Resource temporarily
    unavailable"). So the training loop beats once per call instead, and this one thread
    watches.
    """

    def __init__(self, timeout: float, on_timeout):
        self.timeout = timeout
        self.on_timeout = on_timeout
        self._last = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="fruits-tl-watchdog", daemon=True)

    def beat(self) -> None:
        self._last = time.monotonic()

    def _watch(self) -> None:
        while not self._done.wait(min(1.0, self.timeout / 4)):
            if time.monotonic() - self._last > self.timeout:
                self.on_timeout()
                return

    def __enter__(self) -> Watchdog:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


def _multi_worker_strategy(workers: int) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy over the `workers` TF_CONFIG names (0: none, refused)."""
    if not workers:
        raise UserInputError(
            "--strategy=multi_worker_mirrored needs the TF_CONFIG environment variable: the "
            'cluster ({"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": '
            '"worker", "index": 0}}) on every worker (docs/many-machines.md).'
        )
    # No timeout on every collective (see Watchdog): barriers take one of their own and the
    # training loop is watched.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    logging.warning("%s", exposure_warning("This worker's TensorFlow server", _own_port()))
    return strategy


def get_strategy(
    name: str = "auto",
    *,
    devices: list[str] | None = None,
    allow_multi_worker: bool = True,
) -> tf.distribute.Strategy:
    """Returns a distribution strategy by name.

    Call it before any other TensorFlow op: MultiWorkerMirroredStrategy configures the runtime
    for collectives and fails once it has started (tensorflow/tensorflow#34568).

    Args:
      name: "auto": multi_worker_mirrored when TF_CONFIG names more than one task, else
        mirrored over all GPUs when there are several, one_device on the only GPU, default
        on CPU. "default": no distribution. "one_device": the first GPU, else the CPU.
        "mirrored": all GPUs, or where there are none all logical CPU devices (tests split the
        CPU into two). "multi_worker_mirrored": every worker TF_CONFIG names, each with its
        local devices.
      devices: Explicit device names for "mirrored" or "one_device" (first one), overriding the
        discovery above.
      allow_multi_worker: False for jobs that run on one machine: "auto" then ignores
        TF_CONFIG.

    Returns:
      A tf.distribute.Strategy.

    Raises:
      UserInputError: An unknown name, or multi_worker_mirrored without TF_CONFIG.
    """
    if name not in STRATEGY_NAMES:
        raise UserInputError(f"strategy must be one of {', '.join(STRATEGY_NAMES)}, got {name!r}.")
    workers = tf_config_workers() if allow_multi_worker or name == "multi_worker_mirrored" else 0
    if name == "auto" and workers > 1:
        name = "multi_worker_mirrored"
    if name == "multi_worker_mirrored":
        return _multi_worker_strategy(workers)
    gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "one_device" if gpus else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        device = devices[0] if devices else (gpus[0] if gpus else "/cpu:0")
        return tf.distribute.OneDeviceStrategy(device)
    if devices is None:
        devices = gpus or [device.name for device in tf.config.list_logical_devices("CPU")]
    if any("GPU" in device.upper() for device in devices):
        return tf.distribute.MirroredStrategy(devices=devices)
    # CPU replicas only (tests, CPU machines): reduce through one device, not collective ops.
    # Collective instance keys restart with every MirroredStrategy, and TensorFlow's runtime
    # keeps the first use of a key for the process, so a second strategy in one process whose
    # first collective differs fails ("Collective instance 100 expected type 2 and data_type
    # 3 but got type 0 and data_type 1"). Reducing through one device uses no collectives.
    return tf.distribute.MirroredStrategy(
        devices=devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
    )


def _own_port() -> int:
    """This task's port in TF_CONFIG (0 where it cannot be read)."""
    try:
        config = json.loads(os.environ.get("TF_CONFIG", ""))
        task = config["task"]
        address = config["cluster"][task["type"]][int(task["index"])]
        return int(str(address).rsplit(":", 1)[1])
    except (ValueError, KeyError, IndexError, TypeError):
        return 0


def describe(strategy: tf.distribute.Strategy) -> str:
    """A short name for logs and metrics: "default", "one_device", "mirrored"."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "multi_worker_mirrored"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "mirrored"
    if isinstance(strategy, tf.distribute.OneDeviceStrategy):
        return "one_device"
    return "default"


def per_replica_batch_size(strategy: tf.distribute.Strategy, global_batch_size: int) -> int:
    """The per-replica batch, requiring the global batch to split evenly across replicas."""
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise UserInputError(
            f"--batch_size={global_batch_size} is the global batch and must be divisible by the "
            f"{replicas} replicas of the {describe(strategy)} strategy."
        )
    return global_batch_size // replicas


def exposure_warning(server: str, port: int) -> str:
    """The one line a process prints when a TensorFlow server of its starts listening.

    TensorFlow's gRPC servers (the tf.data service's, and the one MultiWorkerMirroredStrategy
    starts from TF_CONFIG) listen on every network interface, with no authentication and no
    encryption, and run the graphs they are sent: TensorFlow 2.21 has no option to bind one
    interface (BUILD_NOTES.md, "Who can reach the servers").
    """
    return (
        f"{server} listens on port {port} of every network interface, without authentication "
        "or encryption: anyone who can reach that port can run code as this user. Keep it on a "
        'private network or behind a firewall (docs/many-machines.md, "Security").'
    )


def gather_rows(
    strategy: tf.distribute.Strategy, rows: np.ndarray, *, timeout: float | None = None
) -> list[np.ndarray]:
    """Every worker's `rows`, on every worker, exactly: [worker 0's rows, worker 1's, ...].

    Workers may hold different numbers of rows (the same trailing shape and dtype). Each
    worker puts its rows in its own slot of a zero tensor [workers, most rows, ...] and one
    all-reduce sums the slots: adding zeros changes no value, so the rows arrive bit for bit.
    Only the first replica of each worker contributes (a worker may have several devices).

    Args:
      strategy: MultiWorkerMirroredStrategy; any other strategy returns `[rows]`.
      rows: [n, ...] this worker's rows, float32 or float64.
      timeout: Seconds to wait for the others before failing (a worker that died).
    """
    role = worker_role(strategy)
    if role.count <= 1:
        return [rows]
    rows = np.asarray(rows)
    counts = np.zeros(role.count, np.float64)
    counts[role.index] = len(rows)
    counts = _sum_over_workers(strategy, role, counts, timeout).astype(np.int64)
    slots = np.zeros((role.count, int(counts.max()), *rows.shape[1:]), rows.dtype)
    slots[role.index, : len(rows)] = rows
    slots = _sum_over_workers(strategy, role, slots, timeout)
    return [slots[index, : counts[index]] for index in range(role.count)]
