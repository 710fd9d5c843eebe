"""The app serving several visitors at once through the shared decode loop: concurrent requests are
decoded together with the answers they get alone, and a cancelled event stops its work."""
from __future__ import annotations

import json
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from demo.app.loadtest import connect
from demo.core.generation import GenerationParams

from apphelp import logged_generations

HISTORY = "I climbed the north ridge at dawn.\n\nTrail mix: dates, almonds, chocolate.\n\nMy boots gave up at mile 900."


@pytest.fixture(scope="module")
def profile(app, studio):
    owner = secrets.token_urlsafe(24)
    client = connect(app.local_url)
    made = client.predict(history=HISTORY, owner_token=owner, name="serving", api_name="/compute_profile")
    return owner, made["profile_id"]


def wait_until(condition, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def _join_and_wait_for_start(url: str, fn_index: int, data: list) -> tuple[str, str]:
    """Join the queue over raw HTTP and read the event stream until the event runs -> (session, event id)."""
    session = secrets.token_hex(8)
    body = {"data": data, "fn_index": fn_index, "session_hash": session, "trigger_id": None}
    event_id = httpx.post(f"{url}gradio_api/queue/join", json=body, timeout=30).json()["event_id"]
    with httpx.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": session}, timeout=120) as sse:
        for line in sse.iter_lines():
            if line.startswith("data:") and json.loads(line[5:])["msg"] == "process_generating":
                break
    return session, event_id


def test_a_cancelled_generation_stops_its_work(app, studio, profile):
    """Cancel each /generate event just after it starts (POST /gradio_api/cancel): its rows leave the
    decode loop and it never finishes, instead of running on in a thread with its queue slot freed."""
    owner, profile_id = profile
    fn_index = next(i for i, fn in app.fns.items() if fn.api_name == "generate")
    data = [owner, profile_id, "Write a long story about a dragon who learns to bake bread.", 200, 0.0, 1.0, 0]
    with ThreadPoolExecutor(4) as pool:
        started = list(pool.map(lambda _: _join_and_wait_for_start(app.local_url, fn_index, data), range(4)))
    for session, event_id in started:
        httpx.post(f"{app.local_url}gradio_api/cancel",
                   json={"session_hash": session, "fn_index": fn_index, "event_id": event_id}, timeout=30)
    wait_until(lambda: studio.scheduler.active == 0, timeout=20)
    time.sleep(2)
    assert logged_generations(studio.store, owner) == []  # no cancelled generation ran to its end
    assert studio.scheduler.batch.rows == 0


@pytest.mark.slow
def test_concurrent_visitors_are_decoded_together_and_get_their_own_answers(app, studio, profile):
    owner, profile_id = profile
    requests = ["Write a tweet about coffee.", "Write a short blog post about my weekend.",
                "Describe your ideal Sunday in three sentences.", "Write a tweet about my boots."]
    alone = {}
    for r in requests:
        *_, last = studio.generate(owner, profile_id, r, GenerationParams(max_new_tokens=16))
        alone[r] = (last.personalized, last.generic)
    widest = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            widest.append(studio.scheduler.batch.rows)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    start = threading.Barrier(len(requests))

    def visit(r):
        client = connect(app.local_url)
        start.wait()
        out = client.predict(owner_token=owner, profile_id=profile_id, request=r, max_new_tokens=16,
                             api_name="/generate")
        return out["personalized"], out["generic"]

    try:
        with ThreadPoolExecutor(len(requests)) as pool:
            got = dict(zip(requests, pool.map(visit, requests)))
    finally:
        stop.set()
        watcher.join()
    assert got == alone
    assert max(widest) >= 6  # at least three visitors' rows in one step


def test_the_gpu_check_runs_its_steps_here(studio):
    """The prepared GPU check, on this machine's CPU: the shared loop, the ZeroGPU path, the policy."""
    from demo.app.gpu_check import check

    result = check(studio, n_requests=2, max_new_tokens=6)
    assert result["device"] == "cpu" and result["requests"] == 2
    assert result["batched_equal_alone"] == 2 and result["zero_gpu_path_equal_alone"] == 2
    assert result["empty_answers"] == 0 and result["degenerate_answers"] == 0


@pytest.mark.slow
def test_the_load_test_measures_visitors_and_participants(app):
    from demo.app.loadtest import study_figures, visitors_figures

    visitors = visitors_figures(app.local_url, [1, 2], repeats=1, per_visitor=1, max_new_tokens=6)
    two = visitors["levels"]["2"]
    assert two["answers"] == 2 and two["answers_per_min"] > 0 and two["answers_per_min_vs_one_at_a_time"] > 0
    assert 0 <= two["first_token_p50_s"] <= two["latency_p50_s"]
    study = study_figures(app.local_url, "persona-four-way", [1], reading_s=0.5, max_votes=2, no_prefetch_url=None)
    assert study["participants"]["1"]["waits"] == 2
