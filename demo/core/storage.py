"""SQLite storage for PPlug Studio: every SQL statement of the core lives in this module.

The UI never touches SQL; the service layer calls :class:`Store`. Other tables (the user
studies, ``demo.study.store``) go through the same file with the public connection API:
:meth:`Store.connection`, :meth:`Store.rows` and :meth:`Store.transaction`. Tables (created by
the migrations in the "Schema" section below; all timestamps are ISO-8601 UTC):

``profiles``
    One row per writing history: ``id`` (unguessable token), ``owner``, ``name``,
    ``source`` (where the items came from), ``n_items``, ``created_at``.
``history_items``
    The texts of a profile: ``(profile_id, position)`` -> ``text``, ``sha256``.
``item_embeddings``
    Cache of encoder outputs keyed by ``(encoder_id, sha256 of the text)``, so an item
    is never encoded twice: ``dim``, ``vector``.
``profile_matrices``
    All item embeddings of a profile for one encoder, stacked into one ``[n, d]``
    matrix so a request reads a whole history in one row: ``n_rows``, ``dim``, ``matrix``.
``personal_embeddings``
    The personal embedding of a profile for one plug: the projected item matrix
    ``[n, d_llm]`` and the summary vector ``[d_llm]``, with ``n_rows``, ``dim``.
``personal_tokens``
    A profile's "tune to me" token for one plug: the fitted shift of P ``[d_llm]`` (``dim``,
    ``shift``) and how the fit went (``meta``, JSON).
``generations``
    Log of generations: prompt, parameters (with the conditions and whether the tuned token was used),
    personalized and generic outputs, timings.
``_sqlite_migrations``
    Names of the applied migrations (managed by ``sqlite_utils.Migrations``).

Vectors and matrices are stored as little-endian float32 blobs (see
:func:`vector_to_blob`); their shape is stored beside the blob and checked on read.
"""
from __future__ import annotations

import contextlib
import json
import re
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from sqlite_utils import Database, Migrations

from .text import sha256_text, utc_now

# SQLite allows at most 999 bound variables per statement in older builds; stay well under.
_MAX_VARIABLES = 500
JOURNAL_MODES = {"WAL", "DELETE", "TRUNCATE", "PERSIST", "MEMORY", "OFF"}
BUSY_TIMEOUT_MS = 10_000


# ---------------------------------------------------------------------------------------
# Vector encoding
# ---------------------------------------------------------------------------------------


def vector_to_blob(a: np.ndarray) -> bytes:
    """Encode a vector or matrix as little-endian float32 bytes (row-major)."""
    return np.ascontiguousarray(a, dtype="<f4").tobytes()


def blob_to_vector(blob: bytes, dim: int, n_rows: int | None = None) -> np.ndarray:
    """Decode a blob written by :func:`vector_to_blob`.

    Returns shape ``[dim]`` when the blob holds exactly one vector, else ``[n, dim]``.
    Pass ``n_rows`` to require exactly that many rows; the result is then always
    ``[n_rows, dim]`` (so a one-row matrix stays a matrix).
    Raises ``ValueError`` if the blob length does not match the shape.
    """
    if dim <= 0:
        raise ValueError(f"dim must be positive, got {dim}")
    blob = bytes(blob)
    row_bytes = dim * 4
    if n_rows is not None:
        if len(blob) != n_rows * row_bytes:
            raise ValueError(
                f"corrupted vector blob: {len(blob)} bytes, expected "
                f"{n_rows} x {dim} float32 = {n_rows * row_bytes} bytes"
            )
    elif len(blob) % row_bytes != 0:
        raise ValueError(
            f"corrupted vector blob: {len(blob)} bytes is not a multiple of "
            f"dim {dim} x 4 bytes"
        )
    # astype copies: the result is writable, native float32, independent of the blob.
    flat = np.frombuffer(blob, dtype="<f4").astype(np.float32)
    if n_rows is None and flat.size == dim:
        return flat
    return flat.reshape(-1, dim)


