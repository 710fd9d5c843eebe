"""The main page: your writing -> your PPlug embedding -> two answers side by side.

Layout and glue only: the handlers call ``demo.core.studio.Studio`` and turn its errors
(``HistoryError``, ``ServiceError``) into a message in the page's one message area; no torch, no SQL.
Handlers are module-level functions that take the studio first (bound in ``_wire``); layout
functions build components and return them; ``_wire`` connects the two.

The visitor's identity is an unguessable owner token kept in their browser
(``gr.BrowserState``), or their Hugging Face account when the Space offers "Sign in with Hugging
Face"; every profile and generation is stored under it.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from ..core import personas
from ..core.generation import GenerationParams
from ..core.history import HistoryError, ParsedHistory, preview
from ..core.settings import REPO_ROOT
from ..core.studio import NoSuchProfile, ServiceError, Studio, TuneResult
from ..core.text import markdown_text, plural
from . import charts
from .api import PROFILE_QUEUE, add_api, generate_queue, parse_history
from .binding import PRIVATE, bind
from .identity import Identity
from .study_pages import add_study
from .validation import guard_inputs, message, warning

RESULTS_FILES = [REPO_ROOT / "assets" / "results" / name for name in ("results.md", "benchmark.md")]
RESULTS_JSON = REPO_ROOT / "assets" / "results" / "results.json"
EXAMPLE_REQUESTS = [
    "Write a short blog post about my weekend.",
    "Write a tweet about the news today.",
    "Describe your ideal Sunday in three sentences.",
]
INTRO = """# PPlug Studio
**PPlug lets a language model write for *you*: it reads a sample of your writing and gives the model a
short personal summary of it, so the answers can follow your style and interests. The model itself is
never changed.**

1. **Your writing**: paste some posts, e-mails or essays, or click an example person.
2. **Your embedding**: PPlug sums them up as your personal embedding, in a few seconds.
3. **Ask**: the same model answers with your embedding and without it, side by side.
"""
CONTROL_LABEL = "Same plug, someone else's writing"
WRITING_SHOWN = 50  # items of a saved profile listed under it
NO_HISTORY = "Paste or upload some writing to see its items here: *Compute my PPlug embedding* turns on once there is some."
PERSONALIZED_LABEL = "Personalized (PPlug, your writing)"
TUNED_LABEL = "Personalized (PPlug + your tuned token)"
TUNE_NOTE = ("<small>Optional: optimises one extra token for you alone, on your own writing (a few seconds on a "
             "GPU, up to a minute on a CPU). Your embedding above needed no such fitting: PPlug's one learned map "
             "reads anyone's writing at once.</small>")
CSS = """
#message { position: sticky; top: 0; z-index: 20; }
#message .prose { padding: 8px 12px; border-radius: 8px; background: var(--color-accent-soft); }
.why-table * { font-family: var(--font) !important; }
/* "Tune to me" shows a step counter over its short status: room for it while it runs, below the bar. */
#tune-status:has(.progress-bar-wrap) { min-height: 5.5em; }
#tune-status .progress-text { position: static; transform: none; order: 2; }
#profile-writing { max-height: 24em; overflow-y: auto; }
"""


# ---------------------------------------------------------------------------------------
# Handlers
# ---------------------------------------------------------------------------------------


def ensure_owner(identity: Identity, owner: str | None) -> str:
    return identity.browser_token(owner)


def identify(identity: Identity, token: str | None, user: gr.OAuthProfile | None) -> str:
    """Who the visitor acts as: their Hugging Face account when signed in, else this browser's token."""
    return identity.visitor(token, user.username if user is not None else None)


def _parse(studio: Studio, text: str, files: list | None, column: str, user: str | None) -> ParsedHistory:
    return parse_history(studio.settings.limits, text, files, column, user)


def show_preview(studio: Studio, owner, text, files, column, user):
    """-> (preview, LaMP user picker, Compute button): Compute only once there is a history and the page's
    load event has given this browser its owner (a click before then would have nowhere to store)."""
    if not (text or "").strip() and not files:
        return NO_HISTORY, gr.update(visible=False), gr.update(interactive=False)
    try:
        parsed = _parse(studio, text, files, column, user)
    except HistoryError as err:  # said in the preview, where the visitor is looking
        return f"⚠️ {markdown_text(str(err))}", gr.skip(), gr.update(interactive=False)
    counts = parsed.user_items
    choices = [(f"{u} · {plural(counts[u], 'item')}" if u in counts else u, u)
               for u in parsed.users]
    users = gr.update(choices=choices, value=user if user in parsed.users else (parsed.users or [None])[0],
                      visible=bool(parsed.users))
    return preview(parsed, n=3), users, gr.update(interactive=bool(owner))


def profile_choices(studio: Studio, owner: str | None, selected: str | None = None):
    """-> (profile list, selected profile id, Generate button)."""
    profiles = studio.list_profiles(owner) if owner else []
    choices = [(f"{p['name']} · {plural(p['n_items'], 'item')} · {p['created_at'][:16].replace('T', ' ')}", p["id"])
               for p in profiles]
    ids = [c[1] for c in choices]
    value = selected if selected in ids else (ids[0] if ids else None)
    return gr.update(choices=choices, value=value), value, gr.update(interactive=value is not None)


