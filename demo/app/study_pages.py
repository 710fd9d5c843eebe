"""The user-study pages: the participant flow (``/study?study=NAME``) and the researcher's page
(``/study-admin``: studies, results, export). Layout and glue only; the logic is ``demo.study``.

A participant's id and secret token live in their browser (``gr.BrowserState``), so a reload or a
dropped connection resumes where they were. The same steps are named API endpoints for
``gradio_client`` (``/study_info``, ``/study_consent``, ``/study_history``, ``/study_next``,
``/study_vote``, ``/study_status``, ``/study_withdraw``); the UI handlers call the same service methods.
"""
from __future__ import annotations

import copy
import functools
import tempfile
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pandas as pd
import spaces
import yaml

from ..core.history import HistoryError
from ..core.personas import persona_label
from ..core.text import markdown_text
from ..study import stats as study_stats
from ..study.definition import CHOICES, CONDITION_LABELS, StudyError, persona_items, read_study_text
from ..study.flow import REASON_CHARS, StudyService
from ..study.store import EXPORT_COLUMNS
from .api import PROFILE_QUEUE, generate_queue, parse_history
from .binding import PRIVATE, bind
from .identity import browser_secret
from .validation import api_error, checked, message, warning



def add_study(demo: gr.Blocks, studio) -> StudyService:
    """Add the study pages to ``demo`` (call after its main ``with`` block). Returns the service."""
    settings = studio.settings
    service = StudyService(studio, admin_token=settings.admin_token, studies_dir=settings.studies_dir)
    secret = browser_secret(settings.db_path)

    with demo:  # on the main page: a study link of the form /?study=NAME opens the study page
        _hide_navbar()  # the extra pages are reached by link; the main page looks as it did
        demo.load(None, js="""() => { const q = new URLSearchParams(window.location.search);
            if (q.get('study')) { window.location.replace(
                window.location.pathname.replace(/\\/?$/, '/') + 'study' + window.location.search); } }""")
    with demo.route("User study", "study", show_in_navbar=False):
        # No link from the blind study to the labelled side-by-side page, nor to the API page.
        _hide_navbar(also=".show-api, .show-api-divider")
        _participant_page(demo, service, secret)
    with demo.route("Study admin", "study-admin", show_in_navbar=False):
        _admin_page(service)
    return service


def _hide_navbar(also: str = "") -> None:
    """Hide the navbar (and the elements ``also`` selects) on the page being built."""
    # Gradio 6.31 shows a navbar on every page of a multipage app, and gr.Navbar(visible=False) does
    # not hide it there; a style on the page does.
    hidden = ".nav-holder" + (f", {also}" if also else "")
    gr.HTML(f"<style>{hidden} {{ display: none !important; }}</style>", container=False, padding=False)


# ---------------------------------------------------------------------------------------
# Participant page: layout
# ---------------------------------------------------------------------------------------


def _participant_layout(secret: str) -> SimpleNamespace:
    """The participant page's components: one column per screen, shown one at a time."""
    v = SimpleNamespace(saved=gr.BrowserState({}, storage_key="pplug_study", secret=secret),  # {study: ids}
                        ctx=gr.State({}),  # study, query ids, participant_id, token, trial_id, paused
                        title=gr.Markdown("# User study"), message=gr.Markdown())
    with gr.Column(visible=False) as v.consent_col:
        v.consent_md = gr.Markdown()
        v.participant_md = gr.Markdown()
        v.agree = gr.Checkbox(label="I have read the information above and agree to take part.")
        v.consent_btn = gr.Button("Continue", variant="primary")
    with gr.Column(visible=False) as v.history_col:
        v.history_md = gr.Markdown()
        v.history_text = gr.Textbox(label="Your writing", lines=10, max_lines=20,
                                    placeholder="Paste posts, e-mails or essays you wrote: one item per paragraph.")
        v.history_files = gr.File(label="…or upload files (.txt, .md, .json, .jsonl, .csv)", file_count="multiple",
                                  file_types=[".txt", ".md", ".json", ".jsonl", ".csv", ".tsv"])
        with gr.Row():
            v.history_btn = gr.Button("Use my writing", variant="primary")
            v.persona_btn = gr.Button("Use an assigned persona instead", visible=False)
    _trial_layout(v)
    with gr.Column(visible=False) as v.done_col:
        v.done_md = gr.Markdown()
    with gr.Accordion("Leave the study and delete my data", open=False, visible=False) as v.withdraw_acc:
        v.withdraw_md = gr.Markdown()
        v.withdraw_ok = gr.Checkbox(label="Yes, I want to leave this study.")
        v.withdraw_btn = gr.Button("Leave the study", variant="stop")
        v.withdraw_note = gr.Markdown()  # a problem with leaving, said where the participant looks
    v.screens = {"consent": v.consent_col, "history": v.history_col, "trial": v.trial_col, "done": v.done_col}
    v.view = [v.title, v.message, *v.screens.values(), v.consent_md, v.participant_md, v.history_md, v.persona_btn,
              v.progress_md, v.instructions_md, v.persona_acc, v.persona_md, v.request_group, v.request_md, v.out_a,
              v.out_b, v.vote_row, v.reason, v.reveal_md, v.next_btn, v.done_md, v.request_box, v.withdraw_acc,
              v.withdraw_md, v.withdraw_note, v.ctx, v.saved]
    return v


