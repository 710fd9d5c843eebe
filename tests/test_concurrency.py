"""Many visitors at once through gradio_client: profiles, generations and study votes interleaved, then
the database is checked row by row. And a full queue answers with a clear message."""
from __future__ import annotations

import secrets
import sqlite3
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from demo.app.loadtest import connect
from demo.study.definition import parse_definition
from demo.study.store import StudyStore

from apphelp import serve, studio_with

STUDY = {
    "name": "concurrency-test",
    "consent": {"version": "1", "text": "Consent for the concurrency test."},
    "conditions": ["pplug", "generic"],
    "prompts": ["Write a tweet about my weekend.", "Write a note about hiking."],
    "trials_per_participant": 2,
    "generation": {"max_new_tokens": 4},
    "completion": {"code": "CONC-OK"},
}
# httpx's 5 s default: on a busy machine the server may take longer to accept a request while it computes.
PATIENT = {"timeout": 120}
HISTORY = "I climbed the north ridge at dawn.\n\nTrail mix: dates, almonds, chocolate.\n\nMy boots gave up at mile 900."


@pytest.fixture(scope="module")
def app(app, studio):
    """The session's app, with this module's study registered."""
    StudyStore(studio.store).register(parse_definition(STUDY), source="test")
    return app


def _api_session(url: str, n: int, start: threading.Barrier) -> dict:
    client = connect(url, **PATIENT)
    owner = f"concurrent-owner-{n:02d}-{secrets.token_hex(8)}"
    history = "\n\n".join(f"Session {n}, note {i}: {secrets.token_hex(6)} about my day." for i in range(3))
    start.wait()
    profile = client.predict(history=history, owner_token=owner, name=f"s{n}", api_name="/compute_profile")
    generations = []
    for g in range(2):
        out = client.predict(owner_token=owner, profile_id=profile["profile_id"], request=f"Session {n} request {g}.",
                             max_new_tokens=4, api_name="/generate")
        generations.append(out["generation_id"])
        assert [p["id"] for p in client.predict(owner_token=owner, api_name="/list_profiles")] == [profile["profile_id"]]
    return {"owner": owner, "profile_id": profile["profile_id"], "n_items": profile["n_items"],
            "generations": generations}


def _study_session(url: str, n: int, start: threading.Barrier) -> dict:
    client = connect(url, **PATIENT)
    pid = f"CONC-P{n}-{secrets.token_hex(4)}"
    start.wait()
    me = client.predict(study=STUDY["name"], consent=True, participant_id=pid, api_name="/study_consent")
    ids = dict(study=STUDY["name"], participant_id=pid, participant_token=me["participant_token"])
    client.predict(**ids, history=HISTORY, api_name="/study_history")
    votes = []
    for choice in ("A", "B"):
        trial = client.predict(**ids, api_name="/study_next")["trial"]
        done = client.predict(**ids, trial_id=trial["trial_id"], choice=choice, api_name="/study_vote")
        votes.append((trial["trial_id"], choice))
    assert done["completion_code"] == "CONC-OK"
    return {"participant_id": pid, "votes": votes}


@pytest.mark.parametrize("api_sessions, study_sessions", [
    (3, 1),
    pytest.param(12, 3, marks=pytest.mark.slow),
])
def test_many_concurrent_sessions_lose_and_duplicate_nothing(app, studio, api_sessions, study_sessions):
    # A timeout: one session failing before the barrier must fail the test, not leave the others waiting.
    start = threading.Barrier(api_sessions + study_sessions, timeout=300)
    with ThreadPoolExecutor(api_sessions + study_sessions) as pool:
        api_futures = [pool.submit(_api_session, app.local_url, n, start) for n in range(api_sessions)]
        study_futures = [pool.submit(_study_session, app.local_url, n, start) for n in range(study_sessions)]
        sessions = [f.result(timeout=600) for f in api_futures]
        participants = [f.result(timeout=600) for f in study_futures]

    with sqlite3.connect(studio.settings.db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        owners = [s["owner"] for s in sessions]
        marks = ", ".join("?" * len(owners))
        profiles = conn.execute(f"SELECT id, owner, n_items FROM profiles WHERE owner IN ({marks})", owners).fetchall()
        assert sorted(profiles) == sorted((s["profile_id"], s["owner"], 3) for s in sessions)
        for s in sessions:
            items = conn.execute("SELECT position FROM history_items WHERE profile_id = ? ORDER BY position",
                                 [s["profile_id"]]).fetchall()
            assert items == [(0,), (1,), (2,)]
            for table in ("profile_matrices", "personal_embeddings"):
                assert conn.execute(f"SELECT COUNT(*) FROM {table} WHERE profile_id = ?",
                                    [s["profile_id"]]).fetchone()[0] == 1
        generations = conn.execute(f"SELECT id, owner, profile_id, prompt FROM generations WHERE owner IN ({marks})",
                                   owners).fetchall()
        expected = {(g, s["owner"], s["profile_id"]) for s in sessions for g in s["generations"]}
        assert {row[:3] for row in generations} == expected and len(generations) == 2 * api_sessions
        assert max(Counter(row[3] for row in generations).values()) == 1  # each prompt logged exactly once

    rows = StudyStore(studio.store).export_rows(STUDY["name"])
    for p in participants:
        mine = [(r["trial_id"], r["choice"]) for r in rows if r["participant_id"] == p["participant_id"] and r["voted"]]
        assert sorted(mine) == sorted(p["votes"])
    writes = len(profiles) * 6 + len(generations) + sum(len(p["votes"]) for p in participants)
    print(f"\n{api_sessions + study_sessions} sessions, {writes} writes checked, 0 lost, 0 duplicated")


@pytest.mark.slow  # eight clients and three generations to fill a queue of two
def test_a_full_queue_answers_with_a_clear_message(studio):
    demo = serve(studio_with(studio, max_queue=2, batch_rows=2))  # one generation at a time
    try:
        client = connect(demo.local_url, **PATIENT)
        owner = secrets.token_urlsafe(24)
        profile = client.predict(history=HISTORY, owner_token=owner, name="q", api_name="/compute_profile")
        call = dict(owner_token=owner, profile_id=profile["profile_id"], request="Write a tweet.", max_new_tokens=8,
                    api_name="/generate")
        clients = [connect(demo.local_url, **PATIENT) for _ in range(8)]
        jobs = [c.submit(**call) for c in clients]  # all at once: 1 runs, 2 wait, the rest are refused
        outcomes = []
        for job in jobs:
            try:
                outcomes.append(job.result(timeout=300)["generic"] is not None)
            except Exception as err:  # noqa: BLE001 - the message is what is under test
                outcomes.append(str(err))
        refused = [o for o in outcomes if o is not True]
        assert refused and all("Queue is full" in o for o in refused), refused
        assert outcomes.count(True) >= 2
        assert client.predict(**call)["generic"]  # usable again once the queue drains
    finally:
        demo.close()
