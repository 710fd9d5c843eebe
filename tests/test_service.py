"""The service layer end to end on the real embedded models and a real SQLite file."""
import copy
import secrets
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from demo.core.generation import GenerationParams
from demo.core.settings import Settings
from demo.core.studio import ServiceError, Studio

from apphelp import logged_generations, studio_with

HISTORY = [
    "Rode my bike to the farmers market again, bought way too many peaches.",
    "My sourdough starter Gerald is finally bubbly after a week of feeding.",
    "Tried a Sichuan pepper chili oil on my eggs this morning, mouth still tingling.",
    "Rainy Sunday: stayed in, baked focaccia with rosemary from the balcony.",
    "The cycling club did sixty miles along the coast today, legs are jelly.",
]


def test_compute_then_generate_both_sides(studio, owner):
    seen = []
    result = studio.compute_profile(owner, "food", HISTORY, progress=lambda d, t: seen.append((d, t)))
    assert result.n_items == 5 and result.n_encoded == 5
    assert seen[-1] == (5, 5)
    assert studio.store.get_profile(result.profile_id, owner)["n_items"] == 5

    steps, measured = [], []
    for step in studio.generate(owner, result.profile_id, "Write a tweet about bread.",
                                GenerationParams(max_new_tokens=8)):
        steps.append(step)
        measured.append(bool(step.closeness))
    final = steps[-1]
    assert final.done and final.generation_id is not None
    assert final.personalized and final.generic
    assert len(steps) >= 3  # streamed: texts arrive step by step
    assert len(final.top_items) == 5
    assert sum(t.weight for t in final.top_items) == pytest.approx(1.0, abs=1e-4)
    top_text = final.top_items[0].text.lower()
    assert "focaccia" in top_text or "sourdough" in top_text  # the bread items weigh most
    logged = logged_generations(studio.store, owner)[0]
    assert logged["personalized"] == final.personalized and logged["generic"] == final.generic
    # how close each answer comes to the visitor's writing
    assert set(final.closeness) == {"pplug", "generic"} and all(-1 <= v <= 1 for v in final.closeness.values())
    assert measured[-1] and not any(measured[:-1])  # measured once the answers are complete


def test_closeness_is_to_the_subjects_of_the_visitors_writing(studio, owner):
    from demo.core import personas

    profile = studio.compute_profile(owner, "food", personas.persona_items("food_blogger")).profile_id
    recipe = "Tonight's dinner: a lentil dal with mustard seeds, rice and a big pot of white bean soup."
    speech = personas.persona_items("lincoln")[0]  # one of Lincoln's own texts
    found = studio.closeness(owner, profile, {"pplug": recipe, "generic": speech, "pplug-other": " \u200b"})
    assert set(found) == {"pplug", "generic"}  # an answer with nothing visible is not measured
    assert found["pplug"] > found["generic"] + 0.2
    # a study's trials are not measured, and a measure that fails costs neither the answers nor their log
    request, params = "Write a tweet.", GenerationParams(max_new_tokens=3)
    assert list(studio.generate(owner, profile, request, params, measure=False))[-1].closeness == {}

    def broken(*args):
        raise RuntimeError("out of memory")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(studio, "closeness", broken)
        last = list(studio.generate(owner, profile, request, params))[-1]
    assert last.done and last.personalized and last.generation_id is not None and last.closeness == {}
    studio.delete_my_data(owner)
    assert studio.closeness(owner, profile, {"pplug": recipe}) == {}  # deleted meanwhile: nothing to compare


def test_items_are_never_encoded_twice(studio, owner):
    studio.compute_profile(owner, "first", HISTORY[:3])
    again = studio.compute_profile(owner, "second", HISTORY)  # 3 known + 2 new
    assert again.n_encoded <= 2
    third = studio.compute_profile(owner, "third", list(reversed(HISTORY)))
    assert third.n_encoded == 0


