"""The example personas: ready-made writing histories in ``assets/personas`` (one item per paragraph).

The app offers them as one-click histories, uses them as "someone else's writing" (the control
column and the stranger in "does it know me?"), and studies can assign them to participants.
"""
from __future__ import annotations

from .history import parse_text
from .settings import PERSONAS_DIR


def persona_names() -> list[str]:
    """File stems of the personas, sorted: ["fdr", "food_blogger", ...]."""
    return sorted(p.stem for p in PERSONAS_DIR.glob("*.txt"))


def persona_label(name: str) -> str:
    """How a persona is shown: "food_blogger" -> "Food Blogger", "fdr" -> "FDR"."""
    return name.upper() if len(name) <= 3 else name.replace("_", " ").title()


def persona_named(label: str) -> str | None:
    """The persona shown as ``label`` ("Food Blogger" -> "food_blogger"), or None."""
    return next((n for n in persona_names() if persona_label(n) == label), None)


def persona_text(name: str) -> str:
    """The persona's history as pasted text. Raises KeyError for an unknown name."""
    if name not in persona_names():
        raise KeyError(name)
    return (PERSONAS_DIR / f"{name}.txt").read_text(encoding="utf-8")


def persona_items(name: str) -> list[str]:
    """The persona's history items. Raises KeyError for an unknown name."""
    return parse_text(persona_text(name)).items
