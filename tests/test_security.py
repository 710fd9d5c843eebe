"""Attacks on the running app's API: odd types and values at every named endpoint, consent that is not
a yes, missing arguments that would quote a token into the log, uploads that were never uploaded,
and probes for whether a participant id exists. Over plain HTTP where gradio_client would refuse
the value. Each answer is a clear message, and the server log shows no traceback and no token."""
from __future__ import annotations

import secrets

import pytest
from gradio_client import handle_file

from demo.app.loadtest import connect
from demo.study.definition import parse_definition
from demo.study.store import StudyStore

from apphelp import call_raw, handler, serve, studio_with

pytestmark = pytest.mark.slow

HISTORY = ("I climbed the north ridge at dawn; the granite was still cold.\n\n"
           "Trail mix recipe: dates, almonds, dark chocolate, a pinch of salt.\n\n"
           "My boots finally gave up after 900 miles on the Pacific Crest Trail.")
STUDY = {"name": "security-test", "consent": {"version": "1", "text": "Consent."}, "conditions": ["pplug", "generic"],
         "prompts": ["Write a tweet about my weekend."], "trials_per_participant": 2,
         "generation": {"max_new_tokens": 4}, "history": {"mode": "participant", "min_items": 2}}
TOKEN = "security-test-owner-token-0123456789"


@pytest.fixture(scope="module")
def app(studio):
    StudyStore(studio.store).register(parse_definition(STUDY), source="test")
    demo = serve(studio_with(studio, max_new_tokens=8, max_item_chars=200))
    yield demo
    demo.close()


@pytest.fixture(scope="module")
def url(app) -> str:
    return app.local_url


@pytest.fixture(scope="module")
def client(url):
    return connect(url)


@pytest.fixture(scope="module")
def profile(client) -> str:
    return client.predict(history=HISTORY, owner_token=TOKEN, name="sec", api_name="/compute_profile")["profile_id"]


def _participant(client, participant_id: str, history: bool = True) -> dict:
    me = client.predict(study="security-test", consent=True, participant_id=participant_id, api_name="/study_consent")
    ids = dict(study="security-test", participant_id=participant_id, participant_token=me["participant_token"])
    if history:
        client.predict(**ids, history=HISTORY, api_name="/study_history")
    return ids


def _count(studio, sql: str, *args) -> int:
    return studio.store.connection().execute(sql, args).fetchone()[0]


def _clean_log(capfd, *secrets_: str) -> str:
    """The server's output during the test: no traceback, none of ``secrets_``."""
    out, err = capfd.readouterr()
    log = out + err
    assert "Traceback" not in log, log[-3000:]
    assert not [s for s in secrets_ if s in log]
    return log


def test_every_named_endpoint_checks_its_arguments(app, client):
    named = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    functions = {f.api_name: f.fn for f in app.fns.values() if f.api_name}
    unchecked = [name for name in named if not hasattr(functions[name.lstrip("/")], "checked_arguments")]
    assert len(named) >= 12 and unchecked == []


# --- consent -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["false", "no", [False], 0, 1, "true", "yes", {}, False])
def test_only_an_explicit_true_is_consent(url, studio, capfd, value):
    pid = "CONSENT-" + secrets.token_hex(4)
    event, message = call_raw(url, "study_consent", ["security-test", value, pid, "", ""])
    assert event == "error" and "consent" in message.lower(), message
    assert _count(studio, "SELECT COUNT(*) FROM study_participants WHERE participant_id = ?", pid) == 0
    _clean_log(capfd)


def test_consent_true_enrols(url, studio):
    event, out = call_raw(url, "study_consent", ["security-test", True, "CONSENT-YES", "", ""])
    assert event == "complete" and out["participant_id"] == "CONSENT-YES" and out["stage"] == "history"


# --- types and values at the boundary ------------------------------------------------------


def test_a_tiny_temperature_answers_as_greedy(client, profile, capfd):
    call = dict(owner_token=TOKEN, profile_id=profile, request="Write a tweet.", max_new_tokens=6, top_p=0.9,
                api_name="/generate")
    greedy = client.predict(**call, temperature=0.0)
    for tiny in (1e-40, 5e-324, 1e-7):
        out = client.predict(**call, temperature=tiny)
        assert (out["personalized"], out["generic"]) == (greedy["personalized"], greedy["generic"])
    _clean_log(capfd, TOKEN)