def test_the_same_writing_under_the_same_name_is_one_profile(studio, owner):
    """An example persona clicked twice, or the same paste computed again: the profile saved before (with
    its tuned token), not a copy; another name, another order or another owner is another profile."""
    first = studio.compute_profile(owner, "mine", HISTORY)
    again = studio.compute_profile(owner, "mine", list(HISTORY))
    assert not first.reused and again.reused and again.profile_id == first.profile_id and again.n_encoded == 0
    assert studio.compute_profile(owner, "other name", HISTORY).profile_id != first.profile_id
    assert studio.compute_profile(owner, "mine", list(reversed(HISTORY))).profile_id != first.profile_id
    assert studio.compute_profile(owner, "mine", HISTORY[:-1]).profile_id != first.profile_id
    stranger = secrets.token_urlsafe(24)
    assert studio.compute_profile(stranger, "mine", HISTORY).profile_id != first.profile_id
    assert [p["name"] for p in studio.list_profiles(owner)].count("mine") == 3
    studio.delete_my_data(owner)  # and once deleted, computing it again saves it anew
    assert not studio.compute_profile(owner, "mine", HISTORY).reused


def test_generic_side_does_not_depend_on_the_history(studio, owner):
    a = studio.compute_profile(owner, "a", HISTORY[:2]).profile_id
    b = studio.compute_profile(owner, "b", ["Quarterly earnings beat expectations.", "The merger closed."]).profile_id
    params = GenerationParams(max_new_tokens=6)
    out_a = list(studio.generate(owner, a, "Write a tweet about my day.", params))[-1]
    out_b = list(studio.generate(owner, b, "Write a tweet about my day.", params))[-1]
    assert out_a.generic == out_b.generic


def test_another_owner_cannot_use_a_profile(studio, owner):
    profile = studio.compute_profile(owner, "mine", HISTORY[:2]).profile_id
    with pytest.raises(ServiceError, match="No such profile"):
        next(studio.generate("someone-else-entirely-0000", profile, "hi", GenerationParams(max_new_tokens=4)))
    assert studio.list_profiles("someone-else-entirely-0000") == []


def test_bad_requests_get_clear_errors(studio, owner):
    profile = studio.compute_profile(owner, "mine", HISTORY[:2]).profile_id
    with pytest.raises(ServiceError, match="Type a request"):
        next(studio.generate(owner, profile, "   ", GenerationParams()))
    with pytest.raises(ServiceError, match="Max new tokens"):
        next(studio.generate(owner, profile, "hi", GenerationParams(max_new_tokens=10_000)))
    with pytest.raises(ServiceError, match="empty"):
        studio.compute_profile(owner, "none", [])


def test_overlong_request_is_cut_with_a_notice(studio, owner):
    short = studio_with(studio, max_context=256, max_prompt_chars=1_500)  # a short context: a cheap prompt
    profile = short.compute_profile(owner, "mine", HISTORY[:2]).profile_id
    final = list(short.generate(owner, profile, "word " * 500, GenerationParams(max_new_tokens=4)))[-1]
    assert "The request was cut to 1,500 characters." in final.notes
    assert any("tokens to fit the model's context" in n for n in final.notes)
    assert final.done


def test_rag_conditions_put_the_nearest_items_into_the_prompt(studio, owner):
    profile = studio.compute_profile(owner, "mine", HISTORY).profile_id
    final = list(studio.generate(owner, profile, "Write a tweet about cycling.", GenerationParams(max_new_tokens=8),
                                 conditions=("pplug", "generic", "rag", "pplug+rag"), rag_k=2))[-1]
    assert set(final.outputs) == {"pplug", "generic", "rag", "pplug+rag"}
    assert all(final.outputs.values())
    assert "cycling club" in final.top_items[0].text  # the retrieved item is the most similar one
    with pytest.raises(ServiceError, match="Unknown condition"):
        next(studio.generate(owner, profile, "hi", GenerationParams(), conditions=("magic",)))


