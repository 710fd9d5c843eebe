"""User studies without the models: definitions, randomization, the vote rules, export, statistics.

A stand-in studio (``FakeStudio``) returns "output of <condition>" for each condition, so that what
was shown on each side can be traced back to a condition.
"""
from __future__ import annotations

import json
import math
import re
import sqlite3
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from demo.core.settings import STUDIES_DIR, Limits
from demo.core.studio import Comparison, ProfileResult
from demo.core.text import to_last_sentence
from demo.study import stats as study_stats
from demo.study.__main__ import main
from demo.study.assign import schedule, side_order
from demo.study.definition import Consent, StudyDefinition, StudyError, parse_definition
from demo.study.flow import StudyService
from demo.study.results import compute_results, to_csv, to_jsonl

from apphelp import as_cells, csv_cells

BASE = {
    "name": "unit",
    "consent": {"version": "2", "text": "You agree."},
    "conditions": ["pplug", "generic"],
    "prompts": ["Write about bread.", "Write about bikes."],
    "trials_per_participant": 4,
    "completion": {"code": "DONE42"},
}
ITEMS = ["I bake bread every Sunday.", "My bike is my car.", "Gerald the starter is bubbly."]


class FakeStudio:
    plug_id = "untrained-000000000000"
    encoder_id = "enc"
    llm_id = "llm"

    def __init__(self, store):
        self.store = store
        self.settings = SimpleNamespace(limits=Limits(), plug="", study_prefetch=False)
        self.generated: list[tuple[str, ...]] = []
        self.cut: set[str] = set()  # conditions whose answer reaches the token limit

    def answer(self, condition: str) -> str:
        return f"output of {condition}" + (". Then mi" if condition in self.cut else "")

    def compute_profile(self, owner, name, items, source="", progress=None):
        profile_id = self.store.create_profile(owner, name, items, source=source)
        return ProfileResult(profile_id, name, len(items), len(items), 0.01)

    def delete_my_data(self, owner):
        return self.store.delete_owner_data(owner)

    def generate(self, owner, profile_id, request, params, conditions=("pplug", "generic"), rag_k=4, log=True,
                 measure=True):
        assert self.store.get_profile(profile_id, owner) is not None
        self.generated.append(tuple(conditions))
        yield Comparison(outputs={c: self.answer(c) for c in conditions}, done=True, timings={"total_s": 0.01},
                         cut={c: c in self.cut for c in conditions})


def make_service(store, **changes) -> StudyService:
    service = StudyService(FakeStudio(store), admin_token="admin-secret-token", studies_dir=None)
    service.register(parse_definition({**BASE, **changes}), source="test")
    return service


def join(service, name="unit", pid="", items=ITEMS):
    out = service.consent(name, True, pid)
    args = (name, out["participant_id"], out["participant_token"])
    service.set_history(*args, items=list(items))
    return args


# --- definitions -----------------------------------------------------------------------


def test_example_study_files_are_valid():
    files = sorted(STUDIES_DIR.iterdir())
    assert {f.suffix for f in files} >= {".yaml", ".json"}
    for path in files:
        assert main(["validate", str(path)]) == 0


def test_definition_errors_are_listed_together():
    with pytest.raises(StudyError) as err:
        parse_definition("name: x\nconditions: [pplug]\nprompts: []\ntrials_per_participant: 0\ncolour: red\n")
    message = str(err.value)
    for part in ("colour", "consent.text", "at least two", "prompts", "between 1 and 200"):
        assert part in message
    with pytest.raises(StudyError, match="neither valid JSON nor YAML"):
        parse_definition("{ name: [")


def test_definition_round_trips_through_its_dict():
    d = parse_definition(json.dumps(BASE))
    assert parse_definition(d.to_dict()) == d
    assert parse_definition({**BASE, "prompts": "participant"}).participant_prompts


# --- randomization ---------------------------------------------------------------------


def test_side_order_is_a_fair_coin_and_reproducible():
    pair = ("pplug", "generic")
    lefts = Counter(side_order(pair, seed)[0] for seed in range(20_000))
    assert abs(lefts["pplug"] / 20_000 - 0.5) < 4 * math.sqrt(0.25 / 20_000)
    assert all(side_order(pair, s) == side_order(pair, s) for s in range(100))