def _chunks(values: list[str], size: int = _MAX_VARIABLES) -> Iterator[list[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _as_matrix(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"{what} must be a non-empty [n, d] matrix, got shape {a.shape}")
    return a


def _as_vector(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    if a.ndim != 1 or a.shape[0] == 0:
        raise ValueError(f"{what} must be a non-empty [d] vector, got shape {a.shape}")
    return a


# ---------------------------------------------------------------------------------------
# Schema: an ordered list of migrations. To change the schema, append a new function
# (m002_..., m003_...); never edit one that has shipped. Each runs in a transaction
# together with the record of it having been applied.
# ---------------------------------------------------------------------------------------

MIGRATIONS = Migrations("pplug_studio")
MIGRATIONS_TABLE = Migrations.migrations_table


@MIGRATIONS(name="m001_initial_schema")
def m001_initial_schema(db: Database) -> None:
    for statement in (
        """CREATE TABLE profiles (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            name TEXT NOT NULL,
            source TEXT NOT NULL DEFAULT '',
            n_items INTEGER NOT NULL,
            created_at TEXT NOT NULL
        )""",
        "CREATE INDEX idx_profiles_owner ON profiles(owner, created_at)",
        """CREATE TABLE history_items (
            profile_id TEXT NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            text TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            PRIMARY KEY (profile_id, position)
        )""",
        # Cache clean-up looks items up by hash.
        "CREATE INDEX idx_history_items_sha256 ON history_items(sha256)",
        """CREATE TABLE item_embeddings (
            encoder_id TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            dim INTEGER NOT NULL,
            vector BLOB NOT NULL,
            PRIMARY KEY (encoder_id, sha256)
        )""",
        """CREATE TABLE profile_matrices (
            profile_id TEXT NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
            encoder_id TEXT NOT NULL,
            n_rows INTEGER NOT NULL,
            dim INTEGER NOT NULL,
            matrix BLOB NOT NULL,
            PRIMARY KEY (profile_id, encoder_id)
        )""",
        """CREATE TABLE personal_embeddings (
            profile_id TEXT NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
            plug_id TEXT NOT NULL,
            n_rows INTEGER NOT NULL,
            dim INTEGER NOT NULL,
            projected BLOB NOT NULL,
            summary BLOB NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (profile_id, plug_id)
        )""",
        # A generation outlives its profile (SET NULL): the log stays the owner's.
        """CREATE TABLE generations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            owner TEXT NOT NULL,
            profile_id TEXT REFERENCES profiles(id) ON DELETE SET NULL,
            plug_id TEXT NOT NULL,
            prompt TEXT NOT NULL,
            params TEXT NOT NULL,
            personalized TEXT NOT NULL,
            generic TEXT NOT NULL,
            timings TEXT NOT NULL,
            created_at TEXT NOT NULL
        )""",
        "CREATE INDEX idx_generations_owner ON generations(owner, id)",
    ):
        db.execute(statement)


@MIGRATIONS(name="m004_personal_tokens")
def m004_personal_tokens(db: Database) -> None:
    # m002 and m003 are the study tables' migrations (demo.study.store), numbered in one sequence.
    db.execute(
        """CREATE TABLE personal_tokens (
            profile_id TEXT NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
            plug_id TEXT NOT NULL,
            dim INTEGER NOT NULL,
            shift BLOB NOT NULL,
            meta TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (profile_id, plug_id)
        )"""
    )


# ---------------------------------------------------------------------------------------
# Store
# ---------------------------------------------------------------------------------------


class Store:
    """Thread-safe access to the app's SQLite file.

    Gradio runs handlers in worker threads and a sqlite3 connection must not be shared
    between threads, so each thread lazily opens its own connection (``threading.local``).
    Every write runs in one ``BEGIN IMMEDIATE`` transaction: it takes the write lock up
    front, so concurrent writers wait (``busy_timeout``) instead of failing on a lock
    upgrade, and multi-table writes are all-or-nothing.
    """

    def __init__(self, path: str | Path, journal_mode: str = "WAL"):
        """Open (creating if needed) the database file at ``path`` and apply migrations.

        ``journal_mode``: ``"WAL"`` (default) lets readers run during a write; use
        ``"DELETE"`` on network filesystems, where WAL's shared memory does not work.
        """
        if str(path) == ":memory:":
            raise ValueError("Store needs a file path: each thread opens its own connection")
        mode = journal_mode.upper()
        if mode not in JOURNAL_MODES:
            raise ValueError(f"journal_mode must be one of {sorted(JOURNAL_MODES)}, got {journal_mode!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.journal_mode = mode
        self._local = threading.local()
        self._all: list[Database] = []  # every thread's connection, so close() can close them
        self._lock = threading.Lock()
        self._closed = False
        self._migrate()

    # -- connections -------------------------------------------------------------------

    def _connect(self) -> Database:
        # check_same_thread=False only so close() may close other threads' connections;
        # each connection is still used by the one thread that opened it.
        # isolation_level=None: no implicit transactions, we open them explicitly.
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute(f"PRAGMA journal_mode={self.journal_mode}")
        if self.journal_mode == "WAL":
            # Durable at checkpoints, safe against corruption, far fewer fsyncs.
            conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return Database(conn, execute_plugins=False)

    def connection(self) -> Database:
        """This thread's connection, opened on first use. Reads use it as is; writes go through
        :meth:`transaction`."""
        if self._closed:
            raise RuntimeError("Store is closed")
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._connect()
            with self._lock:
                self._all.append(db)
            self._local.db = db
        return db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Database]:
        """One write transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error) on this
        thread's connection; yields the connection. Inside another, it is part of that one: several
        writes nested in one ``transaction()`` are all done or none, with no other writer between."""
        db = self.connection()
        if db.conn.in_transaction:
            yield db
            return
        db.conn.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.conn.execute("COMMIT")
        except BaseException:
            # Some errors already end the transaction; only roll back one still open.
            if db.conn.in_transaction:
                db.conn.execute("ROLLBACK")
            raise

    def rows(self, sql: str, args: list | dict = ()) -> list[dict]:
        """Every row of a read, as dicts; the statement is finished at once (no cursor left open)."""
        return list(self.connection().query(sql, args))

    def _migrate(self) -> None:
        # Holding the write lock for the whole run means two processes starting at once
        # cannot both see a migration as pending; each migration nests as a savepoint.
        with self.transaction() as db:
            MIGRATIONS.apply(db)

    def close(self) -> None:
        """Close every thread's connection. The store cannot be used afterwards."""
        with self._lock:
            self._closed = True
            for db in self._all:
                db.close()
            self._all.clear()
        self._local = threading.local()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- profiles ----------------------------------------------------------------------

    def create_profile(self, owner: str, name: str, items: list[str], source: str = "") -> str:
        """Store a profile and its items (in order); returns its unguessable id."""
        if any(not isinstance(text, str) for text in items):
            raise TypeError("items must be strings")
        profile_id = secrets.token_urlsafe(16)
        with self.transaction() as db:
            db.execute(
                "INSERT INTO profiles (id, owner, name, source, n_items, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [profile_id, owner, name, source, len(items), utc_now()],
            )
            db.conn.executemany(
                "INSERT INTO history_items (profile_id, position, text, sha256) VALUES (?, ?, ?, ?)",
                [(profile_id, i, text, sha256_text(text)) for i, text in enumerate(items)],
            )
        return profile_id

    _PROFILE_COLUMNS = "id, owner, name, source, n_items, created_at"

    def find_profile(self, owner: str, name: str, items: list[str]) -> str | None:
        """The id of the owner's newest profile with this name and exactly these items in this order, if any."""
        hashes = [sha256_text(text) for text in items]
        for row in self.rows("SELECT id FROM profiles WHERE owner = ? AND name = ? AND n_items = ?"
                             " ORDER BY created_at DESC, rowid DESC", [owner, name, len(items)]):
            if [item["sha256"] for item in self.profile_items(row["id"])] == hashes:
                return row["id"]
        return None

    def get_profile(self, profile_id: str, owner: str) -> dict | None:
        """The profile, or None unless it exists and belongs to ``owner``."""
        rows = self.rows(f"SELECT {self._PROFILE_COLUMNS} FROM profiles WHERE id = ? AND owner = ?",
                         [profile_id, owner])
        return rows[0] if rows else None

    def list_profiles(self, owner: str) -> list[dict]:
        """The owner's profiles, newest first."""
        return self.rows(f"SELECT {self._PROFILE_COLUMNS} FROM profiles WHERE owner = ?"
                         " ORDER BY created_at DESC, rowid DESC", [owner])

    def owners_of(self, profile_ids: list[str]) -> list[str]:
        """The distinct owners of the given profiles (ids that do not exist are skipped)."""
        if not profile_ids:
            return []
        marks = ", ".join("?" * len(profile_ids))
        return [r[0] for r in self.connection().execute(
            f"SELECT DISTINCT owner FROM profiles WHERE id IN ({marks})", list(profile_ids)).fetchall()]

    def owners_with_prefix(self, prefix: str) -> list[str]:
        """The distinct owners (of profiles or generations) whose id starts with ``prefix``."""
        pattern = re.sub(r"([*?\[])", r"[\1]", prefix) + "*"  # GLOB: case-sensitive, uses the owner indexes
        return [r[0] for r in self.connection().execute(
            "SELECT owner FROM profiles WHERE owner GLOB ? UNION SELECT owner FROM generations WHERE owner GLOB ?",
            [pattern, pattern]).fetchall()]

    def rename_owner(self, old: str, new: str) -> int:
        """Move every profile and generation of ``old`` to ``new`` (one transaction).

        Returns the number of profiles moved."""
        owned = "SELECT 1 FROM profiles WHERE owner = :o UNION ALL SELECT 1 FROM generations WHERE owner = :o"
        if not self.connection().execute(owned + " LIMIT 1", {"o": old}).fetchone():
            return 0  # the usual case: nothing to move, and no write lock taken for it
        with self.transaction() as db:
            db.execute("UPDATE generations SET owner = ? WHERE owner = ?", [new, old])
            return db.execute("UPDATE profiles SET owner = ? WHERE owner = ?", [new, old]).rowcount

    def profile_items(self, profile_id: str) -> list[dict]:
        """``[{"position", "text", "sha256"}]`` ordered by position.

        No owner check here: call :meth:`get_profile` first.
        """
        return self.rows("SELECT position, text, sha256 FROM history_items WHERE profile_id = ? ORDER BY position",
                         [profile_id])

    def delete_owner_data(self, owner: str) -> dict[str, int]:
        """Delete everything stored for ``owner``; returns the number of rows per table.

        Cached item embeddings are deleted when the text is in one of the owner's
        profiles and in no profile of another owner.
        """
        owned = "SELECT id FROM profiles WHERE owner = :owner"
        counts: dict[str, int] = {}
        with self.transaction() as db:

            def count(sql: str) -> int:
                return db.execute(sql, {"owner": owner}).fetchone()[0]

            # Children go by cascade when their profile goes, so count them first.
            for table in ("history_items", "profile_matrices", "personal_embeddings", "personal_tokens"):
                counts[table] = count(f"SELECT COUNT(*) FROM {table} WHERE profile_id IN ({owned})")
            counts["item_embeddings"] = db.execute(
                f"""DELETE FROM item_embeddings
                WHERE sha256 IN (SELECT sha256 FROM history_items WHERE profile_id IN ({owned}))
                  AND NOT EXISTS (
                      SELECT 1 FROM history_items other JOIN profiles p ON p.id = other.profile_id
                      WHERE other.sha256 = item_embeddings.sha256 AND p.owner != :owner)""",
                {"owner": owner},
            ).rowcount
            counts["generations"] = db.execute(
                "DELETE FROM generations WHERE owner = ?", [owner]
            ).rowcount
            counts["profiles"] = db.execute("DELETE FROM profiles WHERE owner = ?", [owner]).rowcount
        return counts

    # -- item-embedding cache ----------------------------------------------------------

    def cached_embeddings(self, encoder_id: str, hashes: list[str]) -> dict[str, np.ndarray]:
        """``{sha256: vector [d]}`` for the hashes already encoded by ``encoder_id`` (hits only)."""
        found: dict[str, np.ndarray] = {}
        db = self.connection()
        for chunk in _chunks(list(dict.fromkeys(hashes))):
            marks = ", ".join("?" * len(chunk))
            for row in db.query(
                f"SELECT sha256, dim, vector FROM item_embeddings"
                f" WHERE encoder_id = ? AND sha256 IN ({marks})",
                [encoder_id, *chunk],
            ):
                found[row["sha256"]] = blob_to_vector(row["vector"], row["dim"], n_rows=1)[0]
        return found

    def put_embeddings(self, encoder_id: str, vectors: dict[str, np.ndarray]) -> None:
        """Add ``{sha256: vector [d]}`` to the cache; entries already there are kept."""
        rows = []
        for sha, vector in vectors.items():
            vector = _as_vector(vector, f"embedding {sha}")
            rows.append((encoder_id, sha, vector.shape[0], vector_to_blob(vector)))
        with self.transaction() as db:
            db.conn.executemany(
                "INSERT OR IGNORE INTO item_embeddings (encoder_id, sha256, dim, vector)"
                " VALUES (?, ?, ?, ?)",
                rows,
            )

    # -- profile matrices --------------------------------------------------------------

    def put_profile_matrix(self, profile_id: str, encoder_id: str, matrix: np.ndarray) -> None:
        """Store (replacing) the ``[n, d]`` item-embedding matrix of a profile."""
        matrix = _as_matrix(matrix, "profile matrix")
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO profile_matrices (profile_id, encoder_id, n_rows, dim, matrix)"
                " VALUES (?, ?, ?, ?, ?)",
                [profile_id, encoder_id, matrix.shape[0], matrix.shape[1], vector_to_blob(matrix)],
            )

    def profile_matrix(self, profile_id: str, encoder_id: str) -> np.ndarray | None:
        """The ``[n, d]`` float32 matrix, or None if none is stored."""
        row = self.connection().execute(
            "SELECT n_rows, dim, matrix FROM profile_matrices WHERE profile_id = ? AND encoder_id = ?",
            [profile_id, encoder_id],
        ).fetchone()
        if row is None:
            return None
        n_rows, dim, blob = row
        return blob_to_vector(blob, dim, n_rows=n_rows)

    # -- personal embeddings -----------------------------------------------------------

    def put_personal_embedding(
        self, profile_id: str, plug_id: str, projected: np.ndarray, summary: np.ndarray
    ) -> None:
        """Store (replacing) a profile's personal embedding for a plug.

        ``projected``: ``[n, d_llm]`` projected item matrix; ``summary``: ``[d_llm]``.
        """
        projected = _as_matrix(projected, "projected")
        summary = _as_vector(summary, "summary")
        if summary.shape[0] != projected.shape[1]:
            raise ValueError(
                f"summary has dim {summary.shape[0]}, projected has dim {projected.shape[1]}"
            )
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO personal_embeddings"
                " (profile_id, plug_id, n_rows, dim, projected, summary, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    profile_id,
                    plug_id,
                    projected.shape[0],
                    projected.shape[1],
                    vector_to_blob(projected),
                    vector_to_blob(summary),
                    utc_now(),
                ],
            )

    def personal_embedding(self, profile_id: str, plug_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``(projected [n, d_llm], summary [d_llm])``, or None if none is stored."""
        row = self.connection().execute(
            "SELECT n_rows, dim, projected, summary FROM personal_embeddings"
            " WHERE profile_id = ? AND plug_id = ?",
            [profile_id, plug_id],
        ).fetchone()
        if row is None:
            return None
        n_rows, dim, projected, summary = row
        return (
            blob_to_vector(projected, dim, n_rows=n_rows),
            blob_to_vector(summary, dim, n_rows=1)[0],
        )

    # -- "tune to me" tokens -----------------------------------------------------------

    def put_personal_token(self, profile_id: str, plug_id: str, shift: np.ndarray, meta: dict) -> None:
        """Store (replacing) a profile's fitted shift of P ``[d_llm]`` for a plug, with how it was fitted."""
        shift = _as_vector(shift, "personal token")
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO personal_tokens (profile_id, plug_id, dim, shift, meta, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [profile_id, plug_id, shift.shape[0], vector_to_blob(shift), json.dumps(meta), utc_now()],
            )

    def personal_token(self, profile_id: str, plug_id: str) -> tuple[np.ndarray, dict] | None:
        """``(shift [d_llm], meta)`` of the profile's token for the plug, or None."""
        row = self.connection().execute(
            "SELECT dim, shift, meta FROM personal_tokens WHERE profile_id = ? AND plug_id = ?",
            [profile_id, plug_id],
        ).fetchone()
        if row is None:
            return None
        return blob_to_vector(row[1], row[0], n_rows=1)[0], json.loads(row[2])

    # -- generation log ----------------------------------------------------------------

    def log_generation(
        self,
        *,
        owner: str,
        profile_id: str | None,
        plug_id: str,
        prompt: str,
        params: dict,
        personalized: str,
        generic: str,
        timings: dict,
    ) -> int | None:
        """Append a generation to the log; returns its id.

        Nothing is logged (None) when the profile was deleted while it generated: its owner asked
        for their data to be deleted."""
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO generations (owner, profile_id, plug_id, prompt, params,"
                " personalized, generic, timings, created_at) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?"
                " WHERE ? IS NULL OR EXISTS (SELECT 1 FROM profiles WHERE id = ? AND owner = ?)",
                [
                    owner,
                    profile_id,
                    plug_id,
                    prompt,
                    json.dumps(params, sort_keys=True),
                    personalized,
                    generic,
                    json.dumps(timings, sort_keys=True),
                    utc_now(),
                    profile_id,
                    profile_id,
                    owner,
                ],
            )
            return cursor.lastrowid if cursor.rowcount else None
