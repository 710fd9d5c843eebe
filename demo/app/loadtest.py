"""Many visitors at once against a running app, through ``gradio_client``: serving figures.

    python -m demo.app.loadtest --out load.json          # starts `python app.py` itself
    python -m demo.app.loadtest --url http://host:7860/  # an app that is already running

1. **Visitors.** 1, 4 and 16 visitors (each with their own profile) send ``/generate`` requests
   back to back; the single visitor is the one-at-a-time baseline. Per level: answers per minute
   (answers / wall time of the level), latency p50/p95 (submit to the complete answer) and
   first-token time p50/p95, seen from the client: latency minus the server's time from its first
   token to its last (``timings`` of the answer), so that no client polls for streamed chunks.
   Levels run in turn inside each repeat, so every ratio compares figures measured minutes apart.
2. **Study.** Participants of a study with fixed prompts consent, read each trial for
   ``--reading-s`` seconds, vote, and ask for the next trial; the wait from sending the vote to
   having the next trial, p50/p95, with 1 and 8 participants at once (and, with
   ``--no-prefetch-url``, one participant on an app that does not prefetch).

``demo.research.benchmark`` runs this as a subprocess and merges its JSON into benchmark.json.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
from gradio_client import Client

from ..core.app_process import start_app
from ..core.settings import REPO_ROOT

PERSONA = REPO_ROOT / "assets" / "personas" / "food_blogger.txt"
# Long-form requests, so that answers of every level run to similar lengths.
REQUESTS = [
    "Write a short blog post about my weekend.",
    "Write a short paragraph about the best meal I cooked this month.",
    "Describe your ideal Sunday in five sentences.",
    "Write a short note to a friend about a trip to the market.",
    "Write a short blog post about learning to bake bread.",
    "Write a paragraph about a rainy afternoon in the city.",
    "Write a short story about a lost umbrella.",
    "Write a short review of a small neighbourhood cafe.",
]


# gradio_client makes an httpx client per request, and httpx a TLS context (the CA bundle parsed again)
# per client: ~15 ms of CPU per call, taken from the app being measured. One context serves them all.
_TLS = httpx.create_ssl_context()  # what httpx builds by default (certifi, or SSL_CERT_FILE), built once


def connect(url: str, **httpx_kwargs) -> Client:
    """A ``gradio_client`` client of the app at ``url`` whose requests share one TLS context (it hands
    ``ssl_verify`` to httpx's ``verify``, which takes a context)."""
    return Client(url, verbose=False, ssl_verify=_TLS, httpx_kwargs=httpx_kwargs)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation, as numpy's default."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@contextmanager
def running_app(env: dict[str, str], timeout: float = 600):
    """``python app.py`` on a free port with extra environment ``env`` -> its URL; stopped afterwards."""
    proc, url = start_app(env, timeout)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(60)


# --- visitors ------------------------------------------------------------------------------


def make_visitors(url: str, n: int) -> list[tuple[Client, str, str]]:
    """n clients, each with its own owner token and profile: (client, owner, profile id)."""
    history = PERSONA.read_text(encoding="utf-8")
    visitors = []
    for i in range(n):
        client = connect(url)
        owner = f"loadtest-{i:02d}-{secrets.token_hex(8)}"
        profile = client.predict(history=history, owner_token=owner, name=f"visitor {i}", api_name="/compute_profile")
        visitors.append((client, owner, profile["profile_id"]))
    return visitors


def visitors_level(visitors: list, n: int, per_visitor: int, max_new_tokens: int) -> dict:
    """``n`` visitors each send ``per_visitor`` requests back to back; figures of the level."""
    latencies, first_tokens, words = [], [], []
    start = threading.Barrier(n)
    lock = threading.Lock()

    def visit(v: int) -> None:
        client, owner, profile_id = visitors[v]
        start.wait()
        for j in range(per_visitor):
            request = REQUESTS[(v + j) % len(REQUESTS)]
            t0 = time.perf_counter()
            out = client.predict(owner_token=owner, profile_id=profile_id, request=request,
                                 max_new_tokens=max_new_tokens, api_name="/generate")
            latency = time.perf_counter() - t0
            server_stream = out["timings"]["total_s"] - out["timings"]["first_token_s"]
            with lock:
                latencies.append(latency)
                first_tokens.append(max(latency - server_stream, 0.0))
                words.append(len(out["personalized"].split()) + len(out["generic"].split()))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(visit, range(n)))
    wall = time.perf_counter() - t0
    return {"visitors": n, "answers": len(latencies), "wall_s": wall, "answers_per_min": 60 * len(latencies) / wall,
            "latency_p50_s": percentile(latencies, 50), "latency_p95_s": percentile(latencies, 95),
            "first_token_p50_s": percentile(first_tokens, 50), "first_token_p95_s": percentile(first_tokens, 95),
            "mean_words_per_answer_pair": statistics.mean(words)}


