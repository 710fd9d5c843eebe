"""The study vocabulary (conditions, choices, modes) and the study file: :class:`StudyDefinition`, a
pydantic model of the file format, and :func:`parse_definition`, which reads JSON or YAML and reports
every problem of a file in one message."""
from __future__ import annotations

import math
import re
import reprlib
from collections import defaultdict
from collections.abc import Callable
from itertools import combinations
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_serializer,
                      model_validator)
from pydantic_core import PydanticUseDefault

from ..core import personas as persona_files
from ..core.text import CONDITIONS

CONDITION_LABELS = {
    "pplug": "Personalized (PPlug)",
    "generic": "Generic (no personalization)",
    "rag": "Retrieval (history items in the prompt)",
    "pplug+rag": "PPlug + retrieval",
    "pplug-other": "Same plug, someone else's writing",
}
# Neutral labels: a study's own instructions say what to choose by (e.g. "sounds more like you", not "better").
CHOICES = {"A": "Choose A", "B": "Choose B", "tie": "Tie", "both_bad": "Both are bad"}
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
PARTICIPANT_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
HISTORY_MODES = ("participant", "persona", "either")
WITHDRAW_MODES = ("delete", "keep_anonymized")


class StudyError(ValueError):
    """A study action that cannot be done; the message is shown to the person as is."""


def persona_items(name: str) -> list[str]:
    """The history items of a persona in ``assets/personas``."""
    try:
        return persona_files.persona_items(name)
    except KeyError:
        raise StudyError(f"Unknown persona {name!r}.") from None


# --- messages ------------------------------------------------------------------------------------

_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60
_short.maxlist = _short.maxdict = 4
_short.maxlevel = 2


def _cut(value, limit: int = 60) -> str:
    """A short repr of what was found, for messages (a file can hold anything)."""
    # an error's own lines (a YAML error quotes the bad line under its position) read as one here
    text = _short.repr(value) if not isinstance(value, BaseException) else " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit] + "…"


def _names(values, sort: bool = True, at_most: int = 5) -> str:
    """Some offending keys or values, quoted and cut, for a message."""
    values = list(values)
    shown = [_cut(v) for v in (values if sort else values[:at_most])]
    if sort:
        shown.sort()
    more = f" and {len(values) - at_most} more" if len(values) > at_most else ""
    return ", ".join(shown[:at_most]) + more


# --- field checks: each raises a whole sentence that names the setting ----------------------------


def _text(what: str, required: bool = False) -> BeforeValidator:
    def check(value) -> str:
        if value is None or value == "":
            if required:
                raise ValueError(f"`{what}` is missing.")
            return ""
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(f"`{what}` must be text.")
        return str(value).strip()
    return BeforeValidator(check)


def _number(what: str, cast: type, low: float, high: float) -> BeforeValidator:
    def check(value):
        if value is None:
            raise PydanticUseDefault()
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"`{what}` must be a finite number.")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (cast is int and value != int(value)):
            raise ValueError(f"`{what}` must be {'a whole number' if cast is int else 'a number'}.")
        if not low <= value <= high:
            raise ValueError(f"`{what}` must be between {low} and {high}, got {_cut(value)}.")
        return cast(value)
    return BeforeValidator(check)


def _one_of(what: str, choices: tuple[str, ...]) -> BeforeValidator:
    def check(value) -> str:
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"`{what}` must be one of {', '.join(choices)}, got {_cut(value)}.")
        return value
    return BeforeValidator(check)


def _check(test: Callable[[Any], Any], message: str, after: bool = False) -> BeforeValidator | AfterValidator:
    """``test(value)`` gives the value to keep, or None for ``message``. Run on the value as found, or
    (``after``) on the value once converted (several checks in one ``Annotated`` run in order)."""
    def check(value):
        kept = test(value)
        if kept is None:
            raise ValueError(message)
        return kept
    return AfterValidator(check) if after else BeforeValidator(check)