def test_schedule_balances_pairs_and_cycles_prompts():
    d = parse_definition({**BASE, "conditions": ["pplug", "generic", "rag"], "trials_per_participant": 6,
                          "prompts": ["a", "b", "c"]})
    plan = schedule(d, 123)
    assert Counter(pair for pair, _ in plan) == Counter({p: 2 for p in d.pairs})
    assert Counter(prompt for _, prompt in plan) == Counter({"a": 2, "b": 2, "c": 2})
    assert schedule(d, 123) == plan


def test_stored_order_matches_what_was_shown_and_both_orders_occur(store):
    service = make_service(store, trials_per_participant=20)
    firsts = Counter()
    for p in range(10):
        args = join(service, pid=f"R{p}")
        for _ in range(20):
            trial = service.next_trial(*args)["trial"]
            service.vote(*args, trial["trial_id"], "A")
            shown = trial
            row = next(r for r in service.db.export_rows("unit") if r["trial_id"] == shown["trial_id"])
            assert shown["A"] == f"output of {row['condition_a']}" == row["output_a"]
            assert shown["B"] == f"output of {row['condition_b']}" == row["output_b"]
            assert (row["condition_a"], row["condition_b"]) == side_order(("pplug", "generic"), row["order_seed"])
            assert service.studio.generated[-1] == (row["condition_a"], row["condition_b"])
            firsts[row["condition_a"]] += 1
    n = sum(firsts.values())
    assert n == 200
    assert abs(firsts["pplug"] / n - 0.5) < 4 * math.sqrt(0.25 / n)  # both orders, at the expected rate


# --- the participant's rules -----------------------------------------------------------


def test_an_answer_cut_at_the_token_limit_is_shown_to_its_last_whole_sentence(store):
    service = make_service(store)
    service.studio.cut = {"pplug"}
    shown = service.next_trial(*join(service))["trial"]
    [row] = service.db.export_rows("unit")
    texts = {row["condition_a"]: shown["A"], row["condition_b"]: shown["B"]}
    assert texts == {"pplug": "output of pplug.", "generic": "output of generic"}  # the cut one, trimmed
    assert (row["output_a"], row["output_b"]) == (shown["A"], shown["B"])  # stored as shown


@pytest.mark.parametrize("answer,shown", [
    ("I love bread. Today I baked a loaf and then we", "I love bread. Today I baked a loaf and then…"),
    ('Great day! "Nice," she said. And then', 'Great day! "Nice," she said.'),
    ("on top of their classic b", "on top of their classic…"),
    ("It was (fine.) and", "It was (fine.)"),
    ("Hello world.", "Hello world."),
    ("word", "word…"),
    ("Yesterday I went to see Dr. Smith about my", "Yesterday I went to see Dr. Smith about…"),
    ("Bake bread, e.g. a rye loaf, or cake, i.e. something sweet, vs. buying it at the",
     "Bake bread, e.g. a rye loaf, or cake, i.e. something sweet, vs. buying it at…"),
    ("Steps:\n1. Mix the flour\n2. Knead it for", "Steps:\n1. Mix the flour\n2. Knead it…"),
    ("It was **great.** And then the", "It was **great.**"),
    ("今日は晴れ。散歩した", "今日は晴れ。"),
    ("   ", ""),
])
def test_to_last_sentence_ends_at_a_sentence_or_a_whole_word(answer, shown):
    assert to_last_sentence(answer) == shown and to_last_sentence(shown) == shown


def test_nothing_is_stored_before_consent(store):
    service = make_service(store)
    service.info("unit")
    with pytest.raises(StudyError, match="tick the consent box"):
        service.consent("unit", False, "PROLIFIC123")
    db = store.connection()
    assert db.execute("SELECT COUNT(*) FROM study_participants").fetchone()[0] == 0
    out = service.consent("unit", True, "PROLIFIC123", "S1", "X1")
    row = next(db.query("SELECT * FROM study_participants"))
    assert row["participant_id"] == "PROLIFIC123" and row["consent_version"] == "2" and row["consented_at"]
    assert row["prolific_study_id"] == "S1" and out["participant_token"] not in json.dumps(row)
    generated = service.consent("unit", True)
    assert generated["participant_id"].startswith("P-")
    with pytest.raises(StudyError, match="already started"):
        service.consent("unit", True, "PROLIFIC123")


