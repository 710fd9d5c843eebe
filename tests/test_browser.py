"""End to end in a real browser: Playwright drives Debian's Chromium (headless) against the running app.

Paste a history, compute, generate, see both answers; history text and model output carrying
``<script>``/``<img onerror>`` payloads are shown as text and never run; another browser sees none of
this visitor's profiles; the study flow goes from consent through votes to the completion code.
"""
from __future__ import annotations

import contextlib

import copy
import os
import shutil

import pytest

from demo.core.tuning import FitSettings

from apphelp import serve, studio_with

# .ci/run sets PPLUG_REQUIRE_BROWSER=1: there a missing browser is a failure, not a skip.
REQUIRED = os.environ.get("PPLUG_REQUIRE_BROWSER") == "1"
if REQUIRED:
    import playwright.sync_api as playwright_api
else:
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (tests/requirements.txt)")

CHROMIUM = os.environ.get("PPLUG_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not REQUIRED and not os.path.exists(CHROMIUM),
                                 reason="needs Debian's Chromium: apt-get install chromium (.ci/run does)")]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]
TIMEOUT_MS = 60_000

# Each payload, if it ever ran, would set a flag on window or open a dialog.
SCRIPT = "<script>window.__pwned = 'script'; alert('script')</script>"
IMG = "<img src=x onerror=\"window.__pwned = 'img'; alert('img')\">"
SVG = "<svg onload=\"window.__pwned = 'svg'\"></svg>"
HISTORY = (f"I bake sourdough every Sunday {SCRIPT}\n\n"
           f"My tomato tart recipe {IMG} uses puff pastry.\n\n"
           f"Ramen broth takes twelve hours {SVG} but it is worth it.")
OUTPUT = f"Sure! {SCRIPT} {IMG}"


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield chromium
        chromium.close()


class _Studio:
    """The real studio; a subclass replaces one of its methods."""

    def __init__(self, studio):
        self.__dict__["_real"] = studio

    def __getattr__(self, name):
        return getattr(self._real, name)


class _QuickTuning(_Studio):
    """The real studio, except that "Tune to me" fits for 4 steps, not up to 16: these tests look at what the
    page shows of a fit (test_service and demo.research.evaluate look at what it is worth)."""

    def tune_profile(self, *args, **kwargs):
        return self._real.tune_profile(*args, settings=FitSettings(steps=4, min_steps=4), **kwargs)


@pytest.fixture(scope="module")
def app(studio):
    demo = serve(_QuickTuning(studio_with(studio, max_new_tokens=8)))
    yield demo.local_url
    demo.close()


class _EchoingStudio(_Studio):
    """The real studio, except that the model's answers are replaced by an HTML payload."""

    def generate(self, *args, **kwargs):
        for result in self._real.generate(*args, **kwargs):
            shown = copy.copy(result)
            shown.outputs = {c: OUTPUT for c in result.outputs}
            yield shown


@pytest.fixture(scope="module")
def echo_app(studio):
    demo = serve(_EchoingStudio(studio_with(studio, max_new_tokens=8)))
    yield demo.local_url
    demo.close()