def test_the_gpu_dtype_path_runs_on_cpu(studio, owner):
    """bf16, as used on a GPU, exercised on CPU: soft tokens are cast to the LLM's dtype."""
    settings = studio.settings.with_(llm_dtype="bfloat16")
    studio16 = Studio(settings, encoder=studio.encoder, store=studio.store)  # the LLM loaded again, in bf16
    assert studio16.model.dtype == torch.bfloat16
    profile = studio16.compute_profile(owner, "bf16", HISTORY).profile_id
    final = list(studio16.generate(owner, profile, "Write a tweet about bread.", GenerationParams(max_new_tokens=6)))[-1]
    assert final.done and final.personalized and final.generic


def test_device_and_dtype_settings():
    assert Settings().with_(device="cuda").dtype == torch.bfloat16  # what auto picks on a GPU
    assert Settings.from_env({"PPLUG_DEVICE": "cpu"}).dtype == torch.float32
    assert Settings.from_env({"PPLUG_DEVICE": "cpu", "PPLUG_LLM_DTYPE": "float16"}).dtype == torch.float16
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert Settings.from_env({"PPLUG_DEVICE": "auto"}).device == expected


def test_a_plug_with_an_input_encoder_embeds_the_request_with_it(studio, owner):
    encoder = copy.deepcopy(studio.encoder).eval()
    with torch.no_grad():  # another x than the frozen encoder's: one layer of the copy changed
        next(p for n, p in encoder.named_parameters() if "query.weight" in n).mul_(-1)
    plug = copy.deepcopy(studio.plug)
    plug.attach_input_encoder(encoder)
    other = Studio(studio.settings, encoder=studio.encoder, generator=studio.generator, store=studio.store, plug=plug)
    profile = studio.compute_profile(owner, "mine", HISTORY).profile_id
    params = GenerationParams(max_new_tokens=4)
    base = list(studio.generate(owner, profile, "Write a tweet about cycling.", params))[-1]
    mine = list(other.generate(owner, profile, "Write a tweet about cycling.", params))[-1]
    assert mine.done and mine.personalized and other.plug_id != studio.plug_id
    assert [round(t.weight, 4) for t in mine.top_items] != [round(t.weight, 4) for t in base.top_items]


def test_the_console_names_the_plug_at_start_and_stays_quiet_per_request(settings, studio, owner, caplog, capfd):
    import logging

    with caplog.at_level(logging.INFO):  # the level app.py logs at
        again = Studio(settings, encoder=studio.encoder, generator=studio.generator, store=studio.store)
        capfd.readouterr()
        again.compute_profile(owner, "quiet", HISTORY)
        list(again.generate(owner, again.list_profiles(owner)[0]["id"], "Hi", GenerationParams(max_new_tokens=2)))
    assert any(again.plug_id in r.getMessage() for r in caplog.records)
    printed = capfd.readouterr()
    assert "Batches" not in printed.err + printed.out


TUNE_HISTORY = [
    "Honestly the best coffee in town is at the corner bakery, trust me on this one.",
    "Rainy mornings call for strong coffee and a long novel by the window.",
    "Tried the new espresso blend today and wow, those chocolate notes were wonderful.",
    "Nothing beats a quiet bakery counter, warm croissants and a cappuccino at dawn.",
    "Coffee tasting notes from yesterday: cherry, cocoa, and a little too much smoke.",
    "Weekend plans involve hunting for single origin beans across three neighborhoods.",
]