def on_compute(studio: Studio, owner, text, files, column, user, name, progress=gr.Progress()):
    """-> (message, status, profile list, profile id, Generate button)."""
    if not owner:  # the page's load event has not given this browser its token yet
        return warning("The page is still loading; try again in a moment."), *[gr.skip()] * 4
    try:
        parsed = _parse(studio, text, files, column, user)
        progress((0, len(parsed.items)), desc="Encoding history items", unit="items")
        result = studio.compute_profile(
            owner, name.strip() or parsed.source, parsed.items, source=parsed.source,
            progress=lambda done, total: progress((done, total), desc="Encoding history items", unit="items"),
        )
    except (HistoryError, ServiceError) as err:
        return warning(err), *[gr.skip()] * 4
    cached = result.n_items - result.n_encoded
    if result.reused:
        status = (f"✅ **{markdown_text(result.name)}**: {plural(result.n_items, 'item')}, the same writing you saved "
                  "under this name before: that profile is selected, not saved twice. Your PPlug embedding is ready.")
    else:
        status = (f"✅ **{markdown_text(result.name)}**: {plural(result.n_items, 'item')}, {result.n_encoded:,} "
                  f"encoded now ({cached:,} from the cache) in {result.seconds:.1f} s. Your PPlug embedding is ready.")
    return message(), status, *profile_choices(studio, owner, result.profile_id)


def select_profile(profile_id):
    """A profile picked from the list -> (profile id, Generate button)."""
    return profile_id, gr.update(interactive=bool(profile_id))


def _tune_text(result: TuneResult, now: bool = False) -> str:
    """One line on how a "tune to me" fit went (numbers only)."""
    when = f"✅ Tuned in {result.seconds:.1f} s" if now else f"Tuned earlier (in {result.seconds:.1f} s)"
    # "Kept out of the fit", not "held back": "does it know me?" below holds back texts of its own.
    if result.steps == 0:
        return (f"{when}: no step made the {result.n_held} texts of yours kept out of the fit likelier, so your "
                "token stays at zero and answers with it are the same as without.")
    return (f"{when}: {result.n_held} texts of yours kept out of the fit became {result.gain:.1%} likelier per "
            f"word (best at step {result.steps}, fitted on {result.n_fit} other texts of yours).")


def tune_state(studio: Studio, owner, profile_id, just_tuned: bool = False):
    """The selected profile's "Tune to me" -> (Tune button, how its token was fitted or why it cannot be,
    "Use my tuned token"); ``just_tuned``: its fit has just finished on this page."""
    try:
        result = studio.tune_result(owner, profile_id) if owner and profile_id else None
        problem = studio.tune_problem(owner, profile_id) if owner and profile_id else None
    except ServiceError:  # no valid owner yet, or deleted meanwhile: nothing to show
        result, problem = None, None
    kept = result is not None and result.steps > 0  # a fit that kept no step leaves the token at zero
    text = _tune_text(result, now=just_tuned) if result else (problem or "")
    return (gr.update(interactive=bool(owner and profile_id) and not problem), text,
            gr.update(value=kept, interactive=kept))


def writing_state(studio: Studio, owner, profile_id):
    """The selected profile's writing -> (its accordion, the items): the writing box above is empty after a
    reload or once another profile is picked, and the visitor should still see what their embedding is made of."""
    try:
        parsed = studio.profile_writing(owner, profile_id) if owner and profile_id else None
    except ServiceError:  # no valid owner yet, or deleted meanwhile: nothing to show
        parsed = None
    if parsed is None:
        return gr.update(visible=False), ""
    label = f"The writing in this profile ({plural(len(parsed.items), 'item')})"
    return gr.update(visible=True, label=label), preview(parsed, n=WRITING_SHOWN, width=200)


# Shown in the "does it know me?" panel from a profile change until its measure is in: a measure waits
# for an answer or a "Tune to me" still running (up to a minute), and an empty space said nothing.
MEASURING = ("*Measuring whether the plug knows this writing better than a stranger's… This can take up to a "
             "minute while an answer or \"Tune to me\" is still running.*")
NOT_MEASURED = "Could not measure this time: choose the profile again in \"Your profiles\" to retry."


def profile_state(studio: Studio, owner, profile_id):
    """Everything shown for the selected profile: its "Tune to me" (Tune button, how its token was fitted, "Use my
    tuned token"), its writing (accordion, items), and its "does it know me?" panel (panel, sentence, plot), which
    says it is measuring until ``on_know_me`` has measured this profile (never the previous profile's verdict)."""
    writing = writing_state(studio, owner, profile_id)
    shown = writing[0]["visible"]  # a profile of this visitor's: it is measured next
    return (*tune_state(studio, owner, profile_id), *writing,
            gr.update(visible=shown), MEASURING if shown else "", gr.update(visible=False))


def not_measured():
    """The panel when a measure failed outside ``on_know_me`` (a GPU quota, a full queue): not "Measuring…"
    for ever."""
    return NOT_MEASURED, gr.update(visible=False)


