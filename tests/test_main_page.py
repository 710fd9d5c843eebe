"""The main page as a stakeholder meets it: plain first screen, one-click personas, "does it know me?",
the control column, readable charts, errors in one place. Handlers are called as the page calls them."""
from __future__ import annotations

import json
import re

import gradio as gr
import pytest

from demo.app import charts, ui
from demo.core import personas
from demo.core.generation import GenerationParams
from demo.core.know_me import KnowMe
from demo.core.studio import Comparison, TopItem

from apphelp import handler

JARGON = ("soft token", "frozen sentence encoder", "aggregator", "dev ROUGE", "trained-")


@pytest.fixture(scope="module")
def page(studio):
    return ui.build_demo(studio)


@pytest.fixture(scope="module")
def owner():
    return "main-page-owner-token-0123456789"


def _texts_outside_about(demo) -> list[str]:
    """The page's Markdown, except what sits inside the "About the plug" accordion."""
    about = {b._id for b in demo.blocks.values() if isinstance(b, gr.Accordion) and "About the plug" in b.label}

    def inside_about(block) -> bool:
        parent = block.parent
        while parent is not None:
            if parent._id in about:
                return True
            parent = getattr(parent, "parent", None)
        return False

    return [b.value for b in demo.blocks.values() if isinstance(b, gr.Markdown) and b.page == ""
            and not inside_about(b) and isinstance(b.value, str)]


def test_the_first_screen_speaks_plainly_and_the_plug_details_are_in_about(page, studio):
    shown = "\n".join(_texts_outside_about(page))
    assert "1. **Your writing**" in shown and "2. **Your embedding**" in shown and "3. **Ask**" in shown
    for word in JARGON:
        assert word not in shown, word
    assert studio.plug_id not in shown
    assert studio.plug_id in ui.plug_report(studio) and "soft token" in ui.plug_report(studio)
    assert "**In brief**" in ui.plug_report(studio)  # the committed results in words, before their tables


def test_the_results_in_brief_say_what_the_intervals_say():
    def diff(low, high):
        return {"diff": (low + high) / 2, "low": low, "high": high}

    task = {"task": "blog_posts", "n_users": 19,
            "methods": {"generic": {"rougeL": .10}, "pplug": {"rougeL": .13}, "pplug-other-user": {"rougeL": .15}},
            "comparisons": {"pplug - generic": {"rougeL": diff(.01, .05)},
                            "pplug - pplug-other-user": {"rougeL": diff(-.04, -.01)}},
            "diagnostics": {"pplug": {"nll_own_minus_other": diff(-.06, -.01)}}}
    brief = ui.results_in_brief({"split": "dev", "tasks": [task]})
    assert "**blog posts** (19 users)" in brief and "measurably likelier than with a stranger's" in brief
    assert "measurably above the model without a plug (0.100)" in brief
    assert "measurably below a stranger's writing (0.150)" in brief
    task["diagnostics"]["pplug"]["nll_own_minus_other"] = diff(-.06, +.01)
    task["comparisons"]["pplug - generic"]["rougeL"] = diff(-.01, +.05)
    brief = ui.results_in_brief({"split": "dev", "tasks": [task]})
    assert "not measurably likelier" in brief and "within the noise of the model without a plug" in brief


def test_compute_is_off_until_there_is_a_history_and_generate_until_there_is_a_profile(page, studio, owner):
    preview, two_posts = handler(page, "show_preview"), "My first post.\n\nMy second post."
    empty = preview(owner, "  \n ", None, "text", None)
    assert empty[2]["interactive"] is False and "turns on once there is some" in empty[0]  # says why it is off
    assert preview(owner, two_posts, None, "text", None)[2]["interactive"] is True
    assert preview(None, two_posts, None, "text", None)[2]["interactive"] is False  # the page has no owner yet
    compute, generate = (next(b for b in page.blocks.values() if isinstance(b, gr.Button) and b.value == label)
                         for label in ("Compute my PPlug embedding", "Generate"))
    assert compute.interactive is False and generate.interactive is False  # as the page opens
    labels = {personas.persona_label(n) for n in personas.persona_names()}
    assert [b.interactive for b in page.blocks.values() if isinstance(b, gr.Button) and b.value in labels] == [False] * 4
    assert handler(page, "profile_choices")(owner)[2]["interactive"] is False  # no profile yet
    message, status, profiles, profile_id, generate_on = handler(page, "on_compute")(
        owner, "Post one about bread.\n\nPost two about rain.", None, "text", None, "mine")
    assert profile_id and generate_on["interactive"] is True and message["visible"] is False


