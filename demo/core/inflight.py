"""Work in flight at exit: let it finish before the interpreter shuts down.

Requests run in the web server's daemon threads. When the process exits while one of them is inside
a torch operation (encoding a history, fitting a token, scoring), torch aborts the process
("terminate called without an active exception", exit code 134) instead of exiting. So the studio
counts the work it is doing, and at exit it refuses new work and waits for the work already running.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

SHUTTING_DOWN = "The app is shutting down."


class ShuttingDown(RuntimeError):
    """Work asked for after the app began to shut down."""

    def __init__(self) -> None:
        super().__init__(SHUTTING_DOWN)


class InFlight:
    """A count of the work running now, and a gate that closes at exit."""

    def __init__(self) -> None:
        self._running = 0
        self._closed = False
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def work(self) -> Iterator[None]:
        """Count the block as running work; raise ``ShuttingDown`` once closed."""
        with self._changed:
            if self._closed:
                raise ShuttingDown()
            self._running += 1
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify_all()

    @property
    def running(self) -> int:
        with self._changed:
            return self._running

    def close(self, timeout: float = 60.0) -> bool:
        """Refuse new work and wait for the running work to end -> whether it all ended in time."""
        with self._changed:
            self._closed = True
            return self._changed.wait_for(lambda: self._running == 0, timeout)
