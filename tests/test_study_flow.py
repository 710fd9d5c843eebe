"""The study flow on the running app with the real models: through gradio_client, and the page's
own handlers. Generations are kept to a few tokens."""
from __future__ import annotations

import json
from types import SimpleNamespace

import httpx
import pytest

from demo.app.loadtest import connect
from demo.study.definition import parse_definition
from demo.study.flow import shown_answer
from demo.study.store import StudyStore

from apphelp import as_cells, csv_cells, logged_generations, said, studio_with

HISTORY = ("I climbed the north ridge at dawn; the granite was still cold.\n\n"
           "Trail mix recipe: dates, almonds, dark chocolate, a pinch of salt.\n\n"
           "My boots finally gave up after 900 miles on the Pacific Crest Trail.")
FLOW = {
    "name": "flow-test",
    "consent": {"version": "1.1", "text": "Consent text for the **flow test**."},
    "instructions": "Pick the one that sounds like you.",
    "conditions": ["pplug", "generic"],
    "prompts": ["Write a tweet about my weekend.", "Write a note about hiking."],
    "trials_per_participant": 2,
    "generation": {"max_new_tokens": 4},
    "reveal_conditions": True,
    "completion": {"code": "FLOW-OK", "redirect_url": "https://example.org/done?cc=FLOW-OK"},
}


@pytest.fixture(scope="module")
def app(app, studio):
    """The session's app, with this module's studies registered (the pages read them when asked)."""
    StudyStore(studio.store).register(parse_definition(FLOW), source="test")
    StudyStore(studio.store).register(parse_definition({**FLOW, "name": "flow-ui", "prompts": "participant",
                                                        "reveal_conditions": False}), source="test")
    StudyStore(studio.store).register(parse_definition({**FLOW, "name": "flow-blind", "reveal_conditions": False}),
                                      source="test")
    StudyStore(studio.store).register(parse_definition({**FLOW, "name": "flow-persona", "trials_per_participant": 1,
                                                        "history": {"mode": "persona", "personas": ["food_blogger"]}}),
                                      source="test")
    return app


def test_vote_flow_through_the_client_resumes_and_counts_once(app, studio):
    client = connect(app.local_url)
    info = client.predict(study="flow-test", api_name="/study_info")
    assert info["consent_version"] == "1.1" and info["trials"] == 2 and not info["problem"]
    with pytest.raises(Exception, match="tick the consent box"):
        client.predict(study="flow-test", consent=False, participant_id="PPID1", api_name="/study_consent")
    me = client.predict(study="flow-test", consent=True, participant_id="PPID1", prolific_study_id="ST1",
                        session_id="SE1", api_name="/study_consent")
    ids = dict(study="flow-test", participant_id="PPID1", participant_token=me["participant_token"])
    assert me["stage"] == "history"
    assert client.predict(**ids, history=HISTORY, api_name="/study_history")["stage"] == "next"
    first = client.predict(**ids, api_name="/study_next")["trial"]
    assert first["index"] == 1 and first["A"] and first["B"] and "condition" not in str(first)

    # A dropped connection: a new client with the same id and token finds the same trial.
    again = connect(app.local_url)
    status = again.predict(**ids, api_name="/study_status")
    assert status["stage"] == "trial" and status["trial"] == first
    assert again.predict(**ids, api_name="/study_next")["trial"] == first

    other = again.predict(study="flow-test", consent=True, participant_id="PPID2", api_name="/study_consent")
    with pytest.raises(Exception, match="not yours"):
        again.predict(study="flow-test", participant_id="PPID2", participant_token=other["participant_token"],
                      trial_id=first["trial_id"], choice="A", api_name="/study_vote")
    with pytest.raises(Exception, match="no consent on record"):
        again.predict(**{**ids, "participant_token": "x" * 32}, trial_id=first["trial_id"], choice="A",
                      api_name="/study_vote")

    voted = again.predict(**ids, trial_id=first["trial_id"], choice="A", reason="sounds like me",
                          api_name="/study_vote")
    assert voted["voted"] == 1 and set(voted["revealed"].values()) == {"pplug", "generic"}
    with pytest.raises(Exception, match="already recorded"):
        client.predict(**ids, trial_id=first["trial_id"], choice="B", api_name="/study_vote")

    second = client.predict(**ids, api_name="/study_next")["trial"]
    assert second["index"] == 2 and second["trial_id"] != first["trial_id"]
    done = client.predict(**ids, trial_id=second["trial_id"], choice="tie", api_name="/study_vote")
    assert done["stage"] == "done" and done["completion_code"] == "FLOW-OK"

    rows = StudyStore(studio.store).export_rows("flow-test")
    mine = [r for r in rows if r["participant_id"] == "PPID1"]
    assert [(r["trial_index"], r["choice"]) for r in mine] == [(1, "A"), (2, "tie")]
    assert mine[0]["output_a"] == first["A"] and mine[0]["output_b"] == first["B"]
    assert mine[0]["preferred_condition"] == voted["revealed"]["A"] == mine[0]["condition_a"]
    assert mine[0]["prolific_study_id"] == "ST1" and mine[0]["consent_version"] == "1.1"
    assert mine[0]["plug_id"] == studio.plug_id and mine[0]["max_new_tokens"] == 4
    assert all(r["participant_completed"] for r in mine)