def test_an_error_goes_to_the_message_area_and_leaves_every_other_output_alone(page, owner):
    message, *rest = handler(page, "on_compute")(owner, "\x00\x01", None, "text", None, "x")
    assert message["visible"] and "history is empty" in message["value"]
    assert rest == [gr.skip()] * 4
    out = list(handler(page, "on_generate")(owner, "not-a-profile", "Hi", False, 8, "Greedy", 0.7, 0.95, 0))
    assert len(out) == 1 and "No such profile" in out[0][0]["value"] and list(out[0][1:]) == [gr.skip()] * 8
    nothing = list(handler(page, "on_generate")(owner, None, "Hi", False, 8, "Greedy", 0.7, 0.95, 0))
    assert "Compute your PPlug embedding first" in nothing[0][0]["value"]


def test_one_persona_click_fills_computes_answers_and_measures(page, studio, owner):
    history, files, name, request, profile_id, kept, restore, latest = ui.use_persona(
        studio, owner, "Food Blogger", "", "", None, "", None, None)
    assert history == personas.persona_text("food_blogger") and request == ui.EXAMPLE_REQUESTS[0]
    assert latest == "Food Blogger"  # whose chain may make "Put my own writing back" clickable
    assert name == "Food Blogger" and files is None and profile_id is None
    assert kept is None and restore["visible"] is False  # nothing of the visitor's to keep aside
    assert ui.use_persona(studio, owner, "Lincoln", "My own request", history, None, name, None, None)[3] == "My own request"
    # The button's events: fill, then compute, then the answers, then "does it know me?".
    button = next(b for b in page.blocks.values() if isinstance(b, gr.Button) and b.value == "Food Blogger")
    chain, fn = [], next(f for f in page.fns.values() if any(t[0] == button._id for t in f.targets))
    while fn is not None:
        chain.append(fn.fn.__name__)
        fn = next((f for f in page.fns.values() if f.trigger_after == fn._id), None)
    assert chain == ["use_persona", "on_compute", "profile_state", "generate_example", "measure_profile", "show_measure"]
    _, _, _, profile_id, _ = handler(page, "on_compute")(owner, history, None, "text", None, name)
    *_, last = handler(page, "generate_example")(owner, profile_id, request, False, 6, "Greedy", 0.7, 0.95, 0)
    assert last[1]["value"] and last[2] and last[5]["visible"] is True  # both answers and the "why" charts
    assert list(handler(page, "generate_example")(owner, None, request, False, 6, "Greedy", 0.7, 0.95, 0)) == []
    panel, sentence, plot = handler(page, "measure_profile")(owner, profile_id)["shown"]
    assert panel["visible"] and "held back" in sentence and plot.visible
    assert plot.y_lim[0] == 0 and set(plot.value["data"][i][0] for i in range(3)) == set(charts.KNOW_ME_LABELS.values())