def test_votes_count_once_and_only_for_their_participant(store):
    service = make_service(store)
    alice = join(service, pid="alice")
    bob = join(service, pid="bob")
    trial = service.next_trial(*alice)["trial"]
    assert service.next_trial(*alice)["trial"] == trial  # the open trial again, not a new one
    with pytest.raises(StudyError, match="not yours"):
        service.vote(*bob, trial["trial_id"], "A")
    with pytest.raises(StudyError, match="no consent on record"):
        service.vote("unit", "alice", "guessed-token", trial["trial_id"], "A")
    service.vote(*alice, trial["trial_id"], "B", "more like me")
    with pytest.raises(StudyError, match="already recorded"):
        service.vote(*alice, trial["trial_id"], "A")
    votes = store.connection().execute("SELECT COUNT(*) FROM study_votes").fetchone()[0]
    assert votes == 1
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        with store.transaction() as db:
            db.execute("UPDATE study_votes SET choice = 'A'")


def test_full_run_resumes_and_ends_with_the_completion_code(store):
    service = make_service(store)
    args = join(service, pid="carol")
    for i in range(1, 5):
        status = service.status(*args)  # a reload: the same place
        assert status["stage"] in ("next", "trial")
        trial = service.next_trial(*args)["trial"]
        assert trial["index"] == i and service.status(*args)["trial"] == trial
        out = service.vote(*args, trial["trial_id"], "tie")
    assert out["stage"] == "done" and out["completion_code"] == "DONE42"
    assert service.next_trial(*args)["stage"] == "done"
    assert store.connection().execute("SELECT COUNT(*) FROM study_completions").fetchone()[0] == 1
    assert len(service.studio.generated) == 4


def test_a_changed_definition_is_a_new_version_and_old_participants_keep_theirs(store):
    service = make_service(store)
    old = join(service, pid="early")
    version, new = service.register(parse_definition({**BASE, "trials_per_participant": 2}), "edit")
    assert (version, new) == (2, True)
    assert service.register(parse_definition({**BASE, "trials_per_participant": 2}), "again") == (2, False)
    assert service.status(*old)["total"] == 4
    assert service.status(*join(service, pid="late"))["total"] == 2


def test_a_study_for_another_plug_is_refused_clearly(store):
    service = make_service(store, plug="trained-abcdef123456")
    assert "needs plug `trained-abcdef123456`" in service.info("unit")["problem"]
    with pytest.raises(StudyError, match="but the app runs `untrained-000000000000`"):
        service.consent("unit", True)


def test_admin_functions_need_the_token(store):
    service = make_service(store)
    with pytest.raises(StudyError, match="Wrong admin token"):
        service.admin_studies("nope")
    service.admin_token = ""
    with pytest.raises(StudyError, match="PPLUG_ADMIN_TOKEN"):
        service.admin_studies("")


# --- export ----------------------------------------------------------------------------


def test_export_round_trips_and_the_command_writes_it(store, tmp_path, capsys):
    service = make_service(store)
    args = join(service, pid="dave")
    for choice in ("A", "both_bad"):
        trial = service.next_trial(*args)["trial"]
        service.interact(*args, trial["trial_id"])
        service.vote(*args, trial["trial_id"], choice, 'comma, "quote"\nnewline')
    service.next_trial(*args)  # an open, unvoted trial
    rows = service.db.export_rows("unit")
    assert len(rows) == 3 and [r["voted"] for r in rows] == [True, True, False]
    assert rows[0]["first_interaction_at"] <= rows[0]["voted_at"]
    assert rows[0]["preferred_condition"] == rows[0]["condition_a"] and rows[1]["preferred_condition"] == ""
    assert csv_cells(to_csv(rows)) == as_cells(rows)  # commas, quotes and newlines survive
    assert [json.loads(line) for line in to_jsonl(rows).splitlines()] == rows
    out = tmp_path / "export"
    assert main(["export", "unit", "--db", str(store.path), "--out", str(out)]) == 0
    written = sorted(out.iterdir())
    assert [p.suffix for p in written] == [".csv", ".jsonl"]
    assert csv_cells(written[0].read_text()) == as_cells(rows)
    assert main(["results", "unit", "--db", str(store.path)]) == 0
    assert "pplug (X) vs generic (Y)" in capsys.readouterr().out


# --- statistics ------------------------------------------------------------------------