def on_tune(studio: Studio, owner, profile_id, progress=gr.Progress()):
    """Fit the selected profile's personal token -> (message, the profile tuned or None); ``show_tuned``
    then shows the fit, if that profile is still the selected one."""
    if not owner or not profile_id:
        return warning("Compute your PPlug embedding first (step 2)."), None
    progress(0, desc="Tuning your token")
    try:
        studio.tune_profile(owner, profile_id, progress=lambda done, total: progress(
            (done, total), desc="Tuning your token", unit="steps"))
    except ServiceError as err:  # too few usable texts, a profile deleted meanwhile, ...
        return warning(err), None
    return message(), profile_id


def show_tuned(studio: Studio, owner, profile_id, tuned_for):
    """The "Tune to me" part after a fit, for the profile selected *now* (the fit takes up to a minute, and the
    visitor may have picked another): "Tuned in …" under the tuned one, that other one's own state otherwise."""
    return tune_state(studio, owner, profile_id, just_tuned=bool(profile_id) and tuned_for == profile_id)


def measure_profile(studio: Studio, owner, profile_id) -> dict:
    """What ``on_know_me`` shows, with the profile it is of (kept in a State; ``show_measure`` shows it)."""
    return {"profile_id": profile_id, "shown": on_know_me(studio, owner, profile_id)}


def show_measure(measured, profile_id):
    """The measure in the panel if it is of the profile selected *now*: one that waited behind a tune while the
    visitor picked another profile is not shown under that one, whose own measure follows."""
    if not measured or measured["profile_id"] != profile_id:
        return gr.skip(), gr.skip(), gr.skip()
    return measured["shown"]


def on_know_me(studio: Studio, owner, profile_id):
    """-> (the "does it know me?" panel, its sentence, its plot)."""
    if not owner or not profile_id:
        return gr.update(visible=False), "", gr.skip()
    try:
        result = studio.know_me(owner, profile_id)
    except NoSuchProfile:  # deleted meanwhile ("Delete my data" while this waited or ran): nothing to show
        return gr.update(visible=False), "", gr.update(visible=False)
    except ServiceError as err:  # e.g. too few items: said in the panel, it is not the visitor's mistake
        return gr.update(visible=True), str(err), gr.update(visible=False)
    names = ", ".join(dict.fromkeys(result.strangers))
    note = (f"\n\n<small>Each held-back text was scored with your other texts (never itself) and with the "
            f"writing of {names}; measured in {result.seconds:.1f} s.</small>")
    return gr.update(visible=True), result.sentence() + note, charts.know_me_plot(result)


def on_generate(studio: Studio, owner, profile_id, request, control, max_new_tokens, decoding, temperature, top_p,
                seed, tuned=False):
    """Streams (message, personalized, generic, control column, notes, "why" group, keywords, weights plot,
    weights table).

    ``tuned``: the personalized column adds the profile's "tune to me" token."""
    if not profile_id:
        yield warning("Compute your PPlug embedding first (step 2)."), *[gr.skip()] * 8
        return
    try:
        params = GenerationParams(
            max_new_tokens=int(max_new_tokens), temperature=float(temperature) if decoding == "Sample" else 0.0,
            top_p=float(top_p), seed=int(seed or 0))
        conditions = ("pplug", "generic", "pplug-other") if control else ("pplug", "generic")
        label = TUNED_LABEL if tuned else PERSONALIZED_LABEL
        # An empty box shows the first example request as its placeholder: that is what gets answered.
        used_example = not (isinstance(request, str) and request.strip())
        for result in studio.generate(owner, profile_id, EXAMPLE_REQUESTS[0] if used_example else request, params,
                                      conditions, tuned=bool(tuned)):
            notes = " ".join(([f"No request typed: answered the example \"{EXAMPLE_REQUESTS[0]}\"."]
                              if used_example else []) + result.notes)
            if result.done:
                notes = (notes + f" Generated in {result.timings['total_s']:.1f} s "
                         f"(first token after {result.timings['first_token_s']:.1f} s).").strip()
                notes = "\n\n".join(filter(None, [closeness_text(result.closeness), notes]))
            other = gr.update(value=result.outputs.get("pplug-other", ""), visible=bool(control),
                              label=f"{CONTROL_LABEL} ({result.other})" if result.other else CONTROL_LABEL)
            frame = charts.weights_frame(result)
            yield (message(), gr.update(value=result.personalized, label=label), result.generic, other, notes,
                   gr.update(visible=True), keywords_text(result.keywords), charts.weights_plot(frame), frame)
    except (ServiceError, TypeError, ValueError, OverflowError) as err:
        yield warning(err), *[gr.skip()] * 8


def generate_example(studio: Studio, owner, profile_id, request, control, max_new_tokens, decoding, temperature,
                     top_p, seed, tuned=False):
    """``on_generate`` after a persona's one click: nothing when its profile could not be computed."""
    if profile_id:
        yield from on_generate(studio, owner, profile_id, request, control, max_new_tokens, decoding, temperature,
                               top_p, seed, tuned)