def _trial_layout(v: SimpleNamespace) -> None:
    with gr.Column(visible=False) as v.trial_col:
        v.progress_md = gr.Markdown()
        v.instructions_md = gr.Markdown()
        with gr.Accordion("The persona's writing (examples)", open=False, visible=False) as v.persona_acc:
            v.persona_md = gr.Markdown()
        with gr.Group(visible=False) as v.request_group:
            v.request_box = gr.Textbox(label="Your request for this trial", lines=2,
                                       placeholder="e.g. Write a short post about your weekend.")
            v.request_btn = gr.Button("Show the two answers", variant="primary")
        v.request_md = gr.Markdown()
        with gr.Row():
            v.out_a = gr.Textbox(label="A", lines=10, interactive=False)
            v.out_b = gr.Textbox(label="B", lines=10, interactive=False)
        with gr.Row() as v.vote_row:
            v.vote_btns = {c: gr.Button(label, variant="primary" if c in ("A", "B") else "secondary")
                           for c, label in CHOICES.items()}
        v.reason = gr.Textbox(label="Why? (optional)", lines=2, max_lines=6, max_length=REASON_CHARS)
        v.reveal_md = gr.Markdown(visible=False)
        v.next_btn = gr.Button("Next trial", visible=False, variant="primary")


# ---------------------------------------------------------------------------------------
# Participant page: handlers (v: the page's components; c: its context; s: what the browser keeps)
# ---------------------------------------------------------------------------------------


def _show(v: SimpleNamespace, screen: str | None, c: dict, s: dict, updates: dict) -> dict:
    out = {col: gr.update(visible=(name == screen)) for name, col in v.screens.items()}
    joined = bool(c.get("token")) and screen not in (None, "consent")
    out[v.withdraw_acc] = gr.update(visible=joined)
    if joined:
        kept = c.get("info", {}).get("on_withdraw") == "keep_anonymized"
        out[v.withdraw_md] = ("You can leave at any time. Your writing and everything generated from it "
                              "will be deleted; " + (
                                  "as the consent says, your votes are kept without anything that identifies "
                                  "you (participant id, your requests, comments and texts made from your "
                                  "writing are removed)." if kept else "so will your votes and every record "
                                  "of your participation.") + " This cannot be undone.")
    out.update({v.ctx: c, v.saved: s, v.withdraw_note: ""})
    out.update(updates)
    return out


def _problem(v: SimpleNamespace, err: Exception | str) -> dict:
    """A message above the page; nothing else changes, so the page stays usable."""
    return {v.message: warning(err)}  # a message may quote a study name from the link