def _votes(x_wins: int, y_wins: int, ties: int = 0, participants: int = 20, x="pplug", y="generic"):
    outcomes = ["x"] * x_wins + ["y"] * y_wins + ["t"] * ties
    votes = []
    for i, o in enumerate(outcomes):
        a, b = (x, y) if i % 2 else (y, x)  # both sides
        choice = "tie" if o == "t" else ("A" if (o == "x") == (a == x) else "B")
        votes.append({"participant": f"p{i % participants}", "a": a, "b": b, "choice": choice})
    return votes


def test_win_rate_70_30_with_an_interval_containing_it():
    [row] = study_stats.pairwise(_votes(70, 30), ["pplug", "generic"])
    assert (row["x_wins"], row["y_wins"], row["votes"]) == (70, 30, 100)
    assert row["win_rate"] == pytest.approx(0.70)
    assert row["ci_low"] < 0.70 < row["ci_high"]
    assert 0.55 < row["ci_low"] and row["ci_high"] < 0.85  # about ±1.96·sqrt(.21/100)
    assert row["bootstrap_unit"] == "participant"


def test_ties_count_half_and_one_participant_falls_back_to_votes():
    [row] = study_stats.pairwise(_votes(10, 10, ties=20, participants=1), ["pplug", "generic"])
    assert row["win_rate"] == pytest.approx(0.5) and row["ties"] == 20 and row["bootstrap_unit"] == "vote"


def test_bradley_terry_recovers_a_known_ordering():
    rng = np.random.default_rng(0)
    strength = {"pplug+rag": 1.0, "pplug": 0.3, "rag": -0.3, "generic": -1.0}
    names = list(strength)
    votes = []
    for t in range(3000):
        a, b = rng.choice(names, 2, replace=False)
        p_a = 1 / (1 + math.exp(strength[b] - strength[a]))
        votes.append({"participant": f"p{t % 60}", "a": str(a), "b": str(b),
                      "choice": "A" if rng.random() < p_a else "B"})
    rows = study_stats.bradley_terry(votes, ["pplug", "generic", "rag", "pplug+rag"], n_boot=200)
    assert [r["condition"] for r in rows] == ["pplug+rag", "pplug", "rag", "generic"]
    for r in rows:
        assert r["score"] == pytest.approx(strength[r["condition"]], abs=0.15)
        assert r["ci_low"] < r["score"] < r["ci_high"]


def test_results_from_rows_count_exclusions_and_participants():
    rows = []
    for i, v in enumerate(_votes(7, 3, participants=2)):
        rows.append({"study": "s", "participant_id": v["participant"], "condition_a": v["a"], "condition_b": v["b"],
                     "choice": v["choice"], "voted": True, "participant_completed": v["participant"] == "p0"})
    rows.append({**rows[0], "voted": False, "choice": ""})
    results = compute_results(rows, ["pplug", "generic"], n_boot=200)
    assert results.excluded == {"unvoted (unfinished) trials": 1} and results.included == 10
    assert results.pairs[0]["win_rate"] == pytest.approx(0.7)
    assert {p["participant_id"]: p["voted"] for p in results.participants} == {"p0": 5, "p1": 5}
    only = compute_results(rows, ["pplug", "generic"], completed_only=True, n_boot=200)
    assert only.included == 5 and re.search(r"\| pplug \(X\) vs generic \(Y\) +\| 5 +\|", only.markdown())
    svg = study_stats.forest_svg(results.pairs, "pair", "win_rate", "ci_low", "ci_high", 0.5, 0, 1, "t")
    assert svg.startswith("<svg") and "pplug vs generic" in svg


def test_definition_model_defaults_are_consistent():
    d = StudyDefinition(name="x", consent=Consent(version="1", text="c"), conditions=("pplug", "generic"),
                        prompts=("a",), trials_per_participant=1)
    assert d.title == "x" and d.plug == "loaded" and d.generation.max_new_tokens == 64
    assert parse_definition(d.to_dict()) == d