def show_control(on: bool):
    return gr.update(visible=on)


def answers_cleared() -> tuple:
    """The answer columns (personalized, generic, control), the notes and "why", emptied."""
    return gr.update(value="", label=PERSONALIZED_LABEL), "", "", "", gr.update(visible=False)


def use_persona(studio: Studio, owner, label: str, request: str, history: str, files, name: str, profile_id, kept):
    """A persona's button -> (history, files, profile name, request, profile id, the visitor's own writing,
    "Put my own writing back", the persona whose chain is the latest): the persona's text and an example
    request. What the visitor wrote or uploaded, and the profile they had selected (a returning visitor's,
    with the box empty, unless it is a persona's from an earlier visit), is kept aside, not lost; a click on
    another persona keeps what was kept before.
    The button waits, not clickable, until the persona's answer is in (``ready_to_restore``): a click
    before would be overtaken by the persona's compute and answer still under way."""
    persona = personas.persona_named(label)
    theirs = {personas.persona_text(n).strip() for n in personas.persona_names()}
    text = (history or "").strip()
    if text not in theirs | {""} or files or (kept is None and profile_id and not text
                                               and studio.persona_of(owner, profile_id) is None):
        kept = {"history": history, "files": files, "name": name, "profile_id": profile_id, "request": request}
    return (personas.persona_text(persona), None, label, request or EXAMPLE_REQUESTS[0], None, kept,
            gr.update(visible=bool(kept), interactive=False), label)


def ready_to_restore(label: str, latest: str | None):
    """The end of a persona's chain (answered, failed or stopped) -> "Put my own writing back" clickable,
    unless another persona was clicked since: the chain it stopped ends too, while the new one still runs."""
    return gr.update(interactive=True) if label == latest else gr.skip()


def restore_writing(studio: Studio, owner, kept):
    """"Put my own writing back" -> (history, files, profile name, request, kept, the button, profile list,
    profile id, Generate button, then the compute status, answer columns, notes and "why", emptied): the page as
    before the persona (whose "embedding is ready" line goes too, and whose example request), with
    the profile the visitor had selected (none if they had not computed one, or deleted it since), and no
    persona answer left under it. Uploads that Gradio's cache has deleted since (after an hour) are not put
    back."""
    kept = kept or {}
    files = [f for f in kept.get("files") or [] if Path(f).is_file()] or None
    mine = kept.get("profile_id")
    if not owner or mine not in [p["id"] for p in studio.list_profiles(owner)]:
        mine = None
    return (kept.get("history", ""), files, kept.get("name", ""), kept.get("request", ""), None,
            gr.update(visible=False), gr.update(value=mine), mine, gr.update(interactive=mine is not None), "",
            *answers_cleared())


def on_delete(studio: Studio, owner):
    """-> (message, deleted note, profile list, profile id, Generate button, know-me panel, then what the page
    still shows of the deleted data: status, writing, files, profile name, the answer columns, notes, "why", the
    writing kept aside while a persona's was shown, and its button)."""
    try:
        counts = studio.delete_my_data(owner)
    except ServiceError as err:
        return warning(err), *[gr.skip()] * 16
    cleared = ("", "", None, "", *answers_cleared(), None, gr.update(visible=False))
    return message(), deleted_note(counts), *profile_choices(studio, owner), gr.update(visible=False), *cleared


def deleted_note(counts: dict[str, int]) -> str:
    """Rows removed per table (``Store.delete_owner_data``) -> one plain sentence for the page."""
    if not any(counts.values()):
        return "Deleted: nothing was stored for you."
    parts = [plural(counts.get(table, 0), thing) for table, thing in
            (("profiles", "profile"), ("history_items", "item"), ("personal_tokens", "tuned token"),
             ("generations", "stored answer"))]
    return f"Deleted: {', '.join(parts)}, and every embedding made from them."


# ---------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------


def _against(diff: dict, what: str) -> str:
    """A paired difference {"diff", "low", "high"} (95% interval) in words: above, below or level with ``what``."""
    if diff["low"] > 0:
        return f"measurably above {what}"
    if diff["high"] < 0:
        return f"measurably below {what}"
    return f"within the noise of {what}"


def results_in_brief(results: dict) -> str:
    """The evaluation's results.json in plain words, task by task: is a user's own writing better for the plug
    than a stranger's, and are the answers closer to the real text than without the plug? The tables follow."""
    lines = [f"**In brief**, on {results.get('split', 'dev')} users the plug never trained on (a stranger = the same "
             "plug given another user's writing; 95% paired intervals):", ""]
    for task in results.get("tasks", []):
        diagnostics = task.get("diagnostics", {}).get("pplug", {})
        comparisons, rouge = task.get("comparisons", {}), {m: v.get("rougeL") for m, v in task["methods"].items()}
        sentence = f"- **{task['task'].replace('_', ' ')}** ({task['n_users']} users): "
        own = diagnostics.get("nll_own_minus_other")
        if own:
            verdict = "measurably likelier" if own["high"] < 0 else "not measurably likelier"
            sentence += (f"with their own writing the plug finds a user's real text {verdict} than with a stranger's "
                         f"({own['diff']:+.3f} nats per token, {own['low']:+.3f} to {own['high']:+.3f}). ")
        if rouge.get("pplug") is not None and "pplug - generic" in comparisons:
            sentence += f"Its answers' overlap with the real text (ROUGE-L {rouge['pplug']:.3f}) is " + _against(
                comparisons["pplug - generic"]["rougeL"], f"the model without a plug ({rouge['generic']:.3f})")
            if "pplug - pplug-other-user" in comparisons:
                sentence += " and " + _against(comparisons["pplug - pplug-other-user"]["rougeL"],
                                               f"a stranger's writing ({rouge['pplug-other-user']:.3f})")
            sentence += "."
        lines.append(sentence)
    return "\n".join(lines)