def _conditions(value) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        raise ValueError(f"`conditions` must list at least two of: {', '.join(CONDITIONS)}.")
    bad = [c for c in value if not isinstance(c, str) or c not in CONDITIONS]
    problems = [f"Unknown condition(s) {_names(bad, sort=False)}; choose from {', '.join(CONDITIONS)}."] if bad else []
    if len({c for c in value if isinstance(c, str)}) != len(value) - sum(not isinstance(c, str) for c in value):
        problems.append("`conditions` lists a condition twice.")
    if problems:
        raise ValueError(" ".join(problems))
    return tuple(value)


def _prompts(value) -> tuple[str, ...] | None:
    if value == "participant":
        return ()
    if isinstance(value, (list, tuple)) and value and all(isinstance(p, str) and p.strip() for p in value):
        return tuple(p.strip() for p in value)
    return None


def _personas(value) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError("`history.personas` must be a list of persona names.")
    known = persona_files.persona_names()
    missing = [p for p in value if not isinstance(p, str) or p not in known]
    if missing:
        raise ValueError(f"Unknown persona(s) {_names(missing, sort=False)}; available: {', '.join(known)}.")
    return tuple(value)


# --- the file format ---------------------------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Consent(_Section):
    version: Annotated[str, _text("consent.version", required=True)]
    text: Annotated[str, _text("consent.text", required=True)]
    # what withdrawal does to the participant's votes
    on_withdraw: Annotated[str, _one_of("consent.on_withdraw", WITHDRAW_MODES)] = "delete"


class History(_Section):
    mode: Annotated[str, _one_of("history.mode", HISTORY_MODES)] = "participant"
    personas: Annotated[tuple[str, ...], BeforeValidator(lambda v: _personas(v or []))] = ()
    min_items: Annotated[int, _number("history.min_items", int, 1, 10_000)] = 3

    @model_validator(mode="after")
    def _personas_for_persona_modes(self) -> "History":
        if self.mode in ("persona", "either") and not self.personas:
            raise ValueError(f"`history.mode` {self.mode!r} needs `history.personas` "
                             f"(available: {', '.join(persona_files.persona_names())}).")
        return self


class Generation(_Section):
    max_new_tokens: Annotated[int, _number("generation.max_new_tokens", int, 1, 4096)] = 64
    temperature: Annotated[float, _number("generation.temperature", float, 0.0, 5.0)] = 0.0
    top_p: Annotated[float, _number("generation.top_p", float, 0.01, 1.0)] = 1.0
    rag_k: Annotated[int, _number("generation.rag_k", int, 1, 64)] = 4


class Completion(_Section):
    code: Annotated[str, _text("completion.code")] = ""
    redirect_url: Annotated[str, _text("completion.redirect_url"),
                            _check(lambda v: v if not v or re.match(r"^https?://\S+$", v) else None,
                                   "`completion.redirect_url` must be an http(s) URL.", after=True)] = ""


_SECTIONS = ("consent", "history", "generation", "completion")