def test_study_pages_are_served(app):
    for path in ("study", "study-admin"):
        assert httpx.get(app.local_url + path, follow_redirects=True).status_code == 200


def _handler(demo, name):
    return next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == name)


def test_page_handlers_walk_a_participant_through_and_resume(app, studio):
    """The participant page's own handlers, as the browser calls them (consent, request, vote, reload)."""
    on_load, on_consent, advance = (_handler(app, n) for n in ("on_load", "on_consent", "advance"))
    on_history = _handler(app, "on_history")
    request = SimpleNamespace(query_params={"study": "flow-ui", "PROLIFIC_PID": "UI-1"})

    def values(out):  # {component: value or update} -> {label or elem: value}
        return {getattr(k, "label", None) or type(k).__name__ + str(k._id): v for k, v in out.items()}

    out = on_load({}, request)
    ctx = next(v for k, v in out.items() if type(k).__name__ == "State")
    assert ctx["query_pid"] == "UI-1" and any("Consent (version 1.1)" in str(v) for v in out.values())
    assert StudyStore(studio.store).export_rows("flow-ui") == []
    out = on_consent(ctx, {}, True)
    ctx = next(v for k, v in out.items() if type(k).__name__ == "State")
    saved = next(v for k, v in out.items() if type(k).__name__ == "BrowserState")
    assert saved["flow-ui"]["participant_id"] == "UI-1"
    out = on_history(ctx, saved, HISTORY, None)
    on_request = _handler(app, "on_request")
    assert values(out)["Your request for this trial"] == ""  # asks for a request; nothing is written yet
    assert [type(k).__name__ for k in advance(ctx, saved)] == ["State"]
    assert "Write your request first" in str(on_request(ctx, saved, "  "))
    out = on_request(ctx, saved, "Write a tweet about rain.")
    ctx = next(v for k, v in out.items() if type(k).__name__ == "State")
    shown = values(out)
    assert shown["A"] and shown["B"] and ctx["trial_id"]

    # Reload: the browser still holds the token; the same trial comes back without generating.
    out = on_load(saved, request)
    assert values(out)["A"] == shown["A"] and any("Welcome back" in str(v) for v in out.values())
    vote_a = next(f.fn for f in app.fns.values() if getattr(f.fn, "__name__", "") == "on_vote")  # A's button
    out = vote_a(ctx, saved, "")
    assert any("Vote saved" in str(v) for v in out.values())
    rows = StudyStore(studio.store).export_rows("flow-ui")
    assert [(r["request"], r["request_source"], r["voted"]) for r in rows] == [
        ("Write a tweet about rain.", "participant", True)]