def plug_report(studio: Studio) -> str:
    """What the plug is, how it was made, and the committed evaluation and benchmark tables."""
    config = studio.plug.config
    brief = ([results_in_brief(json.loads(RESULTS_JSON.read_text(encoding="utf-8"))), ""]
             if RESULTS_JSON.is_file() else [])
    lines = [*brief, studio.plug_description, "",
             f"Made for `{config.encoder_id}` and `{config.llm_id}`; aggregator temperature {config.tau:g}. Under the "
             "hood: a frozen sentence encoder embeds each item of your writing, the items are weighed by how related "
             "they are to the request, and a small projector turns them into a soft token that the frozen language "
             "model reads next to a learned instruction token."
             + ((" Then one keyword token per word: the language model's own embeddings of the "
                 if config.separate_keywords else
                 " A third token, the keyword token, is the language model's own embedding of the ")
                + f"{config.keywords} words (of {config.keyword_bank:,}) nearest to your weighed writing in the "
                "encoder's space: what it is about"
                + (", less what every text and every word share" if config.keyword_center else "") + "."
                if config.keywords else "")]
    settings = config.made.get("settings", {})
    if config.made.get("steps") and settings:  # a trained plug: the figures a reader asks for first
        lines += ["", f"Trained for {config.made['steps']} steps of {settings.get('batch_size', '?')} examples on "
                      f"{str(settings.get('tasks', '?')).replace(',', ', ')}, learning rate {settings.get('lr', '?')}, "
                      f"at most {settings.get('history_cap', '?')} history items per example"
                      + (f", in {config.made['train_seconds'] / 60:.0f} min" if config.made.get("train_seconds") else "")
                      + ". Every setting is in the plug's `config.json`."]
    for path in RESULTS_FILES:
        if path.is_file():
            lines += ["", f"From `assets/results/{path.name}`:", "", path.read_text(encoding="utf-8")]
    return "\n".join(lines)


def _writing_column() -> SimpleNamespace:
    with gr.Column(scale=3):
        gr.Markdown("### 1 · Your writing")
        gr.Markdown("Try an example person: one click fills in their writing, computes their embedding and "
                    "answers a request.")
        with gr.Row():
            # On once the page knows its visitor (see _wire): a click before then would have nowhere to store.
            persona_buttons = [gr.Button(personas.persona_label(n), size="md", interactive=False)
                               for n in personas.persona_names()]
        # Beside the buttons that replaced it: the visitor's own writing, kept aside by a persona click.
        restore_btn = gr.Button("Put my own writing back", size="sm", visible=False)
        history = gr.Textbox(label="Your writing history", lines=9, max_lines=20,
                             placeholder="…or paste your own posts, e-mails or essays here: one item per paragraph "
                                         "(separate items with a blank line). A long history (hundreds of posts) "
                                         "is quicker to upload as a file, below.")
        with gr.Accordion("Upload files instead", open=False):
            files = gr.File(label="Files (.txt, .md, .json, .jsonl, .csv)", file_count="multiple",
                            file_types=[".txt", ".md", ".json", ".jsonl", ".csv", ".tsv"])
            with gr.Row():
                column = gr.Textbox(label="CSV text column", value="text", scale=1)
                lamp_user = gr.Dropdown(label="LaMP user (largest histories first)", choices=[], visible=False,
                                        scale=1)
        parsed_preview = gr.Markdown(NO_HISTORY)
    return SimpleNamespace(history=history, persona_buttons=persona_buttons, files=files, column=column,
                           lamp_user=lamp_user, parsed_preview=parsed_preview, restore_btn=restore_btn,
                           kept=gr.State(None),  # the visitor's own writing while a persona's is shown
                           persona_chain=gr.State(None))  # the persona clicked last


