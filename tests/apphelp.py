"""Helpers shared by the hardening tests: a free port, a studio with other limits, the app's handlers."""
from __future__ import annotations

import copy
import socket
from dataclasses import replace

from demo.core.generation import Generator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def studio_with(studio, *, max_context: int | None = None, hf_login: bool | None = None,
                batch_rows: int | None = None, **limits):
    """A shallow copy of the session's studio (same models, same store) with other limits.

    ``max_context`` stands in for a model with a shorter context window; ``batch_rows`` sets how
    many generation events the app runs at once (``batch_rows // 2``).
    """
    other = copy.copy(studio)
    other.settings = studio.settings.with_(limits=replace(studio.settings.limits, **limits))
    if batch_rows is not None:
        other.settings = other.settings.with_(batch_rows=batch_rows)
    if hf_login is not None:
        other.settings = other.settings.with_(hf_login=hf_login)
    if max_context is not None:
        generator = copy.copy(studio.generator)
        generator.__class__ = type("ShortContextGenerator", (Generator,), {"max_context": max_context})
        other.generator = generator
    return other


def handler(demo, name: str):
    """The function behind one of the page's events, by its name."""
    return next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == name)
