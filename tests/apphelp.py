"""Helpers shared by the tests: a studio with other settings, the app served on a free port, the app's handlers, what a message area
shows, the generation log, exported CSV cells."""
from __future__ import annotations

import csv
import functools
import io
import json
import os
import re
import subprocess
import sys
from dataclasses import fields, replace

import httpx

from demo.app.ui import build_demo
from demo.core.generation import Generator
from demo.core.settings import REPO_ROOT, Limits
from demo.core.studio import Studio
from demo.core.text import free_port

LIMITS = {f.name for f in fields(Limits)}


def studio_with(studio: Studio, *, max_context: int | None = None, **changes) -> Studio:
    """A studio on the session's models and store with other settings (``Settings`` fields, or
    ``Limits`` fields such as ``max_items``).

    ``max_context`` stands in for a model with a shorter context window; ``batch_rows`` (a setting)
    sets how many generation events the app runs at once (``batch_rows // 2``).
    """
    limits = {k: v for k, v in changes.items() if k in LIMITS}
    settings = studio.settings.with_(limits=replace(studio.settings.limits, **limits),
                                     **{k: v for k, v in changes.items() if k not in LIMITS})
    generator = Generator(studio.model, studio.tokenizer, max_context) if max_context else studio.generator
    return Studio(settings, encoder=studio.encoder, generator=generator, store=studio.store, plug=studio.plug)


def serve(studio: Studio):
    """The app on ``studio``, served on a free port from this process's threads; ``close()`` it when done."""
    demo = build_demo(studio)
    demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
    return demo


def handler(demo, name: str):
    """The function behind one of the page's events, by its name."""
    return next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == name)


def said(shown: dict | str) -> str:
    """What a Markdown value (or a message area's update) shows: without the backslash escapes that keep
    user text as text (every ASCII punctuation character is escaped); "" for a hidden message area."""
    if isinstance(shown, dict):
        shown = shown["value"] if shown.get("visible", True) else ""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", shown)


def logged_generations(store, owner: str) -> list[dict]:
    """The owner's rows of the generation log, newest first, with params and timings decoded."""
    rows = store.rows("SELECT * FROM generations WHERE owner = ? ORDER BY id DESC", [owner])
    return [{**r, "params": json.loads(r["params"]), "timings": json.loads(r["timings"])} for r in rows]


def csv_cells(text: str) -> list[dict]:
    """The rows of an exported CSV file, as the text of each cell."""
    return list(csv.DictReader(io.StringIO(text)))


def as_cells(rows: list[dict]) -> list[dict]:
    """Export rows as their CSV cells: None empty, booleans "true"/"false", the rest as text."""
    return [{k: "" if v is None else str(v).lower() if isinstance(v, bool) else str(v) for k, v in r.items()}
            for r in rows]


@functools.cache
def http() -> httpx.Client:
    """One HTTP client for the tests' plain calls, shared by their threads: ``httpx.post`` and ``httpx.get``
    build a client, and its TLS context, per call, which cost the bad-input corpus a sixth of its time.
    Idle connections are dropped after 2 s, before the app's server (uvicorn) closes them at 5 s."""
    return httpx.Client(limits=httpx.Limits(keepalive_expiry=2))


def call_raw(url: str, api_name: str, data: list, timeout: float = 120) -> tuple[str, object]:
    """A named endpoint called over plain HTTP, with any JSON values (gradio_client refuses some).

    -> ("complete", the output) or ("error", the message, None when Gradio hid an unexpected error).
    """
    # json.dumps escapes everything outside ASCII, so a lone surrogate travels as the JSON "\\ud800" it is.
    posted = http().post(f"{url}gradio_api/call/{api_name.strip('/')}", content=json.dumps({"data": data}),
                        headers={"Content-Type": "application/json"}, timeout=timeout)
    posted.raise_for_status()
    stream = http().get(f"{url}gradio_api/call/{api_name.strip('/')}/{posted.json()['event_id']}", timeout=timeout)
    event, payload = None, None
    for line in stream.text.splitlines():
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: ") and event in ("complete", "error"):
            payload = json.loads(line[len("data: "):])
    if event == "complete":
        return "complete", payload[0] if isinstance(payload, list) and len(payload) == 1 else payload
    return "error", payload.get("error") if isinstance(payload, dict) else payload


def assert_exits_cleanly(body: str, said: str, db) -> None:
    """Run ``body`` in a fresh process after ``s = Studio(...)`` on the database ``db``; it prints ``said``
    and leaves work running. The process must exit 0: torch aborts one that exits mid-operation."""
    code = ("import os, threading, time; from demo.core.settings import Settings; from demo.core.studio import Studio; "
            "from demo.core.generation import GenerationParams\n"
            "s = Studio(Settings.from_env({**os.environ, 'PPLUG_DB': os.environ['DB']}))\n" + body)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DB": str(db)})
    assert said in done.stdout, done.stderr[-2000:]
    assert done.returncode == 0 and "terminate called" not in done.stderr, done.stderr[-2000:]