def _embedding_column() -> SimpleNamespace:
    with gr.Column(scale=2):
        gr.Markdown("### 2 · Your embedding")
        name = gr.Textbox(label="Profile name", placeholder="e.g. My blog")
        compute_btn = gr.Button("Compute my PPlug embedding", variant="primary", interactive=False)
        status = gr.Markdown()
        profiles = gr.Dropdown(label="Your profiles", choices=[], interactive=True)
        with gr.Accordion("The writing in this profile", open=False, visible=False) as writing_box:
            profile_writing = gr.Markdown(elem_id="profile-writing")
        tune = _tune_block()
        with gr.Column(visible=False, elem_id="know-me") as know_me:
            gr.Markdown("#### Does it know me?")
            know_me_md = gr.Markdown()
            know_me_plot = gr.BarPlot(x="condition", y="likelihood", sort=None, height=220, visible=False,
                                      title="Your held-back writing, per-word likelihood (no plug = 100)",
                                      x_title=" ", y_title="likelihood")
    return SimpleNamespace(name=name, compute_btn=compute_btn, status=status, profiles=profiles,
                           writing_box=writing_box, profile_writing=profile_writing, know_me=know_me,
                           know_me_md=know_me_md, know_me_plot=know_me_plot, **vars(tune))


def _tune_block() -> SimpleNamespace:
    """"Tune to me", beside the selected profile: an optional fit of one token on the visitor's writing."""
    with gr.Column(elem_id="tune"):
        tune_btn = gr.Button("Tune to me", interactive=False, size="md")
        gr.Markdown(TUNE_NOTE)
        tune_status = gr.Markdown(elem_id="tune-status")
        use_tuned = gr.Checkbox(label="Use my tuned token", value=False, interactive=False,
                                info="Adds it to the personalized answer (step 3); on once this profile is tuned.")
    return SimpleNamespace(tune_btn=tune_btn, tune_status=tune_status, use_tuned=use_tuned)


def _ask_section(studio: Studio) -> SimpleNamespace:
    limits = studio.settings.limits
    gr.Markdown("### 3 · Ask", elem_id="ask")
    request = gr.Textbox(label="Request", lines=2, placeholder=EXAMPLE_REQUESTS[0])
    gr.Examples(EXAMPLE_REQUESTS, inputs=request, label="Example requests")
    control = gr.Checkbox(label=f"Add a control column: {CONTROL_LABEL.lower()}, to see which part of the answer "
                                "is personal", value=False)
    with gr.Accordion("Generation settings (shared by every column)", open=False):
        with gr.Row():
            max_new_tokens = gr.Slider(1, limits.max_new_tokens, value=min(64, limits.max_new_tokens), step=1,
                                       label="Max new tokens")
            decoding = gr.Radio(["Greedy", "Sample"], value="Greedy", label="Decoding")
            temperature = gr.Slider(0.05, 2.0, value=0.7, step=0.05, label="Temperature (sampling)")
            top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="Top-p (sampling)")
            seed = gr.Number(0, precision=0, label="Seed")
        policy = GenerationParams()
        gr.Markdown(f"Every column avoids loops the same way: repetition penalty {policy.repetition_penalty:g} "
                    f"on tokens already written, no repeated {policy.no_repeat_ngram_size}-token sequence.")
    generate_btn = gr.Button("Generate", variant="primary", interactive=False)
    with gr.Row(elem_id="answers"):
        personalized = gr.Textbox(label=PERSONALIZED_LABEL, lines=8, interactive=False)
        generic = gr.Textbox(label="Generic (same model, no plug)", lines=8, interactive=False)
        other = gr.Textbox(label=CONTROL_LABEL, lines=8, interactive=False, visible=False,
                           placeholder="Answers your next request (Generate) beside the other two columns.")
    notes = gr.Markdown()
    return SimpleNamespace(request=request, control=control, settings=[max_new_tokens, decoding, temperature, top_p,
                                                                       seed],
                           generate_btn=generate_btn, personalized=personalized, generic=generic, other=other,
                           notes=notes)


def closeness_text(found: dict[str, float]) -> str:
    """How close each answer comes to the visitor's writing (empty until the answers are in)."""
    if not found:
        return ""
    columns = {"pplug": "personalized", "generic": "generic", "pplug-other": "someone else's writing"}
    values = " · ".join(f"{columns.get(c, c)} {v:.2f}" for c, v in found.items())
    return (f"**How close each answer comes to the subjects you write about**: {values}. <small>The sentence "
            "encoder's cosine between the answer and the mean of your texts; higher is closer. An answer made "
            "yours should come closer than the generic one, and than the same plug with someone else's "
            "writing.</small>")


def keywords_text(words: list[str]) -> str:
    """The words of the keyword token, as the "why" section shows them (bank words: letters only)."""
    if not words:
        return ""
    return (f"**What your writing is about, as the plug reads it for this request** (the words of its keyword "
            f"token): {', '.join(words)}")


def _why_section() -> SimpleNamespace:
    with gr.Column(visible=False, elem_id="why") as why:
        gr.Markdown("#### Why this answer: the texts of yours that counted most for this request")
        keywords = gr.Markdown(elem_id="keywords")
        with gr.Row():
            weights_plot = gr.BarPlot(x="item", y="weight (%)", tooltip=["item", "weight (%)"], sort="-y",
                                      height=260, x_title="your text", y_title="weight (%)", scale=2)
            weights_table = gr.Dataframe(headers=["item", "weight (%)", "text"], wrap=True, interactive=False,
                                         column_widths=["10%", "16%", "74%"], max_height=360, scale=3,
                                         show_label=False, elem_classes="why-table")
    return SimpleNamespace(why=why, keywords=keywords, weights_plot=weights_plot, weights_table=weights_table)