def _render(v: SimpleNamespace, status: dict, c: dict, s: dict, note: str = "") -> dict:
    """The screen for a participant's status (from the service)."""
    info, stage = c["info"], status["stage"]
    pid = f"Your participant id: **{markdown_text(status['participant_id'])}** (note it down)."
    if stage == "done":
        lines = [f"## Thank you!\nYou have finished all {status['total']} trials. {pid}"]
        if status.get("completion_code"):
            lines.append(f"Your completion code: **`{status['completion_code']}`**")
        if status.get("redirect_url"):
            lines.append(f"[Return to the study platform]({status['redirect_url']})")
        return _show(v, "done", c, s, {v.message: note, v.done_md: "\n\n".join(lines)})
    if stage == "history" and status["history_mode"] == "persona":  # assigned next, with the first trial
        return _show(v, None, c, s, {v.message: note or "Assigning you a persona and writing your first trial "
                                                         "(a few seconds)…"})
    if stage == "history":
        text = ("Paste or upload some of your own writing (posts, e-mails, essays), at least a few "
                "paragraphs. The answers in the study will be personalized with it.")
        return _show(v, "history", c, s, {v.message: note, v.history_md: f"{pid}\n\n{text}",
                                          v.persona_btn: gr.update(visible=status["history_mode"] == "either")})
    index = status["trial"]["index"] if "trial" in status else status.get("index", 0)
    common = {v.message: note, v.progress_md: f"**Trial {index} of {status['total']}** · {pid}",
              v.instructions_md: info.get("instructions", "")}
    if status.get("persona"):
        common[v.instructions_md] = (info.get("instructions", "") +
                                     f"\n\nYou judge for the persona **{persona_label(status['persona'])}**.")
        examples = persona_items(status["persona"])[:5]
        common[v.persona_acc] = gr.update(visible=True)
        common[v.persona_md] = "\n\n".join(f"> {markdown_text(t[:500])}{'…' if len(t) > 500 else ''}"
                                             for t in examples)
    hidden = gr.update(visible=False)
    if stage in ("request", "next"):
        return _show(v, "trial", c, s, {**common, v.request_group: gr.update(visible=stage == "request"),
                                        v.request_box: "", v.request_md: "", v.out_a: "", v.out_b: "",
                                        v.vote_row: hidden, v.reason: hidden, v.reveal_md: hidden, v.next_btn: hidden})
    trial = status["trial"]
    return _show(v, "trial", {**c, "trial_id": trial["trial_id"]}, s, {
        **common, v.request_group: hidden, v.request_md: f"**Request:** {markdown_text(trial['request'])}",
        v.out_a: trial["A"], v.out_b: trial["B"], v.vote_row: gr.update(visible=True),
        v.reason: gr.update(visible=True, value=""), v.reveal_md: hidden, v.next_btn: hidden})


def _ids(c: dict) -> tuple[str, str, str]:
    if not c.get("token"):
        raise StudyError("Reload the study link to start.")
    return c["study"], c["participant_id"], c["token"]


def on_load(service: StudyService, v: SimpleNamespace, s, request: gr.Request):
    s = dict(s or {})
    q = dict(request.query_params) if request else {}
    name = (q.get("study") or "").strip()
    c = {"study": name, "query_pid": q.get("PROLIFIC_PID", ""), "query_study_id": q.get("STUDY_ID", ""),
         "query_session_id": q.get("SESSION_ID", "")}
    if not name:
        return _show(v, None, c, s, {v.message: "Open the study link you were given (it ends in `?study=NAME`)."})
    try:
        info = service.info(name)
    except StudyError as err:  # quotes the study name from the link: shown as text
        return _show(v, None, c, s, _problem(v, err))
    c["info"] = info
    head = {v.title: f"# {info['title']}"}
    if info["problem"]:
        return _show(v, None, c, s, {**head, v.message: f"⚠️ This study cannot run right now. {info['problem']}"})
    mine = s.get(name)
    if mine and (not c["query_pid"] or c["query_pid"] == mine["participant_id"]):
        try:
            c.update(participant_id=mine["participant_id"], token=mine["token"])
            status = service.status(name, mine["participant_id"], mine["token"])
            return {**_render(v, status, c, s, "Welcome back: you continue where you left off."), **head}
        except StudyError:
            s.pop(name, None)
    pid = c["query_pid"]
    who = f"Your participant id: **{markdown_text(pid)}**." if pid else "You will get a participant id when you continue; note it down."
    return _show(v, "consent", c, s, {
        **head, v.consent_md: f"## Consent (version {info['consent_version']})\n\n{info['consent_text']}",
        v.participant_md: who + " Nothing is stored before you agree."})


def on_consent(service: StudyService, v: SimpleNamespace, c, s, agreed):
    try:
        out = service.consent(c.get("study", ""), bool(agreed), c.get("query_pid", ""),
                              c.get("query_study_id", ""), c.get("query_session_id", ""))
    except StudyError as err:
        return _problem(v, err)
    c = {**c, "participant_id": out["participant_id"], "token": out["participant_token"]}
    s = {**(s or {}), c["study"]: {"participant_id": out["participant_id"], "token": out["participant_token"]}}
    return _render(v, out, c, s)


