"""The study tables (their own migration set) and every study SQL statement."""
from __future__ import annotations

import hmac
import json
import sqlite3
from datetime import datetime

from sqlite_utils import Database, Migrations

from ..core.storage import Store
from ..core.text import sha256_text, utc_now
from .definition import StudyDefinition, StudyError, parse_definition


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
    """The study tables in the app's database, through :class:`demo.core.storage.Store`'s public
    connection API (``rows`` and ``connection`` to read, ``transaction`` to write)."""

    def __init__(self, store: Store):
        self.store = store
        with store.transaction() as db:  # the write lock: two processes starting at once migrate once
            STUDY_MIGRATIONS.apply(db)

    # -- definitions -------------------------------------------------------------------

    def register(self, definition: StudyDefinition, source: str) -> tuple[int, bool]:
        """Store the definition as the study's newest version unless it equals the newest.

        Returns (version, whether it is new).
        """
        body = json.dumps(definition.to_dict(), sort_keys=True, ensure_ascii=False)
        digest = sha256_text(body)
        with self.store.transaction() as db:
            row = db.execute("SELECT version, sha256 FROM study_versions WHERE study = ?"
                             " ORDER BY version DESC LIMIT 1", [definition.name]).fetchone()
            if row and row[1] == digest:
                return row[0], False
            version = (row[0] if row else 0) + 1
            db.execute("INSERT INTO study_versions (study, version, definition, sha256, source, created_at)"
                       " VALUES (?, ?, ?, ?, ?, ?)", [definition.name, version, body, digest, source, utc_now()])
        return version, True

    def definition(self, study: str, version: int | None = None) -> tuple[int, StudyDefinition] | None:
        sql = "SELECT version, definition FROM study_versions WHERE study = ?"
        args: list = [study]
        if version is not None:
            sql += " AND version = ?"
            args.append(version)
        row = self._one(sql + " ORDER BY version DESC LIMIT 1", args)
        return (row["version"], parse_definition(json.loads(row["definition"]))) if row else None

    def studies(self) -> list[dict]:
        """Every study (newest version) with its counts."""
        return self.store.rows(
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
            ORDER BY v.study""")

    # -- participants ------------------------------------------------------------------

    def add_participant(self, *, study: str, version: int, participant_id: str, id_source: str,
                        prolific_study_id: str, prolific_session_id: str, token: str, consent_version: str,
                        assignment_seed: int) -> int:
        try:
            with self.store.transaction() as db:
                return db.execute(
                    "INSERT INTO study_participants (study, study_version, participant_id, id_source,"
                    " prolific_study_id, prolific_session_id, token_sha256, consent_version, consented_at,"
                    " assignment_seed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [study, version, participant_id, id_source, prolific_study_id, prolific_session_id,
                     sha256_text(token), consent_version, utc_now(), assignment_seed]).lastrowid
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
        # The same work and the same answer for an unknown id as for a known one with a wrong token.
        stored = row.pop("token_sha256") if row else sha256_text("no such participant")
        if not hmac.compare_digest(stored, sha256_text(token if isinstance(token, str) else "")) or row is None:
            raise StudyError("This browser has no consent on record for this participant in this study: "
                             "reload the study link to start.")
        return row

    def add_history(self, participant: int, profile_id: str, kind: str, persona: str, n_items: int) -> int:
        with self.store.transaction() as db:
            return db.execute("INSERT INTO study_histories (participant, profile_id, kind, persona, n_items,"
                              " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                              [participant, profile_id, kind, persona, n_items, utc_now()]).lastrowid

    def history(self, participant: int) -> dict | None:
        """The participant's latest history choice."""
        return self._one("SELECT * FROM study_histories WHERE participant = ? ORDER BY id DESC LIMIT 1", [participant])

    def profile_ids(self, participant: int) -> list[str]:
        """Every profile the participant's histories were computed into."""
        return [r["profile_id"] for r in self.store.rows(
            "SELECT profile_id FROM study_histories WHERE participant = ?", [participant])]

    def _one(self, sql: str, args: list) -> dict | None:
        """The first row as a dict, or None."""
        rows = self.store.rows(sql, args)
        return rows[0] if rows else None

    def withdraw(self, participant: int, study: str, mode: str) -> dict[str, int]:
        """Record the withdrawal, then delete the participant's study rows or anonymize them.

        ``keep_anonymized`` keeps what the analysis needs (conditions, choice, times) and blanks
        what could identify the person: the participant and Prolific ids, the token, the profile
        id, requests they wrote, outputs generated from their own writing, and free-text reasons.
        One transaction. Returns the rows touched per table.
        """
        counts: dict[str, int] = {}
        with self.store.transaction() as db:
            db.execute("INSERT INTO study_withdrawals (participant, study, mode, withdrawn_at) VALUES (?, ?, ?, ?)",
                       [participant, study, mode, utc_now()])
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
        return self.store.rows(
            """SELECT t.*, v.choice, v.preferred, v.reason, v.voted_at FROM study_trials t
            LEFT JOIN study_votes v ON v.trial = t.id WHERE t.participant = ? ORDER BY t.trial_index""",
            [participant])

    def add_trial(self, **row) -> dict:
        """Insert a trial; if the participant already has one at this index (a concurrent request),
        keep that one. Returns the stored trial."""
        row = {**row, "params": json.dumps(row["params"], sort_keys=True), "shown_at": utc_now()}
        columns = ", ".join(row)
        marks = ", ".join("?" * len(row))
        with self.store.transaction() as db:
            db.execute(f"INSERT OR IGNORE INTO study_trials ({columns}) VALUES ({marks})", list(row.values()))
        return next(t for t in self.trials(row["participant"]) if t["trial_index"] == row["trial_index"])

    def interact(self, participant: int, trial_id: int, kind: str = "first_interaction") -> None:
        with self.store.transaction() as db:
            db.execute("INSERT OR IGNORE INTO study_interactions (trial, kind, at)"
                       " SELECT id, ?, ? FROM study_trials WHERE id = ? AND participant = ?",
                       [kind, utc_now(), trial_id, participant])

    def vote(self, participant: int, trial_id: int, choice: str, reason: str, total: int,
             completion_code: str) -> dict:
        """Record a vote and, with the last one, the participant's completion: one transaction.

        Refuses a trial of another participant and a second vote on a trial.
        """
        with self.store.transaction() as db:
            trial = db.execute("SELECT participant, condition_a, condition_b FROM study_trials WHERE id = ?",
                               [trial_id]).fetchone()
            if trial is None or trial[0] != participant:
                raise StudyError("This trial is not yours: reload the study page.")
            if db.execute("SELECT 1 FROM study_votes WHERE trial = ?", [trial_id]).fetchone():
                raise StudyError("Your vote on this trial is already recorded; it counts once.")
            preferred = {"A": trial[1], "B": trial[2]}.get(choice, "")
            now = utc_now()
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
        rows = self.store.rows(
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
            WHERE t.study = ? ORDER BY t.id""", [study])
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