def test_persona_studies_assign_a_recorded_persona(store):
    service = make_service(store, history={"mode": "persona", "personas": ["lincoln", "fdr"]})
    out = service.consent("unit", True, "persona-1")
    args = ("unit", out["participant_id"], out["participant_token"])
    with pytest.raises(StudyError, match="assigns a persona"):
        service.set_history(*args, items=ITEMS)
    trial = service.next_trial(*args)["trial"]  # the persona is assigned on the way
    [row] = service.db.export_rows("unit")
    assert row["history_kind"] == "persona" and row["persona"] in ("lincoln", "fdr") and row["history_items"] == 30
    assert service.status(*args)["persona"] == row["persona"] and trial["index"] == 1
    own = make_service(store, name="own", history={"mode": "participant", "min_items": 5})
    out = own.consent("own", True)
    with pytest.raises(StudyError, match="at least 5 items"):
        own.set_history("own", out["participant_id"], out["participant_token"], items=ITEMS)


def test_a_study_naming_a_checkpoint_folder_runs_only_with_that_plug(store, tmp_path):
    import torch

    from demo.core.plug import PPlug

    plug = PPlug.untrained("enc", "llm", d_enc=4, token_embeddings=torch.ones(10, 6))
    plug.save(tmp_path / "plug")
    service = make_service(store, plug=str(tmp_path / "plug"))
    assert "needs the plug in" in service.info("unit")["problem"]
    service.studio.plug_id = plug.plug_id
    assert service.info("unit")["problem"] == ""
    assert make_service(store, name="gone", plug=str(tmp_path / "nowhere")).info("gone")["problem"]


def test_participant_requests_are_asked_for_and_recorded(store):
    service = make_service(store, prompts="participant", history={"mode": "persona", "personas": ["fdr"]})
    out = service.consent("unit", True)
    args = ("unit", out["participant_id"], out["participant_token"])
    assert service.next_trial(*args)["stage"] == "request"  # persona assigned, no trial yet
    trial = service.next_trial(*args, request="  Write about the New Deal. ")["trial"]
    [row] = service.db.export_rows("unit")
    assert trial["request"] == row["request"] == "Write about the New Deal." and row["request_source"] == "participant"
    assert row["persona"] == "fdr"


def test_a_study_file_that_is_not_utf8_is_reported_not_fatal(store, tmp_path):
    (tmp_path / "latin.yaml").write_bytes("name: caf\u00e9\n".encode("latin-1"))
    (tmp_path / "ok.json").write_text(json.dumps({**BASE, "name": "ok"}))
    service = StudyService(FakeStudio(store), studies_dir=tmp_path)
    assert len(service.load_errors) == 1 and "not a UTF-8 text file" in service.load_errors[0]
    assert service.db.definition("ok") is not None


# --- withdrawal ------------------------------------------------------------------------

STUDY_TABLES = ("study_participants", "study_histories", "study_trials", "study_interactions", "study_votes",
                "study_completions")


def _rows(store, table: str, participant: int) -> list[dict]:
    where = ("id = ?" if table == "study_participants" else
             "trial IN (SELECT id FROM study_trials WHERE participant = ?)" if table == "study_interactions" else
             "participant = ?")
    return list(store.connection().query(f"SELECT * FROM {table} WHERE {where}", [participant]))


def _vote_twice(service, pid: str, **request):
    args = join(service, pid=pid)
    for _ in range(2):
        trial = service.next_trial(*args, **request)["trial"]
        service.vote(*args, trial["trial_id"], "A", f"reason of {pid}")
    return args, service.studio.store.rows("SELECT id FROM study_participants WHERE participant_id = ?", [pid])[0]["id"]


def test_withdrawal_deletes_every_study_row_and_the_writing(store):
    service = make_service(store)
    args, me = _vote_twice(service, "leaver")
    _, other = _vote_twice(service, "stayer")
    profile = service.db.history(me)["profile_id"]
    out = service.withdraw(*args)
    assert out["mode"] == "delete" and out["deleted"]["history_items"] == len(ITEMS)
    assert all(_rows(store, t, me) == [] for t in STUDY_TABLES)
    assert store.connection().execute("SELECT COUNT(*) FROM profiles WHERE id = ?", [profile]).fetchone()[0] == 0
    assert store.connection().execute("SELECT COUNT(*) FROM history_items WHERE profile_id = ?", [profile]).fetchone()[0] == 0
    # the other participant is untouched, the record of the withdrawal says only that someone left
    assert len(_rows(store, "study_votes", other)) == 2
    assert list(store.connection().query("SELECT participant, mode FROM study_withdrawals")) == [
        {"participant": me, "mode": "delete"}]
    with pytest.raises(StudyError, match="no consent on record"):
        service.status(*args)
    assert service.db.studies()[0]["withdrawn"] == 1
    # the id is free again: the same person may take part anew
    assert service.consent("unit", True, "leaver")["stage"] == "history"