def test_a_persona_click_keeps_what_the_visitor_wrote_and_gives_it_back(page, studio, owner):
    mine = "My own post about rain.\n\nAnother of mine about trains."
    own_id = studio.compute_profile(owner, "My blog", mine.split("\n\n")).profile_id
    *_, kept, restore, _ = ui.use_persona(studio, owner, "Lincoln", "My own request", mine, None, "My blog", own_id,
                                          None)
    assert kept == {"history": mine, "files": None, "name": "My blog", "profile_id": own_id,
                    "request": "My own request"}
    assert restore["visible"] is True and restore["interactive"] is False  # until the persona has answered
    # A returning visitor: the box is empty, their stored profile selected; that is what comes back.
    returning = ui.use_persona(studio, owner, "Lincoln", "", "", None, "", own_id, None)[5]
    assert returning == {"history": "", "files": None, "name": "", "profile_id": own_id, "request": ""}
    # ... but not when the profile selected is a persona's from an earlier visit: nothing of theirs to give back.
    theirs = studio.compute_profile(owner, "FDR", personas.persona_items("fdr")).profile_id
    assert studio.persona_of(owner, theirs) == "fdr" and studio.persona_of(owner, own_id) is None
    kept_now, button = ui.use_persona(studio, owner, "Lincoln", "", "", None, "", theirs, None)[5:7]
    assert kept_now is None and button["visible"] is False
    # Another persona next: the persona's text is not the visitor's, so the first keeps what it kept.
    lincoln = personas.persona_text("lincoln")
    assert ui.use_persona(studio, owner, "FDR", "", lincoln, None, "Lincoln", "persona-profile", kept)[5] == kept
    uploads = ["/tmp/gradio/a.txt"]  # uploaded files are the visitor's too, even with a persona's text
    assert ui.use_persona(studio, owner, "FDR", "", lincoln, uploads, "Lincoln", "persona-profile", kept)[5]["files"] == uploads
    # Back: the writing, the profile they had selected, and none of the persona's answers.
    restore = handler(page, "restore_writing")
    (history, files, name, request, kept_after, button, profiles, selected, generate, status, personalized, generic,
     other, notes, why) = restore(owner, kept)
    assert (history, files, name, request, kept_after, button["visible"]) == (mine, None, "My blog", "My own request",
                                                                              None, False)
    assert profiles["value"] == selected == own_id and generate["interactive"] is True
    assert status == personalized["value"] == generic == other == notes == "" and why["visible"] is False
    # A visitor who had not computed a profile (or deleted it since) is left with none selected.
    for before in (None, "deleted-since"):
        *_, profiles, selected, generate, _, _, _, _, _, _ = restore(owner, {**kept, "profile_id": before})
        assert profiles["value"] is selected is None and generate["interactive"] is False
    button = next(b for b in page.blocks.values() if isinstance(b, gr.Button) and b.value == "Put my own writing back")
    assert button.visible is False
    chain, fn = [], next(f for f in page.fns.values() if any(t[0] == button._id for t in f.targets))
    while fn is not None:  # then its profile's tune state, writing and "does it know me?"
        chain.append(getattr(fn.fn, "__name__", ""))
        fn = next((f for f in page.fns.values() if f.trigger_after == fn._id), None)
    assert chain == ["restore_writing", "profile_state", "measure_profile", "show_measure"]
    # Clickable again once the persona's answer is in (or failed, or was stopped): the last step of its chain.
    persona = next(b for b in page.blocks.values() if isinstance(b, gr.Button) and b.value == "Lincoln")
    fn = next(f for f in page.fns.values() if any(t[0] == persona._id for t in f.targets) and f.fn is not None)
    while getattr(fn.fn, "__name__", "") != "generate_example":
        fn = next(f for f in page.fns.values() if f.trigger_after == fn._id)
    after = [f for f in page.fns.values() if f.trigger_after == fn._id]
    ready = next(f for f in after if getattr(f.fn, "__name__", "") == "ready_to_restore")
    assert ready.outputs[0]._id == button._id and ui.ready_to_restore("Lincoln", "Lincoln")["interactive"] is True
    # A second persona clicked before the first answered stops the first chain, whose end still runs: it
    # leaves the button to the second's.
    assert [b._id for b in ready.inputs][0] == persona._id and ui.ready_to_restore("Lincoln", "FDR") == gr.skip()


def test_a_new_answer_stops_the_one_still_streaming_into_the_columns(page):
    """Two example persons clicked in a row wrote both answers into the same boxes, turn about."""
    names = {f._id: getattr(f.fn, "__name__", None) for f in page.fns.values()}

    def stopped_by(label):
        button = next(b for b in page.blocks.values() if isinstance(b, gr.Button) and b.value == label)
        return {names[i] for f in page.fns.values() if f.cancels and f.targets[0][0] == button._id for i in f.cancels}

    for label in (personas.persona_label(n) for n in personas.persona_names()):
        assert stopped_by(label) == {"on_generate", "generate_example"}
    assert stopped_by("Generate") == {"generate_example"}  # never itself: its own new answer would stop too