@contextlib.contextmanager
def _page(browser):
    """A page in a fresh browser context (its own storage), closed afterwards. -> (page, dialogs shown)."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        yield page, dialogs
    finally:
        context.close()


def _wait_or_report(page, locator, timeout_ms: float | None = None) -> None:
    """Wait for ``locator``; on a timeout, fail with the messages the page shows (message area, toasts)."""
    try:
        locator.wait_for(timeout=timeout_ms)
    except playwright_api.TimeoutError:
        shown = page.evaluate("""() => ({
            message: document.querySelector('#message')?.innerText ?? '',
            toasts: [...document.querySelectorAll('.toast-body')].map(e => e.innerText),
            trackers: [...document.querySelectorAll('[data-testid=status-tracker]')].map(e => e.innerText.trim())
                      .filter(t => t),
            boxes: [...document.querySelectorAll('textarea')].map(t => t.value.slice(0, 60)),
        })""")
        raise AssertionError(f"timed out waiting for {locator}; the page shows: {shown}") from None


def _compute_and_generate(page, url: str, history: str, name: str) -> tuple[str, str]:
    page.goto(url)
    page.get_by_label("Your writing history").fill(history)
    page.get_by_label("Profile name").fill(name)
    page.get_by_role("button", name="Compute my PPlug embedding").click()
    _wait_or_report(page, page.get_by_text("Your PPlug embedding is ready"))
    page.get_by_label("Request").fill("Write a short post about my weekend.")
    page.get_by_role("button", name="Generate", exact=True).click()
    personalized, generic = page.get_by_label("Personalized (PPlug, your writing)"), page.get_by_label("Generic (same model, no plug)")
    _wait_or_report(page, page.get_by_text("Generated in"))  # the stream has finished
    page.wait_for_function(
        """() => [...document.querySelectorAll('textarea')].filter(t => t.disabled || t.readOnly)
                 .filter(t => t.value.length > 0).length >= 2""")
    return personalized.input_value(), generic.input_value()


def _assert_inert(page, dialogs: list[str]) -> None:
    assert dialogs == []
    assert page.evaluate("() => window.__pwned === undefined")
    injected = page.evaluate("""() => ({
        onerror: document.querySelectorAll('[onerror]').length,
        onload: document.querySelectorAll('svg[onload], [onload]').length,
        scripts: [...document.scripts].filter(s => s.textContent.includes('__pwned')).length,
    })""")
    assert injected == {"onerror": 0, "onload": 0, "scripts": 0}, injected


def test_paste_compute_generate_shows_both_answers_and_history_html_stays_text(browser, app):
    with _page(browser) as (page, dialogs):
        personalized, generic = _compute_and_generate(page, app, HISTORY, f"Baker {IMG}")
        assert personalized.strip() and generic.strip()
        # The pasted HTML is shown as text in the preview, the status line and the weights table.
        page.get_by_text("I bake sourdough every Sunday <script>", exact=False).first.wait_for()
        page.get_by_text(f"Baker {IMG}", exact=False).first.wait_for()
        assert page.get_by_text("Ramen broth takes twelve hours <svg", exact=False).count() >= 1
        _assert_inert(page, dialogs)


def test_model_output_html_is_shown_as_text(browser, echo_app):
    with _page(browser) as (page, dialogs):
        personalized, generic = _compute_and_generate(page, echo_app, HISTORY, "echo")
        assert personalized == generic == OUTPUT
        _assert_inert(page, dialogs)
        # Control: the same payload inserted as HTML does run in this browser, so the checks above can fail.
        page.evaluate("html => document.body.insertAdjacentHTML('beforeend', html)", IMG)
        page.wait_for_function("() => window.__pwned === 'img'")


def test_profiles_stay_with_their_browser(browser, app):
    with _page(browser) as (page, _), _page(browser) as (other_page, _):
        page.goto(app)
        page.get_by_label("Your writing history").fill(HISTORY)
        page.get_by_label("Profile name").fill("kept-in-this-browser")
        page.get_by_role("button", name="Compute my PPlug embedding").click()
        _wait_or_report(page, page.get_by_text("Your PPlug embedding is ready"))
        page.reload()  # the owner token survives a reload: the profile is listed again
        page.get_by_label("Your profiles").click()
        page.get_by_role("option", name="kept-in-this-browser", exact=False).wait_for()
        page.keyboard.press("Escape")
        page.get_by_text("The writing in this profile (3 items)").click()  # its writing, shown again, as text
        page.get_by_text("Ramen broth takes twelve hours <svg", exact=False).wait_for()
        assert page.evaluate("() => window.__pwned") is None

        other_page.goto(app)  # another browser: a token of its own, no profiles
        other_page.get_by_role("button", name="Compute my PPlug embedding").wait_for()
        other_page.get_by_label("Your profiles").click()
        other_page.wait_for_timeout(500)
        assert other_page.get_by_role("option", name="kept-in-this-browser", exact=False).count() == 0
        tokens = [p.evaluate("() => JSON.stringify(Object.entries(localStorage))") for p in (page, other_page)]
        assert tokens[0] != tokens[1]


def test_a_persona_click_keeps_the_visitors_writing_to_put_back(browser, app):
    expect = playwright_api.expect
    with _page(browser) as (page, dialogs):
        page.goto(app)
        box = page.get_by_label("Your writing history")
        box.fill(HISTORY)
        page.get_by_role("button", name="FDR", exact=True).click()
        back = page.get_by_role("button", name="Put my own writing back")
        _wait_or_report(page, back)
        expect(box).not_to_have_value(HISTORY)  # the persona's writing is shown...
        _wait_or_report(page, page.get_by_text("Generated in"))  # ...computed and answered
        generate = page.get_by_role("button", name="Generate", exact=True)
        personalized = page.get_by_label("Personalized (PPlug, your writing)")
        expect(generate).to_be_enabled()
        back.click()
        expect(box).to_have_value(HISTORY)  # ...and the visitor's comes back
        expect(back).to_be_hidden()
        # The persona's profile and answer go with it: this visitor has no profile of their own yet.
        expect(generate).to_be_disabled()
        expect(personalized).to_have_value("")
        expect(page.get_by_text("Your PPlug embedding is ready")).to_be_hidden()
        assert dialogs == []


# Eight tweet-like posts in one voice, each with three content words: eight examples, four held back and
# four to fit on. (With six, two to fit on, whether a step helps the held-back four is down to the CPU's
# bfloat16 arithmetic: on some machines no step did, and the token stayed at zero.)
TUNE_HISTORY = "\n\n".join([
    "Rainy mornings call for strong coffee and a long novel by the window.",
    "Tried the new espresso blend today, chocolate notes everywhere.",
    "Quiet bakery counter, warm croissants and a cappuccino at dawn.",
    "Coffee tasting notes from yesterday: cherry, cocoa and smoke.",
    "Weekend plans: hunting single origin beans across three neighborhoods.",
    "Best coffee in town is still the corner bakery, trust me.",
    "Morning ritual: grind the beans, bloom the pour over, sip slowly.",
    "Cold brew season is back and my fridge is full of mason jars.",
])


def test_tune_to_me_fits_a_token_shows_the_fit_and_generates_with_it(browser, app):
    expect = playwright_api.expect
    with _page(browser) as (page, dialogs):
        page.goto(app)
        page.get_by_label("Your writing history").fill(TUNE_HISTORY)
        page.get_by_label("Profile name").fill("coffee <b>notes</b>")
        page.get_by_role("button", name="Compute my PPlug embedding").click()
        _wait_or_report(page, page.get_by_text("Your PPlug embedding is ready"))
        use_tuned = page.get_by_label("Use my tuned token")
        expect(use_tuned).not_to_be_checked(timeout=TIMEOUT_MS)
        expect(use_tuned).to_be_disabled(timeout=TIMEOUT_MS)  # no token yet
        page.get_by_role("button", name="Tune to me").click()
        _wait_or_report(page, page.get_by_text("✅ Tuned in"), timeout_ms=300_000)
        shown = page.locator("#tune").inner_text()
        assert "kept out of the fit" in shown and "likelier per word" in shown, shown
        expect(use_tuned).to_be_checked(timeout=TIMEOUT_MS)
        expect(use_tuned).to_be_enabled(timeout=TIMEOUT_MS)
        page.get_by_label("Request").fill("Write a tweet about my morning.")
        page.get_by_role("button", name="Generate", exact=True).click()
        _wait_or_report(page, page.get_by_text("Generated in"))
        expect(page.get_by_label("Personalized (PPlug + your tuned token)")).not_to_have_value("", timeout=TIMEOUT_MS)
        expect(page.locator("#message")).to_be_hidden(timeout=TIMEOUT_MS)
        # Another profile has no token: the box goes off; picking the tuned one again ticks it.
        page.get_by_label("Profile name").fill("second")
        page.get_by_role("button", name="Compute my PPlug embedding").click()
        _wait_or_report(page, page.get_by_text("second: 8 items"))
        expect(use_tuned).not_to_be_checked(timeout=TIMEOUT_MS)
        expect(use_tuned).to_be_disabled(timeout=TIMEOUT_MS)
        assert "Tuned" not in page.locator("#tune").inner_text()
        page.get_by_label("Your profiles").click()
        page.get_by_role("option", name="coffee <b>notes</b>", exact=False).click()
        expect(use_tuned).to_be_checked(timeout=TIMEOUT_MS)
        expect(page.locator("#tune").get_by_text("Tuned earlier")).to_be_visible(timeout=TIMEOUT_MS)
        _assert_inert(page, dialogs)


BROWSER_STUDY = {
    "name": "browser-flow",
    "consent": {"version": "2", "text": "Consent for the **browser** test."},
    "instructions": "Pick the one that sounds like you.",
    "conditions": ["pplug", "generic"],
    "prompts": ["Write a tweet about my weekend.", "Write a note about baking."],
    "trials_per_participant": 2,
    "generation": {"max_new_tokens": 4},
    "reveal_conditions": False,
    "completion": {"code": "BROWSER-OK"},
}


@pytest.fixture(scope="module")
def study_app(app, studio):
    from demo.study.definition import parse_definition
    from demo.study.store import StudyStore

    StudyStore(studio.store).register(parse_definition(BROWSER_STUDY), source="test")
    return app


def _wait_for_answers(page) -> None:
    page.wait_for_function(
        """() => [...document.querySelectorAll('textarea')].filter(t => t.disabled || t.readOnly)
                 .filter(t => t.value.trim().length > 0).length >= 2""")


def test_study_flow_consent_vote_completion_code(browser, study_app, studio):
    from demo.study.store import StudyStore

    with _page(browser) as (page, dialogs):
        page.goto(study_app + "study?study=browser-flow&PROLIFIC_PID=BRW-1&STUDY_ID=S1&SESSION_ID=X1")
        page.get_by_text("Consent (version 2)").wait_for()
        assert StudyStore(studio.store).export_rows("browser-flow") == []  # nothing stored before consent
        assert page.get_by_text("Use via API").filter(visible=True).count() == 0  # a blind study has no API link
        page.get_by_label("I have read the information above and agree to take part.").check()
        page.get_by_role("button", name="Continue").click()
        page.get_by_label("Your writing").fill("I bake bread on Sundays.\n\nI run by the river.\n\nI read sci-fi.")
        page.get_by_role("button", name="Use my writing").click()
        page.get_by_text("Trial 1 of 2").wait_for()
        _wait_for_answers(page)
        page.get_by_role("button", name="Choose A").click()
        page.get_by_text("Trial 2 of 2").wait_for()
        page.get_by_text("Vote saved.").wait_for()  # the next trial keeps the vote's note
        _wait_for_answers(page)
        page.get_by_label("Why? (optional)").fill("Sounds like me.")
        page.get_by_role("button", name="Choose B").click()
        page.get_by_text("BROWSER-OK").wait_for()
        assert "You have finished all 2 trials" in page.content()
        assert dialogs == []
        page.goto(study_app)  # control: the main page does show the link
        page.get_by_text("Use via API").first.wait_for()
    rows = [r for r in StudyStore(studio.store).export_rows("browser-flow") if r["participant_id"] == "BRW-1"]
    assert [(r["trial_index"], r["choice"], r["voted"]) for r in rows] == [(1, "A", True), (2, "B", True)]
    assert rows[1]["reason"] == "Sounds like me." and rows[0]["consent_version"] == "2"
    assert rows[0]["prolific_study_id"] == "S1" and all(r["participant_completed"] for r in rows)


def test_study_link_with_html_in_the_participant_id_stays_inert(browser, study_app):
    with _page(browser) as (page, dialogs):
        page.goto(study_app + "study?study=browser-flow&PROLIFIC_PID=" + IMG.replace(" ", "%20").replace('"', "%22"))
        page.get_by_text("Consent (version 2)").wait_for()
        page.wait_for_timeout(500)
        _assert_inert(page, dialogs)


def test_study_page_opens_without_an_error(browser, study_app):
    with _page(browser) as (page, _):
        page.goto(study_app + "study?study=browser-flow&PROLIFIC_PID=BRW-2")
        page.get_by_text("Consent (version 2)").wait_for()
        page.wait_for_timeout(2000)
        errors = page.evaluate("""() => [...document.querySelectorAll('[data-testid=status-tracker]')]
                                       .filter(e => e.innerText.trim() === 'Error').length""")
        assert errors == 0
        page.get_by_label("I have read the information above and agree to take part.").check(timeout=5000)


def test_a_participant_leaves_the_study_from_the_page(browser, study_app, studio):
    with _page(browser) as (page, dialogs):
        page.goto(study_app + "study?study=browser-flow&PROLIFIC_PID=BRW-LEAVE")
        page.get_by_label("I have read the information above and agree to take part.").check()
        page.get_by_role("button", name="Continue").click()
        page.get_by_label("Your writing").fill("I knit on trains.\n\nI grow tomatoes.\n\nI collect maps.")
        page.get_by_role("button", name="Use my writing").click()
        page.get_by_text("Trial 1 of 2").wait_for()
        _wait_for_answers(page)
        page.get_by_text("Leave the study and delete my data").click()
        page.get_by_role("button", name="Leave the study", exact=True).click()
        page.get_by_text("Tick the box above to confirm").wait_for()  # nothing happens without the tick
        assert studio.store.connection().execute(
            "SELECT COUNT(*) FROM study_participants WHERE participant_id = 'BRW-LEAVE'").fetchone()[0] == 1
        page.get_by_label("Yes, I want to leave this study.").check()
        page.get_by_role("button", name="Leave the study", exact=True).click()
        page.get_by_text("You have left the study").wait_for()
        page.get_by_text("If you came from Prolific, return the study there.", exact=False).wait_for()
        assert dialogs == []
    db = studio.store.connection()
    assert db.execute("SELECT COUNT(*) FROM study_participants WHERE participant_id = 'BRW-LEAVE'").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM history_items WHERE text = 'I collect maps.'").fetchone()[0] == 0


# --- text from a link, a file or a person is shown as text ----------------------------------

LURE = "[Claim your reward](https://evil.example/reward) ![i](http://127.0.0.1:9/pid.png) https://evil.example/x"


def _requests_to(page, file_name: str) -> list[str]:
    """Every request the page makes for a file of that name (filled in as the page runs)."""
    from urllib.parse import urlparse

    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url) if urlparse(r.url).path.endswith(file_name) else None)
    return seen


def _links_to(page, host: str) -> int:
    return page.evaluate("host => [...document.querySelectorAll('a')].filter(a => a.href.includes(host)).length", host)


def test_link_parameters_are_shown_as_text_on_the_study_page(browser, study_app):
    from urllib.parse import quote

    with _page(browser) as (page, dialogs):
        fetched = _requests_to(page, "pid.png")
        page.goto(study_app + "study?study=browser-flow&PROLIFIC_PID=" + quote(LURE))
        page.get_by_text("Consent (version 2)").wait_for()
        page.get_by_text("[Claim your reward](https://evil.example/reward)", exact=False).first.wait_for()
        page.wait_for_timeout(500)
        assert _links_to(page, "evil.example") == 0 and fetched == []
        _assert_inert(page, dialogs)

    with _page(browser) as (page, dialogs):  # an unknown study named by a link: the message quotes it as text
        fetched = _requests_to(page, "pid.png")
        page.goto(study_app + "study?study=" + quote(LURE))
        page.get_by_text("There is no study called", exact=False).wait_for()
        page.get_by_text("https://evil.example/x", exact=False).first.wait_for()
        assert _links_to(page, "evil.example") == 0 and fetched == []


def test_a_csv_header_is_shown_as_text_in_the_preview_and_compute_stays_off(browser, app, tmp_path):
    header = '<img src="http://127.0.0.1:9/header.png" onerror="window.__pwned=1"><b>bold</b>'
    table = tmp_path / "posts.csv"
    table.write_text('"' + header.replace('"', '""') + '",score\nhello,1\n')  # quotes doubled, as CSV wants
    with _page(browser) as (page, dialogs):
        fetched = _requests_to(page, "header.png")
        page.goto(app)
        page.get_by_role("button", name="Compute my PPlug embedding").wait_for()
        page.get_by_text("Upload files instead").click()
        page.locator("input[type=file]").first.set_input_files(str(table))
        shown = page.get_by_text('has no "text" column', exact=False).first  # the preview
        shown.wait_for()
        assert "<b>bold</b>" in shown.inner_text()
        playwright_api.expect(page.get_by_role("button", name="Compute my PPlug embedding")).to_be_disabled()
        assert page.locator("b:text('bold'), img[src*='header.png']").count() == 0
        assert fetched == []
        _assert_inert(page, dialogs)