def test_the_next_trial_keeps_the_vote_saved_line_and_a_vote_error_stays(app, studio):
    """Each vote button is chained to ``advance``: it must not wipe what the vote said."""
    on_load, on_consent, on_history, advance = (_handler(app, n) for n in
                                                ("on_load", "on_consent", "on_history", "advance"))
    vote_a = _handler(app, "on_vote")

    def state(out):
        return next(v for k, v in out.items() if type(k).__name__ == "State")

    out = on_load({}, SimpleNamespace(query_params={"study": "flow-blind", "PROLIFIC_PID": "UI-NOTE"}))
    out = on_consent(state(out), {}, True)
    ctx, saved = state(out), next(v for k, v in out.items() if type(k).__name__ == "BrowserState")
    on_history(ctx, saved, HISTORY, None)
    ctx = state(advance(ctx, saved))
    assert ctx["trial_id"]

    failed = vote_a({**ctx, "trial_id": ctx["trial_id"] + 10_000}, saved, "")  # a stale page's trial
    assert any("⚠️" in str(v) for v in failed.values())
    assert [type(k).__name__ for k in advance(ctx, saved)] == ["State"]  # the page, and its error, stay

    gone = {**ctx, "note": "Vote saved.", "token": "x" * 32}  # a step that fails spends the note too
    assert "note" not in state(advance(gone, saved))
    voted = vote_a(ctx, saved, "")
    after = advance(state(voted), saved)  # writes trial 2
    assert "Trial 2 of 2" in " ".join(str(v) for v in after.values())
    assert "Vote saved." in after.values() and "note" not in state(after)


def test_a_persona_trial_names_the_persona_as_the_main_page_does(app):
    on_load, on_consent = (_handler(app, n) for n in ("on_load", "on_consent"))
    out = on_load({}, SimpleNamespace(query_params={"study": "flow-persona", "PROLIFIC_PID": "UI-P"}))
    ctx = next(v for k, v in out.items() if type(k).__name__ == "State")
    out = on_consent(ctx, {}, True)
    shown = " ".join(str(v) for v in out.values())
    assert "Assigning you a persona" in shown and "your own writing" not in shown  # not asked for a history
    ctx = next(v for k, v in out.items() if type(k).__name__ == "State")
    saved = next(v for k, v in out.items() if type(k).__name__ == "BrowserState")
    shown = " ".join(str(v) for v in _handler(app, "advance")(ctx, saved).values())
    assert "You judge for the persona **Food Blogger**." in shown


def test_admin_page_refuses_without_the_token_and_reports_with_it(app, studio, tmp_path):
    assert "PPLUG_ADMIN_TOKEN" in said(_handler(app, "on_results")("", "flow-test", False)[0])
    from demo.study.flow import StudyService

    admin = StudyService(studio, admin_token="a-long-admin-token", studies_dir=None)
    with pytest.raises(Exception, match="Wrong admin token"):
        admin.admin_results("guess", "flow-test")
    results = admin.admin_results("a-long-admin-token", "flow-test")
    rows = StudyStore(studio.store).export_rows("flow-test")
    assert results.trials == len(rows) and results.included == sum(r["voted"] for r in rows)
    csv_path, jsonl_path = admin.admin_export("a-long-admin-token", "flow-test", tmp_path)
    jsonl = [json.loads(line) for line in jsonl_path.read_text().splitlines()]
    assert jsonl == rows and csv_cells(csv_path.read_text()) == as_cells(rows)


