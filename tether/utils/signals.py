"""Graceful stop on SIGINT/SIGTERM: the first signal asks the loop to finish the current
update, checkpoint and exit cleanly; a second one exits at once. Exiting at once is safe
because every checkpoint is written atomically (``tether.utils.checkpoint``): the previous
checkpoint stays loadable, and ``metrics.jsonl`` is rewritten from the checkpoint on resume."""

from __future__ import annotations

import os
import signal
import sys
import threading

HANDLED = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """Context manager; ``requested`` holds the first signal's name once one arrived."""

    def __init__(self, what: str = "the current iteration"):
        self.what = what
        self.requested: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():  # signal() works only there
            for sig in HANDLED:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        name = signal.Signals(signum).name
        if self.requested is not None:
            print(f"\n{name} again: exiting now (the last complete checkpoint is intact)", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.requested = name
        print(f"\n{name}: finishing {self.what}, then checkpointing (send again to exit at once)",
              file=sys.stderr, flush=True)