def _footer(studio: Studio) -> SimpleNamespace:
    limits = studio.settings.limits
    with gr.Accordion("About the plug and its measured results", open=False):
        gr.Markdown(plug_report(studio))
    with gr.Accordion("Your data", open=False):
        gr.Markdown(f"Limits: {limits.max_items:,} items, {limits.max_item_chars:,} characters per item, "
                    f"{limits.max_upload_mb:g} MB per file, {limits.max_new_tokens} new tokens (a browser slows down "
                    "on a paste of more than a few hundred kilobytes: upload long histories as files). Your profiles "
                    "are visible only from this browser" + (" (or, signed in, from your Hugging Face account)."
                                                             if studio.settings.hf_login else "."))
        sure = gr.Checkbox(label="Yes, delete all my profiles, their writing and answers (this cannot be undone)",
                           value=False)
        delete_btn = gr.Button("Delete my data", variant="stop", interactive=False)
        deleted = gr.Markdown()
    return SimpleNamespace(delete_btn=delete_btn, deleted=deleted, delete_sure=sure)


def _layout(studio: Studio, identity: Identity) -> SimpleNamespace:
    """Every component of the main page, by name."""
    state = SimpleNamespace(
        # This browser's owner token. The BrowserState secret is public (Gradio sends it in /config).
        token=gr.BrowserState(None, storage_key="pplug_owner", secret=identity.browser_secret),
        owner=gr.State(None),  # who the visitor acts as (see identify)
        profile_id=gr.State(None),
        # What a tune or a measure just found, with the profile it is of: it may finish after the visitor
        # picked another profile, and goes on the page only if it is of the one selected then.
        tuned_for=gr.State(None),
        measured=gr.State(None),
    )
    if studio.settings.hf_login:
        with gr.Row():
            gr.LoginButton(scale=0)
            gr.Markdown("Signed in, your profiles follow your Hugging Face account to any browser; "
                        "profiles made before signing in stay with this browser.")
    gr.HTML(f"<style>{CSS}</style>", container=False, padding=False)
    gr.Markdown(INTRO)
    message_area = gr.Markdown(visible=False, elem_id="message")  # the one place for errors
    with gr.Row():
        writing = _writing_column()
        embedding = _embedding_column()
    return SimpleNamespace(**vars(state), message=message_area, **vars(writing), **vars(embedding),
                           **vars(_ask_section(studio)), **vars(_why_section()), **vars(_footer(studio)))


# ---------------------------------------------------------------------------------------
# Wiring
# ---------------------------------------------------------------------------------------