def test_page_events_through_gradio_processing(app, studio):
    """The page's events as the queue runs them (pre- and postprocessing, State held per session):
    outputs must be the page's components, the stored order must match what the page shows."""
    import asyncio

    import gradio as gr
    from gradio.state_holder import SessionState

    session = SessionState(app)
    request = gr.Request(query_params={"study": "flow-test", "PROLIFIC_PID": "GRADIO-1"}, session_hash="s1")
    fns = [f for f in app.fns.values() if f.page == "study"]

    def run(name, *inputs, nth=0):
        fn = [f for f in fns if getattr(f.fn, "__name__", "") == name][nth]
        out = asyncio.run(app.process_api(fn, list(inputs), state=session, request=request))
        return dict(zip([o._id for o in fn.outputs], out["data"])), {o._id: o for o in fn.outputs}

    def label(data, components, wanted):
        return next(v for i, v in data.items() if getattr(components[i], "label", None) == wanted)

    data, comps = run("on_load", {})
    run("advance", None, {}, "")  # chained after every load: nothing to do before consent
    saved_id = next(i for i, c in comps.items() if type(c).__name__ == "BrowserState")
    data, comps = run("on_consent", None, data[saved_id], True)
    saved = data[saved_id]
    assert saved["flow-test"]["participant_id"] == "GRADIO-1"
    run("advance", None, saved, "")  # before a history: nothing to do
    run("on_history", None, saved, HISTORY, None)
    data, comps = run("advance", None, saved, "")
    shown_a = label(data, comps, "A")
    shown_b = label(data, comps, "B")
    data, comps = run("on_vote", None, saved, "a reason", nth=1)  # "Choose B"
    assert any("Vote saved" in str(v) for v in data.values())  # the study reveals the conditions
    [row] = [r for r in StudyStore(studio.store).export_rows("flow-test") if r["participant_id"] == "GRADIO-1"]
    assert (row["output_a"], row["output_b"], row["choice"]) == (shown_a, shown_b, "B")
    assert row["preferred_condition"] == row["condition_b"]


def test_admin_events_through_gradio_processing(app, studio):
    import asyncio

    import gradio as gr
    from gradio.state_holder import SessionState

    from demo.app.study_pages import add_study

    admin_studio = studio_with(studio, admin_token="admin-token-for-tests")  # the same models and store
    with gr.Blocks() as demo:
        gr.Markdown("main")
    add_study(demo, admin_studio)
    session = SessionState(demo)
    fns = {getattr(f.fn, "__name__", ""): f for f in demo.fns.values() if f.page == "study-admin"}

    def run(name, *inputs):
        return asyncio.run(demo.process_api(fns[name], list(inputs), state=session))["data"]

    token = "admin-token-for-tests"
    _, choices, table = run("on_refresh", token, None)
    assert "flow-test" in str(choices) and "flow-test" in str(table)
    definition = "name: admin-made\nconsent: {version: '1', text: ok}\nconditions: [pplug, rag]\n" \
                 "prompts: [hi]\ntrials_per_participant: 1\n"
    assert "version 1" in run("on_save", token, definition, None)[1]
    assert "unchanged" in run("on_save", token, definition, None)[1]
    assert "admin-made" in run("on_show", token, "admin-made")[1]
    _, results_md, plot, participants = run("on_results", token, "flow-test", False)
    assert "Study `flow-test`" in results_md
    if any(r["voted"] for r in StudyStore(studio.store).export_rows("flow-test")):  # after the flow tests
        assert "pplug (X) vs generic (Y)" in results_md and "<svg" in plot
    _, files, preview = run("on_export", token, "flow-test")
    assert [f["orig_name"].rsplit(".", 1)[1] for f in files] == ["csv", "jsonl"]
    assert "condition_a" in str(preview)
    message, *rest = run("on_results", "wrong", "flow-test", False)  # said in the message area
    assert "Wrong admin token" in said(message)
    # ... and the results shown before do not stay under it, as if they belonged to the study asked for
    message, results_md, plot, participants = run("on_results", token, "no-such-study", False)
    assert "no-such-study" in said(message) and not results_md and not plot
    assert "Refresh studies" in said(message) and "link" not in said(message)  # said to the researcher
    assert participants["visible"] is False