def test_every_measure_of_a_profile_ends_in_a_verdict_or_says_it_failed(page, studio, owner):
    """The panel says "Measuring…" after a profile change. A measure that fails outside ``on_know_me`` (a GPU
    quota, a full queue) must not leave that for good; one that waited behind a tune while the visitor picked
    another profile must not put its verdict under that one, nor make the new one's measure a skipped repeat."""
    fns = list(page.fns.values())
    measures = [f for f in fns if getattr(f.fn, "__name__", "") == "measure_profile"]
    # page load, compute, a pick, "Put my own writing back", each example person
    assert len(measures) == 4 + len(personas.persona_names())
    for m in measures:
        assert m.trigger_mode == "always_last"
        after = {f.fn.__name__: f for f in fns if f.trigger_after == m._id}
        assert set(after) == {"show_measure", "not_measured"} and after["not_measured"].trigger_only_on_failure
        assert ui.NOT_MEASURED in after["not_measured"].fn()[0]
        before = next(f for f in fns if f._id == m.trigger_after)
        assert before.fn.__name__ in ("profile_state", "generate_example")  # the panel said "Measuring…" first
    fdr = studio.compute_profile(owner, "fdr", personas.persona_items("fdr")).profile_id
    measured = handler(page, "measure_profile")(owner, fdr)
    assert measured["profile_id"] == fdr
    assert ui.show_measure(measured, fdr) == measured["shown"] and "held back" in measured["shown"][1]
    assert ui.show_measure(measured, "another-profile") == (gr.skip(),) * 3  # picked meanwhile: not under it
    assert ui.show_measure(None, fdr) == (gr.skip(),) * 3


def test_the_control_column_is_the_same_plug_with_someone_elses_writing_in_the_same_batch(page, studio, owner):
    profile_id = studio.compute_profile(owner, "blog", personas.persona_items("food_blogger")).profile_id
    steps = list(handler(page, "on_generate")(owner, profile_id, "Write a tweet.", True, 6, "Greedy", 0.7, 0.95, 0))
    other = steps[-1][3]
    assert other["visible"] is True and other["label"] == f"{ui.CONTROL_LABEL} (FDR)" and other["value"]
    # once done, the notes say how close each column comes to the visitor's writing
    notes = steps[-1][4]
    assert "How close each answer comes to the subjects you write about" in notes
    assert all(re.search(rf"{column} -?[01]\.\d\d\b", notes)
               for column in ("personalized", "generic", "someone else's writing")), notes  # a cosine per column
    assert not any("How close" in step[4] for step in steps[:-1] if isinstance(step[4], str))
    off = list(handler(page, "on_generate")(owner, profile_id, "Write a tweet.", False, 6, "Greedy", 0.7, 0.95, 0))
    assert off[-1][3]["visible"] is False
    # One batch: every step of the stream carries all three rows.
    stream = list(studio.generate(owner, profile_id, "Write a tweet.", GenerationParams(max_new_tokens=4),
                                  ("pplug", "generic", "pplug-other")))
    assert all(set(r.outputs) == {"pplug", "generic", "pplug-other"} for r in stream)
    assert stream[-1].other == "FDR" and stream[-1].prompt_tokens["pplug-other"] == stream[-1].prompt_tokens["pplug"]
    fdr = studio.compute_profile(owner, "fdr", personas.persona_items("fdr")).profile_id
    assert list(studio.generate(owner, fdr, "Hi", GenerationParams(max_new_tokens=2),
                                ("pplug", "pplug-other")))[-1].other == "Food Blogger"  # never the visitor's own


def test_an_empty_request_answers_the_example_and_says_so(page, studio, owner):
    profile_id = studio.compute_profile(owner, "blog", personas.persona_items("food_blogger")).profile_id
    *_, last = handler(page, "on_generate")(owner, profile_id, "  ", False, 2, "Greedy", 0.7, 0.95, 0)
    assert last[1]["value"] and f'answered the example "{ui.EXAMPLE_REQUESTS[0]}"' in last[4]
    assert "reached the limit of 2 new tokens" in last[4]  # cut answers say so
    *_, whole = studio.generate(owner, profile_id, "Write a tweet about my weekend.", GenerationParams(max_new_tokens=200))
    assert not [n for n in whole.notes if "reached the limit" in n]  # answers that ended by themselves do not
    assert whole.cut == {"pplug": False, "generic": False}
    *_, typed = handler(page, "on_generate")(owner, profile_id, "Write a tweet.", False, 2, "Greedy", 0.7, 0.95, 0)
    assert "answered the example" not in typed[4]