class StudyDefinition(_Section):
    """A study as its file states it (JSON or YAML, see ``assets/studies/``)."""

    name: Annotated[str, _text("name", required=True),
                    _check(lambda v: v if NAME_RE.match(v) else None,
                           "`name` must be 1-64 lowercase letters, digits, '-' or '_' (it goes into the URL).",
                           after=True)]
    title: Annotated[str, _text("title")] = ""  # the name when not given
    consent: Consent
    instructions: Annotated[str, _text("instructions")] = ""
    conditions: Annotated[tuple[str, ...], BeforeValidator(_conditions)] = Field(default=None, validate_default=True)
    # empty: the participant writes a request for every trial ("participant" in the file)
    prompts: Annotated[tuple[str, ...], _check(_prompts, '`prompts` must be a list of non-empty requests, or '
                                                        '"participant" (each participant writes their own).')] = ()
    trials_per_participant: Annotated[int, _number("trials_per_participant", int, 1, 200)]
    history: History = History()
    # "loaded", a plug id, or a plug checkpoint folder
    plug: Annotated[str, _text("plug"), AfterValidator(lambda v: v or "loaded")] = "loaded"
    generation: Generation = Generation()
    reveal_conditions: Annotated[bool, _check(lambda v: v if isinstance(v, bool) else None,
                                              "`reveal_conditions` must be true or false.")] = False
    completion: Completion = Completion()

    @model_validator(mode="before")
    @classmethod
    def _fill(cls, data):
        """An absent or empty section is its defaults; the title defaults to the name."""
        if not isinstance(data, dict):
            return data
        data = {**data, **{key: {} for key in _SECTIONS if not data.get(key)}}
        data.setdefault("prompts", "participant")
        if data.get("trials_per_participant") is None:
            data.pop("trials_per_participant", None)  # reported as missing
        title, name = data.get("title"), data.get("name")
        if title is None or (isinstance(title, str) and not title.strip()):
            data["title"] = name if isinstance(name, str) else ""
        return data

    @field_serializer("prompts")
    def _prompts_in_file(self, prompts: tuple[str, ...]):
        return list(prompts) if prompts else "participant"

    @property
    def participant_prompts(self) -> bool:
        return not self.prompts

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return list(combinations(self.conditions, 2))

    def to_dict(self) -> dict:
        """The file format (what :func:`parse_definition` reads back to an equal definition)."""
        return self.model_dump(mode="json")


# --- reading a file ------------------------------------------------------------------------------

_SECTION_LABEL = {(): "setting(s)", **{(key,): f"{key} setting(s)" for key in _SECTIONS}}


def _problems(err: ValidationError) -> list[str]:
    """One sentence per problem, unknown keys gathered per section."""
    problems, unknown = [], defaultdict(list)
    for e in err.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in e["loc"])
        if e["type"] in ("extra_forbidden", "invalid_key"):
            unknown[tuple(e["loc"][:-1])].append(e["loc"][-1])
        elif e["type"] == "value_error":
            problems.append(str(e["ctx"]["error"]))
        elif e["type"] == "missing":
            problems.append(f"`{where}` is missing.")
        elif e["type"] in ("model_type", "model_attributes_type", "dict_type"):
            problems.append(f"`{where}` must be a mapping.")
        else:  # a check of pydantic's own; its message is clear enough
            problems.append(f"`{where}`: {e['msg']}.")
    for section, keys in unknown.items():
        known = f"; known: {', '.join(sorted(StudyDefinition.model_fields))}" if not section else ""
        problems.insert(0, f"Unknown {_SECTION_LABEL.get(section, 'setting(s)')} {_names(keys)}{known}.")
    return problems


def parse_definition(source: str | dict, where: str = "the study file") -> StudyDefinition:
    """Read a study from JSON or YAML text (or an already parsed dict); every problem in one message."""
    if isinstance(source, dict):
        data = source
    else:
        try:
            data = yaml.safe_load(source)  # YAML is a superset of JSON
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            tab = "'\\t'" in (getattr(err, "problem", "") or "")  # no tab in YAML's indentation; editors hide it
            hint = (f" Line {mark.line + 1} is indented with a tab: indent with spaces." if tab and mark else "")
            raise StudyError(f"Could not read {where}: it is neither valid JSON nor YAML ({_cut(err, 300)}).{hint}") \
                from None
        except (RecursionError, MemoryError, ValueError):
            raise StudyError(f"Could not read {where}: it is nested too deeply or too large to be a study file."
                             ) from None
    if not isinstance(data, dict):
        raise StudyError(f"{where} must be a mapping of settings (name, consent, conditions, ...).")
    try:
        return StudyDefinition.model_validate(data)
    except ValidationError as err:
        name = data.get("name")
        label = f" {name!r}" if isinstance(name, str) and NAME_RE.match(name) else ""
        raise StudyError(f"Study{label} in {where} is not valid:\n- " + "\n- ".join(_problems(err))) from None


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
