"""The exception types that the binaries turn into one clear message instead of a traceback."""


class UserInputError(ValueError):
    """Bad input from the user: a missing folder, a bad image, a flag out of range.

    The message is one paragraph that names the file, folder, flag or class at fault and, where
    there is one, the way out. Binaries print it without a traceback and exit non-zero.
    """


class WorkerLost(UserInputError):
    """Under several workers, a peer died or stopped answering inside a collective.

    Binaries print the message and end the process at once (`stopping.exit_now`), without the
    interpreter's normal teardown: TensorFlow's runtime would wait there on the lost peer (up
    to 14 s measured on loopback with a frozen peer). Every output file is written atomically,
    so nothing is left half-written.
    """
