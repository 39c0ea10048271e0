"""Import TensorFlow without its C++ start-up chatter on the terminal.

TensorFlow 2.21 prints oneDNN notices, CUDA probing results and absl warnings to the
process's stderr (file descriptor 2) before ``TF_CPP_MIN_LOG_LEVEL`` takes effect. They
are not for users of a command line tool, so the first import (and the device probe that
triggers the CUDA messages) runs with fd 2 pointed at /dev/null. Python exceptions are
unaffected. ``XRAYSCATTER_TF_VERBOSE=1`` keeps the messages.
"""

from __future__ import annotations

import os
import sys


def import_tensorflow():
    """Import TensorFlow quietly (once per process) and return the module."""
    if "tensorflow" in sys.modules or os.environ.get("XRAYSCATTER_TF_VERBOSE") == "1":
        import tensorflow as tf

        return tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow as tf

            tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return tf
