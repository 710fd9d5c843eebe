"""The study vocabulary (conditions, choices, modes) and the study file: :class:`StudyDefinition` and
:func:`parse_definition`, validated with clear errors."""
from __future__ import annotations

import hashlib
import math
import reprlib
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path

import yaml

from ..core.settings import REPO_ROOT


CONDITIONS = ("pplug", "generic", "rag", "pplug+rag")  # those of demo.core.studio (not imported: no torch here)
CONDITION_LABELS = {
    "pplug": "Personalized (PPlug)",
    "generic": "Generic (no personalization)",
    "rag": "Retrieval (history items in the prompt)",
    "pplug+rag": "PPlug + retrieval",
}
CHOICES = {"A": "A is better", "B": "B is better", "tie": "Tie", "both_bad": "Both are bad"}
PERSONAS_DIR = REPO_ROOT / "assets" / "personas"
STUDIES_DIR = REPO_ROOT / "assets" / "studies"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
PARTICIPANT_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
HISTORY_MODES = ("participant", "persona", "either")
WITHDRAW_MODES = ("delete", "keep_anonymized")


class StudyError(ValueError):
    """A study action that cannot be done; the message is shown to the person as is."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class StudyDefinition:
    name: str
    title: str
    consent_text: str
    consent_version: str
    instructions: str
    conditions: tuple[str, ...]
    prompts: tuple[str, ...]  # empty: the participant writes a request for every trial
    trials_per_participant: int
    history_mode: str = "participant"  # participant | persona | either
    personas: tuple[str, ...] = ()
    min_items: int = 3
    plug: str = "loaded"  # "loaded", a plug id, or a plug checkpoint folder
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    rag_k: int = 4
    reveal_conditions: bool = False
    completion_code: str = ""
    redirect_url: str = ""
    on_withdraw: str = "delete"  # what withdrawal does to votes: delete | keep_anonymized

    @property
    def participant_prompts(self) -> bool:
        return not self.prompts

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return list(combinations(self.conditions, 2))

    def to_dict(self) -> dict:
        """The file format (what :func:`parse_definition` reads back to an equal definition)."""
        return {
            "name": self.name, "title": self.title,
            "consent": {"version": self.consent_version, "text": self.consent_text,
                        "on_withdraw": self.on_withdraw},
            "instructions": self.instructions, "conditions": list(self.conditions),
            "prompts": list(self.prompts) if self.prompts else "participant",
            "trials_per_participant": self.trials_per_participant,
            "history": {"mode": self.history_mode, "personas": list(self.personas), "min_items": self.min_items},
            "plug": self.plug,
            "generation": {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                           "top_p": self.top_p, "rag_k": self.rag_k},
            "reveal_conditions": self.reveal_conditions,
            "completion": {"code": self.completion_code, "redirect_url": self.redirect_url},
        }


_TOP_KEYS = {"name", "title", "consent", "instructions", "conditions", "prompts", "trials_per_participant",
             "history", "plug", "generation", "reveal_conditions", "completion"}


_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60
_short.maxlist = _short.maxdict = 4
_short.maxlevel = 2


def _cut(value, limit: int = 60) -> str:
    """A short repr of what was found, for messages (a file can hold anything)."""
    text = _short.repr(value) if not isinstance(value, BaseException) else str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _names(values, sort: bool = True, at_most: int = 5) -> str:
    """Some offending keys or values, quoted and cut, for a message."""
    shown = [_cut(v) for v in values]
    if sort:
        shown.sort()
    more = f" and {len(shown) - at_most} more" if len(shown) > at_most else ""
    return ", ".join(shown[:at_most]) + more


def personas_available() -> list[str]:
    return sorted(p.stem for p in PERSONAS_DIR.glob("*.txt"))


def persona_items(name: str) -> list[str]:
    """The history items of a persona in ``assets/personas``."""
    from ..core.history import parse_text

    if name not in personas_available():
        raise StudyError(f"Unknown persona {name!r}.")
    return parse_text((PERSONAS_DIR / f"{name}.txt").read_text(encoding="utf-8")).items


def parse_definition(source: str | dict, where: str = "the study file") -> StudyDefinition:
    """Read a study from JSON or YAML text (or an already parsed dict); every problem in one message."""
    if isinstance(source, dict):
        data = source
    else:
        try:
            data = yaml.safe_load(source)  # YAML is a superset of JSON
        except yaml.YAMLError as err:
            raise StudyError(f"Could not read {where}: it is neither valid JSON nor YAML ({_cut(err, 300)}).") from None
        except (RecursionError, MemoryError, ValueError):
            raise StudyError(f"Could not read {where}: it is nested too deeply or too large to be a study file.") from None
    if not isinstance(data, dict):
        raise StudyError(f"{where} must be a mapping of settings (name, consent, conditions, ...).")
    problems: list[str] = []

    def section(key: str) -> dict:
        value = data.get(key) or {}
        if not isinstance(value, dict):
            problems.append(f"`{key}` must be a mapping.")
            return {}
        return value

    def text(value, what: str, required: bool = True) -> str:
        if value is None or value == "":
            if required:
                problems.append(f"`{what}` is missing.")
            return ""
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            problems.append(f"`{what}` must be text.")
            return ""
        return str(value).strip()

    def number(value, what: str, default, cast, low, high):
        if value is None:
            return default
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"`{what}` must be a finite number.")
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (cast is int and value != int(value)):
            problems.append(f"`{what}` must be {'a whole number' if cast is int else 'a number'}.")
            return default
        if not low <= value <= high:
            problems.append(f"`{what}` must be between {low} and {high}, got {_cut(value)}.")
            return default
        return cast(value)

    unknown = _names(set(data) - _TOP_KEYS)
    if unknown:
        problems.append(f"Unknown setting(s) {unknown}; known: {', '.join(sorted(_TOP_KEYS))}.")
    name = text(data.get("name"), "name")
    if name and not NAME_RE.match(name):
        problems.append("`name` must be 1-64 lowercase letters, digits, '-' or '_' (it goes into the URL).")
    consent = section("consent")
    consent_text = text(consent.get("text"), "consent.text")
    consent_version = text(consent.get("version"), "consent.version")
    unknown = _names(set(consent) - {"version", "text", "on_withdraw"})
    if unknown:
        problems.append(f"Unknown consent setting(s) {unknown}.")
    on_withdraw = consent.get("on_withdraw", "delete")
    if on_withdraw not in WITHDRAW_MODES:
        problems.append(f"`consent.on_withdraw` must be one of {', '.join(WITHDRAW_MODES)}, got {_cut(on_withdraw)}.")
        on_withdraw = "delete"
    conditions = data.get("conditions")
    if not isinstance(conditions, list) or len(conditions) < 2:
        problems.append(f"`conditions` must list at least two of: {', '.join(CONDITIONS)}.")
        conditions = []
    else:
        bad = [c for c in conditions if not isinstance(c, str) or c not in CONDITIONS]
        if bad:
            problems.append(f"Unknown condition(s) {_names(bad, sort=False)}; choose from {', '.join(CONDITIONS)}.")
            conditions = [c for c in conditions if c not in bad]
        if len(set(conditions)) != len(conditions):
            problems.append("`conditions` lists a condition twice.")
    prompts = data.get("prompts", "participant")
    if prompts == "participant":
        prompts = []
    elif isinstance(prompts, list) and prompts and all(isinstance(p, str) and p.strip() for p in prompts):
        prompts = [p.strip() for p in prompts]
    else:
        problems.append('`prompts` must be a list of non-empty requests, or "participant" '
                        "(each participant writes their own).")
        prompts = []
    trials = number(data.get("trials_per_participant"), "trials_per_participant", 0, int, 1, 200)
    if data.get("trials_per_participant") is None:
        problems.append("`trials_per_participant` is missing.")
    history = section("history")
    unknown = _names(set(history) - {"mode", "personas", "min_items"})
    if unknown:
        problems.append(f"Unknown history setting(s) {unknown}.")
    mode = history.get("mode", "participant")
    if not isinstance(mode, str) or mode not in HISTORY_MODES:
        problems.append(f"`history.mode` must be one of {', '.join(HISTORY_MODES)}, got {_cut(mode)}.")
        mode = "participant"
    personas = history.get("personas") or []
    if not isinstance(personas, list):
        problems.append("`history.personas` must be a list of persona names.")
        personas = []
    known_personas = personas_available()
    missing = [p for p in personas if not isinstance(p, str) or p not in known_personas]
    if missing:
        problems.append(f"Unknown persona(s) {_names(missing, sort=False)}; available: {', '.join(known_personas)}.")
        personas = [p for p in personas if p not in missing]
    if mode in ("persona", "either") and not personas:
        problems.append(f"`history.mode` {mode!r} needs `history.personas` (available: {', '.join(known_personas)}).")
    generation = section("generation")
    unknown = _names(set(generation) - {"max_new_tokens", "temperature", "top_p", "rag_k"})
    if unknown:
        problems.append(f"Unknown generation setting(s) {unknown}.")
    completion = section("completion")
    redirect = text(completion.get("redirect_url"), "completion.redirect_url", required=False)
    if redirect and not re.match(r"^https?://\S+$", redirect):
        problems.append("`completion.redirect_url` must be an http(s) URL.")
    reveal = data.get("reveal_conditions", False)
    if not isinstance(reveal, bool):
        problems.append("`reveal_conditions` must be true or false.")
    plug = text(data.get("plug", "loaded"), "plug", required=False) or "loaded"
    definition = StudyDefinition(
        name=name, title=text(data.get("title"), "title", required=False) or name,
        consent_text=consent_text, consent_version=consent_version,
        instructions=text(data.get("instructions"), "instructions", required=False),
        conditions=tuple(conditions), prompts=tuple(prompts), trials_per_participant=trials,
        history_mode=mode if mode in HISTORY_MODES else "participant", personas=tuple(personas),
        min_items=number(history.get("min_items"), "history.min_items", 3, int, 1, 10_000),
        plug=plug,
        max_new_tokens=number(generation.get("max_new_tokens"), "generation.max_new_tokens", 64, int, 1, 4096),
        temperature=number(generation.get("temperature"), "generation.temperature", 0.0, float, 0.0, 5.0),
        top_p=number(generation.get("top_p"), "generation.top_p", 1.0, float, 0.01, 1.0),
        rag_k=number(generation.get("rag_k"), "generation.rag_k", 4, int, 1, 64),
        reveal_conditions=bool(reveal) if isinstance(reveal, bool) else False,
        completion_code=text(completion.get("code"), "completion.code", required=False),
        redirect_url=redirect, on_withdraw=on_withdraw,
    )
    if problems:
        label = f" {name!r}" if NAME_RE.match(name or "") else ""
        raise StudyError(f"Study{label} in {where} is not valid:\n- " + "\n- ".join(problems))
    return definition


def load_definition_file(path: str | Path) -> StudyDefinition:
    path = Path(path)
    return parse_definition(read_study_text(path), where=path.name)


def read_study_text(path: str | Path) -> str:
    """The text of a study file, or a StudyError that says what is wrong with the file."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise StudyError(f"Could not read {path.name}: it is not a UTF-8 text file (save it as UTF-8 "
                         "YAML or JSON).") from None
    except OSError as err:
        raise StudyError(f"Could not read {path.name} ({err.strerror or err}).") from None
