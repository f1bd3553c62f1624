"""The tf.data service: decoding the input pipeline's images on other machines.

`start_dispatcher` and `start_worker` start real tf.data service servers (fruits-tl-data-service
runs one per process). `decode_through_service` sends the decode step of the input pipeline to
them: the (index, path, label) listing is split among the workers by tf.data's `distributed_epoch`
mode, so every image is decoded exactly once, by one worker, with `decode.decode_image`; the client
puts the pixels back in file order by index, and checks that every index came exactly once. The jobs
then use the pixels as they do without the service (images mode writes them into its pixel store, a
chunk at a time; extraction runs the backbone over them).

Why `distributed_epoch` for training too: this package's training decodes each split once and
stores the pixels (BUILD_NOTES, "Decoded pixels stored once"), so every consumer of the service
wants each image exactly once, in a known order; the shuffling and batching happen afterwards,
from the seed, deterministically (`train_input.epoch_order`). Elements arrive in whatever
order the workers finish; the index puts them back.
"""

from __future__ import annotations

import socket

import numpy as np
import tensorflow as tf
from absl import logging

from fruits_tl.core import config, distribute, stopping
from fruits_tl.core.config import UserInputError
from fruits_tl.data import decode, loading

# Images per element sent by a worker: one RPC carries this many decoded images.
SERVICE_BATCH = 64
# Seconds without an element from the service before a job decides a worker or the dispatcher
# is lost (--data_service_timeout). A worker decodes 64 images per element in well under a
# second; two minutes leaves room for a dispatcher still starting its workers.
DEFAULT_TIMEOUT = config.DATA_SERVICE_TIMEOUT


def free_port(host: str = "localhost") -> int:
    """A port free on `host` now (for a worker, whose address must name its port)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def start_dispatcher(
    port: int = 0, *, work_dir: str = ""
) -> tf.data.experimental.service.DispatchServer:
    """Starts a dispatcher on `port` (0: any free port).

    With `work_dir`, the dispatcher journals its state there (fault-tolerant mode): started
    again on the same port with the same folder, it takes its jobs up again and the workers
    register again, so a client waiting on it goes on instead of failing.
    """
    return tf.data.experimental.service.DispatchServer(
        tf.data.experimental.service.DispatcherConfig(
            port=port, work_dir=work_dir or None, fault_tolerant_mode=bool(work_dir)
        )
    )


def start_worker(
    dispatcher_address: str, *, port: int, host: str = "localhost"
) -> tf.data.experimental.service.WorkerServer:
    """Starts a worker on `port` that registers with the dispatcher at `dispatcher_address`."""
    config = tf.data.experimental.service.WorkerConfig(
        dispatcher_address=dispatcher_address.split("://", 1)[-1],
        worker_address=f"{host}:{port}",
        port=port,
    )
    return tf.data.experimental.service.WorkerServer(config)


def decode_through_service(
    folder: loading.ImageFolder, address: str, *, timeout: float = DEFAULT_TIMEOUT
) -> np.ndarray:
    """The split's uint8 images in file order, decoded by the tf.data service at `address`.

    Raises:
      UserInputError: As `decode_rows_through_service`, or a file the decoder rejected.
    """
    images, delivered = decode_rows_through_service(folder, address, timeout=timeout)
    if not delivered.all():
        bad = [folder.file_paths[i] for i in np.flatnonzero(~delivered)[:10]]
        raise UserInputError(
            f"The tf.data service at {address} could not decode {int((~delivered).sum())} "
            f"image(s) of {folder.name}: {', '.join(bad)}."
        )
    return images


def _service_dataset(folder: loading.ImageFolder, address: str) -> tf.data.Dataset:
    """(indices, images) batches of the split, decoded on the service's workers, each image
    once (`distributed_epoch`); a file the decoder rejects is left out."""
    size = folder.image_size
    listing = tf.data.Dataset.from_tensor_slices(
        (tf.range(len(folder), dtype=tf.int64), tf.constant(list(folder.file_paths), tf.string))
    )
    decoded = (
        listing.map(
            tf.autograph.experimental.do_not_convert(
                lambda index, path: (index, decode.load_image(path, size))
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        .ignore_errors()
        .batch(SERVICE_BATCH)
    )
    return decoded.apply(
        tf.data.experimental.service.distribute(
            processing_mode="distributed_epoch", service=address
        )
    )


def _receive(folder: loading.ImageFolder, address: str, timeout: float, images: np.ndarray):
    """Fills `images` from the service's batches; returns how often each row came."""
    distributed = _service_dataset(folder, address)
    seen = np.zeros(len(folder), np.int64)

    def lost():
        stopping.exit_now(
            2,
            f"The tf.data service at {address} delivered no image of {folder.name} for "
            f"{timeout:.0f} s (--data_service_timeout): a service worker or the dispatcher is "
            "lost. Restart fruits-tl-data-service (the dispatcher, then its workers) and rerun "
            "the same command: what this job stored is kept.",
        )

    # The fault hook's point just before the client waits on the service (a test kills a
    # service worker, or signals the job, here).
    stopping.point("data_service:decode")
    try:
        with distribute.Watchdog(timeout, lost) as watchdog:
            for indices, batch in distributed.as_numpy_iterator():
                watchdog.beat()
                images[indices] = batch
                np.add.at(seen, indices, 1)
                if seen.sum() == len(indices):  # The first batch (a test kills the dispatcher).
                    stopping.point(f"data_service:received:{folder.name}")
    except tf.errors.OpError as error:
        raise UserInputError(
            f"The tf.data service at {address} failed ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[0][:200]}); is the dispatcher running, with workers?"
        ) from None
    return seen


def decode_rows_through_service(
    folder: loading.ImageFolder, address: str, *, timeout: float = DEFAULT_TIMEOUT
) -> tuple[np.ndarray, np.ndarray]:
    """The split's uint8 images in file order, decoded by the tf.data service at `address`,
    and which were delivered: a file the decoder rejects is left out (`ignore_errors`), its
    row zeros.

    A lost worker or dispatcher leaves the client waiting inside TensorFlow for good (in
    `distributed_epoch` mode the service does not decode a lost worker's share again), so
    when no element has come for `timeout` seconds the process ends with one message naming
    the address (`stopping.exit_now`, exit code 2). What the job stored before is kept: a
    rerun with the service restarted resumes. A lost worker whose share the others outlive
    leaves rows undelivered too: callers check those files here (`pixels`), and a file that
    decodes here means images were lost, not a bad file.

    Raises:
      UserInputError: The split comes from TFDS records (the service reads image files), or
        the service delivered an image more than once.
    """
    if folder.records is not None:
        raise UserInputError(
            "--data_service_address takes an image folder (--data_source=folder): the tf.data "
            "service workers read the image files themselves."
        )
    count, size = len(folder), folder.image_size
    images = np.zeros((count, size, size, 3), np.uint8)
    if count == 0:
        return images, np.ones(0, bool)
    seen = _receive(folder, address, timeout, images)
    if (seen > 1).any():
        raise UserInputError(
            f"The tf.data service at {address} delivered {int((seen > 1).sum())} image(s) of "
            f"{folder.name} more than once (a service worker lost?). Restart "
            "fruits-tl-data-service and rerun the same command."
        )
    logging.info(
        "Decoded %d %s images through the tf.data service at %s",
        int((seen == 1).sum()),
        folder.name,
        address,
    )
    return images, seen == 1