def on_history(service: StudyService, v: SimpleNamespace, c, s, text, files):
    try:
        parsed = parse_history(service.studio.settings.limits, text, files)
        status = service.set_history(*_ids(c), items=parsed.items, source=parsed.source)
    except (HistoryError, StudyError) as err:
        return _problem(v, err)
    return _render(v, status, c, s)


def on_persona(service: StudyService, v: SimpleNamespace, c, s):
    try:
        return _render(v, service.set_history(*_ids(c)), c, s)
    except StudyError as err:
        return _problem(v, err)


def _step(service: StudyService, v: SimpleNamespace, c, s, request_text="", redraw=False):
    """Generate the next trial when one is due. Otherwise the page stays as the last step drew it
    (with its message, such as a vote's error), unless ``redraw`` asks for the current screen."""
    note = c.get("note", "")  # a message the step before left for this one ("Vote saved.")
    c = {k: val for k, val in c.items() if k != "note"}
    if not c.get("token") or c.get("paused"):
        return {v.ctx: c}  # nothing to do (an empty dict would read as one value to Gradio)
    try:
        status = service.status(*_ids(c))
        stage, asked = status["stage"], (request_text or "").strip()
        if stage == "next" or (stage == "history" and status["history_mode"] == "persona"):
            status = service.next_trial(*_ids(c))
        elif stage == "request" and asked:
            status = service.next_trial(*_ids(c), request=request_text)
        elif not redraw:
            return {v.ctx: c}
    except StudyError as err:
        return {**_problem(v, err), v.ctx: c}  # the note is spent either way
    return _render(v, status, c, s, note)


def advance(service: StudyService, v: SimpleNamespace, c, s):
    """Chained after every step that draws the page: writes the next trial when one is due."""
    return _step(service, v, c, s)


def on_vote(service: StudyService, v: SimpleNamespace, choice: str, c, s, why):
    try:
        status = service.vote(*_ids(c), int(c.get("trial_id") or 0), choice, why or "")
    except StudyError as err:
        if "already recorded" not in str(err):
            return _problem(v, err)
        return _render(v, service.status(*_ids(c)), c, s)
    revealed = status.get("revealed")
    if revealed and status["stage"] != "done":
        text = " · ".join(f"**{side}** was {CONDITION_LABELS.get(cond, cond)}" for side, cond in revealed.items())
        return _show(v, "trial", {**c, "paused": True}, s, {
            v.vote_row: gr.update(visible=False), v.reason: gr.update(visible=False),
            v.reveal_md: gr.update(visible=True, value=f"Vote saved. {text}."), v.next_btn: gr.update(visible=True)})
    return _render(v, status, {**c, "note": "Vote saved."}, s, "Vote saved.")  # the next trial keeps the note


def on_request(service: StudyService, v: SimpleNamespace, c, s, text):
    if not (text or "").strip():
        return _problem(v, "Write your request first.")
    return _step(service, v, c, s, text, redraw=True)


def on_next(service: StudyService, v: SimpleNamespace, c, s):
    return _step(service, v, {**c, "paused": False}, s, redraw=True)


def on_withdraw(service: StudyService, v: SimpleNamespace, c, s, sure):
    if not sure:
        return {v.withdraw_note: warning("Tick the box above to confirm that you want to leave.")}
    try:
        out = service.withdraw(*_ids(c))
    except StudyError as err:
        return {v.withdraw_note: warning(err)}
    s = {k: val for k, val in (s or {}).items() if k != c["study"]}
    c = {k: val for k, val in c.items() if k not in ("participant_id", "token", "trial_id")}
    after = " If you came from Prolific, return the study there." if c.get("query_pid") else ""  # no code comes
    return _show(v, None, c, s, {v.message: f"✅ {out['message']}{after}"})


def on_interact(service: StudyService, c):
    try:
        if c.get("token") and c.get("trial_id"):
            service.interact(*_ids(c), int(c["trial_id"]))
    except StudyError:
        pass


# ---------------------------------------------------------------------------------------
# Participant page: wiring
# ---------------------------------------------------------------------------------------