def test_withdrawal_with_kept_votes_anonymizes_them_in_place(store):
    service = make_service(store, prompts="participant", consent={"version": "3", "text": "Votes are kept.",
                                                                   "on_withdraw": "keep_anonymized"})
    args, me = _vote_twice(service, "PROLIFIC-LEAVER", request="Write about my dog Biscuit.")
    before = {t["trial_index"]: t for t in service.db.trials(me)}
    out = service.withdraw(*args)
    assert out["mode"] == "keep_anonymized"
    person = _rows(store, "study_participants", me)[0]
    assert person["participant_id"] == f"withdrawn-{me}" and person["id_source"] == "withdrawn"
    assert person["prolific_study_id"] == person["prolific_session_id"] == person["token_sha256"] == ""
    trials = service.db.trials(me)
    assert [t["choice"] for t in trials] == ["A", "A"]
    assert [(t["condition_a"], t["condition_b"]) for t in trials] == [
        (before[t["trial_index"]]["condition_a"], before[t["trial_index"]]["condition_b"]) for t in trials]
    assert all(t["request"] == "" and t["output_a"] == t["output_b"] == "" and t["reason"] == "" for t in trials)
    dump = json.dumps([_rows(store, t, me) for t in STUDY_TABLES])
    assert "PROLIFIC-LEAVER" not in dump and "Biscuit" not in dump and "reason of" not in dump
    assert store.connection().execute("SELECT COUNT(*) FROM profiles").fetchone()[0] == 0
    results = compute_results(service.db.export_rows("unit"))
    assert results.included == 2  # the votes still count
    with pytest.raises(StudyError, match="no consent on record"):
        service.withdraw(*args)


def test_only_a_recorded_withdrawal_unlocks_a_participants_rows(store):
    service = make_service(store)
    _, me = _vote_twice(service, "kept")
    _, gone = _vote_twice(service, "gone")
    with store.transaction() as db:
        db.execute("INSERT INTO study_withdrawals (participant, study, mode, withdrawn_at) VALUES (?, 'unit', "
                   "'delete', 'now')", [gone])
        db.execute("DELETE FROM study_votes WHERE participant = ?", [gone])  # allowed: recorded withdrawal
    refused = [("DELETE FROM study_trials WHERE participant = ?", me),  # no withdrawal recorded
               ("UPDATE study_trials SET request = '' WHERE participant = ?", me),
               ("UPDATE study_trials SET request = '' WHERE participant = ?", gone)]  # withdrawn to delete, not edit
    for sql, who in refused:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            with store.transaction() as db:
                db.execute(sql, [who])
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        with store.transaction() as db:
            db.execute("DELETE FROM study_withdrawals")


def test_the_researcher_withdraws_a_participant_who_asks(store):
    service = make_service(store)
    _, me = _vote_twice(service, "asked-by-mail")
    with pytest.raises(StudyError, match="Wrong admin token"):
        service.admin_withdraw("nope", "unit", "asked-by-mail")
    service.admin_withdraw("admin-secret-token", "unit", "asked-by-mail")
    assert all(_rows(store, t, me) == [] for t in STUDY_TABLES)
    with pytest.raises(StudyError, match="no participant"):
        service.admin_withdraw("admin-secret-token", "unit", "asked-by-mail")


def test_an_unknown_withdrawal_mode_is_a_clear_definition_error():
    with pytest.raises(StudyError, match="on_withdraw"):
        parse_definition({**BASE, "consent": {"version": "1", "text": "x", "on_withdraw": "forever"}})


def test_a_prepared_trial_nobody_came_back_for_is_forgotten(store, monkeypatch):
    import demo.study.flow as flow

    service = StudyService(FakeStudio(store), studies_dir=None, prefetch=True)
    service.register(parse_definition(BASE), source="test")
    first = join(service)
    first_row = service.db.participant(*first)["id"]
    assert service._prefetched[first_row].ready.wait(10)
    monkeypatch.setattr(flow, "PREFETCH_KEPT_S", 0)
    second = join(service)
    assert list(service._prefetched) == [service.db.participant(*second)["id"]]