def test_delete_my_data_waits_for_a_tick_and_untick_after(page):
    button = next(b for b in page.blocks.values() if getattr(b, "value", None) == "Delete my data")
    assert button.interactive is False
    sure = next(f for f in page.fns.values() if f.inputs and f.inputs[0].label and
                f.inputs[0].label.startswith("Yes, delete all my profiles") and f.outputs == [button])
    assert sure.fn(True)["interactive"] is True and sure.fn(False)["interactive"] is False
    chain, fn = [], next(f for f in page.fns.values() if getattr(f.fn, "__name__", "") == "on_delete")
    while fn is not None:
        chain.append(fn)
        fn = next((f for f in page.fns.values() if f.trigger_after == fn._id), None)
    assert chain[-1].outputs == sure.inputs and chain[-1].fn() is False  # the tick goes once done


def test_tune_to_me_says_what_it_needs_and_the_checkbox_follows_the_profiles_token(page, studio, owner):
    tune = handler(page, "on_tune")

    def state(*args):  # the selected profile's "Tune to me" part
        return handler(page, "profile_state")(*args)[:3]

    off = {"value": False, "interactive": False}
    short = studio.compute_profile(owner, "short", ["ok", "fine thanks", "Great coffee today friends"]).profile_id
    message, tuned_for = tune(owner, short)  # too few texts that make an example
    assert message["visible"] and "Tuning needs at least 6 texts" in message["value"]
    assert "Traceback" not in message["value"] and tuned_for is None
    button, status, use_tuned = state(owner, short)  # the button is off, and the line says why
    assert button["interactive"] is False and status.startswith("Tuning needs at least 6 texts")
    assert {k: use_tuned[k] for k in off} == off
    assert "No such profile" in tune(owner, "deleted-or-never-made")[0]["value"]
    assert "Compute your PPlug embedding first" in tune(owner, None)[0]["value"]
    assert state(owner, None)[0]["interactive"] is False
    # Generating with the box ticked but no token says so in the message area.
    out = list(handler(page, "on_generate")(owner, short, "Hi", False, 2, "Greedy", 0.7, 0.95, 0, True))
    assert len(out) == 1 and "Tune to me" in out[0][0]["value"] and list(out[0][1:]) == [gr.skip()] * 8
    # A stored token (as tune_profile stores one) ticks the box for its owner only, and says how it was fitted.
    meta = {"steps": 2, "held_nll_before": 3.0, "held_nll_after": 2.9, "gain": 0.105, "n_fit": 4, "n_held": 2,
            "seconds": 31.5}
    studio.store.put_personal_token(short, studio.plug_id, [0.0] * studio.plug.config.d_llm, meta)
    button, status, use_tuned = state(owner, short)
    assert use_tuned["value"] is True and use_tuned["interactive"] is True
    assert status.startswith("Tuned earlier (in 31.5 s)") and "10.5% likelier" in status and "step 2" in status
    # After a fit, what shows is the profile selected by then: the fit's line only under the tuned one.
    shown = handler(page, "show_tuned")
    assert shown(owner, short, short)[1].startswith("✅ Tuned in 31.5 s") and shown(owner, short, short)[2]["value"]
    other = studio.compute_profile(owner, "other", ["Another text here, long enough to count."]).profile_id
    button, status, use_tuned = shown(owner, other, short)  # picked while "short" was tuned
    assert "Tuned" not in status and {k: use_tuned[k] for k in off} == off
    assert state("someone-else-entirely-0123456789", short)[2]["value"] is False
    *_, last = handler(page, "on_generate")(owner, short, "Hi", False, 2, "Greedy", 0.7, 0.95, 0, True)
    assert last[1]["label"] == ui.TUNED_LABEL and last[1]["value"] and "Generated in" in last[4]
    *_, plain = handler(page, "on_generate")(owner, short, "Hi", False, 2, "Greedy", 0.7, 0.95, 0, False)
    assert plain[1]["label"] == ui.PERSONALIZED_LABEL
    assert plain[1]["value"] == last[1]["value"]  # a zero shift: the same answer
    # A fit that kept no step stores a zero token: the box stays off, and the line says why.
    studio.store.put_personal_token(short, studio.plug_id, [0.0] * studio.plug.config.d_llm, {**meta, "steps": 0})
    button, status, use_tuned = state(owner, short)
    assert {k: use_tuned[k] for k in off} == off and "token stays at zero" in status


