"""End to end in a real browser: Playwright drives Debian's Chromium (headless) against the running app.

Paste a history, compute, generate, see both answers; history text and model output carrying
``<script>``/``<img onerror>`` payloads are shown as text and never run; another browser sees none of
this visitor's profiles; the study flow goes from consent through votes to the completion code.
"""
from __future__ import annotations

import copy
import os
import shutil

import pytest

from demo.ui import build_demo

from apphelp import free_port, studio_with

# .ci/run sets PPLUG_REQUIRE_BROWSER=1: there a missing browser is a failure, not a skip.
REQUIRED = os.environ.get("PPLUG_REQUIRE_BROWSER") == "1"
if REQUIRED:
    import playwright.sync_api as playwright_api
else:
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (tests/requirements.txt)")

CHROMIUM = os.environ.get("PPLUG_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not REQUIRED and not os.path.exists(CHROMIUM),
                                reason="needs Debian's Chromium: apt-get install chromium (.ci/run does)")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]
TIMEOUT_MS = 120_000

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


def _serve(studio):
    demo = build_demo(studio)  # answers of at most 8 tokens keep the tests quick
    demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
    return demo


@pytest.fixture(scope="module")
def app(studio):
    demo = _serve(studio_with(studio, max_new_tokens=8))
    yield demo.local_url
    demo.close()


class _EchoingStudio:
    """The real studio, except that the model's answers are replaced by an HTML payload."""

    def __init__(self, studio):
        self.__dict__["_real"] = studio

    def __getattr__(self, name):
        return getattr(self._real, name)

    def generate(self, *args, **kwargs):
        for result in self._real.generate(*args, **kwargs):
            shown = copy.copy(result)
            shown.outputs = {c: OUTPUT for c in result.outputs}
            yield shown


@pytest.fixture(scope="module")
def echo_app(studio):
    demo = _serve(_EchoingStudio(studio_with(studio, max_new_tokens=8)))
    yield demo.local_url
    demo.close()


def _page(browser):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    return context, page, dialogs


def _compute_and_generate(page, url: str, history: str, name: str) -> tuple[str, str]:
    page.goto(url)
    page.get_by_label("Your writing history").fill(history)
    page.get_by_label("Profile name").fill(name)
    page.get_by_role("button", name="Compute my PPlug embedding").click()
    page.get_by_text("Your PPlug embedding is ready").wait_for()
    page.get_by_label("Request").fill("Write a short post about my weekend.")
    page.get_by_role("button", name="Generate", exact=True).click()
    personalized, generic = page.get_by_label("Personalized (PPlug)"), page.get_by_label("Generic (same model, no plug)")
    page.wait_for_function(
        """() => [...document.querySelectorAll('textarea')].filter(t => t.disabled || t.readOnly)
                 .filter(t => t.value.length > 0).length >= 2""")
    page.get_by_text("Generated in").wait_for()  # the stream has finished
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
    context, page, dialogs = _page(browser)
    try:
        personalized, generic = _compute_and_generate(page, app, HISTORY, f"Baker {IMG}")
        assert personalized.strip() and generic.strip()
        # The pasted HTML is shown as text in the preview, the status line and the weights table.
        page.get_by_text("I bake sourdough every Sunday <script>", exact=False).first.wait_for()
        page.get_by_text(f"Baker {IMG}", exact=False).first.wait_for()
        assert page.get_by_text("Ramen broth takes twelve hours <svg", exact=False).count() >= 1
        _assert_inert(page, dialogs)
    finally:
        context.close()


def test_model_output_html_is_shown_as_text(browser, echo_app):
    context, page, dialogs = _page(browser)
    try:
        personalized, generic = _compute_and_generate(page, echo_app, HISTORY, "echo")
        assert personalized == generic == OUTPUT
        _assert_inert(page, dialogs)
        # Control: the same payload inserted as HTML does run in this browser, so the checks above can fail.
        page.evaluate("html => document.body.insertAdjacentHTML('beforeend', html)", IMG)
        page.wait_for_function("() => window.__pwned === 'img'")
    finally:
        context.close()


def test_profiles_stay_with_their_browser(browser, app):
    first, page, _ = _page(browser)
    other, other_page, _ = _page(browser)
    try:
        page.goto(app)
        page.get_by_role("button", name="Food Blogger").click()
        page.get_by_label("Profile name").fill("kept-in-this-browser")
        page.get_by_role("button", name="Compute my PPlug embedding").click()
        page.get_by_text("Your PPlug embedding is ready").wait_for()
        page.reload()  # the owner token survives a reload: the profile is listed again
        page.get_by_label("Your profiles").click()
        page.get_by_role("option", name="kept-in-this-browser", exact=False).wait_for()

        other_page.goto(app)  # another browser: a token of its own, no profiles
        other_page.get_by_text("Compute my PPlug embedding").wait_for()
        other_page.get_by_label("Your profiles").click()
        other_page.wait_for_timeout(500)
        assert other_page.get_by_role("option", name="kept-in-this-browser", exact=False).count() == 0
        tokens = [p.evaluate("() => JSON.stringify(Object.entries(localStorage))") for p in (page, other_page)]
        assert tokens[0] != tokens[1]
    finally:
        first.close()
        other.close()