def test_a_participant_leaves_through_the_client_and_nothing_of_them_is_left(app, studio):
    client = connect(app.local_url)
    me = client.predict(study="flow-test", consent=True, participant_id="LEAVER1", api_name="/study_consent")
    ids = dict(study="flow-test", participant_id="LEAVER1", participant_token=me["participant_token"])
    client.predict(**ids, history=HISTORY, api_name="/study_history")
    trial = client.predict(**ids, api_name="/study_next")["trial"]
    client.predict(**ids, trial_id=trial["trial_id"], choice="B", api_name="/study_vote")
    db = studio.store.connection()
    profile = db.execute("SELECT h.profile_id FROM study_histories h JOIN study_participants p ON p.id = "
                         "h.participant WHERE p.participant_id = 'LEAVER1'").fetchone()[0]
    out = client.predict(**ids, api_name="/study_withdraw")
    assert out["withdrawn"] and out["mode"] == "delete" and out["deleted"]["history_items"] == 3
    assert db.execute("SELECT COUNT(*) FROM study_participants WHERE participant_id = 'LEAVER1'").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM study_trials WHERE id = ?", [trial["trial_id"]]).fetchone()[0] == 0
    for table, column in (("profiles", "id"), ("history_items", "profile_id"), ("generations", "profile_id")):
        assert db.execute(f"SELECT COUNT(*) FROM {table} WHERE {column} = ?", [profile]).fetchone()[0] == 0
    with pytest.raises(Exception, match="no consent on record"):
        client.predict(**ids, api_name="/study_status")


# --- the next trial, prepared while the participant reads -----------------------------------------

def _prefetch_service(studio, name: str, max_new_tokens: int):
    from demo.study.flow import StudyService

    service = StudyService(studio, studies_dir=None, prefetch=True)
    service.register(parse_definition({**FLOW, "name": name, "trials_per_participant": 2,
                                       "generation": {"max_new_tokens": max_new_tokens}}), source="test")
    me = service.consent(name, True)
    ids = (name, me["participant_id"], me["participant_token"])
    row = service.db.participant(*ids)["id"]
    return service, ids, row


def _wait(condition, timeout=60.0):
    import time

    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_the_next_trial_is_prepared_ahead_and_stored_only_when_reached(studio):
    service, ids, row = _prefetch_service(studio, "prefetch-test", 8)
    assert service.set_history(*ids, items=HISTORY.split("\n\n"))["stage"] == "next"
    job = service._prefetched[row]  # trial 1 is being generated while the participant reads
    assert job.ready.wait(120) and job.result is not None
    assert service.db.trials(row) == [] and service.status(*ids)["stage"] == "next"  # stored and shown: nothing
    owner = studio.store.owners_of([job.plan.profile_id])
    assert all(logged_generations(studio.store, o) == [] for o in owner)

    first = service.next_trial(*ids)["trial"]
    stored = service.db.trials(row)
    assert len(stored) == 1 and stored[0]["order_seed"] == job.plan.order_seed
    assert (first["A"], first["B"]) == (shown_answer(job.result, job.plan.condition_a),
                                        shown_answer(job.result, job.plan.condition_b))
    second_job = service._prefetched[row]  # trial 2 starts while trial 1 is read
    assert second_job.plan.index == 2
    service.vote(*ids, first["trial_id"], "A")
    second_job.ready.wait(120)
    second = service.next_trial(*ids)["trial"]
    assert second["index"] == 2 and second["A"] == shown_answer(second_job.result, second_job.plan.condition_a)
    assert row not in service._prefetched  # nothing after the last trial


def test_a_participant_who_leaves_leaves_no_prepared_trial_behind(studio):
    service, ids, row = _prefetch_service(studio, "prefetch-leave", 200)
    service.set_history(*ids, items=HISTORY.split("\n\n"))
    job = service._prefetched[row]
    _wait(lambda: studio.scheduler.batch.rows > 0)  # its rows are in the decode loop
    service.withdraw(*ids)
    assert job.ready.wait(20) and job.result is None  # it left the loop at a step, long before 200 tokens
    _wait(lambda: studio.scheduler.active == 0, timeout=10)
    assert row not in service._prefetched
    assert studio.store.owners_of([job.plan.profile_id]) == []
    import sqlite3

    with sqlite3.connect(studio.settings.db_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM study_trials WHERE participant = ?", [row]).fetchone()[0] == 0
