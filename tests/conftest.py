"""Shared fixtures: the real embedded models, loaded once per test session, and the app on them.

Each test that needs a database gets a fresh SQLite file in its own tmp folder.
"""
from __future__ import annotations

import os
import secrets

# Two worker processes on two cores: one compute thread each, in the apps and scripts they start too, so
# that the workers do not oversubscribe the cores (the suite took ~7% less time so).
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

# The app's modules (torch, transformers, Gradio: ~15 s) are imported in the fixtures, not here: xdist's
# controller loads this file too, and would import them before it starts the workers, which import them again.


@pytest.fixture(scope="session")
def settings(tmp_path_factory):
    from demo.core.settings import Settings

    # The default model cache (~/.cache/pplug-studio) is kept: converting the LLM once per machine
    # is the behaviour under test elsewhere; the database is always a fresh file.
    db = tmp_path_factory.mktemp("db") / "studio.db"
    return Settings.from_env({"PPLUG_DB": str(db), "PPLUG_DEVICE": "cpu"})


@pytest.fixture(scope="session")
def studio(settings):
    from demo.core.studio import Studio

    return Studio(settings)


@pytest.fixture(scope="session")
def app(studio):
    """The app on the session's studio, served on a free port (tests that need other settings build
    their own with ``apphelp.studio_with``)."""
    from apphelp import serve

    demo = serve(studio)
    yield demo
    demo.close()


@pytest.fixture()
def store(tmp_path):
    from demo.core.storage import Store

    s = Store(tmp_path / "test.db")
    yield s
    s.close()


@pytest.fixture()
def owner() -> str:
    return secrets.token_urlsafe(24)
