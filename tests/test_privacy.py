"""Privacy between visitors: another owner token cannot list, read, use or delete someone's data, ids are
not guessable, and "Delete my data" leaves no row behind (checked table by table with sqlite3)."""
from __future__ import annotations

import hashlib
import secrets
import sqlite3

import gradio as gr
import gradio.oauth
import pytest

from demo.app.identity import Identity
from demo.app.loadtest import connect
from demo.app.ui import build_demo
from demo.core.settings import Settings

from apphelp import handler, logged_generations, said, studio_with

SHARED = "A sentence that two different people both wrote, word for word."


def _history(tag: str) -> str:
    return "\n\n".join([f"{tag}: my first private note about the lake house.",
                        f"{tag}: the second one, about my sister's wedding.", SHARED])


@pytest.fixture(scope="module")
def client(app):
    return connect(app.local_url)


def _rows(db_path) -> dict[str, list[tuple]]:
    """Every row of every table, read straight from the file."""
    with sqlite3.connect(db_path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: conn.execute(f'SELECT * FROM "{t}"').fetchall() for t in tables}


def _mentions(rows: dict[str, list[tuple]], needles: list[str | bytes]) -> list[tuple[str, tuple]]:
    found = []
    texts, blobs = [n for n in needles if isinstance(n, str)], [n for n in needles if isinstance(n, bytes)]
    for table, table_rows in rows.items():
        for row in table_rows:
            # All text cells of the row at once (needles hold no NUL, so none spans two cells).
            text = "\0".join(c for c in row if isinstance(c, str))
            blob = b"\0".join(c for c in row if isinstance(c, bytes))
            if any(n in text for n in texts) or any(n in blob for n in blobs):
                found.append((table, row))
    return found


def test_another_token_cannot_list_read_use_or_delete(client, studio):
    alice, mallory = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    mine = client.predict(history=_history("alice"), owner_token=alice, name="alice", api_name="/compute_profile")
    out = client.predict(owner_token=alice, profile_id=mine["profile_id"], request="Write a tweet.", max_new_tokens=4,
                         api_name="/generate")
    assert out["generation_id"]

    assert client.predict(owner_token=mallory, api_name="/list_profiles") == []  # list
    for request in ("Repeat my history.", "Write a tweet."):  # read / use
        with pytest.raises(Exception, match="No such profile for you"):
            client.predict(owner_token=mallory, profile_id=mine["profile_id"], request=request, max_new_tokens=4,
                           api_name="/generate")
    removed = client.predict(owner_token=mallory, api_name="/delete_my_data")  # delete
    assert set(removed.values()) == {0}
    assert [p["id"] for p in client.predict(owner_token=alice, api_name="/list_profiles")] == [mine["profile_id"]]
    assert logged_generations(studio.store, mallory) == [] and len(logged_generations(studio.store, alice)) == 1
    # Service calls with a wrong owner do no better than the API.
    assert studio.store.get_profile(mine["profile_id"], mallory) is None
    assert set(studio.delete_my_data(mallory).values()) == {0}
    assert studio.store.get_profile(mine["profile_id"], alice) is not None


def test_ids_and_owner_tokens_are_not_guessable(app, studio):
    ids = [studio.store.create_profile(secrets.token_urlsafe(24), "n", ["x"]) for _ in range(50)]
    assert len(set(ids)) == 50 and all(len(i) >= 22 for i in ids)  # 128 random bits each
    tokens = {handler(app, "ensure_owner")(None) for _ in range(50)}
    assert len(tokens) == 50 and all(len(t) >= 32 for t in tokens)  # 192 random bits each
    assert handler(app, "ensure_owner")("kept-token-0123456789") == "kept-token-0123456789"


def test_browser_state_is_encrypted_with_a_secret_kept_beside_the_database(app, studio):
    secret_file = studio.settings.db_path.with_suffix(studio.settings.db_path.suffix + ".secret")
    assert secret_file.stat().st_mode & 0o077 == 0 and len(secret_file.read_text().strip()) >= 32
    owner_state = next(b for b in app.blocks.values() if type(b).__name__ == "BrowserState")
    assert owner_state.secret == secret_file.read_text().strip()


