"""Import pyfaktory without letting it install a SIGTERM handler.

``pyfaktory/__init__`` imports its ``consumer`` module, whose class body uses pebble's
``@sighandler(SIGTERM)``: that calls ``signal.signal`` at import time. On the main thread it
silently replaces the application's SIGTERM handler (breaking graceful shutdown of our worker
and of the host app); on any other thread the import fails with ``ValueError: signal only works
in main thread``. We use only ``pyfaktory.Client``, never its ``Consumer``, so the import runs
with pebble's ``signal.signal`` call turned into a no-op, under a lock.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

_lock = threading.Lock()


def _import_quietly() -> None:
    with _lock:
        if "pyfaktory" in sys.modules:
            return
        real = signal.signal

        def keep(signalnum: int, handler: Any) -> Any:
            return signal.getsignal(signalnum)

        signal.signal = keep
        try:
            import pyfaktory  # noqa: F401
        finally:
            signal.signal = real


_import_quietly()

from pyfaktory import Client  # noqa: E402
from pyfaktory.util.enums import State  # noqa: E402
from pyfaktory.util.exceptions import FaktroyWorkProtocolError  # noqa: E402

__all__ = ["Client", "FaktroyWorkProtocolError", "State"]
