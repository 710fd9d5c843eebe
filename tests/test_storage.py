"""Tests for demo.core.storage: schema, owner isolation, vector blobs, cache, deletion, threads."""
from __future__ import annotations

import hashlib
import sqlite3
import threading

import numpy as np
import pytest

from sqlite_utils import Database

from demo.core.storage import MIGRATIONS, MIGRATIONS_TABLE, Store, blob_to_vector, vector_to_blob

from apphelp import logged_generations

TABLES = {
    "profiles",
    "history_items",
    "item_embeddings",
    "profile_matrices",
    "personal_embeddings",
    "personal_tokens",
    "generations",
}


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "sub" / "studio.db"


@pytest.fixture
def store(db_path):
    s = Store(db_path)
    yield s
    s.close()


def raw(db_path) -> sqlite3.Connection:
    """A plain connection, independent of Store, to inspect the file."""
    return sqlite3.connect(db_path)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def rng_matrix(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


# -- migrations ---------------------------------------------------------------------------


def test_migrations_create_tables_and_are_idempotent(db_path):
    Store(db_path).close()  # also creates the missing parent folder
    with raw(db_path) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert TABLES <= names
        indexed = {r[0] for r in conn.execute("SELECT tbl_name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL")}
        assert {"profiles", "generations"} <= indexed
        applied = conn.execute(f"SELECT name FROM {MIGRATIONS_TABLE}").fetchall()
    assert applied == [("m001_initial_schema",), ("m004_personal_tokens",)]

    s = Store(db_path)  # reopen: nothing re-applied, data kept
    pid = s.create_profile("alice", "p", ["a"])
    s.close()
    s = Store(db_path)
    assert s.get_profile(pid, "alice") is not None
    s.close()
    with raw(db_path) as conn:
        assert conn.execute(f"SELECT COUNT(*) FROM {MIGRATIONS_TABLE}").fetchone()[0] == 2


def test_a_database_of_the_first_schema_opens_and_gains_the_token_table(db_path):
    db_path.parent.mkdir(parents=True)
    db = Database(db_path)
    MIGRATIONS.apply(db, stop_before="m004_personal_tokens")  # a database written before tokens existed
    db.execute("INSERT INTO profiles VALUES ('p1', 'alice', 'old', '', 1, '2025-01-01T00:00:00+00:00')")
    db.conn.commit()
    db.close()
    s = Store(db_path)
    assert s.get_profile("p1", "alice")["name"] == "old"
    s.put_personal_token("p1", "plug", np.arange(4, dtype=np.float32), {"steps": 2, "gain": 0.1})
    shift, meta = s.personal_token("p1", "plug")
    assert shift.tolist() == [0, 1, 2, 3] and meta == {"steps": 2, "gain": 0.1}
    assert s.personal_token("p1", "other-plug") is None
    s.close()


def test_pragmas_wal_busy_timeout_foreign_keys(store, db_path):
    db = store.connection()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_journal_mode_delete(tmp_path):
    s = Store(tmp_path / "d.db", journal_mode="DELETE")
    assert s.connection().execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    s.close()
    with pytest.raises(ValueError):
        Store(tmp_path / "e.db", journal_mode="WAL; DROP TABLE profiles")


# -- profiles -----------------------------------------------------------------------------


def test_profile_create_get_list_with_owner_isolation(store):
    p1 = store.create_profile("alice", "first", ["a", "b"], source="upload.json")
    p2 = store.create_profile("alice", "second", ["c"])
    p3 = store.create_profile("bob", "bobs", ["d"])
    assert len({p1, p2, p3}) == 3 and len(p1) >= 20

    got = store.get_profile(p1, "alice")
    assert got == {
        "id": p1,
        "owner": "alice",
        "name": "first",
        "source": "upload.json",
        "n_items": 2,
        "created_at": got["created_at"],
    }
    assert got["created_at"].endswith("+00:00") and "T" in got["created_at"]

    assert [p["id"] for p in store.list_profiles("alice")] == [p2, p1]  # newest first
    assert [p["id"] for p in store.list_profiles("bob")] == [p3]
    assert store.list_profiles("mallory") == []

    # Another owner sees nothing and deletes nothing of alice's.
    assert store.get_profile(p1, "bob") is None
    assert store.get_profile("no-such-id", "alice") is None
    assert store.delete_owner_data("bob")["profiles"] == 1
    assert store.get_profile(p1, "alice") is not None

    assert store.delete_owner_data("alice")["profiles"] == 2
    assert store.get_profile(p1, "alice") is None
    assert store.profile_items(p1) == []


def test_items_round_trip_with_positions_and_hashes(store):
    items = ["first text", "second — ünïcode ✓", "", "first text"]
    pid = store.create_profile("alice", "p", items)
    got = store.profile_items(pid)
    assert [r["position"] for r in got] == [0, 1, 2, 3]
    assert [r["text"] for r in got] == items
    assert [r["sha256"] for r in got] == [sha(t) for t in items]


def test_create_profile_is_atomic(store, db_path):
    with pytest.raises(TypeError):
        store.create_profile("alice", "bad", ["ok", 3])
    # A failure inside the transaction (here: a duplicate id) leaves no partial rows.
    pid = store.create_profile("alice", "p", ["x"])
    with pytest.raises(sqlite3.IntegrityError):
        with store.transaction() as db:
            db.execute("INSERT INTO profiles VALUES ('zz', 'alice', 'n', '', 1, 'now')")
            db.execute("INSERT INTO history_items VALUES ('zz', 0, 't', 'h')")
            db.execute("INSERT INTO profiles VALUES (?, 'alice', 'n', '', 0, 'now')", [pid])
    with raw(db_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM profiles").fetchone()[0] == 1
        assert conn.execute("SELECT COUNT(*) FROM history_items").fetchone()[0] == 1
    assert store.create_profile("alice", "after", ["y"])  # the connection is usable again


# -- vector blobs -------------------------------------------------------------------------


def test_blob_round_trip_exact():
    v = np.array([1.5, -0.0, np.float32(1e-38), 3.4e38, np.pi], dtype=np.float32)
    blob = vector_to_blob(v)
    assert blob == v.astype("<f4").tobytes() and len(blob) == 20
    assert blob[:4] == bytes.fromhex("0000c03f")  # 1.5 little-endian
    back = blob_to_vector(blob, 5)
    assert back.shape == (5,) and back.dtype == np.float32
    assert np.array_equal(back.view(np.uint32), v.view(np.uint32))  # bit-exact, sign of -0 too
    back[0] = 7  # writable copy

    m = rng_matrix(3, 4)
    assert np.array_equal(blob_to_vector(vector_to_blob(m), 4), m)
    assert blob_to_vector(vector_to_blob(m), 4).shape == (3, 4)
    assert blob_to_vector(vector_to_blob(m[:1]), 4, n_rows=1).shape == (1, 4)
    # float64 and big-endian inputs are stored as little-endian float32
    assert vector_to_blob(m.astype(np.float64)) == vector_to_blob(m)
    assert vector_to_blob(m.astype(">f4")) == vector_to_blob(m)


def test_blob_corrupted_length_raises():
    blob = vector_to_blob(np.ones(6, dtype=np.float32))
    with pytest.raises(ValueError, match="corrupted"):
        blob_to_vector(blob[:-1], 6)
    with pytest.raises(ValueError, match="corrupted"):
        blob_to_vector(blob, 4)
    with pytest.raises(ValueError, match="corrupted"):
        blob_to_vector(blob, 3, n_rows=3)
    assert blob_to_vector(blob, 3, n_rows=2).shape == (2, 3)


def test_corrupted_row_in_database_raises(store):
    pid = store.create_profile("alice", "p", ["a", "b"])
    store.put_profile_matrix(pid, "enc", rng_matrix(2, 4))
    store.connection().execute("UPDATE profile_matrices SET n_rows = 3")
    with pytest.raises(ValueError, match="corrupted"):
        store.profile_matrix(pid, "enc")


# -- embedding cache ----------------------------------------------------------------------


def test_embedding_cache_hit_miss_and_insert_or_ignore(store):
    a, b = sha("a"), sha("b")
    assert store.cached_embeddings("enc", [a, b]) == {}
    va = np.arange(8, dtype=np.float32)
    store.put_embeddings("enc", {a: va})
    hits = store.cached_embeddings("enc", [a, b])
    assert set(hits) == {a}
    assert hits[a].shape == (8,) and np.array_equal(hits[a], va)
    assert store.cached_embeddings("other-encoder", [a]) == {}  # keyed by encoder too

    store.put_embeddings("enc", {a: np.zeros(8, dtype=np.float32), b: -va})  # a is kept
    hits = store.cached_embeddings("enc", [a, b, a])
    assert np.array_equal(hits[a], va) and np.array_equal(hits[b], -va)

    with pytest.raises(ValueError):
        store.put_embeddings("enc", {sha("c"): np.zeros((2, 4))})


def test_embedding_cache_more_than_999_hashes(store):
    # Behave like an SQLite build with the historical 999-variable limit.
    store.connection().conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    n = 2345
    hashes = [sha(str(i)) for i in range(n)]
    vectors = {h: np.full(4, i, dtype=np.float32) for i, h in enumerate(hashes[:1500])}
    store.put_embeddings("enc", vectors)
    hits = store.cached_embeddings("enc", hashes)
    assert len(hits) == 1500
    assert all(np.array_equal(hits[h], vectors[h]) for h in vectors)
    assert hashes[-1] not in hits


# -- profile matrices and personal embeddings ---------------------------------------------


def test_profile_matrix_replace(store):
    pid = store.create_profile("alice", "p", ["a", "b", "c"])
    assert store.profile_matrix(pid, "enc") is None
    m1 = rng_matrix(3, 5, seed=1)
    store.put_profile_matrix(pid, "enc", m1)
    got = store.profile_matrix(pid, "enc")
    assert got.dtype == np.float32 and np.array_equal(got, m1)

    m2 = rng_matrix(1, 7, seed=2)  # a different shape replaces the old one
    store.put_profile_matrix(pid, "enc", m2)
    got = store.profile_matrix(pid, "enc")
    assert got.shape == (1, 7) and np.array_equal(got, m2)
    assert store.profile_matrix(pid, "enc-2") is None
    assert store.connection().execute("SELECT COUNT(*) FROM profile_matrices").fetchone()[0] == 1

    with pytest.raises(ValueError):
        store.put_profile_matrix(pid, "enc", np.zeros(5))
    with pytest.raises(sqlite3.IntegrityError):  # profile must exist
        store.put_profile_matrix("missing", "enc", m1)


def test_personal_embedding_replace(store):
    pid = store.create_profile("alice", "p", ["a", "b"])
    assert store.personal_embedding(pid, "plug") is None
    proj, summ = rng_matrix(2, 6, seed=3), rng_matrix(1, 6, seed=4)[0]
    store.put_personal_embedding(pid, "plug", proj, summ)
    got_proj, got_summ = store.personal_embedding(pid, "plug")
    assert got_proj.shape == (2, 6) and got_summ.shape == (6,)
    assert np.array_equal(got_proj, proj) and np.array_equal(got_summ, summ)

    store.put_personal_embedding(pid, "plug", proj * 2, summ * 2)
    got_proj, got_summ = store.personal_embedding(pid, "plug")
    assert np.array_equal(got_proj, proj * 2) and np.array_equal(got_summ, summ * 2)
    assert store.personal_embedding(pid, "other-plug") is None

    with pytest.raises(ValueError):
        store.put_personal_embedding(pid, "plug", proj, summ[:5])


# -- generations --------------------------------------------------------------------------


def test_generation_log_round_trip(store):
    pid = store.create_profile("alice", "p", ["a"])
    ids = []
    for i in range(3):
        ids.append(
            store.log_generation(
                owner="alice",
                profile_id=pid if i else None,
                plug_id="plug-v1",
                prompt=f"prompt {i}",
                params={"max_new_tokens": 32, "temperature": 0.7, "seed": i},
                personalized=f"mine {i}",
                generic=f"generic {i}",
                timings={"encode_s": 0.1, "generate_s": 1.25},
            )
        )
    store.log_generation(
        owner="bob", profile_id=None, plug_id="p", prompt="x", params={}, personalized="",
        generic="", timings={},
    )
    rows = logged_generations(store, "alice")
    assert [r["id"] for r in rows] == ids[::-1]
    newest = rows[0]
    assert newest["owner"] == "alice" and newest["profile_id"] == pid and newest["plug_id"] == "plug-v1"
    assert newest["prompt"] == "prompt 2" and newest["personalized"] == "mine 2" and newest["generic"] == "generic 2"
    assert newest["params"] == {"max_new_tokens": 32, "temperature": 0.7, "seed": 2}
    assert newest["timings"] == {"encode_s": 0.1, "generate_s": 1.25}
    assert newest["created_at"].endswith("+00:00")
    assert rows[-1]["profile_id"] is None
    assert len(logged_generations(store, "bob")) == 1

    # A profile that goes keeps its owner's log but drops the reference (ON DELETE SET NULL).
    with store.transaction() as db:
        db.execute("DELETE FROM profiles WHERE id = ?", [pid])
    assert [r["profile_id"] for r in logged_generations(store, "alice")] == [None, None, None]


# -- deletion -----------------------------------------------------------------------------


def _fill(store: Store, owner: str, texts: list[str]) -> str:
    pid = store.create_profile(owner, f"{owner}'s", texts)
    store.put_embeddings("enc", {sha(t): np.ones(4, dtype=np.float32) for t in texts})
    store.put_profile_matrix(pid, "enc", np.ones((len(texts), 4)))
    store.put_personal_embedding(pid, "plug", np.ones((len(texts), 3)), np.ones(3))
    store.log_generation(
        owner=owner, profile_id=pid, plug_id="plug", prompt="p", params={}, personalized="a",
        generic="b", timings={},
    )
    return pid


def test_delete_owner_data(store, db_path):
    alice = _fill(store, "alice", ["only alice", "shared"])
    _fill(store, "alice", ["alice again"])
    bob = _fill(store, "bob", ["shared", "only bob"])
    store.put_embeddings("enc", {sha("unrelated"): np.ones(4, dtype=np.float32)})

    store.put_personal_token(alice, "plug-1", np.ones(8, dtype=np.float32), {"steps": 3})
    store.put_personal_token(bob, "plug-1", np.ones(8, dtype=np.float32), {"steps": 3})
    counts = store.delete_owner_data("alice")
    assert counts == {
        "profiles": 2,
        "history_items": 3,
        "profile_matrices": 2,
        "personal_embeddings": 2,
        "personal_tokens": 1,
        "generations": 2,
        "item_embeddings": 2,  # "only alice", "alice again"; "shared" is still bob's
    }

    with raw(db_path) as conn:
        def q(sql):
            return conn.execute(sql).fetchone()[0]

        assert q("SELECT COUNT(*) FROM profiles WHERE owner = 'alice'") == 0
        assert q("SELECT COUNT(*) FROM generations WHERE owner = 'alice'") == 0
        for table in ("history_items", "profile_matrices", "personal_embeddings", "personal_tokens"):
            assert q(f"SELECT COUNT(*) FROM {table} WHERE profile_id NOT IN (SELECT id FROM profiles)") == 0
            assert q(f"SELECT COUNT(*) FROM {table} WHERE profile_id = '{bob}'") > 0
        assert q(f"SELECT COUNT(*) FROM history_items WHERE profile_id = '{alice}'") == 0

    cached = store.cached_embeddings("enc", [sha(t) for t in ["only alice", "alice again", "shared", "only bob", "unrelated"]])
    assert set(cached) == {sha("shared"), sha("only bob"), sha("unrelated")}
    assert store.get_profile(bob, "bob") is not None
    assert len(logged_generations(store, "bob")) == 1
    assert store.profile_matrix(bob, "enc") is not None and store.personal_embedding(bob, "plug") is not None
    assert store.list_profiles("alice") == [] and logged_generations(store, "alice") == []
    assert store.delete_owner_data("alice") == {k: 0 for k in counts}


# -- threads ------------------------------------------------------------------------------


def test_per_thread_connections_concurrent_writes(store, db_path):
    n_threads, per_thread = 8, 15
    created: dict[int, list[str]] = {}
    connections: dict[int, int] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(n_threads)

    def work(t: int) -> None:
        try:
            start.wait()
            connections[t] = id(store.connection().conn)
            created[t] = []
            for i in range(per_thread):
                items = [f"t{t} item {j}" for j in range(20)]
                created[t].append(store.create_profile(f"owner{t}", f"p{i}", items))
                # delete_owner_data reads before it writes: it must not fail under contention.
                store.create_profile(f"tmp{t}", "tmp", items)
                assert store.delete_owner_data(f"tmp{t}")["profiles"] == 1
            store.put_embeddings("enc", {sha(f"t{t}"): np.ones(4, dtype=np.float32)})
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()

    assert errors == []
    assert len(set(connections.values())) == n_threads  # one connection per thread
    for t in range(n_threads):
        assert {p["id"] for p in store.list_profiles(f"owner{t}")} == set(created[t])
    with raw(db_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM profiles").fetchone()[0] == n_threads * per_thread
        assert conn.execute("SELECT COUNT(*) FROM history_items").fetchone()[0] == n_threads * per_thread * 20
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []


def test_close_closes_every_thread_connection(db_path):
    s = Store(db_path)
    th = threading.Thread(target=lambda: s.list_profiles("x"))
    th.start()
    th.join()
    assert len(s._all) == 2
    conns = [db.conn for db in s._all]
    s.close()
    for conn in conns:
        with pytest.raises(sqlite3.ProgrammingError):
            conn.execute("SELECT 1")
    with pytest.raises(RuntimeError):
        s.list_profiles("x")


def test_several_writes_in_one_transaction_are_all_or_nothing(store):
    with pytest.raises(RuntimeError):
        with store.transaction():
            pid = store.create_profile("alice", "p", ["a"])
            store.put_profile_matrix(pid, "enc", np.ones((1, 4)))
            raise RuntimeError("stopped half-way")
    assert store.list_profiles("alice") == []
    with store.transaction():
        pid = store.create_profile("alice", "p", ["a"])
        store.put_profile_matrix(pid, "enc", np.ones((1, 4)))
    assert store.profile_matrix(pid, "enc").shape == (1, 4)


def test_a_generation_whose_profile_was_deleted_meanwhile_is_not_logged(store):
    pid = store.create_profile("alice", "p", ["a"])
    store.delete_owner_data("alice")  # while the generation ran
    logged = store.log_generation(owner="alice", profile_id=pid, plug_id="p", prompt="x", params={},
                                  personalized="", generic="", timings={})
    assert logged is None and logged_generations(store, "alice") == []