def _participant_page(demo: gr.Blocks, service: StudyService, secret: str) -> None:
    v = _participant_layout(secret)
    # One progress overlay where the participant waits (the two answers; the writing while it is encoded),
    # not one on every component of the view, which stacked "processing" boxes over the whole page.
    gpu = dict(**generate_queue(service.studio), **PRIVATE, show_progress_on=[v.out_a, v.out_b])
    profile_work = dict(**PROFILE_QUEUE, **PRIVATE, show_progress_on=[v.history_text])
    nxt = bind(advance, service, v, gpu_seconds=120)
    state = [v.ctx, v.saved]
    demo.load(bind(on_load, service, v), v.saved, v.view, **PRIVATE).then(nxt, state, v.view, **gpu)
    v.consent_btn.click(bind(on_consent, service, v), [*state, v.agree], v.view, **PRIVATE).then(
        nxt, state, v.view, **gpu)
    v.history_btn.click(bind(on_history, service, v, gpu_seconds=120), [*state, v.history_text, v.history_files],
                        v.view, **profile_work).then(nxt, state, v.view, **gpu)
    v.persona_btn.click(bind(on_persona, service, v, gpu_seconds=120), state, v.view, **profile_work).then(
        nxt, state, v.view, **gpu)
    for trigger in (v.request_btn.click, v.request_box.submit):
        trigger(bind(on_request, service, v, gpu_seconds=120), [*state, v.request_box], v.view, **gpu)
    for choice, button in v.vote_btns.items():
        button.click(bind(on_vote, service, v, choice), [*state, v.reason], v.view, **PRIVATE).then(
            nxt, state, v.view, **gpu)
    v.next_btn.click(bind(on_next, service, v, gpu_seconds=120), state, v.view, **gpu)
    v.withdraw_btn.click(bind(on_withdraw, service, v), [*state, v.withdraw_ok], v.view, **PRIVATE)
    v.reason.focus(bind(on_interact, service), v.ctx, None, **PRIVATE)
    _participant_api(service, service.studio.settings.limits)


