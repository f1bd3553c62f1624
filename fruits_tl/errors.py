"""The one exception type for bad input that the binaries turn into a clear message."""


class UserInputError(ValueError):
    """Bad input from the user: a missing folder, a bad image, a flag out of range.

    The message is one paragraph that names the file, folder, flag or class at fault and, where
    there is one, the way out. Binaries print it without a traceback and exit non-zero.
    """
