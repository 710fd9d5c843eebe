"""A stakeholder's whole visit in a real browser (Playwright + Debian's Chromium, 1366 px wide).

The walk of ``demo.app.screenshots`` (the one that makes the README's pictures), checked at each
step: the plain first screen, one persona click with both answers, the "why" chart, "does it know
me?", the control column, the study's unticked and ticked consent and one vote. Then an error that
lands in the message area alone.
"""
from __future__ import annotations

import os

import pytest

from demo.app.screenshots import CHROMIUM_ARGS, SHOTS, VIEWPORT, chromium_path, visit
from demo.core import personas
from demo.core.studio import ServiceError

from apphelp import serve, studio_with

REQUIRED = os.environ.get("PPLUG_REQUIRE_BROWSER") == "1"
if REQUIRED:
    import playwright.sync_api as playwright_api
else:
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (tests/requirements.txt)")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not REQUIRED and not os.path.exists(chromium_path()),
                                 reason="needs Debian's Chromium: apt-get install chromium (.ci/run does)")]


@pytest.fixture(scope="module")
def page():
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.set_default_timeout(180_000)
        yield page
        browser.close()


def _error_badges(page) -> int:
    return page.evaluate("""() => [...document.querySelectorAll('[data-testid=status-tracker]')]
                                  .filter(e => e.innerText.trim() === 'Error').length""")


def _answers(page) -> list[str]:
    return page.evaluate("""() => [...document.querySelectorAll('#answers textarea')]
                                  .filter(t => t.offsetParent !== null).map(t => t.value)""")


def _check(name: str, page) -> None:
    expect = playwright_api.expect
    assert _error_badges(page) == 0, name
    if name == "first-screen":
        for word in ("soft token", "frozen sentence encoder", "ROUGE"):
            assert page.get_by_text(word).filter(visible=True).count() == 0, word
        expect(page.get_by_role("button", name="Compute my PPlug embedding")).to_be_disabled()
        expect(page.get_by_role("button", name="Generate", exact=True)).to_be_disabled()
        for label in (personas.persona_label(n) for n in personas.persona_names()):  # on once the page knows its visitor
            expect(page.get_by_role("button", name=label, exact=True)).to_be_enabled()
        assert page.locator("#why").filter(visible=True).count() == 0  # no empty chart before a result
    elif name == "persona-answers":
        personalized, generic = _answers(page)
        assert personalized.strip() and generic.strip()
        expect(page.get_by_text("Why this answer")).to_be_visible()
        shown = " ".join(page.locator("#why").first.inner_text().split())
        whole = [t for t in personas.persona_items("food_blogger") if " ".join(t.split()) in shown]
        assert len(whole) >= 3, shown  # the blog's own texts, each in full
    elif name == "does-it-know-me":
        sentence = page.locator("#know-me").first.inner_text()
        assert "held back" in sentence and any(v in sentence for v in ("Yes", "Not clearly", "Not yet"))
        assert "FDR" in sentence and page.locator("#know-me canvas, #know-me svg").count() >= 1
    elif name == "control-column":
        assert len(_answers(page)) == 3 and all(a.strip() for a in _answers(page))
        expect(page.get_by_text("Same plug, someone else's writing (FDR)")).to_be_visible()
    elif name == "study-consent":
        expect(page.get_by_label("I have read the information above and agree to take part.")).to_be_editable()
        expect(page.get_by_role("button", name="Continue")).to_be_enabled()
    elif name == "study-vote":
        expect(page.get_by_text("Trial 2 of")).to_be_visible()


def _study(studio) -> str:
    from demo.study.definition import parse_definition
    from demo.study.store import StudyStore

    StudyStore(studio.store).register(parse_definition({
        "name": "visit", "consent": {"version": "1", "text": "Consent for the **visit** test."},
        "conditions": ["pplug", "generic"], "prompts": ["Write a short post about your weekend."],
        "trials_per_participant": 2, "generation": {"max_new_tokens": 8}}), source="test")
    return "visit"


def test_a_stakeholders_whole_visit(page, studio, tmp_path):
    demo = serve(studio_with(studio, max_new_tokens=16))
    try:
        shots = visit(page, demo.local_url, tmp_path, check=_check, study=_study(studio))
    finally:
        demo.close()
    assert list(shots) == list(SHOTS)
    for path in shots.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size < 400_000, path


class _FailingStudio:
    """The real studio, except that generating fails with a message (as a full queue or a bad request would)."""

    def __init__(self, studio):
        self.__dict__["_real"] = studio

    def __getattr__(self, name):
        return getattr(self._real, name)

    def generate(self, *args, **kwargs):
        raise ServiceError("The model is busy right now; try again in a minute.")


def test_an_error_is_said_once_in_the_message_area_without_error_badges(page, studio):
    demo = serve(_FailingStudio(studio_with(studio, max_new_tokens=8)))
    try:
        page.goto(demo.local_url)
        page.get_by_label("Your writing history").fill("I bake bread.\n\nI ride my bike to work.\n\nI read.")
        page.get_by_role("button", name="Compute my PPlug embedding").click()
        page.get_by_text("Your PPlug embedding is ready").wait_for()
        page.get_by_role("button", name="Generate", exact=True).click()
        page.locator("#message").get_by_text("The model is busy right now").wait_for()
        page.wait_for_timeout(500)
        assert _error_badges(page) == 0
        assert page.get_by_text("The model is busy right now").filter(visible=True).count() == 1
        assert _answers(page) == ["", ""]  # untouched
    finally:
        demo.close()