def _participant_api(service: StudyService, limits) -> None:
    """Typed endpoints for ``gradio_client`` (the participant flow without a browser); every argument is
    checked by :func:`demo.app.validation.checked` first."""

    def call(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (StudyError, HistoryError) as err:
            raise api_error(err) from None

    @checked
    def study_info(study: str) -> dict:
        """Title, consent text and version, instructions of a study. Stores nothing."""
        return call(service.info, study)

    @checked
    def study_consent(study: str, consent: bool, participant_id: str = "", prolific_study_id: str = "",
                      session_id: str = "") -> dict:
        """Give consent (only the boolean true counts); returns the participant id and the secret
        participant token for the next calls."""
        return call(service.consent, study, consent, participant_id, prolific_study_id, session_id)

    @checked
    def study_status(study: str, participant_id: str, participant_token: str) -> dict:
        """Where the participant is (history, request, next, trial, done); the open trial if any."""
        return call(service.status, study, participant_id, participant_token)

    @checked
    @spaces.GPU(duration=120)
    def study_history(study: str, participant_id: str, participant_token: str, history: str = "",
                      persona: str = "") -> dict:
        """Set the participant's history once: pasted text (items separated by blank lines), or a persona."""
        if history.strip():
            items = call(parse_history, limits, history, None).items
            return call(service.set_history, study, participant_id, participant_token, items=items)
        return call(service.set_history, study, participant_id, participant_token, persona=persona)

    @checked
    @spaces.GPU(duration=120)
    def study_next(study: str, participant_id: str, participant_token: str, request: str = "") -> dict:
        """The open trial (the same one again until it is voted on), or a newly generated one."""
        return call(service.next_trial, study, participant_id, participant_token, request)

    @checked
    def study_vote(study: str, participant_id: str, participant_token: str, trial_id: int, choice: str,
                   reason: str = "") -> dict:
        """Vote on a trial: choice is A, B, tie or both_bad. Each trial counts once."""
        return call(service.vote, study, participant_id, participant_token, trial_id, choice, reason)

    @checked
    def study_withdraw(study: str, participant_id: str, participant_token: str) -> dict:
        """Leave the study: the participant's data is deleted (votes kept anonymized if the consent says so)."""
        return call(service.withdraw, study, participant_id, participant_token)

    gr.api(study_info, api_name="study_info")
    gr.api(study_consent, api_name="study_consent")
    gr.api(study_status, api_name="study_status")
    gr.api(study_history, api_name="study_history", **PROFILE_QUEUE)
    gr.api(study_next, api_name="study_next", **generate_queue(service.studio))
    gr.api(study_vote, api_name="study_vote")
    gr.api(study_withdraw, api_name="study_withdraw")


# ---------------------------------------------------------------------------------------
# Admin page
# ---------------------------------------------------------------------------------------

EXAMPLE_DEFINITION = """name: my-study
title: Which answer sounds more like you?
consent:
  version: "1.0"
  text: |
    You will compare pairs of short texts written by a language model. ...
instructions: Pick the answer that reads more like something you would write.
conditions: [pplug, generic]
prompts:
  - Write a short post about your weekend.
trials_per_participant: 6
history: {mode: participant, min_items: 3}
generation: {max_new_tokens: 64, temperature: 0.0}
reveal_conditions: false
completion: {code: ABC123, redirect_url: "https://app.prolific.com/submissions/complete?cc=ABC123"}
"""


def _admin_layout(service: StudyService) -> SimpleNamespace:
    gr.Markdown("# Study admin\nResearchers only: every action needs the admin token (`PPLUG_ADMIN_TOKEN`). "
                "Participants open `/study?study=NAME` (Prolific appends `&PROLIFIC_PID=...`).")
    on = bool(service.admin_token)  # without one, every button is off and this says why
    if not on:
        gr.Markdown("⚠️ `PPLUG_ADMIN_TOKEN` is not set in the app's environment: the admin functions are off.")
    if service.load_errors:
        errors = "\n\n".join(map(markdown_text, service.load_errors))
        gr.Markdown("⚠️ Study files that could not be loaded:\n\n" + errors)
    a = SimpleNamespace(token=gr.Textbox(label="Admin token", type="password", interactive=on),
                        message=gr.Markdown(visible=False))  # the page's one place for problems
    with gr.Row():
        a.study = gr.Dropdown(label="Study", choices=[], interactive=True, allow_custom_value=True)
        a.refresh_btn = gr.Button("Refresh studies", scale=0, interactive=on)
    a.studies_table = gr.Dataframe(label="Studies", interactive=False, visible=False)  # shown once filled
    with gr.Tabs():
        with gr.Tab("Results"):
            a.completed_only = gr.Checkbox(label="Only participants who finished")
            a.results_btn = gr.Button("Compute results", variant="primary", interactive=on)
            a.results_md = gr.Markdown()
            a.plot = gr.HTML()
            a.participants = gr.Dataframe(label="Per participant", interactive=False, visible=False)
        with gr.Tab("Export"):
            a.export_btn = gr.Button("Export trials with votes (CSV and JSONL)", variant="primary", interactive=on)
            a.export_files = gr.File(label="Export files", file_count="multiple")
            a.export_preview = gr.Dataframe(label="First rows", interactive=False, visible=False)
        with gr.Tab("Withdraw a participant"):
            gr.Markdown("For a participant who asks you to remove their data. What happens to their votes follows "
                        "the consent they agreed to (`consent.on_withdraw`).")
            a.withdraw_pid = gr.Textbox(label="Participant id")
            a.withdraw_btn = gr.Button("Withdraw and delete their data", variant="stop", interactive=on)
            a.withdraw_md = gr.Markdown()
        with gr.Tab("Define a study"):
            gr.Markdown("Paste a study definition (YAML or JSON; see `assets/studies/` and docs/studies.md) or upload "
                        "a file. Saving a changed definition makes a new version; trials keep the version they "
                        "ran under.")
            a.definition = gr.Code(EXAMPLE_DEFINITION, language="yaml", label="Definition")
            a.definition_file = gr.File(label="…or upload a study file", file_types=[".json", ".yaml", ".yml"])
            with gr.Row():
                a.show_btn = gr.Button("Load the selected study's definition", interactive=on)
                a.save_btn = gr.Button("Validate and save", variant="primary", interactive=on)
            a.save_md = gr.Markdown()
    return a


def _table(frame: pd.DataFrame):
    return gr.update(value=frame, visible=not frame.empty)  # an empty one would show made-up headers "1 2 3"


def _guard(n_outputs: int, cleared: tuple = (), beside: bool = False):
    """An admin handler -> one whose first output is the page's message area: hidden when the handler
    succeeds, its ``StudyError`` (a wrong token, an unknown study, a bad definition) when it fails. On a
    failure the handler's ``n_outputs`` other outputs are set to ``cleared`` (results of another study must
    not stay in view under the error) or left as they are; ``beside`` puts the error in the handler's first
    output instead, next to its button, far down the page from the message area."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args):
            try:
                out = fn(*args)
            except StudyError as err:
                rest = [copy.copy(v) for v in cleared] or [gr.skip()] * n_outputs
                return (message(), warning(err), *rest[1:]) if beside else (warning(err), *rest)
            return message(), *(out if isinstance(out, tuple) else (out,))
        return inner
    return wrap


def _studies(service: StudyService, t, current):
    rows = service.admin_studies(t)
    names = [r["study"] for r in rows]
    return (gr.update(choices=names, value=current if current in names else (names[0] if names else None)),
            _table(pd.DataFrame(rows)))


@_guard(2)
def on_refresh(service: StudyService, t, current):
    return _studies(service, t, current)


def studies_after(service: StudyService, t, current):
    """The study list again after a save or a withdrawal; the message area keeps what that step said."""
    try:
        return _studies(service, t, current)
    except StudyError:
        return gr.skip(), gr.skip()


_HIDDEN = gr.update(value=None, visible=False)


@_guard(3, cleared=("", "", _HIDDEN))
def on_results(service: StudyService, t, name, only):
    results = service.admin_results(t, name, bool(only))
    svg = study_stats.forest_svg(results.pairs, "pair", "win_rate", "ci_low", "ci_high", 0.5, 0.0, 1.0,
                                 "Win rate of the first condition (95% bootstrap CI)")
    if results.bradley_terry:
        span = max([3.0] + [abs(r[k]) for r in results.bradley_terry for k in ("ci_low", "ci_high")
                            if pd.notna(r[k])])
        svg += study_stats.forest_svg(results.bradley_terry, "condition", "score", "ci_low", "ci_high", 0.0,
                                      -span, span, "Bradley–Terry score (95% bootstrap CI)")
    note = ("\n\nWin rate = (wins + ½·(ties + both bad)) / votes; intervals resample participants. "
            "Bradley–Terry scores are log-strengths (mean 0).")
    return results.markdown() + note, svg or "No votes yet.", _table(pd.DataFrame(results.participants))


@_guard(2, cleared=(None, _HIDDEN))
def on_export(service: StudyService, t, name):
    folder = Path(tempfile.mkdtemp(prefix="pplug-export-"))
    paths = service.admin_export(t, name, folder)
    frame = pd.read_csv(paths[0], nrows=20) if paths else pd.DataFrame(columns=list(EXPORT_COLUMNS))
    return [str(p) for p in paths], _table(frame)


@_guard(1, beside=True)
def on_save(service: StudyService, t, text, file):
    if file:
        text = read_study_text(getattr(file, "name", file))
    return service.admin_register(t, text or "", source="admin")


@_guard(1)
def on_show(service: StudyService, t, name):
    service.check_admin(t)
    found = service.db.definition(name or "")
    if found is None:
        raise StudyError("Choose a study first (Refresh studies).")
    return yaml.safe_dump(found[1].to_dict(), sort_keys=False, allow_unicode=True)


@_guard(1, beside=True)
def on_admin_withdraw(service: StudyService, t, name, pid):
    out = service.admin_withdraw(t, name or "", pid or "")
    return f"Participant {markdown_text(pid.strip())} withdrawn ({out['mode']}). {out['message']}"


def _admin_page(service: StudyService) -> None:
    a = _admin_layout(service)
    refresh = (bind(on_refresh, service), [a.token, a.study], [a.message, a.study, a.studies_table])
    a.refresh_btn.click(*refresh, **PRIVATE)
    a.token.submit(*refresh, **PRIVATE)
    after = (bind(studies_after, service), [a.token, a.study], [a.study, a.studies_table])
    a.withdraw_btn.click(bind(on_admin_withdraw, service), [a.token, a.study, a.withdraw_pid],
                         [a.message, a.withdraw_md], **PRIVATE).then(*after, **PRIVATE)
    a.results_btn.click(bind(on_results, service), [a.token, a.study, a.completed_only],
                        [a.message, a.results_md, a.plot, a.participants], **PRIVATE)
    a.export_btn.click(bind(on_export, service), [a.token, a.study],
                       [a.message, a.export_files, a.export_preview], **PRIVATE)
    a.save_btn.click(bind(on_save, service), [a.token, a.definition, a.definition_file], [a.message, a.save_md],
                     **PRIVATE).then(*after, **PRIVATE)
    a.show_btn.click(bind(on_show, service), [a.token, a.study], [a.message, a.definition], **PRIVATE)