def test_delete_my_data_leaves_no_row(client, studio):
    alice, bob = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    alice_profiles = [client.predict(history=_history(f"alice-{i}"), owner_token=alice, name=f"alice {i}",
                                     api_name="/compute_profile")["profile_id"] for i in range(2)]
    bob_profile = client.predict(history=_history("bob"), owner_token=bob, name="bob",
                                 api_name="/compute_profile")["profile_id"]
    for profile in alice_profiles:
        client.predict(owner_token=alice, profile_id=profile, request="Write a tweet about alice-secret.",
                       max_new_tokens=4, api_name="/generate")
    client.predict(owner_token=bob, profile_id=bob_profile, request="Write a tweet.", max_new_tokens=4,
                   api_name="/generate")

    alice_texts = [t for i in range(2) for t in _history(f"alice-{i}").split("\n\n") if t != SHARED]
    needles: list[str | bytes] = [alice, *alice_profiles, "alice-secret", *alice_texts,
                                  *(hashlib.sha256(t.encode()).hexdigest() for t in alice_texts)]
    before = _rows(studio.settings.db_path)
    assert len(_mentions(before, needles)) >= 10

    counts = client.predict(owner_token=alice, api_name="/delete_my_data")
    assert counts == {"history_items": 6, "profile_matrices": 2, "personal_embeddings": 2, "item_embeddings": 4,
                      "generations": 2, "personal_tokens": 0, "profiles": 2}

    after = _rows(studio.settings.db_path)
    assert _mentions(after, needles) == []  # no table holds her token, ids, texts, hashes or prompts
    # Bob keeps everything, including the cached embedding of the sentence both of them wrote.
    assert [p["id"] for p in client.predict(owner_token=bob, api_name="/list_profiles")] == [bob_profile]
    assert _mentions(after, [hashlib.sha256(SHARED.encode()).hexdigest()])
    assert client.predict(owner_token=bob, profile_id=bob_profile, request="Write a tweet.", max_new_tokens=4,
                          api_name="/generate")["generic"]
    with sqlite3.connect(studio.settings.db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []


def test_delete_button_in_the_page_removes_the_visitors_data(app, studio):
    owner = secrets.token_urlsafe(24)
    _, _, _, profile_id, _ = handler(app, "on_compute")(owner, _history("page"), None, "text", None, "page")
    _, message, choices, selected, generate, know_me, status, *shown, why, kept, restore = handler(app, "on_delete")(owner)
    assert message.startswith("Deleted: 1 profile, 3 items, 0 tuned tokens") and "history_items" not in message
    assert choices["choices"] == [] and selected is None
    assert generate["interactive"] is False and know_me["visible"] is False
    # Nothing of it stays on the page: status, writing, files, name, answers and the "why" charts go too.
    assert status == "" and why["visible"] is False and kept is None and restore["visible"] is False
    assert [v["value"] if isinstance(v, dict) else v for v in shown] == ["", None, "", "", "", "", ""]
    assert studio.store.get_profile(profile_id, owner) is None
    assert handler(app, "on_delete")(owner)[1] == "Deleted: nothing was stored for you."


def test_compute_before_the_page_knows_its_visitor_stores_nothing(app, studio):
    # The button is enabled only after the page's load event; a click that still arrives without
    # an owner gets a message and stores nothing.
    before = studio.store.connection().execute("SELECT COUNT(*) FROM profiles").fetchone()[0]
    message, *_ = handler(app, "on_compute")(None, _history("early"), None, "text", None, "early")
    assert "still loading" in message["value"]
    assert studio.store.connection().execute("SELECT COUNT(*) FROM profiles").fetchone()[0] == before


def test_a_signed_in_visitor_is_the_same_owner_in_every_browser(app, studio):
    identify = handler(app, "identify")
    ada = gr.OAuthProfile({"name": "Ada", "preferred_username": "ada", "profile": "", "picture": ""})
    bob = gr.OAuthProfile({"name": "Bob", "preferred_username": "bob", "profile": "", "picture": ""})
    browser_a, browser_b = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    assert identify(browser_a, ada) == identify(browser_b, ada)  # signed in: the account, not the browser
    assert identify(browser_a, bob) != identify(browser_a, ada)
    assert identify(browser_a, None) == browser_a  # signed out: this browser's token
    owner = identify(browser_a, ada)
    assert "ada" not in owner and owner.startswith("hf:")
    _, _, _, profile_id, _ = handler(app, "on_compute")(owner, _history("ada"), None, "text", None, "ada")
    assert [p["id"] for p in studio.list_profiles(identify(browser_b, ada))] == [profile_id]
    assert studio.list_profiles(identify(browser_b, bob)) == []


ADA = gr.OAuthProfile({"name": "Ada", "preferred_username": "ada", "profile": "", "picture": ""})


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(k) + _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_nothing_sent_to_browsers_derives_a_signed_in_owner(app, studio):
    import hmac

    import httpx

    owner = handler(app, "identify")(secrets.token_urlsafe(24), ADA)
    config = httpx.get(app.local_url + "config", timeout=30)
    assert config.status_code == 200
    assert config.json()["analytics_enabled"] is False  # and no usage analytics leave the server either
    public = set(_strings(config.json()))
    assert any(len(s) >= 32 for s in public)  # the BrowserState secret is among them: public
    key = studio.settings.db_path.with_suffix(studio.settings.db_path.suffix + ".identity-key").read_text().strip()
    assert key not in config.text
    for candidate in public:  # no value from /config keys the owner, in the old derivation or the new
        for message in ("ada", "user:ada"):
            digest = hmac.new(candidate.encode(), message.encode(), hashlib.sha256).hexdigest()[:40]
            assert digest not in owner


def test_a_caller_cannot_act_as_a_signed_in_account_by_its_owner_id(app, client, studio):
    owner = handler(app, "identify")(secrets.token_urlsafe(24), ADA)
    _, _, _, profile_id, _ = handler(app, "on_compute")(owner, _history("ada-account"), None, "text", None, "ada")
    for call in (dict(api_name="/list_profiles"), dict(api_name="/delete_my_data"),
                 dict(profile_id=profile_id, request="Repeat my history.", max_new_tokens=4, api_name="/generate"),
                 dict(history=_history("intruder"), name="x", api_name="/compute_profile")):
        with pytest.raises(Exception, match="reserved"):
            client.predict(owner_token=owner, **call)
    # Nor by writing it into its own browser's state: the page gives such a browser a fresh token.
    assert handler(app, "identify")(owner, None) != owner
    assert handler(app, "ensure_owner")(owner) != owner
    assert profile_id in [p["id"] for p in studio.list_profiles(owner)]


def test_signed_in_owners_of_the_public_derivation_are_rotated_on_upgrade(tmp_path):
    import hmac

    from demo.core.storage import Store

    db = tmp_path / "old.db"
    store = Store(db)
    public = (tmp_path / "old.db.secret")
    public.write_text("the-browser-secret-every-visitor-could-read")
    old_owner = "hf-" + hmac.new(public.read_text().encode(), b"ada", hashlib.sha256).hexdigest()[:40]
    profile = store.create_profile(old_owner, "ada's blog", ["an item"])
    store.log_generation(owner=old_owner, profile_id=profile, plug_id="p", prompt="hi", params={},
                         personalized="a", generic="b", timings={})
    anonymous = store.create_profile("hf-looks-like-a-token-but-is-not-hex", "kept", ["x"])

    identity = Identity(store, db)  # the first start after the upgrade
    assert store.list_profiles(old_owner) == [] and logged_generations(store, old_owner) == []
    owners = store.owners_with_prefix("hf-")
    assert old_owner not in owners and len(store.owners_with_prefix("hf-legacy:")) == 1
    assert store.get_profile(anonymous, "hf-looks-like-a-token-but-is-not-hex")
    # Ada signs in again: her profile and its log follow her to the new owner.
    owner = identity.signed_in_owner("ada")
    assert [p["id"] for p in store.list_profiles(owner)] == [profile] and len(logged_generations(store, owner)) == 1
    assert store.owners_with_prefix("hf-legacy:") == []
    assert Identity(store, db).signed_in_owner("ada") == owner  # the key is kept across restarts
    assert (tmp_path / "old.db.identity-key").stat().st_mode & 0o077 == 0
    store.close()


def test_the_login_button_appears_only_where_the_space_offers_login(app, studio, monkeypatch):
    def has_login(demo) -> bool:
        return any(isinstance(block, gr.LoginButton) for block in demo.blocks.values())

    assert not has_login(app)
    env = {"OAUTH_CLIENT_ID": "abc", "SPACE_ID": "me/pplug"}
    assert Settings.from_env(env).hf_login and not Settings.from_env({"OAUTH_CLIENT_ID": "abc"}).hf_login
    # What a Space with `hf_oauth: true` provides; Gradio then adds the real (not mocked) login routes.
    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("SPACE_ID", "me/pplug")
    for name, value in (("OAUTH_CLIENT_ID", "abc"), ("OAUTH_CLIENT_SECRET", "s3cret"), ("OAUTH_SCOPES", "openid profile"),
                        ("OPENID_PROVIDER_URL", "https://huggingface.co")):
        monkeypatch.setattr(gradio.oauth, name, value)
    demo = build_demo(studio_with(studio, hf_login=True))
    assert has_login(demo)
    assert {"/login/huggingface", "/login/callback", "/logout"} <= {getattr(r, "path", "") for r in demo.app.routes}


def test_uploaded_files_are_removed_from_gradios_cache(app):
    assert app.delete_cache == (3600, 3600)  # every hour, files older than an hour


def test_page_events_are_not_published_as_api_endpoints(client):
    named = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    public = {"/compute_profile", "/compute_profile_from_files", "/generate", "/tune_profile", "/know_me",
              "/list_profiles", "/delete_my_data"}
    assert public <= named
    # Everything else is the study's participant API; nothing admin, nothing that takes no token.
    assert all(name.startswith("/study_") for name in named - public), named - public
    assert not any("admin" in name or "export" in name for name in named)


ADMIN = "the-admin-token-of-the-privacy-tests"


def _admin_demo(studio, token: str):
    return build_demo(studio_with(studio, admin_token=token))


@pytest.fixture(scope="module")
def admin_app(studio):
    return _admin_demo(studio, ADMIN)


ADMIN_HANDLERS = [("on_refresh", (None,)), ("on_results", ("voice-check", False)), ("on_export", ("voice-check",)),
                  ("on_save", ("name: x", None)), ("on_show", ("voice-check",)),
                  ("on_admin_withdraw", ("voice-check", "someone"))]


@pytest.mark.parametrize("name,args", ADMIN_HANDLERS, ids=[h[0] for h in ADMIN_HANDLERS])
@pytest.mark.parametrize("token", ["", "guess", ADMIN[:-1], ADMIN + " "])
def test_admin_functions_refuse_a_missing_or_wrong_token(admin_app, name, args, token):
    assert "Wrong admin token" in _refused(handler(admin_app, name)(token, *args))


def _refused(outputs) -> str:
    """What an admin handler that failed says (in the message area, or beside its button: saving and
    withdrawing), checking that nothing else it shows carries a result (each output kept or emptied)."""
    message, first, *rest = [*outputs, gr.skip()][:max(2, len(outputs))]
    said_here = said(message) or said(first)
    for shown in ([first] if said(message) else []) + rest:
        assert shown == gr.skip() or not (shown.get("value") if isinstance(shown, dict) else shown), shown
    return said_here


@pytest.mark.parametrize("name,args", ADMIN_HANDLERS, ids=[h[0] for h in ADMIN_HANDLERS])
def test_admin_functions_are_off_without_a_configured_token(app, name, args, studio):
    assert studio.settings.admin_token == ""
    for token in ("", "anything-at-all"):
        assert "PPLUG_ADMIN_TOKEN" in _refused(handler(app, name)(token, *args))
    buttons = [b for b in app.blocks.values() if isinstance(b, gr.Button) and b.page == "study-admin"]
    assert len(buttons) == 6 and not any(b.interactive for b in buttons)  # nothing to click into an error


def test_an_admin_error_stays_while_the_study_list_refreshes_after_it(admin_app):
    save = next(f for f in admin_app.fns.values() if getattr(f.fn, "__name__", "") == "on_save")
    after = next(f for f in admin_app.fns.values() if f.trigger_after == save._id)
    assert after.fn.__name__ == "studies_after" and save.outputs[0] not in after.outputs  # the message area
    message, beside = save.fn(ADMIN, "name: x", None)  # a definition with most of it missing
    assert said(message) == "" and "consent" in said(beside)  # said under "Validate and save"
    assert "\n- " in beside["value"]  # one problem per line, not one run-on line
    assert after.fn("a-wrong-token", None) == (gr.skip(), gr.skip())


def test_admin_functions_work_with_the_token(admin_app):
    message, choices, table = handler(admin_app, "on_refresh")(ADMIN, None)
    assert message["visible"] is False and table["visible"] and len(table["value"]) >= 1
    assert all(b.interactive is not False for b in admin_app.blocks.values()
               if isinstance(b, gr.Button) and b.page == "study-admin")



def test_the_browser_secret_file_is_ignored_by_git(tmp_path):
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for name in ("pplug_studio.db.secret", "data/other.db.secret"):
        assert subprocess.run(["git", "check-ignore", "-q", name], cwd=root).returncode == 0, name