def test_a_saved_profile_shows_its_writing_to_its_owner_only(page, studio, owner):
    items = ["First post, about *bread* <b>and</b> rain.", "Second post about the sea."]
    profile_id = studio.compute_profile(owner, "two posts", items).profile_id
    state = handler(page, "profile_state")
    box, writing, know_me, sentence, plot = state(owner, profile_id)[3:]
    # the panel says it is measuring (never the previous profile's verdict) until this profile's own is in
    assert know_me["visible"] is True and sentence == ui.MEASURING and plot["visible"] is False
    assert box["visible"] is True and box["label"] == "The writing in this profile (2 items)"
    assert "2. Second post about the sea" in writing and "<b>" not in writing and "\\*bread\\*" in writing  # as text
    assert state("someone-else-entirely-0123456789", profile_id)[3]["visible"] is False
    assert state(owner, None)[3]["visible"] is False and state(owner, "never-made")[4] == ""
    assert state(owner, None)[5]["visible"] is False and state(owner, None)[6] == ""  # no profile: no panel


def test_charts_start_at_zero_with_one_scale_rule_and_keep_the_whole_text():
    assert [charts.axis_top(v) for v in ([0.044, 0.125], [12.5], [58.7], [104.0, 111.0], [0.0], [])] == [
        0.2, 20, 100, 200, 1.0, 1.0]
    long_text = "word " * 200
    result = Comparison(top_items=[TopItem(3, 0.125, long_text), TopItem(0, 0.044, "short")])
    frame = charts.weights_frame(result)
    assert frame["text"].tolist() == [long_text, "short"] and frame["weight (%)"].tolist() == [12.5, 4.4]
    plot = charts.weights_plot(frame)
    assert plot.y_lim == [0, 20] and plot.visible
    know = KnowMe(nll={"generic": [2.0], "yours": [1.9], "stranger": [1.95]}, strangers=["FDR"], seconds=0.1)
    assert charts.know_me_plot(know).y_lim == [0, 200]


def test_the_why_charts_and_the_know_me_panel_are_hidden_until_there_is_a_result(page):
    hidden = {b.elem_id for b in page.blocks.values() if getattr(b, "elem_id", None) in ("why", "know-me")
              and b.visible is False}
    assert hidden == {"why", "know-me"}


def test_lamp_user_picker_shows_item_counts_largest_first(page, tmp_path, owner):
    path = tmp_path / "dev_questions.json"
    path.write_text(json.dumps([{"user_id": "few", "profile": [{"text": "a"}]},
                                {"user_id": "many", "profile": [{"text": f"t{i}"} for i in range(4)]}]))
    _, users, _ = handler(page, "show_preview")(owner, "", [str(path)], "text", None)
    assert users["choices"] == [("many · 4 items", "many"), ("few · 1 item", "few")] and users["value"] == "many"


def test_pasted_text_beside_uploads_is_said_to_be_unused_and_the_csv_column_counts_on_leaving_it(page, tmp_path,
                                                                                                   owner):
    path = tmp_path / "posts.csv"
    path.write_text("body\nFirst post.\nSecond post.\n")
    shown, _, compute = handler(page, "show_preview")(owner, "My pasted post.", [str(path)], "body", None)
    assert "2 items" in shown and "pasted text is not used while files are uploaded" in shown
    assert compute["interactive"] is True
    column = next(b for b in page.blocks.values() if getattr(b, "label", None) == "CSV text column")
    events = {t[1] for f in page.fns.values() if getattr(f.fn, "__name__", "") == "show_preview" for t in f.targets
              if t[0] == column._id}
    assert events == {"submit", "blur"}  # typing a column name and clicking elsewhere is enough


def test_the_readme_shows_a_committed_screenshot_of_the_visit_near_the_top():
    import re
    from pathlib import Path

    from demo.app.screenshots import SHOTS

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    images = re.findall(r"!\[[^\]]+\]\((docs/screenshots/[\w-]+\.png)\)", readme)
    assert images and readme.index(images[0]) < readme.index("\n## ")  # before the first section
    for name in SHOTS:  # what `python -m demo.app.screenshots` writes, committed and small
        path = root / "docs" / "screenshots" / f"{name}.png"
        assert path.is_file() and path.stat().st_size < 300_000, path
    assert all((root / image).is_file() for image in images)
