"""fruits-tl-data-service: a tf.data service dispatcher or worker, until SIGTERM or SIGINT.

Examples:
  fruits-tl-data-service --port=5050                                       # the dispatcher
  fruits-tl-data-service --dispatcher_address=grpc://host1:5050 --port=5051  # a worker
  fruits-tl-train --data_dir=... --model_dir=... --data_service_address=grpc://host1:5050

It prints its address on its first line of output once it serves, and stops cleanly (exit 0)
on SIGTERM or SIGINT.

Security: the server listens on every network interface of this machine, without
authentication or encryption, and runs the dataset graphs its clients send (a graph can read
and write files): anyone who can reach the port can run code as this user. TensorFlow 2.21
cannot bind one interface. Run it on a private network, with a firewall that admits only the
cluster's hosts, or reach it through an SSH tunnel (docs/many-machines.md, "Security").
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from absl import flags

from fruits_tl.cli import common

flags.DEFINE_integer("port", 0, "Port to serve on; 0 picks a free one.")
flags.DEFINE_string(
    "dispatcher_address",
    "",
    "Start a worker of the dispatcher at this address; empty starts a dispatcher.",
)
flags.DEFINE_string(
    "host",
    "localhost",
    "The host name other processes reach this worker at (the address it advertises; the "
    "server itself listens on every interface: TensorFlow 2.21 cannot bind one).",
)
flags.DEFINE_string(
    "work_dir",
    "",
    "Dispatcher only: journal its state in this folder, so that a dispatcher started again on "
    "the same --port with the same --work_dir takes its jobs up again (the workers register "
    "again and a waiting job goes on). Empty: a dispatcher that dies takes its jobs with it.",
)

FLAGS = flags.FLAGS
PROGRAM = "fruits-tl-data-service"
# How often the main thread wakes to run a signal handler recorded by another thread.
WAKE_SECONDS = 0.25


def _main(argv):
    common.reject_arguments(argv)
    if not 0 <= FLAGS.port <= 65535:
        raise common.UserInputError(f"--port must be in [0, 65535], got {FLAGS.port}.")
    from fruits_tl.core import distribute
    from fruits_tl.data import data_service

    stopping = threading.Event()
    received = []

    def handle(number, frame):
        received.append(number)
        stopping.set()

    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, handle)
    if FLAGS.dispatcher_address:
        if FLAGS.work_dir:
            raise common.UserInputError(
                "--work_dir is the dispatcher's journal; a worker (--dispatcher_address) "
                "takes none."
            )
        port = FLAGS.port or data_service.free_port(FLAGS.host)
        server = data_service.start_worker(FLAGS.dispatcher_address, port=port, host=FLAGS.host)
        print(
            f"{PROGRAM}: worker serving at {FLAGS.host}:{port} for {FLAGS.dispatcher_address}",
            flush=True,
        )
        kind = "This tf.data service worker"
    else:
        server = data_service.start_dispatcher(FLAGS.port, work_dir=FLAGS.work_dir)
        print(f"{PROGRAM}: dispatcher serving at {server.target}", flush=True)
        port = int(server.target.rsplit(":", 1)[1])
        kind = "This tf.data service dispatcher"
    print(f"{PROGRAM}: {distribute.exposure_warning(kind, port)}", file=sys.stderr, flush=True)
    # Not one unbounded wait: the operating system may deliver the signal to one of
    # TensorFlow's server threads, where CPython only records it, and a main thread blocked for
    # good never gets back to the interpreter to run the handler (a Ctrl-C lost under load). Each
    # bounded wait returns to it, so the handler runs within WAKE_SECONDS wherever the signal
    # landed.
    while not stopping.wait(WAKE_SECONDS):
        pass
    # The process ends here without TensorFlow's `stop()`: a worker whose dispatcher died while
    # it had a task never returns from it, and waits holding the interpreter's lock, so no
    # Python thread (a timer included) could end it. Ending the process closes the server's
    # sockets; clients see a lost server, as after a crash, and the dispatcher's journal
    # (--work_dir) is written as it goes.
    name = signal.Signals(received[0]).name
    print(f"{PROGRAM}: stopped on {name}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(0)


USES = ()
main = common.guarded(PROGRAM, _main, module_name=__name__, uses=USES)
run = common.main_runner(main)

if __name__ == "__main__":
    run()
