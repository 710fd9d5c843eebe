"""User studies: blind, randomized side-by-side comparisons with consent, votes, results and export.

A study is defined by a JSON or YAML file (see ``assets/studies/``) or in the admin page. This
module holds everything about studies that is not layout:

* :class:`StudyDefinition` and :func:`parse_definition`: the file format, validated with clear errors;
* :class:`StudyStore`: the study tables (their own migration set) and every study SQL statement;
* assignment: which pair of conditions and which request each trial gets, and the left/right order,
  drawn from seeds that are stored with the trial;
* :class:`StudyService`: the participant flow (consent, history, next trial, vote) on top of
  :class:`demo.service.Studio`, and the admin functions (register, results, export);
* the command line: ``python -m demo.study export NAME``, ``results NAME``, ``validate FILE``.

Nothing about a participant is stored before consent. Every study table is append-only: a
participant's history choice, trials, interactions, votes and completion are new rows, never updates.
The one exception is withdrawal: once a participant's withdrawal is recorded, the database lets
their rows be deleted, or anonymized in place when the study's consent says votes are kept
(``consent.on_withdraw: keep_anonymized``); nothing else can change them.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import hmac
import io
import json
import logging
import math
import random
import reprlib
import re
import secrets
import sqlite3
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path

import yaml
from sqlite_utils import Database, Migrations

from . import study_stats
from .settings import REPO_ROOT, Settings, choose_journal_mode
from .storage import Store

CONDITIONS = ("pplug", "generic", "rag", "pplug+rag")  # those of demo.service (not imported: no torch here)
CONDITION_LABELS = {
    "pplug": "Personalized (PPlug)",
    "generic": "Generic (no personalization)",
    "rag": "Retrieval (history items in the prompt)",
    "pplug+rag": "PPlug + retrieval",
}
CHOICES = {"A": "A is better", "B": "B is better", "tie": "Tie", "both_bad": "Both are bad"}
PERSONAS_DIR = REPO_ROOT / "assets" / "personas"
STUDIES_DIR = REPO_ROOT / "assets" / "studies"
log = logging.getLogger(__name__)
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


# ---------------------------------------------------------------------------------------
# The study definition
# ---------------------------------------------------------------------------------------


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
    from .history import parse_text

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


# ---------------------------------------------------------------------------------------
# Assignment and randomization
# ---------------------------------------------------------------------------------------


def schedule(definition: StudyDefinition, assignment_seed: int) -> list[tuple[tuple[str, str], str]]:
    """The (pair of conditions, request) of each trial of a participant.

    Pairs are balanced: every pair appears once per block of ``len(pairs)`` trials, in a shuffled
    order. Requests are the study's prompts, shuffled, repeated when there are fewer than trials
    (empty strings when participants write their own). Deterministic in ``assignment_seed``.
    """
    rng = random.Random(assignment_seed)
    pairs: list[tuple[str, str]] = []
    while len(pairs) < definition.trials_per_participant:
        block = definition.pairs
        rng.shuffle(block)
        pairs.extend(block)
    prompts: list[str] = []
    while definition.prompts and len(prompts) < definition.trials_per_participant:
        block = list(definition.prompts)
        rng.shuffle(block)
        prompts.extend(block)
    n = definition.trials_per_participant
    return list(zip(pairs[:n], prompts[:n] if prompts else [""] * n))


def side_order(pair: tuple[str, str], order_seed: int) -> tuple[str, str]:
    """(condition shown as A on the left, condition shown as B on the right): a fair coin from the seed."""
    first, second = pair
    return (second, first) if random.Random(order_seed).random() < 0.5 else (first, second)


def new_seed() -> int:
    return secrets.randbits(31)


# ---------------------------------------------------------------------------------------
# Storage: the study tables and all their SQL
# ---------------------------------------------------------------------------------------

STUDY_MIGRATIONS = Migrations("pplug_studio_study")


@STUDY_MIGRATIONS(name="m002_study_tables")
def m002_study_tables(db: Database) -> None:
    for statement in (
        # One row per version of a study's definition; a new version when the definition changes.
        """CREATE TABLE study_versions (
            study TEXT NOT NULL,
            version INTEGER NOT NULL,
            definition TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            source TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (study, version)
        )""",
        # Written at consent and only then; the token is stored hashed.
        """CREATE TABLE study_participants (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            study TEXT NOT NULL,
            study_version INTEGER NOT NULL,
            participant_id TEXT NOT NULL,
            id_source TEXT NOT NULL,
            prolific_study_id TEXT NOT NULL DEFAULT '',
            prolific_session_id TEXT NOT NULL DEFAULT '',
            token_sha256 TEXT NOT NULL,
            consent_version TEXT NOT NULL,
            consented_at TEXT NOT NULL,
            assignment_seed INTEGER NOT NULL,
            UNIQUE (study, participant_id),
            FOREIGN KEY (study, study_version) REFERENCES study_versions(study, version)
        )""",
        """CREATE TABLE study_histories (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            participant INTEGER NOT NULL REFERENCES study_participants(id),
            profile_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            persona TEXT NOT NULL DEFAULT '',
            n_items INTEGER NOT NULL,
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE study_trials (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            participant INTEGER NOT NULL REFERENCES study_participants(id),
            study TEXT NOT NULL,
            study_version INTEGER NOT NULL,
            trial_index INTEGER NOT NULL,
            request TEXT NOT NULL,
            request_source TEXT NOT NULL,
            condition_a TEXT NOT NULL,
            condition_b TEXT NOT NULL,
            order_seed INTEGER NOT NULL,
            output_a TEXT NOT NULL,
            output_b TEXT NOT NULL,
            params TEXT NOT NULL,
            plug_id TEXT NOT NULL,
            encoder_id TEXT NOT NULL,
            llm_id TEXT NOT NULL,
            history INTEGER NOT NULL REFERENCES study_histories(id),
            generation_seconds REAL NOT NULL,
            shown_at TEXT NOT NULL,
            UNIQUE (participant, trial_index)
        )""",
        "CREATE INDEX idx_study_trials_study ON study_trials(study, id)",
        """CREATE TABLE study_interactions (
            trial INTEGER NOT NULL REFERENCES study_trials(id),
            kind TEXT NOT NULL,
            at TEXT NOT NULL,
            PRIMARY KEY (trial, kind)
        )""",
        # UNIQUE(trial): a trial is never counted twice.
        """CREATE TABLE study_votes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            trial INTEGER NOT NULL UNIQUE REFERENCES study_trials(id),
            participant INTEGER NOT NULL REFERENCES study_participants(id),
            choice TEXT NOT NULL CHECK (choice IN ('A', 'B', 'tie', 'both_bad')),
            preferred TEXT NOT NULL,
            reason TEXT NOT NULL,
            voted_at TEXT NOT NULL
        )""",
        """CREATE TABLE study_completions (
            participant INTEGER PRIMARY KEY REFERENCES study_participants(id),
            completion_code TEXT NOT NULL,
            completed_at TEXT NOT NULL
        )""",
    ):
        db.execute(statement)
    # Append-only: refuse updates and deletes of recorded study data at the database level.
    for table in ("study_versions", "study_participants", "study_histories", "study_trials",
                  "study_interactions", "study_votes", "study_completions"):
        for action in ("UPDATE", "DELETE"):
            db.execute(f"""CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table}
                BEGIN SELECT RAISE(ABORT, 'study data is append-only'); END""")


# How each table's rows name their participant (for the withdrawal triggers).
_PARTICIPANT_OF = {
    "study_participants": "OLD.id",
    "study_histories": "OLD.participant",
    "study_trials": "OLD.participant",
    "study_interactions": "(SELECT participant FROM study_trials WHERE id = OLD.trial)",
    "study_votes": "OLD.participant",
    "study_completions": "OLD.participant",
}


@STUDY_MIGRATIONS(name="m003_study_withdrawals")
def m003_study_withdrawals(db: Database) -> None:
    # A withdrawal is recorded first; only then may that participant's rows be deleted
    # (mode delete) or updated (mode keep_anonymized). No foreign key: after a deletion the
    # participant row is gone and this row only says that someone withdrew.
    db.execute("""CREATE TABLE study_withdrawals (
        participant INTEGER PRIMARY KEY,
        study TEXT NOT NULL,
        mode TEXT NOT NULL CHECK (mode IN ('delete', 'keep_anonymized')),
        withdrawn_at TEXT NOT NULL
    )""")
    for action in ("UPDATE", "DELETE"):
        db.execute(f"""CREATE TRIGGER study_withdrawals_no_{action.lower()} BEFORE {action} ON study_withdrawals
            BEGIN SELECT RAISE(ABORT, 'study data is append-only'); END""")
    for table, participant in _PARTICIPANT_OF.items():
        for action, mode in (("UPDATE", "keep_anonymized"), ("DELETE", "delete")):
            db.execute(f"DROP TRIGGER {table}_no_{action.lower()}")
            db.execute(f"""CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table}
                WHEN NOT EXISTS (SELECT 1 FROM study_withdrawals w
                                 WHERE w.participant = {participant} AND w.mode = '{mode}')
                BEGIN SELECT RAISE(ABORT, 'study data is append-only'); END""")


EXPORT_COLUMNS = {  # column -> type, in export order
    "study": str, "study_version": int, "trial_id": int, "participant_id": str, "participant_id_source": str,
    "prolific_study_id": str, "prolific_session_id": str, "consent_version": str, "consented_at": str,
    "trial_index": int, "trials_per_participant": int, "request": str, "request_source": str,
    "condition_a": str, "condition_b": str, "order_seed": int, "output_a": str, "output_b": str,
    "voted": bool, "choice": str, "preferred_condition": str, "reason": str,
    "shown_at": str, "first_interaction_at": str, "voted_at": str, "seconds_to_vote": float,
    "history_kind": str, "persona": str, "history_items": int, "plug_id": str, "encoder_id": str,
    "llm_id": str, "max_new_tokens": int, "temperature": float, "top_p": float, "generation_seed": int,
    "generation_seconds": float, "participant_completed": bool,
}


class StudyStore:
    """The study tables in the app's database, through :class:`demo.storage.Store`'s connections."""

    def __init__(self, store: Store):
        self.store = store
        with store._write() as db:
            STUDY_MIGRATIONS.apply(db)

    # -- definitions -------------------------------------------------------------------

    def register(self, definition: StudyDefinition, source: str) -> tuple[int, bool]:
        """Store the definition as the study's newest version unless it equals the newest.

        Returns (version, whether it is new).
        """
        body = json.dumps(definition.to_dict(), sort_keys=True, ensure_ascii=False)
        digest = _sha(body)
        with self.store._write() as db:
            row = db.execute("SELECT version, sha256 FROM study_versions WHERE study = ?"
                             " ORDER BY version DESC LIMIT 1", [definition.name]).fetchone()
            if row and row[1] == digest:
                return row[0], False
            version = (row[0] if row else 0) + 1
            db.execute("INSERT INTO study_versions (study, version, definition, sha256, source, created_at)"
                       " VALUES (?, ?, ?, ?, ?, ?)", [definition.name, version, body, digest, source, _now()])
        return version, True

    def definition(self, study: str, version: int | None = None) -> tuple[int, StudyDefinition] | None:
        sql = "SELECT version, definition FROM study_versions WHERE study = ?"
        args: list = [study]
        if version is not None:
            sql += " AND version = ?"
            args.append(version)
        row = self.store._db().execute(sql + " ORDER BY version DESC LIMIT 1", args).fetchone()
        return (row[0], parse_definition(json.loads(row[1]))) if row else None

    def studies(self) -> list[dict]:
        """Every study (newest version) with its counts."""
        return list(self.store._db().query(
            """SELECT v.study, v.version, v.source, v.created_at,
                (SELECT COUNT(*) FROM study_participants p WHERE p.study = v.study) AS participants,
                (SELECT COUNT(*) FROM study_completions c JOIN study_participants p ON p.id = c.participant
                   WHERE p.study = v.study) AS completed,
                (SELECT COUNT(*) FROM study_trials t WHERE t.study = v.study) AS trials,
                (SELECT COUNT(*) FROM study_votes x JOIN study_trials t ON t.id = x.trial
                   WHERE t.study = v.study) AS votes,
                (SELECT COUNT(*) FROM study_withdrawals w WHERE w.study = v.study) AS withdrawn
            FROM study_versions v
            WHERE v.version = (SELECT MAX(version) FROM study_versions w WHERE w.study = v.study)
            ORDER BY v.study"""))

    # -- participants ------------------------------------------------------------------

    def add_participant(self, *, study: str, version: int, participant_id: str, id_source: str,
                        prolific_study_id: str, prolific_session_id: str, token: str, consent_version: str,
                        assignment_seed: int) -> int:
        try:
            with self.store._write() as db:
                return db.execute(
                    "INSERT INTO study_participants (study, study_version, participant_id, id_source,"
                    " prolific_study_id, prolific_session_id, token_sha256, consent_version, consented_at,"
                    " assignment_seed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [study, version, participant_id, id_source, prolific_study_id, prolific_session_id,
                     _sha(token), consent_version, _now(), assignment_seed]).lastrowid
        except sqlite3.IntegrityError:
            raise StudyError(f"Participant {participant_id} has already started this study. Open the study "
                             "in the browser where you gave consent to continue, or contact the researcher.") from None

    def find_participant(self, study: str, participant_id: str) -> dict | None:
        """The participant's row by id, token not checked (the admin's path)."""
        return self._one("SELECT * FROM study_participants WHERE study = ? AND participant_id = ?",
                         [study, participant_id or ""])

    def participant(self, study: str, participant_id: str, token: str) -> dict:
        """The participant's row, only with the right token (else StudyError)."""
        row = self.find_participant(study, participant_id)
        if row is None or not hmac.compare_digest(row.pop("token_sha256"), _sha(token or "")):
            raise StudyError("This browser has no consent on record for this participant in this study: "
                             "reload the study link to start.")
        return row

    def add_history(self, participant: int, profile_id: str, kind: str, persona: str, n_items: int) -> int:
        with self.store._write() as db:
            return db.execute("INSERT INTO study_histories (participant, profile_id, kind, persona, n_items,"
                              " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                              [participant, profile_id, kind, persona, n_items, _now()]).lastrowid

    def history(self, participant: int) -> dict | None:
        """The participant's latest history choice."""
        return self._one("SELECT * FROM study_histories WHERE participant = ? ORDER BY id DESC LIMIT 1", [participant])

    def profile_ids(self, participant: int) -> list[str]:
        """Every profile the participant's histories were computed into."""
        return [r["profile_id"] for r in self.store._db().query(
            "SELECT profile_id FROM study_histories WHERE participant = ?", [participant])]

    def _one(self, sql: str, args: list) -> dict | None:
        """The first row as a dict; the statement is finished at once (no cursor left open)."""
        rows = list(self.store._db().query(sql, args))
        return rows[0] if rows else None

    def withdraw(self, participant: int, study: str, mode: str) -> dict[str, int]:
        """Record the withdrawal, then delete the participant's study rows or anonymize them.

        ``keep_anonymized`` keeps what the analysis needs (conditions, choice, times) and blanks
        what could identify the person: the participant and Prolific ids, the token, the profile
        id, requests they wrote, outputs generated from their own writing, and free-text reasons.
        One transaction. Returns the rows touched per table.
        """
        counts: dict[str, int] = {}
        with self.store._write() as db:
            db.execute("INSERT INTO study_withdrawals (participant, study, mode, withdrawn_at) VALUES (?, ?, ?, ?)",
                       [participant, study, mode, _now()])
            if mode == "delete":
                for table, where in (
                    ("study_votes", "participant = :p"),
                    ("study_interactions", "trial IN (SELECT id FROM study_trials WHERE participant = :p)"),
                    ("study_completions", "participant = :p"),
                    ("study_trials", "participant = :p"),
                    ("study_histories", "participant = :p"),
                    ("study_participants", "id = :p"),
                ):
                    counts[table] = db.execute(f"DELETE FROM {table} WHERE {where}", {"p": participant}).rowcount
                return counts
            own = "(SELECT kind FROM study_histories h WHERE h.id = study_trials.history) = 'own'"
            for table, sql in (
                ("study_participants", "UPDATE study_participants SET participant_id = 'withdrawn-' || id,"
                 " id_source = 'withdrawn', prolific_study_id = '', prolific_session_id = '', token_sha256 = ''"
                 " WHERE id = :p"),
                ("study_trials", "UPDATE study_trials SET"
                 " request = CASE WHEN request_source = 'participant' THEN '' ELSE request END,"
                 f" output_a = CASE WHEN {own} THEN '' ELSE output_a END,"
                 f" output_b = CASE WHEN {own} THEN '' ELSE output_b END WHERE participant = :p"),
                ("study_histories", "UPDATE study_histories SET profile_id = '' WHERE participant = :p"),
                ("study_votes", "UPDATE study_votes SET reason = '' WHERE participant = :p"),
            ):
                counts[table] = db.execute(sql, {"p": participant}).rowcount
        return counts

    # -- trials and votes --------------------------------------------------------------

    def trials(self, participant: int) -> list[dict]:
        """The participant's trials in order, each with its vote (``choice`` None when not voted)."""
        return list(self.store._db().query(
            """SELECT t.*, v.choice, v.preferred, v.reason, v.voted_at FROM study_trials t
            LEFT JOIN study_votes v ON v.trial = t.id WHERE t.participant = ? ORDER BY t.trial_index""",
            [participant]))

    def add_trial(self, **row) -> dict:
        """Insert a trial; if the participant already has one at this index (a concurrent request),
        keep that one. Returns the stored trial."""
        row = {**row, "params": json.dumps(row["params"], sort_keys=True), "shown_at": _now()}
        columns = ", ".join(row)
        marks = ", ".join("?" * len(row))
        with self.store._write() as db:
            db.execute(f"INSERT OR IGNORE INTO study_trials ({columns}) VALUES ({marks})", list(row.values()))
        return next(t for t in self.trials(row["participant"]) if t["trial_index"] == row["trial_index"])

    def interact(self, participant: int, trial_id: int, kind: str = "first_interaction") -> None:
        with self.store._write() as db:
            db.execute("INSERT OR IGNORE INTO study_interactions (trial, kind, at)"
                       " SELECT id, ?, ? FROM study_trials WHERE id = ? AND participant = ?",
                       [kind, _now(), trial_id, participant])

    def vote(self, participant: int, trial_id: int, choice: str, reason: str, total: int,
             completion_code: str) -> dict:
        """Record a vote and, with the last one, the participant's completion: one transaction.

        Refuses a trial of another participant and a second vote on a trial.
        """
        with self.store._write() as db:
            trial = db.execute("SELECT participant, condition_a, condition_b FROM study_trials WHERE id = ?",
                               [trial_id]).fetchone()
            if trial is None or trial[0] != participant:
                raise StudyError("This trial is not yours: reload the study page.")
            if db.execute("SELECT 1 FROM study_votes WHERE trial = ?", [trial_id]).fetchone():
                raise StudyError("Your vote on this trial is already recorded; it counts once.")
            preferred = {"A": trial[1], "B": trial[2]}.get(choice, "")
            now = _now()
            db.execute("INSERT INTO study_votes (trial, participant, choice, preferred, reason, voted_at)"
                       " VALUES (?, ?, ?, ?, ?, ?)", [trial_id, participant, choice, preferred, reason, now])
            db.execute("INSERT OR IGNORE INTO study_interactions (trial, kind, at) VALUES (?, ?, ?)",
                       [trial_id, "first_interaction", now])
            voted = db.execute("SELECT COUNT(*) FROM study_votes WHERE participant = ?", [participant]).fetchone()[0]
            completed = voted >= total
            if completed:
                db.execute("INSERT OR IGNORE INTO study_completions (participant, completion_code, completed_at)"
                           " VALUES (?, ?, ?)", [participant, completion_code, now])
        return {"condition_a": trial[1], "condition_b": trial[2], "preferred": preferred, "voted": voted,
                "completed": completed}

    # -- results and export ------------------------------------------------------------

    def export_rows(self, study: str) -> list[dict]:
        """One row per trial of the study (voted or not), with the columns of :data:`EXPORT_COLUMNS`."""
        rows = list(self.store._db().query(
            """SELECT t.study, t.study_version, t.id AS trial_id, p.participant_id,
                p.id_source AS participant_id_source, p.prolific_study_id, p.prolific_session_id,
                p.consent_version, p.consented_at, t.trial_index,
                json_extract(v.definition, '$.trials_per_participant') AS trials_per_participant,
                t.request, t.request_source, t.condition_a, t.condition_b, t.order_seed, t.output_a, t.output_b,
                x.id IS NOT NULL AS voted, COALESCE(x.choice, '') AS choice,
                COALESCE(x.preferred, '') AS preferred_condition, COALESCE(x.reason, '') AS reason,
                t.shown_at, COALESCE(i.at, '') AS first_interaction_at, COALESCE(x.voted_at, '') AS voted_at,
                h.kind AS history_kind, h.persona, h.n_items AS history_items,
                t.plug_id, t.encoder_id, t.llm_id, t.params, t.generation_seconds,
                c.participant IS NOT NULL AS participant_completed
            FROM study_trials t
            JOIN study_participants p ON p.id = t.participant
            JOIN study_versions v ON v.study = t.study AND v.version = t.study_version
            JOIN study_histories h ON h.id = t.history
            LEFT JOIN study_votes x ON x.trial = t.id
            LEFT JOIN study_interactions i ON i.trial = t.id AND i.kind = 'first_interaction'
            LEFT JOIN study_completions c ON c.participant = t.participant
            WHERE t.study = ? ORDER BY t.id""", [study]))
        out = []
        for row in rows:
            params = json.loads(row.pop("params"))
            row.update(max_new_tokens=params["max_new_tokens"], temperature=params["temperature"],
                       top_p=params["top_p"], generation_seed=params["seed"])
            row["seconds_to_vote"] = (
                round((datetime.fromisoformat(row["voted_at"]) - datetime.fromisoformat(row["shown_at"]))
                      .total_seconds(), 3) if row["voted_at"] else None)
            out.append({k: (bool(row[k]) if t is bool else row[k]) for k, t in EXPORT_COLUMNS.items()})
        return out


# ---------------------------------------------------------------------------------------
# Export files
# ---------------------------------------------------------------------------------------


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(EXPORT_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else (str(v).lower() if isinstance(v, bool) else v))
                         for k, v in row.items()})
    return buffer.getvalue()


