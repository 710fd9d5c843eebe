"""Continuous batching: one decode loop shared by every concurrent request.

A request hands its rows (personalized, generic, rag, control) to :meth:`Scheduler.submit` and
gets a :class:`Ticket`, an iterator of its rows' texts after each step. One thread runs a
:class:`demo.core.generation.DecodeBatch`: between two steps it lets waiting requests join (up to
``max_rows`` rows in all) and each row leaves as soon as it ends, so a short answer never waits
for a long one and a new visitor starts at the next step instead of after everyone before them.

A ticket that is closed (its consumer went away: a cancelled or disconnected Gradio event closes
the generator that reads it) or cancelled leaves the loop at the next step.

On ZeroGPU the GPU exists only inside a ``spaces.GPU`` call, so no thread may hold the model
there: the studio then decodes each request's rows in its own call (``Settings.zero_gpu``).
"""
from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator

import torch

from .generation import DecodeBatch, GenerationParams, Generator, Request
from .inflight import SHUTTING_DOWN

log = logging.getLogger(__name__)


class Ticket(Request):
    """A request in the shared loop, as seen by the thread that submitted it."""

    def __init__(self, embeds: torch.Tensor, mask: torch.Tensor, params: GenerationParams):
        super().__init__(embeds, mask, params)
        self.error: BaseException | None = None
        self.submitted = time.perf_counter()
        self._changed = threading.Condition()
        self._version = 0

    def updated(self) -> None:
        with self._changed:
            self._version += 1
            self._changed.notify_all()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.finished = True
        self.updated()

    def __iter__(self) -> Iterator[list[str]]:
        """The rows' texts after each step that changed them; closing the iterator cancels the request."""
        seen = 0
        try:
            while True:
                with self._changed:
                    self._changed.wait_for(lambda: self._version != seen)
                    seen, texts, finished = self._version, list(self.texts), self.finished
                if self.error is not None:
                    raise self.error
                yield texts
                if finished:
                    return
        finally:
            if not self.finished:
                self.cancel()


class Scheduler:
    """The thread that decodes every submitted request's rows in one batch."""

    def __init__(self, generator: Generator, max_rows: int):
        self.generator = generator
        self.max_rows = max(int(max_rows), 1)
        self.batch = DecodeBatch(generator)
        self.steps = 0  # decode steps run so far (for tests and the benchmark)
        self._waiting: deque[Ticket] = deque()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        # At exit, stop the loop before the interpreter shuts down: a decode step still running in
        # a daemon thread then makes torch abort the process ("terminate called ...").
        closing = weakref.ref(self)
        atexit.register(lambda: (scheduler := closing()) and scheduler.close())

    def close(self, timeout: float = 60.0) -> None:
        """Stop the loop after its current step; requests in it or waiting get an error."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, embeds: torch.Tensor, mask: torch.Tensor, params: GenerationParams) -> Ticket:
        """Queue rows embeds [n, T, d_llm] with mask [n, T]; they join the loop at its next step."""
        ticket = Ticket(embeds, mask, params)
        with self._wake:
            if self._closed:
                ticket.fail(RuntimeError(SHUTTING_DOWN))
                return ticket
            self._waiting.append(ticket)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="pplug-decode", daemon=True)
                self._thread.start()
            self._wake.notify()
        return ticket

    @property
    def active(self) -> int:
        """Requests in the loop or waiting to join it."""
        with self._wake:
            return len(self.batch.requests) + sum(not t.cancelled for t in self._waiting)

    def _admit(self) -> list[Ticket]:
        """Waiting tickets that fit under the row cap, oldest first (one always fits an empty batch)."""
        joining: list[Ticket] = []
        rows = self.batch.rows
        while self._waiting:
            ticket = self._waiting[0]
            if ticket.cancelled:
                self._waiting.popleft()
                ticket.finished = True
                ticket.updated()
                continue
            if rows + ticket.n_rows > self.max_rows and (rows or joining):
                break
            joining.append(self._waiting.popleft())
            rows += ticket.n_rows
        return joining

    def _run(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._closed or self._waiting or self.batch.rows)
                if self._closed:
                    for ticket in {*self.batch.requests, *self._waiting}:
                        ticket.fail(RuntimeError(SHUTTING_DOWN))
                    return
                joining = self._admit()
            try:
                if joining:
                    self.batch.join(joining)
                if self.batch.rows:
                    self.batch.step()
                    self.steps += 1
            except Exception as err:  # noqa: BLE001 - every request in the loop gets the error
                log.exception("The decode loop failed; its requests get the error")
                for ticket in {*self.batch.requests, *joining}:
                    ticket.fail(err)
                self.batch = DecodeBatch(self.generator)
