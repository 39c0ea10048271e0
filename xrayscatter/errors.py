"""The one exception type the CLI turns into a single clear line."""


class XrayscatterError(Exception):
    """A user-facing error: bad configuration, unreadable file, missing model.

    The message must name the file (or key) and the reason; the CLI prints it
    as one line and exits non-zero (``--debug`` shows the traceback).
    """