def to_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def read_export(text: str, fmt: str) -> list[dict]:
    """Read an export back into typed rows (what :meth:`StudyStore.export_rows` returned)."""
    if fmt == "jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    rows = []
    for raw in csv.DictReader(io.StringIO(text)):
        row = {}
        for key, kind in EXPORT_COLUMNS.items():
            value = raw[key]
            if kind is str:
                row[key] = value
            elif value == "":
                row[key] = None
            elif kind is bool:
                row[key] = value == "true"
            else:
                row[key] = kind(value)
        rows.append(row)
    return rows


def write_export(rows: list[dict], folder: str | Path, study: str, formats=("csv", "jsonl")) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    paths = []
    for fmt in formats:
        path = folder / f"{study}-trials-{stamp}.{fmt}"
        path.write_text(to_csv(rows) if fmt == "csv" else to_jsonl(rows), encoding="utf-8")
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------


@dataclass
class Results:
    study: str
    pairs: list[dict]
    bradley_terry: list[dict]
    participants: list[dict]
    trials: int
    included: int
    excluded: dict[str, int] = field(default_factory=dict)

    def markdown(self) -> str:
        lines = [f"### Study `{self.study}`: {self.included} votes analysed of {self.trials} trials",
                 "Excluded: " + (", ".join(f"{n} {why}" for why, n in self.excluded.items() if n) or "none") + ".",
                 "", "| pair | votes | X wins | Y wins | ties | both bad | win rate of X | 95% CI | unit |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for r in self.pairs:
            lines.append(f"| {r['x']} (X) vs {r['y']} (Y) | {r['votes']} | {r['x_wins']} | {r['y_wins']} | "
                         f"{r['ties']} | {r['both_bad']} | {r['win_rate']:.3f} | "
                         f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {r['bootstrap_unit']} |")
        if self.bradley_terry:
            lines += ["", "| rank | condition | Bradley–Terry score | 95% CI | votes |", "|---|---|---|---|---|"]
            for r in self.bradley_terry:
                lines.append(f"| {r['rank']} | {r['condition']} | {r['score']:+.3f} | "
                             f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] | {r['votes']} |")
        return "\n".join(lines)


def compute_results(rows: list[dict], conditions: list[str] | None = None, completed_only: bool = False,
                    n_boot: int = study_stats.N_BOOT, seed: int = 0, study: str = "") -> Results:
    """Results from export rows (read from the database by :meth:`StudyStore.export_rows`)."""
    study = study or (rows[0]["study"] if rows else "")
    excluded = {"unvoted (unfinished) trials": sum(1 for r in rows if not r["voted"])}
    if completed_only:
        excluded["votes of participants who did not finish"] = sum(
            1 for r in rows if r["voted"] and not r["participant_completed"])
    used = [r for r in rows if r["voted"] and (r["participant_completed"] or not completed_only)]
    votes = [{"participant": r["participant_id"], "a": r["condition_a"], "b": r["condition_b"],
              "choice": r["choice"]} for r in used]
    per_participant: dict[str, dict] = {}
    for r in rows:
        p = per_participant.setdefault(r["participant_id"], {
            "participant_id": r["participant_id"], "trials": 0, "voted": 0, "A": 0, "B": 0, "tie": 0,
            "both_bad": 0, "completed": r["participant_completed"]})
        p["trials"] += 1
        if r["voted"]:
            p["voted"] += 1
            p[r["choice"]] += 1
    n_conditions = len({c for v in votes for c in (v["a"], v["b"])})
    return Results(
        study=study, pairs=study_stats.pairwise(votes, conditions, n_boot=n_boot, seed=seed),
        bradley_terry=(study_stats.bradley_terry(votes, conditions, n_boot=min(n_boot, 1000), seed=seed)
                       if n_conditions > 2 else []),
        participants=list(per_participant.values()), trials=len(rows), included=len(used), excluded=excluded)


# ---------------------------------------------------------------------------------------
# The participant flow and the admin functions
# ---------------------------------------------------------------------------------------


def _owner_for(token: str) -> str:
    """The owner of a participant's profiles: derived from the token, not the token itself."""
    return "study:" + _sha("owner:" + token)[:40]


class StudyService:
    """Studies on top of a :class:`demo.service.Studio` (models, plug, store)."""

    def __init__(self, studio, admin_token: str = "", studies_dir: str | Path | None = STUDIES_DIR):
        self.studio = studio
        self.admin_token = admin_token
        self.db = StudyStore(studio.store)
        self.load_errors: list[str] = []
        if studies_dir and Path(studies_dir).is_dir():
            for path in sorted(Path(studies_dir).iterdir()):
                if path.suffix.lower() in (".json", ".yaml", ".yml"):
                    try:
                        self.register(load_definition_file(path), source=f"file:{path.name}")
                    except StudyError as err:
                        log.warning("Study file %s not loaded: %s", path, err)
                        self.load_errors.append(str(err))

    # -- checks ------------------------------------------------------------------------

    def check_admin(self, token: str) -> None:
        if not self.admin_token:
            raise StudyError("Admin functions are off: set PPLUG_ADMIN_TOKEN in the app's environment.")
        if not hmac.compare_digest(_sha(token or ""), _sha(self.admin_token)):
            raise StudyError("Wrong admin token.")

    def plug_problem(self, definition: StudyDefinition) -> str:
        """Why the loaded plug cannot run this study ("" if it can)."""
        wanted = definition.plug
        loaded = self.studio.plug_id
        if wanted in ("", "loaded", loaded):
            return ""
        folder = Path(wanted) if Path(wanted).is_absolute() else REPO_ROOT / wanted
        if (folder / "config.json").is_file():
            from .plug import PPlug  # torch: only when a study names a checkpoint folder

            try:
                wanted_id = PPlug.load(folder).plug_id
            except Exception as err:  # noqa: BLE001 - any failure is reported as is
                return f"Study `{definition.name}` names the plug checkpoint {wanted}, which cannot be loaded ({err})."
            if wanted_id == loaded:
                return ""
            return (f"Study `{definition.name}` needs the plug in {wanted} (`{wanted_id}`), but the app runs "
                    f"`{loaded}`. Start the app with PPLUG_PLUG={wanted}, or change the study's `plug`.")
        return (f"Study `{definition.name}` needs plug `{wanted}`, but the app runs `{loaded}` "
                f"(PPLUG_PLUG={self.studio.settings.plug or '(untrained)'}). Start the app with that plug "
                "checkpoint, or set the study's `plug` to \"loaded\".")

    def _validate_for_app(self, definition: StudyDefinition) -> None:
        limit = self.studio.settings.limits.max_new_tokens
        if definition.max_new_tokens > limit:
            raise StudyError(f"Study `{definition.name}`: generation.max_new_tokens is {definition.max_new_tokens}, "
                             f"above the app's limit of {limit} (PPLUG_MAX_NEW_TOKENS).")

    def register(self, definition: StudyDefinition, source: str) -> tuple[int, bool]:
        self._validate_for_app(definition)
        return self.db.register(definition, source)

    def _study(self, name: str) -> tuple[int, StudyDefinition]:
        found = self.db.definition((name or "").strip())
        if found is None:
            raise StudyError(f"There is no study called {name!r}. Check the link you were given.")
        return found

    # -- participant flow --------------------------------------------------------------

    def info(self, name: str) -> dict:
        """What a participant sees before consent; stores nothing."""
        version, d = self._study(name)
        return {"study": d.name, "version": version, "title": d.title, "consent_text": d.consent_text,
                "consent_version": d.consent_version, "instructions": d.instructions,
                "trials": d.trials_per_participant, "history_mode": d.history_mode,
                "personas": list(d.personas), "participant_prompts": d.participant_prompts,
                "on_withdraw": d.on_withdraw, "problem": self.plug_problem(d)}

    def consent(self, name: str, agree: bool, participant_id: str = "", prolific_study_id: str = "",
                session_id: str = "") -> dict:
        """Record consent (the first row stored for a participant). Returns id and secret token."""
        version, d = self._study(name)
        if not agree:
            raise StudyError("Please tick the consent box to take part; nothing has been stored.")
        problem = self.plug_problem(d)
        if problem:
            raise StudyError(problem)
        participant_id = (participant_id or "").strip()
        if participant_id and not PARTICIPANT_RE.match(participant_id):
            raise StudyError("The participant id in the link is not valid (letters, digits and -_.:@ only).")
        id_source = "prolific" if participant_id else "generated"
        participant_id = participant_id or "P-" + secrets.token_hex(5).upper()
        token = secrets.token_urlsafe(24)
        self.db.add_participant(study=d.name, version=version, participant_id=participant_id, id_source=id_source,
                                prolific_study_id=(prolific_study_id or "")[:128],
                                prolific_session_id=(session_id or "")[:128], token=token,
                                consent_version=d.consent_version, assignment_seed=new_seed())
        status = self.status(name, participant_id, token)
        return {"participant_id": participant_id, "participant_token": token, **status}

    def _participant(self, name: str, participant_id: str, token: str) -> tuple[dict, StudyDefinition]:
        participant = self.db.participant(name, participant_id, token)
        _, d = self.db.definition(name, participant["study_version"])
        return participant, d

    def status(self, name: str, participant_id: str, token: str) -> dict:
        """Where the participant is: ``history`` (give a history), ``trial`` (an open trial, shown
        again as it was), ``request`` (write the next request), ``next`` (a trial is to be
        generated) or ``done``. Generates nothing."""
        participant, d = self._participant(name, participant_id, token)
        trials = self.db.trials(participant["id"])
        voted = sum(1 for t in trials if t["choice"] is not None)
        out = {"study": d.name, "participant_id": participant["participant_id"], "total": d.trials_per_participant,
               "voted": voted, "history_mode": d.history_mode, "personas": list(d.personas)}
        history = self.db.history(participant["id"])
        out["persona"] = history["persona"] if history else ""
        if voted >= d.trials_per_participant:
            return {**out, "stage": "done", "completion_code": d.completion_code, "redirect_url": d.redirect_url}
        open_trial = next((t for t in trials if t["choice"] is None), None)
        if open_trial:
            return {**out, "stage": "trial", "trial": self._public_trial(open_trial, d)}
        if history is None:
            return {**out, "stage": "history"}
        return {**out, "stage": "request" if d.participant_prompts else "next", "index": len(trials) + 1}

    @staticmethod
    def _public_trial(trial: dict, d: StudyDefinition) -> dict:
        """What the participant sees of a trial: never the conditions."""
        return {"trial_id": trial["id"], "index": trial["trial_index"], "total": d.trials_per_participant,
                "request": trial["request"], "A": trial["output_a"], "B": trial["output_b"]}

    def set_history(self, name: str, participant_id: str, token: str, items: list[str] | None = None,
                    persona: str = "", source: str = "pasted text") -> dict:
        """Compute the participant's profile from their own items, or from a persona of the study.

        With ``items`` None and no ``persona`` in a persona study, a persona is assigned at random.
        """
        participant, d = self._participant(name, participant_id, token)
        if any(t for t in self.db.trials(participant["id"])):
            raise StudyError("Your history is already set for this study.")
        if items is None:
            if d.history_mode == "participant":
                raise StudyError("This study uses your own writing: paste or upload some of it.")
            if persona and persona not in d.personas:
                raise StudyError(f"Unknown persona {persona!r} for this study.")
            persona = persona or random.Random(participant["assignment_seed"]).choice(sorted(d.personas))
            items = persona_items(persona)
            kind, source = "persona", f"persona {persona}"
        else:
            if d.history_mode == "persona":
                raise StudyError("This study assigns a persona; you do not need to give a history.")
            kind, persona = "own", ""
            if len(items) < d.min_items:
                raise StudyError(f"This study needs at least {d.min_items} items of your writing; you gave "
                                 f"{len(items)}. Separate items with a blank line.")
        from .service import ServiceError

        try:
            result = self.studio.compute_profile(_owner_for(token), f"study {d.name}", items, source=source)
        except ServiceError as err:
            raise StudyError(str(err)) from None
        self.db.add_history(participant["id"], result.profile_id, kind, persona, result.n_items)
        return self.status(name, participant_id, token)

    def next_trial(self, name: str, participant_id: str, token: str, request: str = "") -> dict:
        """The participant's open trial, or a new one generated now; ``done`` after the last vote.

        In a study where participants write their requests, without ``request`` this only returns
        the status (stage ``request``)."""
        status = self.status(name, participant_id, token)
        if status["stage"] in ("trial", "done"):
            return status
        if status["stage"] == "history":
            if status["history_mode"] != "persona":
                raise StudyError("Give your writing history first.")
            status = self.set_history(name, participant_id, token)
        if status["stage"] == "request" and not (request or "").strip():
            return status  # the participant writes the request first
        participant, d = self._participant(name, participant_id, token)
        problem = self.plug_problem(d)
        if problem:
            raise StudyError(problem)
        index = status["index"]
        pair, prompt = schedule(d, participant["assignment_seed"])[index - 1]
        request_source = "study"
        if d.participant_prompts:
            prompt = request.strip()
            request_source = "participant"
        history = self.db.history(participant["id"])
        order_seed = new_seed()
        condition_a, condition_b = side_order(pair, order_seed)
        from .generation import GenerationParams
        from .service import ServiceError

        params = GenerationParams(d.max_new_tokens, d.temperature, d.top_p, seed=order_seed)
        try:
            result = None
            for result in self.studio.generate(_owner_for(token), history["profile_id"], prompt, params,
                                               conditions=(condition_a, condition_b), rag_k=d.rag_k):
                pass
        except ServiceError as err:
            raise StudyError(str(err)) from None
        trial = self.db.add_trial(
            participant=participant["id"], study=d.name, study_version=participant["study_version"],
            trial_index=index, request=prompt, request_source=request_source, condition_a=condition_a,
            condition_b=condition_b, order_seed=order_seed, output_a=result.outputs[condition_a],
            output_b=result.outputs[condition_b], params=asdict(params), plug_id=self.studio.plug_id,
            encoder_id=self.studio.encoder_id, llm_id=self.studio.llm_id, history=history["id"],
            generation_seconds=round(result.timings.get("total_s", 0.0), 3))
        return {**status, "stage": "trial", "trial": self._public_trial(trial, d)}

    def interact(self, name: str, participant_id: str, token: str, trial_id: int) -> None:
        participant, _ = self._participant(name, participant_id, token)
        self.db.interact(participant["id"], int(trial_id))

    def vote(self, name: str, participant_id: str, token: str, trial_id: int, choice: str, reason: str = "") -> dict:
        """Store a vote; returns the participant's status, with the conditions if the study reveals them."""
        if choice not in CHOICES:
            raise StudyError(f"Unknown choice {choice!r}; one of {', '.join(CHOICES)}.")
        participant, d = self._participant(name, participant_id, token)
        recorded = self.db.vote(participant["id"], int(trial_id), choice, (reason or "").strip()[:2000],
                                d.trials_per_participant, d.completion_code)
        out = self.status(name, participant_id, token)
        if d.reveal_conditions:
            out["revealed"] = {"A": recorded["condition_a"], "B": recorded["condition_b"]}
        return out

    def withdraw(self, name: str, participant_id: str, token: str) -> dict:
        """The participant leaves the study: their data goes as the study's consent says."""
        participant, d = self._participant(name, participant_id, token)
        return self._withdraw(participant, d)

    def _withdraw(self, participant: dict, d: StudyDefinition) -> dict:
        # Their writing (profile, items, embeddings, generations) goes in every mode, first: if the
        # study rows then failed, the withdrawal is not recorded and can be asked for again.
        deleted: dict[str, int] = {}
        for owner in self.studio.store.owners_of(self.db.profile_ids(participant["id"])):
            for table, n in self.studio.delete_my_data(owner).items():
                deleted[table] = deleted.get(table, 0) + n
        study_rows = self.db.withdraw(participant["id"], d.name, d.on_withdraw)
        kept = d.on_withdraw == "keep_anonymized"
        message = ("You have left the study. Your writing and everything made from it are deleted; "
                   + ("as the consent said, your votes are kept without your participant id, requests, "
                      "comments or texts made from your writing." if kept else
                      "your votes and every other study record of you are deleted."))
        return {"study": d.name, "withdrawn": True, "mode": d.on_withdraw, "message": message,
                "deleted": deleted, "study_rows": study_rows}

    # -- admin -------------------------------------------------------------------------

    def admin_withdraw(self, admin_token: str, name: str, participant_id: str) -> dict:
        """Withdraw a participant who asked the researcher (they have no token at hand)."""
        self.check_admin(admin_token)
        found = self.db.find_participant(name, (participant_id or "").strip())
        if found is None or found["id_source"] == "withdrawn":
            raise StudyError(f"Study `{name}` has no participant {participant_id!r} (or they have withdrawn).")
        _, d = self.db.definition(name, found["study_version"])
        return self._withdraw(found, d)

    def admin_register(self, admin_token: str, text: str, source: str = "admin") -> str:
        self.check_admin(admin_token)
        definition = parse_definition(text, where="the definition")
        version, new = self.register(definition, source)
        problem = self.plug_problem(definition)
        note = f" Warning: {problem}" if problem else ""
        return (f"Saved study `{definition.name}` as version {version}." if new else
                f"Study `{definition.name}` is unchanged (version {version}).") + note

    def admin_studies(self, admin_token: str) -> list[dict]:
        self.check_admin(admin_token)
        return self.db.studies()

    def admin_results(self, admin_token: str, name: str, completed_only: bool = False) -> Results:
        self.check_admin(admin_token)
        _, d = self._study(name)
        return compute_results(self.db.export_rows(d.name), list(d.conditions), completed_only=completed_only,
                               study=d.name)

    def admin_export(self, admin_token: str, name: str, folder: str | Path) -> list[Path]:
        self.check_admin(admin_token)
        _, d = self._study(name)
        return write_export(self.db.export_rows(d.name), folder, d.name)


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.study", description="PPlug Studio user studies.")
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="write a study's trials with votes as CSV and JSONL")
    export.add_argument("name")
    export.add_argument("--out", default=".", help="folder for the files (default: here)")
    export.add_argument("--format", choices=["csv", "jsonl", "both"], default="both")
    results = sub.add_parser("results", help="print a study's results table")
    results.add_argument("name")
    results.add_argument("--completed-only", action="store_true")
    sub.add_parser("list", help="list the studies in the database")
    validate = sub.add_parser("validate", help="check a study file")
    validate.add_argument("file")
    for p in (export, results, sub.choices["list"]):
        p.add_argument("--db", help="database file (default: PPLUG_DB or the app's default)")
    args = parser.parse_args(argv)
    try:
        if args.command == "validate":
            d = load_definition_file(args.file)
            print(f"{args.file}: study `{d.name}` is valid ({len(d.conditions)} conditions, "
                  f"{d.trials_per_participant} trials per participant).")
            return 0
        db_path = Path(args.db) if args.db else Settings.from_env().db_path
        if not db_path.is_file():
            raise StudyError(f"No database at {db_path}.")
        with Store(db_path, journal_mode=choose_journal_mode(db_path)) as store:
            studies = StudyStore(store)
            if args.command == "list":
                for s in studies.studies():
                    print(f"{s['study']}\tv{s['version']}\t{s['participants']} participants\t"
                          f"{s['completed']} completed\t{s['votes']}/{s['trials']} trials voted")
                return 0
            found = studies.definition(args.name)
            if found is None:
                raise StudyError(f"There is no study called {args.name!r} in {db_path}.")
            rows = studies.export_rows(args.name)
            if args.command == "results":
                print(compute_results(rows, list(found[1].conditions), args.completed_only, study=args.name).markdown())
                return 0
            formats = ("csv", "jsonl") if args.format == "both" else (args.format,)
            for path in write_export(rows, args.out, args.name, formats):
                print(f"wrote {path} ({len(rows)} trials)")
            return 0
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
