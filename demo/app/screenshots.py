"""Screenshots of the main flow, taken in Debian's Chromium through Playwright.

    python -m demo.app.screenshots [--out docs/screenshots]

starts the app on the configured models with a fresh database, walks a visit as a stakeholder
would (first screen, one persona click with both answers, "does it know me?", the control
column, the study's consent and one vote) and writes small PNGs. The browser test
(``tests/test_visit.py``) runs the same walk and checks each step.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from ..core.settings import REPO_ROOT
from ..core.text import free_port

OUT = REPO_ROOT / "docs" / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
VIEWPORT = {"width": 1366, "height": 900}
STUDY = "voice-check"  # one of assets/studies
PERSONA_FILE = REPO_ROOT / "assets" / "personas" / "obama.txt"  # the study participant's writing
SHOTS = ("first-screen", "persona-answers", "does-it-know-me", "control-column", "study-consent", "study-vote")


def chromium_path() -> str:
    return os.environ.get("PPLUG_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def _answers_done(page, columns: int) -> None:
    """Wait until ``columns`` read-only answer boxes hold text and the stream has finished."""
    page.get_by_text("Generated in").first.wait_for()
    page.wait_for_function(
        """n => [...document.querySelectorAll('textarea')].filter(t => t.disabled || t.readOnly)
                .filter(t => t.value.trim().length > 0).length >= n""", arg=columns)


def _settled(page) -> None:
    """Wait until no event is running (no progress or ETA shown) and charts have drawn."""
    page.wait_for_function(r"() => !/processing \||queue: \d/.test(document.body.innerText)")
    page.wait_for_timeout(500)


def _take(page, out: Path, name: str, top=None, bottom=None) -> Path:
    """The viewport, or the part of the page from locator ``top`` to locator ``bottom``."""
    path = out / f"{name}.png"
    _settled(page)
    if top is None:
        page.screenshot(path=str(path))
        return path
    scroll = page.evaluate("() => window.scrollY")  # bounding boxes are in viewport coordinates
    first, last = top.bounding_box(), (bottom or top).bounding_box()
    margin = 12
    clip = {"x": 0, "y": max(first["y"] + scroll - margin, 0), "width": VIEWPORT["width"],
            "height": last["y"] + last["height"] - first["y"] + 2 * margin}
    page.screenshot(path=str(path), clip=clip, full_page=True)
    return path


def visit(page, url: str, out: Path, persona: str = "Food Blogger", study: str = STUDY, check=None) -> dict[str, Path]:
    """Walk the main flow on ``page`` (a Playwright page) against the app at ``url``; -> shot name -> PNG.

    ``check(name, page)``, when given, is called after each shot (the browser test's assertions).
    """
    out.mkdir(parents=True, exist_ok=True)
    shots: dict[str, Path] = {}

    def shoot(name: str, top=None, bottom=None) -> None:
        shots[name] = _take(page, out, name, top, bottom)
        if check:
            check(name, page)

    page.goto(url)
    page.get_by_role("button", name="Compute my PPlug embedding").wait_for()
    # The persona buttons come on once the page knows its visitor: the first screen as a visitor uses it.
    page.wait_for_function("name => [...document.querySelectorAll('button')]"
                           ".some(b => b.innerText.trim() === name && !b.disabled)", arg=persona)
    shoot("first-screen")

    page.get_by_role("button", name=persona, exact=True).click()  # the one click: fill, compute, answer, measure
    page.get_by_text("Your PPlug embedding is ready").wait_for()
    _answers_done(page, 2)
    page.get_by_text("Why this answer").wait_for()
    page.get_by_text("held back").first.wait_for()  # "does it know me?" has been measured
    shoot("persona-answers", page.locator("#ask"), page.locator("#why"))
    shoot("does-it-know-me", page.get_by_text("2 · Your embedding"), page.locator("#know-me").first)

    page.get_by_label("Add a control column", exact=False).check()
    page.get_by_role("button", name="Generate", exact=True).click()
    page.get_by_text("Same plug, someone else's writing (").first.wait_for()
    _answers_done(page, 3)
    shoot("control-column", page.locator("#answers"))

    page.goto(url + f"study?study={study}&PROLIFIC_PID=SCREENSHOT-{free_port()}")
    page.get_by_role("button", name="Continue").click()  # not ticked: a message, and the page stays usable
    page.get_by_text("tick the consent box", exact=False).first.wait_for()
    shoot("study-consent")
    page.get_by_label("I have read the information above and agree to take part.").check()
    page.get_by_role("button", name="Continue").click()
    page.get_by_label("Your writing").fill((PERSONA_FILE).read_text(encoding="utf-8"))
    page.get_by_role("button", name="Use my writing").click()
    page.get_by_text("Trial 1 of").wait_for()
    page.wait_for_function(
        """() => [...document.querySelectorAll('textarea')].filter(t => t.disabled || t.readOnly)
                .filter(t => t.value.trim().length > 0).length >= 2""")
    page.get_by_role("button", name="Choose A").click()
    page.get_by_text("Trial 2 of").wait_for()  # the vote is saved and the next trial is shown
    _settled(page)
    page.wait_for_function(
        """() => [...document.querySelectorAll('textarea')].filter(t => t.disabled || t.readOnly)
                .filter(t => t.value.trim().length > 0).length >= 2""")
    shoot("study-vote")
    return shots


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the PNGs (default: docs/screenshots)")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    from ..core.settings import Settings
    from ..core.studio import Studio
    from .ui import build_demo

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env({**os.environ, "PPLUG_DB": str(Path(tmp) / "screenshots.db")})
        demo = build_demo(Studio(settings))
        demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
                page = browser.new_context(viewport=VIEWPORT).new_page()
                page.set_default_timeout(120_000)
                for name, path in visit(page, demo.local_url, args.out).items():
                    print(f"{name}: {path} ({path.stat().st_size // 1024} KB)")
                browser.close()
        finally:
            demo.close()


if __name__ == "__main__":
    main()