def _wire(demo: gr.Blocks, studio: Studio, ui: SimpleNamespace, identity: Identity) -> None:
    profile_work = dict(**PROFILE_QUEUE, **PRIVATE)  # computing and measuring a profile, one at a time
    answers = dict(**generate_queue(studio), **PRIVATE)  # generations, batched together by the scheduler
    compute = bind(on_compute, studio, gpu_seconds=120)
    know_me = bind(measure_profile, studio, gpu_seconds=60)
    chosen = bind(profile_choices, studio)
    compute_io = ([ui.owner, ui.history, ui.files, ui.column, ui.lamp_user, ui.name],
                  [ui.message, ui.status, ui.profiles, ui.profile_id, ui.generate_btn])
    know_me_io = ([ui.owner, ui.profile_id], ui.measured)
    selected = bind(profile_state, studio)  # the selected profile's panels: after every change
    selected_io = ([ui.owner, ui.profile_id],
                   [ui.tune_btn, ui.tune_status, ui.use_tuned, ui.writing_box, ui.profile_writing, ui.know_me,
                    ui.know_me_md, ui.know_me_plot])
    gen_in = [ui.owner, ui.profile_id, ui.request, ui.control, *ui.settings, ui.use_tuned]
    gen_out = [ui.message, ui.personalized, ui.generic, ui.other, ui.notes, ui.why, ui.keywords, ui.weights_plot,
               ui.weights_table]

    def measure(after, **options):
        """"Does it know me?" after a profile change (the panel says "Measuring…" by then). A repeat while one
        is still waiting runs after it (always_last), not never; it is shown only if of the selected profile."""
        step = after.then(know_me, *know_me_io, trigger_mode="always_last", **options, **profile_work)
        step.then(show_measure, [ui.measured, ui.profile_id], [ui.know_me, ui.know_me_md, ui.know_me_plot],
                  show_progress="hidden", **PRIVATE)
        step.failure(not_measured, None, [ui.know_me_md, ui.know_me_plot], **PRIVATE)  # not "Measuring…" for good
        return step

    measure(demo.load(bind(ensure_owner, identity), ui.token, ui.token, **PRIVATE).then(
        bind(identify, identity), ui.token, ui.owner, **PRIVATE).then(
        chosen, ui.owner, [ui.profiles, ui.profile_id, ui.generate_btn], **PRIVATE).then(
        selected, *selected_io, **PRIVATE), show_progress="hidden")
    # The CSV column counts once typed: on Enter or on leaving the box.
    for trigger in (ui.owner.change, ui.history.change, ui.files.change, ui.column.submit, ui.column.blur,
                    ui.lamp_user.change):
        trigger(bind(show_preview, studio), [ui.owner, ui.history, ui.files, ui.column, ui.lamp_user],
                [ui.parsed_preview, ui.lamp_user, ui.compute_btn], show_progress="hidden", **PRIVATE)
    measure(ui.compute_btn.click(compute, *compute_io, show_progress_on=ui.status, **profile_work).then(
        selected, *selected_io, **PRIVATE))
    measure(ui.profiles.input(select_profile, ui.profiles, [ui.profile_id, ui.generate_btn], **PRIVATE).then(
        selected, *selected_io, **PRIVATE))
    ui.tune_btn.click(bind(on_tune, studio, gpu_seconds=120), [ui.owner, ui.profile_id], [ui.message, ui.tuned_for],
                      show_progress_on=ui.tune_status, **profile_work).then(
        bind(show_tuned, studio), [ui.owner, ui.profile_id, ui.tuned_for], [ui.tune_btn, ui.tune_status, ui.use_tuned],
        show_progress="hidden", **PRIVATE)
    generate = bind(on_generate, studio, gpu_seconds=60)
    ui.owner.change(lambda owner: [gr.update(interactive=bool(owner))] * len(ui.persona_buttons), ui.owner,
                    ui.persona_buttons, show_progress="hidden", **PRIVATE)
    persona_answers = []
    for button in ui.persona_buttons:  # fill, compute, answer, then measure: one click
        answer = button.click(bind(use_persona, studio),
                              [ui.owner, button, ui.request, ui.history, ui.files, ui.name, ui.profile_id, ui.kept],
                              [ui.history, ui.files, ui.name, ui.request, ui.profile_id, ui.kept, ui.restore_btn,
                               ui.persona_chain], **PRIVATE).then(
            compute, *compute_io, show_progress_on=ui.status, **profile_work).then(
            selected, *selected_io, **PRIVATE).then(bind(generate_example, studio, gpu_seconds=60), gen_in, gen_out,
            show_progress_on=[ui.personalized, ui.generic], **answers)
        measure(answer)
        answer.then(ready_to_restore, [button, ui.persona_chain], ui.restore_btn, show_progress="hidden", **PRIVATE)
        persona_answers.append(answer)
    # One answer at a time in the columns: a new one (Generate, Enter, an example person) stops one still
    # streaming, which would otherwise keep writing the previous person's answer into them.
    answering = [trigger(generate, gen_in, gen_out, show_progress_on=[ui.personalized, ui.generic],
                         cancels=persona_answers, **answers)
                 for trigger in (ui.generate_btn.click, ui.request.submit)]
    measure(ui.restore_btn.click(bind(restore_writing, studio), [ui.owner, ui.kept],
                                 [ui.history, ui.files, ui.name, ui.request, ui.kept, ui.restore_btn, ui.profiles,
                                  ui.profile_id, ui.generate_btn, ui.status, ui.personalized, ui.generic, ui.other,
                                  ui.notes, ui.why],
                                 **PRIVATE).then(selected, *selected_io, **PRIVATE))
    ui.control.change(show_control, ui.control, ui.other, **PRIVATE)
    # Deleting everything takes a tick first; the tick goes again once it is done.
    ui.delete_sure.change(lambda sure: gr.update(interactive=bool(sure)), ui.delete_sure, ui.delete_btn,
                          show_progress="hidden", **PRIVATE)
    ui.delete_btn.click(bind(on_delete, studio), ui.owner,
                        [ui.message, ui.deleted, ui.profiles, ui.profile_id, ui.generate_btn, ui.know_me, ui.status,
                         ui.history, ui.files, ui.name, ui.personalized, ui.generic, ui.other, ui.notes, ui.why,
                         ui.kept, ui.restore_btn],
                        **PRIVATE).then(selected, *selected_io, **PRIVATE).then(
        lambda: False, None, ui.delete_sure, show_progress="hidden", **PRIVATE)
    for button in ui.persona_buttons:  # its own chain has not reached its answer yet: only earlier ones stop
        button.click(None, None, None, cancels=answering + persona_answers, **PRIVATE)


def build_demo(studio: Studio) -> gr.Blocks:
    identity = Identity(studio.store, studio.settings.db_path)
    # Uploaded files sit in Gradio's cache: delete them within two hours, whatever "Delete my data" does.
    # Gradio's analytics off: the app sends nothing about itself or its visitors anywhere.
    with gr.Blocks(title="PPlug Studio", delete_cache=(3600, 3600), analytics_enabled=False) as demo:
        ui = _layout(studio, identity)
        _wire(demo, studio, ui, identity)
        add_api(studio)
    add_study(demo, studio)  # the user-study pages: /study?study=NAME and /study-admin
    guard_inputs(demo)  # raw inputs: argument count and file references, before Gradio reads them
    demo.queue(default_concurrency_limit=1, max_size=studio.settings.limits.max_queue)
    return demo