@pytest.mark.slow  # backward passes through the real LLM; the fit itself is tested on a tiny one (test_train)
def test_tune_to_me_stores_a_token_that_the_personalized_row_uses(studio, owner):
    from demo.core.tuning import FitSettings

    profile = studio.compute_profile(owner, "coffee", TUNE_HISTORY).profile_id
    with pytest.raises(ServiceError, match="Tune to me"):
        list(studio.generate(owner, profile, "Write a tweet.", GenerationParams(max_new_tokens=2), tuned=True))
    seen = []
    result = studio.tune_profile(owner, profile, lambda done, total: seen.append((done, total)),
                                 FitSettings(steps=3, lr=0.2, fit_examples=4, held_back=2))
    assert seen and seen[0] == (1, 3) and result.n_fit == 4 and result.n_held == 2
    assert result.steps > 0 and result.held_nll_after < result.held_nll_before  # lr 0.2 on one voice helps
    shift, meta = studio.store.personal_token(profile, studio.plug_id)
    assert shift.shape == (studio.plug.config.d_llm,) and meta["steps"] == result.steps
    params = GenerationParams(max_new_tokens=12)
    tuned = list(studio.generate(owner, profile, "Write a tweet about my morning.", params, tuned=True))[-1]
    plain = list(studio.generate(owner, profile, "Write a tweet about my morning.", params))[-1]
    assert tuned.generic == plain.generic and tuned.personalized != plain.personalized
    assert [g["params"]["tuned"] for g in logged_generations(studio.store, owner)[:2]] == [False, True]  # newest first
    with pytest.raises(ServiceError, match="No such profile"):
        studio.tune_profile("another-owner-token-123456", profile)
    studio.delete_my_data(owner)
    assert studio.store.personal_token(profile, studio.plug_id) is None


@pytest.mark.slow  # one backward pass through the real LLM
def test_a_profile_deleted_while_it_is_tuned_keeps_nothing_and_says_so(studio, owner):
    from demo.core.tuning import FitSettings

    profile = studio.compute_profile(owner, "coffee", TUNE_HISTORY).profile_id
    assert studio.tune_result(owner, profile) is None
    with pytest.raises(ServiceError, match="was deleted"):
        studio.tune_profile(owner, profile, lambda done, total: studio.delete_my_data(owner),
                            FitSettings(steps=1, fit_examples=2, held_back=2))
    assert studio.store.personal_token(profile, studio.plug_id) is None and studio.tune_result(owner, profile) is None


def test_tune_to_me_refuses_a_history_too_short_to_learn_from(studio, owner):
    profile = studio.compute_profile(owner, "short", ["ok", "fine thanks", "Great coffee this morning friends"]).profile_id
    with pytest.raises(ServiceError, match="at least 6 texts"):
        studio.tune_profile(owner, profile)


@pytest.mark.slow  # four real 48-token pairs
def test_the_four_example_personas_get_four_different_answers(studio, owner):
    """The same request through the shipped plug with each persona's writing: no two answers alike."""
    from demo.core import personas

    def answer(name: str):
        profile = studio.compute_profile(owner, name, personas.persona_items(name)).profile_id
        params = GenerationParams(max_new_tokens=48)
        return list(studio.generate(owner, profile, "Write a short blog post about my weekend.", params))[-1]

    with ThreadPoolExecutor(4) as pool:  # four visitors at once: the app decodes them in one batch
        last = dict(zip(personas.persona_names(), pool.map(answer, personas.persona_names())))
    answers = {name: result.personalized for name, result in last.items()}
    words = {name: set(result.keywords) for name, result in last.items()}
    assert len(answers) == 4
    assert len(set(answers.values())) == 4, answers
    # the keyword token: words of what each persona writes about, and not the same words for all
    assert all(len(w) == studio.plug.config.keywords == 8 for w in words.values()), words
    assert words["food_blogger"] & {"recipe", "recipes", "cooking", "food", "meals", "bread", "dishes"}, words
    # and each answer comes closer to its persona's writing than the generic answer to the same request does
    near = {name: result.closeness for name, result in last.items()}
    assert all(n["pplug"] > n["generic"] for n in near.values()), near
    assert not words["food_blogger"] & words["lincoln"], words
