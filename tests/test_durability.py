"""Durability: the app process (``python app.py``) is killed (SIGKILL) in the middle of writes and the app
is opened again on the same file; the database opens, passes its integrity check, holds every write a
client saw committed and is served again. And the
journal mode is chosen for the filesystem the database lives on."""
from __future__ import annotations

import os
import secrets
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from demo.app.loadtest import connect
from demo.core.app_process import start_app
from demo.core.settings import Settings, choose_journal_mode, filesystem_type, is_network_filesystem
from demo.core.storage import Store


MOUNTS = """\
/dev/vda / ext4 rw,relatime 0 0
proc /proc proc rw,relatime 0 0
tmpfs /tmp tmpfs rw 0 0
10.0.0.5:/export /data nfs4 rw,vers=4.1 0 0
//server/share /mnt/smb cifs rw 0 0
s3fs /mnt/bucket fuse.s3fs rw 0 0
/dev/vdb /data/local ext4 rw 0 0
/dev/vdc /srv/my\\040disk xfs rw 0 0
"""


@pytest.mark.parametrize("path,fstype,mode", [
    ("/data/pplug_studio.db", "nfs4", "DELETE"),
    ("/data/sub/dir/x.db", "nfs4", "DELETE"),
    ("/data/local/x.db", "ext4", "WAL"),  # the longest mount point wins
    ("/datax/x.db", "ext4", "WAL"),  # a prefix of a name is not a parent folder
    ("/mnt/smb/x.db", "cifs", "DELETE"),
    ("/mnt/bucket/x.db", "fuse.s3fs", "DELETE"),
    ("/srv/my disk/x.db", "xfs", "WAL"),  # escaped spaces in mount points
    ("/tmp/x.db", "tmpfs", "WAL"),
    ("/home/me/x.db", "ext4", "WAL"),
])
def test_journal_mode_follows_the_filesystem(path, fstype, mode):
    assert filesystem_type(Path(path).parent, MOUNTS) == fstype
    assert choose_journal_mode(Path(path), MOUNTS) == mode


def test_network_filesystem_names():
    for name in ("nfs", "nfs4", "cifs", "smb3", "9p", "ceph", "fuse", "fuse.sshfs", "fuse.gcsfuse", "glusterfs"):
        assert is_network_filesystem(name), name
    for name in ("ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", ""):
        assert not is_network_filesystem(name), name


def test_this_machines_mounts_are_read(tmp_path):
    assert filesystem_type(tmp_path) != ""
    assert Settings.from_env({"PPLUG_DB": str(tmp_path / "x.db")}).db_journal_mode == choose_journal_mode(tmp_path / "x.db")


def test_journal_mode_setting_overrides_detection(tmp_path):
    settings = Settings.from_env({"PPLUG_DB": str(tmp_path / "x.db"), "PPLUG_JOURNAL_MODE": "delete"})
    assert settings.db_journal_mode == "DELETE"
    with Store(settings.db_path, journal_mode=settings.db_journal_mode) as store:
        store.create_profile("o" * 16, "n", ["a", "b"])
        assert store.connection().conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert not Path(str(settings.db_path) + "-wal").exists()


# ---------------------------------------------------------------------------------------
# SIGKILL in the middle of writes
# ---------------------------------------------------------------------------------------


def _writer(url: str, n: int, committed: list, stop: threading.Event) -> None:
    """Write until the server dies; record every write whose response came back (so it was committed)."""
    owner = f"durability-owner-{n}-{secrets.token_hex(8)}"
    try:
        client = connect(url)
        for round_ in range(1000):
            if stop.is_set():
                return
            history = "\n\n".join(f"Writer {n} round {round_} item {i}: {secrets.token_hex(8)}" for i in range(40))
            profile = client.predict(history=history, owner_token=owner, name=f"w{n}r{round_}",
                                     api_name="/compute_profile")
            committed.append(("profile", owner, profile["profile_id"], profile["n_items"]))
            out = client.predict(owner_token=owner, profile_id=profile["profile_id"], request=f"w{n} r{round_}",
                                 max_new_tokens=2, api_name="/generate")
            committed.append(("generation", owner, out["generation_id"], profile["profile_id"]))
    except Exception:  # noqa: BLE001 - the server was killed under this writer: expected
        return


@pytest.mark.slow
def test_sigkill_during_writes_loses_no_committed_write(tmp_path, studio):
    db, log = tmp_path / "studio.db", tmp_path / "app.log"
    process, url = start_app({"PPLUG_DB": str(db), "PPLUG_DEVICE": "cpu", "PPLUG_STUDIES_DIR": str(tmp_path / "none")},
                             timeout=180, log=log)
    committed: list[tuple] = []
    stop = threading.Event()
    try:
        writers = [threading.Thread(target=_writer, args=(url, n, committed, stop), daemon=True) for n in range(4)]
        for w in writers:
            w.start()
        deadline = time.monotonic() + 240
        while len(committed) < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(committed) >= 12, log.read_text()[-3000:]
        os.killpg(process.pid, signal.SIGKILL)  # mid-write: four writers are still sending
        process.wait(timeout=30)
        stop.set()
        for w in writers:
            w.join(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    seen = list(committed)
    assert Path(str(db) + "-wal").exists()  # killed with writes still in the write-ahead log

    # The app starts again on the same file: a Studio opened at it as app.py opens one (its store from the
    # settings' path, migrations and all), here on this process's loaded models, served over HTTP; a second
    # cold app.py would add ~20 s of imports and test nothing more about the file.
    from demo.core.studio import Studio

    from apphelp import serve

    again = Studio(studio.settings.with_(db_path=db), encoder=studio.encoder, generator=studio.generator,
                   plug=studio.plug)
    demo = serve(again)
    try:
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
            lost = 0
            for kind, owner, key, extra in seen:
                if kind == "profile":
                    row = conn.execute("SELECT n_items FROM profiles WHERE id = ? AND owner = ?", [key, owner]).fetchone()
                    items = conn.execute("SELECT COUNT(*) FROM history_items WHERE profile_id = ?", [key]).fetchone()[0]
                    embedded = conn.execute("SELECT COUNT(*) FROM personal_embeddings WHERE profile_id = ?",
                                            [key]).fetchone()[0]
                    lost += row is None or row[0] != extra or items != extra or embedded != 1
                else:
                    lost += conn.execute("SELECT COUNT(*) FROM generations WHERE id = ? AND owner = ? AND profile_id = ?",
                                         [key, owner, extra]).fetchone()[0] != 1
            profiles_in_db = conn.execute("SELECT COUNT(*) FROM profiles").fetchone()[0]
        assert lost == 0
        # The restarted app serves the surviving data.
        client = connect(demo.local_url)
        kind, owner, profile_id, _ = next(c for c in seen if c[0] == "profile")
        assert profile_id in [p["id"] for p in client.predict(owner_token=owner, api_name="/list_profiles")]
        assert client.predict(owner_token=owner, profile_id=profile_id, request="Still there?", max_new_tokens=2,
                              api_name="/generate")["generic"] is not None
        print(f"\nSIGKILL after {len(seen)} committed writes ({profiles_in_db} profiles on disk, "
              f"4 writers in flight): lost = {lost}, integrity ok")
    finally:
        demo.close()
        again.store.close()