MISTYPED = [  # (endpoint, arguments in order, the index of the odd one, the name the message must give)
    ("generate", [TOKEN, ["a", "list"], "Write.", 4, 0.0, 1.0, 0, False], "profile_id"),
    ("generate", [TOKEN, {"a": "dict"}, "Write.", 4, 0.0, 1.0, 0, False], "profile_id"),
    ("generate", [TOKEN, "pid", "Write.", 4, "0.5", 1.0, 0, False], "temperature"),
    ("generate", [TOKEN, "pid", "Write.", 4, 0.0, 1.0, 2**70, False], "seed"),
    ("generate", [TOKEN, "pid", "Write.", True, 0.0, 1.0, 0, False], "max_new_tokens"),
    ("generate", [12345, "pid", "Write.", 4, 0.0, 1.0, 0, False], "owner_token"),
    ("generate", [TOKEN, "pid", "Write.", 4, 0.0, 1.0, 0, "yes"], "tuned"),
    ("study_info", [12345], "study"),
    ("study_info", [["security-test"]], "study"),
    ("study_info", [None], "study"),
    ("study_status", ["security-test", 42, "token"], "participant_id"),
    ("study_status", ["security-test", "P-1", None], "participant_token"),
    ("study_history", ["security-test", "P-1", "token", ["a", "list"], ""], "history"),
    ("study_next", [None, "P-1", "token", ""], "study"),
    ("study_vote", ["security-test", "P-1", "token", "abc", "A", ""], "trial_id"),
    ("study_vote", ["security-test", "P-1", "token", None, "A", ""], "trial_id"),
    ("study_vote", ["security-test", "P-1", "token", 2**70, "A", ""], "trial_id"),
    ("study_vote", ["security-test", "P-1", "token", 1.5, "A", ""], "trial_id"),
    ("study_vote", ["security-test", "P-1", "token", 1, ["A"], ""], "choice"),
    ("study_withdraw", ["security-test", ["P-1"], "token"], "participant_id"),
    ("list_profiles", [None], "owner_token"),
    ("delete_my_data", [["x" * 20]], "owner_token"),
]


@pytest.mark.parametrize("endpoint,data,name", MISTYPED, ids=[f"{m[0]}-{m[2]}-{i}" for i, m in enumerate(MISTYPED)])
def test_a_mistyped_argument_gets_a_message_naming_it(url, capfd, endpoint, data, name):
    event, message = call_raw(url, endpoint, data)
    assert event == "error" and message and message.startswith(name), message
    _clean_log(capfd, TOKEN)


def test_a_fractional_trial_id_records_no_vote(client, url, studio):
    ids = _participant(client, "VOTE-FRACTION")
    trial = client.predict(**ids, api_name="/study_next")["trial"]
    assert trial["trial_id"] >= 1
    args = [ids["study"], ids["participant_id"], ids["participant_token"]]
    event, message = call_raw(url, "study_vote", [*args, trial["trial_id"] + 0.5, "A", ""])
    assert event == "error" and "trial_id" in message
    assert _count(studio, "SELECT COUNT(*) FROM study_votes WHERE trial = ?", trial["trial_id"]) == 0
    assert client.predict(**ids, api_name="/study_status")["stage"] == "trial"


# --- logs ----------------------------------------------------------------------------------


def test_a_call_with_missing_arguments_puts_no_token_in_the_log(url, profile, capfd):
    for endpoint, data in (("generate", [TOKEN]), ("list_profiles", []), ("study_vote", ["security-test", "P", TOKEN])):
        event, message = call_raw(url, endpoint, data)
        assert event == "error" and "arguments" in message and TOKEN not in message, message
    # Left-out trailing arguments that have defaults take them.
    event, out = call_raw(url, "generate", [TOKEN, profile, "Write a tweet.", 4])
    assert event == "complete" and out["done"] and out["generic"]
    _clean_log(capfd, TOKEN)


# --- study histories -----------------------------------------------------------------------