def visitors_figures(url: str, levels: list[int], repeats: int, per_visitor: int, max_new_tokens: int) -> dict:
    visitors = make_visitors(url, max(levels))
    runs: dict[int, list[dict]] = {n: [] for n in levels}
    for r in range(repeats):
        for n in levels:
            print(f"[loadtest] repeat {r + 1}/{repeats}: {n} visitor(s)", flush=True)
            runs[n].append(visitors_level(visitors, n, per_visitor, max_new_tokens))
    base = levels[0]
    out = {"max_new_tokens": max_new_tokens, "requests_per_visitor": per_visitor, "repeats": repeats,
           "one_at_a_time": f"{base} visitor", "levels": {}}
    for n in levels:
        keys = [k for k in runs[n][0] if k not in ("visitors",)]
        level = {k: statistics.median(run[k] for run in runs[n]) for k in keys}
        # the ratio inside each repeat (same minutes), then its median
        level["answers_per_min_vs_one_at_a_time"] = statistics.median(
            a["answers_per_min"] / b["answers_per_min"] for a, b in zip(runs[n], runs[base]))
        level["runs"] = runs[n]
        out["levels"][str(n)] = level
    return out


# --- study ---------------------------------------------------------------------------------


def study_participants(url: str, study: str, n: int, reading_s: float, max_votes: int) -> list[float]:
    """``n`` participants at once; every vote -> next trial wait, in seconds."""
    waits: list[float] = []
    lock = threading.Lock()
    clients = [connect(url) for _ in range(n)]
    start = threading.Barrier(n)

    def participate(i: int) -> None:
        client = clients[i]
        me = client.predict(study=study, consent=True, participant_id=f"LOAD{i}-{secrets.token_hex(4)}",
                            api_name="/study_consent")
        ids = dict(study=study, participant_id=me["participant_id"], participant_token=me["participant_token"])
        start.wait()
        status = client.predict(**ids, api_name="/study_next")
        for _ in range(max_votes):
            if status.get("stage") != "trial":
                break
            time.sleep(reading_s)
            t0 = time.perf_counter()
            voted = client.predict(**ids, trial_id=status["trial"]["trial_id"], choice="A", api_name="/study_vote")
            if voted["stage"] == "done":
                break
            status = client.predict(**ids, api_name="/study_next")
            with lock:
                waits.append(time.perf_counter() - t0)

    with ThreadPoolExecutor(n) as pool:
        list(pool.map(participate, range(n)))
    return waits


def study_figures(url: str, study: str, counts: list[int], reading_s: float, max_votes: int,
                  no_prefetch_url: str | None) -> dict:
    out: dict = {"study": study, "reading_s": reading_s, "participants": {}}
    for n in counts:
        print(f"[loadtest] study: {n} participant(s)", flush=True)
        waits = study_participants(url, study, n, reading_s, max_votes)
        out["participants"][str(n)] = {"waits": len(waits), "wait_p50_s": percentile(waits, 50),
                                       "wait_p95_s": percentile(waits, 95)}
    if no_prefetch_url:
        print("[loadtest] study: 1 participant, no prefetch", flush=True)
        waits = study_participants(no_prefetch_url, study, 1, reading_s, max_votes)
        out["no_prefetch_1"] = {"waits": len(waits), "wait_p50_s": percentile(waits, 50),
                                "wait_p95_s": percentile(waits, 95)}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running app (default: start `python app.py` with a temporary database)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--visitors", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--per-visitor", type=int, default=3, help="requests each visitor sends per level")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--study", default="persona-four-way", help="a study with fixed prompts, loaded by the app")
    parser.add_argument("--participants", type=int, nargs="*", default=[1, 8])
    parser.add_argument("--reading-s", type=float, default=15.0, help="time a participant reads before voting")
    parser.add_argument("--votes", type=int, default=6)
    parser.add_argument("--skip", nargs="*", default=[], help="visitors study no_prefetch")
    args = parser.parse_args(argv)

    results: dict = {"load_average_at_start": os.getloadavg(),
                     "server_threads": os.environ.get("OMP_NUM_THREADS", "torch default")}
    with tempfile.TemporaryDirectory() as tmp:
        env = {"PPLUG_DB": str(Path(tmp) / "load.db")}
        with running_app(env) if not args.url else _given(args.url) as url:
            if "visitors" not in args.skip:
                results["visitors"] = visitors_figures(url, args.visitors, args.repeats, args.per_visitor,
                                                       args.max_new_tokens)
                args.out.write_text(json.dumps(results, indent=2) + "\n")
            if "study" not in args.skip and args.participants:
                no_prefetch = None if "no_prefetch" in args.skip or args.url else {
                    "PPLUG_DB": str(Path(tmp) / "plain.db"), "PPLUG_STUDY_PREFETCH": "0"}
                with running_app(no_prefetch) if no_prefetch else _given(None) as plain_url:
                    results["study"] = study_figures(url, args.study, args.participants, args.reading_s,
                                                     args.votes, plain_url)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=1))


@contextmanager
def _given(url: str | None):
    yield url


if __name__ == "__main__":
    main()
