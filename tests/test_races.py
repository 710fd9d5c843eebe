"""The same owner in two places at once: "Delete my data" while a profile is computed, tuned or used.
Each ends with the work done or a clear message, never a raw database error, and nothing of the
owner is written after their deletion."""
from __future__ import annotations

import secrets
import threading

import pytest

from demo.core.generation import GenerationParams
from demo.core.studio import ServiceError
from demo.core.tuning import FitSettings

ITEMS = ["I climbed the north ridge at dawn; the granite was still cold.",
         "Trail mix recipe: dates, almonds, dark chocolate, a pinch of salt.",
         "My boots finally gave up after 900 miles on the Pacific Crest Trail.",
         "Next summer I want to walk the Haute Route from Chamonix to Zermatt.",
         "The best coffee I ever had was brewed on a camp stove above the clouds."]


def _owned_rows(studio, owner: str) -> int:
    db = studio.store.connection()
    return sum(db.execute(f"SELECT COUNT(*) FROM {t} WHERE owner = ?", [owner]).fetchone()[0]
               for t in ("profiles", "generations"))


def test_delete_while_computing_profiles_is_never_a_database_error(studio):
    owner = secrets.token_urlsafe(24)
    studio.compute_profile(owner, "warm the cache", ITEMS)  # later computes are quick: every item is cached
    stop, unexpected, done = threading.Event(), [], [0]

    def delete_loop():
        while not stop.is_set():
            studio.delete_my_data(owner)

    deleter = threading.Thread(target=delete_loop)
    deleter.start()
    try:
        for _ in range(120):  # about a third of these hit the window without the fix
            try:
                result = studio.compute_profile(owner, "raced", ITEMS)
                done[0] += 1
                assert result.n_items == len(ITEMS)
            except ServiceError:
                pass
            except Exception as err:  # noqa: BLE001 - what this test looks for
                unexpected.append(repr(err))
    finally:
        stop.set()
        deleter.join()
    assert unexpected == [] and done[0] > 0
    # Whatever survived the race is whole: each profile has its matrix and its personal embedding.
    db = studio.store.connection()
    for (profile_id,) in db.execute("SELECT id FROM profiles WHERE owner = ?", [owner]).fetchall():
        assert studio.store.profile_matrix(profile_id, studio.encoder_id) is not None
        assert studio.store.personal_embedding(profile_id, studio.plug_id) is not None


def test_delete_during_a_generation_keeps_nothing_of_it(studio):
    owner = secrets.token_urlsafe(24)
    profile = studio.compute_profile(owner, "stream", ITEMS).profile_id
    stream = studio.generate(owner, profile, "Write a tweet about my weekend.",
                             GenerationParams(max_new_tokens=6, stop_at_eos=False))
    next(stream)  # the first token is out
    studio.delete_my_data(owner)
    last = None
    for last in stream:
        pass
    assert last is not None and last.done and last.generation_id is None
    assert _owned_rows(studio, owner) == 0


def test_delete_during_tuning_ends_with_a_clear_message(studio):
    owner = secrets.token_urlsafe(24)
    profile = studio.compute_profile(owner, "tune", ITEMS).profile_id
    deleted = []

    def progress(step, total):
        if not deleted:
            deleted.append(studio.delete_my_data(owner))

    with pytest.raises(ServiceError, match="deleted"):
        studio.tune_profile(owner, profile, progress=progress, settings=FitSettings(steps=2, held_back=2))
    assert deleted and _owned_rows(studio, owner) == 0


def test_a_short_history_is_tuned_on_every_example_it_makes(studio):
    # Five items make five examples: spreading eight picks over them must not drop any to below four.
    owner = secrets.token_urlsafe(24)
    profile = studio.compute_profile(owner, "short", ITEMS).profile_id
    tuned = studio.tune_profile(owner, profile, settings=FitSettings(steps=1, held_back=2))
    assert tuned.n_fit + tuned.n_held == len(ITEMS)


def test_a_measure_of_a_profile_deleted_while_it_ran_is_not_shown(studio):
    """"Does it know me?" queued behind a tune, or running, when the visitor deletes their data: the
    panel must not come back with a verdict on the deleted writing."""
    from demo.app.ui import on_know_me
    from demo.core import personas
    from demo.core.studio import NoSuchProfile

    owner = secrets.token_urlsafe(24)
    profile_id = studio.compute_profile(owner, "fdr", personas.persona_items("fdr")).profile_id
    outcome: list = []

    def measure():
        try:
            outcome.append(studio.know_me(owner, profile_id))
        except NoSuchProfile as err:
            outcome.append(err)

    runner = threading.Thread(target=measure)
    runner.start()
    studio.delete_my_data(owner)  # while the measure runs (or before it loads the profile)
    runner.join(120)
    assert len(outcome) == 1 and isinstance(outcome[0], NoSuchProfile)
    panel, sentence, plot = on_know_me(studio, owner, profile_id)  # one that waited in the queue
    assert panel["visible"] is False and sentence == "" and plot["visible"] is False