def test_a_study_history_keeps_the_apps_item_limit(client, studio):
    ids = _participant(client, "LONG-ITEMS", history=False)
    client.predict(**ids, history="x" * 5000 + "\n\nshort item", api_name="/study_history")
    lengths = [r[0] for r in studio.store.connection().execute(
        """SELECT length(i.text) FROM history_items i JOIN study_histories h ON h.profile_id = i.profile_id
           JOIN study_participants p ON p.id = h.participant WHERE p.participant_id = 'LONG-ITEMS'""")]
    assert sorted(lengths) == [len("short item"), 200]


def test_a_participant_sets_their_history_once(client, studio):
    ids = _participant(client, "ONE-HISTORY")
    with pytest.raises(Exception, match="already set"):
        client.predict(**ids, history=HISTORY.replace("dawn", "dusk"), api_name="/study_history")
    assert _count(studio, """SELECT COUNT(*) FROM study_histories h JOIN study_participants p ON p.id = h.participant
                             WHERE p.participant_id = 'ONE-HISTORY'""") == 1


# --- participant ids -----------------------------------------------------------------------

PROBES = [("study_status", []), ("study_history", ["", ""]), ("study_next", [""]), ("study_vote", [1, "A", ""]),
          ("study_withdraw", [])]


@pytest.fixture(scope="module")
def known(client) -> str:
    return _participant(client, "KNOWN-PROBE", history=False)["participant_id"]


@pytest.mark.parametrize("token", ["a-wrong-token-of-some-length", "", 12345, None, ["x"], {"t": 1}, True, 1.5])
@pytest.mark.parametrize("endpoint,rest", PROBES, ids=[p[0] for p in PROBES])
def test_an_unknown_and_a_known_participant_id_get_the_same_answer(known, url, capfd, endpoint, rest, token):
    known = call_raw(url, endpoint, ["security-test", known, token, *rest])
    unknown = call_raw(url, endpoint, ["security-test", "NOBODY-PROBE", token, *rest])
    assert known == unknown and known[0] == "error" and known[1], (known, unknown)
    _clean_log(capfd)


# --- files through the API -----------------------------------------------------------------


def test_files_go_through_the_api_and_are_parsed_like_the_pages_uploads(client, app, tmp_path):
    posts = tmp_path / "posts.csv"
    posts.write_text('id,body\n1,"First post, with a comma."\n2,Second post.\n3,"<b>Third</b>"\n')
    out = client.predict(files=[handle_file(str(posts))], owner_token=TOKEN, name="from csv", text_column="body",
                         api_name="/compute_profile_from_files")
    assert out["n_items"] == 3 and out["profile_id"]
    listed = client.predict(owner_token=TOKEN, api_name="/list_profiles")
    assert {"from csv"} <= {p["name"] for p in listed}

    binary = tmp_path / "notes.txt"
    binary.write_bytes(bytes(range(1, 256)) * 4)  # no NUL byte
    with pytest.raises(Exception) as caught:
        client.predict(files=[handle_file(str(binary))], owner_token=TOKEN, api_name="/compute_profile_from_files")
    shown, _, _ = handler(app, "show_preview")(TOKEN, "", [str(binary)], "text", None)
    assert "notes.txt looks like a binary file" in str(caught.value) and "looks like a binary file" in shown

    with pytest.raises(Exception, match='has no "text" column'):
        client.predict(files=[handle_file(str(posts))], owner_token=TOKEN, api_name="/compute_profile_from_files")


@pytest.mark.parametrize("reference", [
    {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}},
    {"path": "/etc/passwd"},
    {"path": "http://127.0.0.1:9/history.txt", "meta": {"_type": "gradio.FileData"}},
    {"path": "../../../../etc/hostname", "meta": {"_type": "gradio.FileData"}},
    {"url": "http://127.0.0.1:9/history.txt"},
    "/etc/passwd",
    None,
])
def test_files_not_uploaded_here_are_refused(url, capfd, reference):
    event, message = call_raw(url, "compute_profile_from_files", [[reference], TOKEN, "x", "text", ""])
    assert event == "error" and message and "upload" in message.lower() and "root:" not in message, message
    event, message = call_raw(url, "compute_profile_from_files", [reference, TOKEN, "x", "text", ""])
    assert event == "error" and message and "file" in message, message
    _clean_log(capfd, TOKEN)
