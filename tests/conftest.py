"""Shared fixtures: the real embedded models, loaded once per test session.

Each test that needs a database gets a fresh SQLite file in its own tmp folder.
"""
from __future__ import annotations

import secrets

import pytest

from demo.core.settings import Settings
from demo.core.storage import Store


@pytest.fixture(scope="session")
def settings(tmp_path_factory) -> Settings:
    # The default model cache (~/.cache/pplug-studio) is kept: converting the LLM once per machine
    # is the behaviour under test elsewhere; the database is always a fresh file.
    db = tmp_path_factory.mktemp("db") / "studio.db"
    return Settings.from_env({"PPLUG_DB": str(db), "PPLUG_DEVICE": "cpu"})


@pytest.fixture(scope="session")
def studio(settings):
    from demo.core.studio import Studio

    return Studio(settings)


@pytest.fixture()
def store(tmp_path) -> Store:
    s = Store(tmp_path / "test.db")
    yield s
    s.close()


@pytest.fixture()
def owner() -> str:
    return secrets.token_urlsafe(24)
