""""Does it know me?": the figures and the plain sentence, and the measure on the real models."""
import math

import pytest
import torch

from demo.core import personas
from demo.core.know_me import KnowMe, SignalSettings, held_back_examples, score
from demo.core.studio import ServiceError


def _result(yours, stranger, generic=None):
    generic = generic or [3.0] * len(yours)
    return KnowMe(nll={"generic": generic, "yours": yours, "stranger": stranger},
                  strangers=["FDR"] * len(yours), seconds=0.1)


def test_own_writing_likelier_than_a_strangers_reads_yes_with_its_size():
    result = _result([2.0, 2.1, 1.9, 2.0, 2.2, 2.0, 1.8, 2.0], [2.1, 2.2, 2.0, 2.1, 2.3, 2.1, 1.9, 2.1])
    assert result.vs_stranger == pytest.approx(math.expm1(0.1))  # per word: exp(mean NLL difference) - 1
    assert result.items_better == 8 and result.interval[0] > 0 and result.verdict == "yes"
    assert result.sentence().startswith("**Yes") and "10.5% more likely per word" in result.sentence()
    assert "8 of your own texts" in result.sentence() and "8 of 8 were likelier" in result.sentence()
    assert result.relative_likelihood()["generic"] == pytest.approx(100)
    assert result.relative_likelihood()["yours"] > result.relative_likelihood()["stranger"] > 100


def test_no_better_than_a_stranger_is_said_plainly():
    worse = _result([2.0, 2.3, 2.1], [2.1, 2.1, 2.0])
    assert worse.vs_stranger < 0 and worse.verdict == "no"
    assert "does not know you better than a stranger" in worse.sentence()
    assert "*less* likely" in worse.sentence()
    assert "1 of 3 were likelier with your plug)" in worse.sentence()
    most = _result([2.0, 2.0, 2.0, 2.9], [2.1, 2.1, 2.1, 2.0])  # three small gains, one large loss
    assert most.verdict == "no" and "3 of 4 were likelier with your plug, but the rest were much less likely" in most.sentence()
    few = _result([2.2, 2.2, 2.2, 1.0], [2.1, 2.1, 2.1, 2.0])  # one large gain, three small losses
    assert few.vs_stranger > 0 and "only 1 of 4 were likelier with your plug, but by more" in few.sentence()
    same = _result([2.0, 2.0], [2.0, 2.0])
    assert "about as likely with your plug" in same.sentence() and "0.0%" not in same.sentence()
    assert same.verdict == "no" and "does not know you better than a stranger" in same.sentence()


def test_a_small_mixed_difference_is_not_called_a_yes():
    mixed = _result([2.0, 2.2, 1.9, 2.1], [2.1, 2.1, 2.0, 2.05])
    assert mixed.vs_stranger > 0 and mixed.interval[0] < 0 < mixed.interval[1]
    assert mixed.verdict == "unclear" and "could be chance" in mixed.sentence()
    assert mixed.to_dict()["verdict"] == "unclear" and mixed.to_dict()["n_items"] == 4


def test_too_few_held_back_items_are_never_a_yes():
    three = _result([2.0, 2.0, 2.0], [2.2, 2.1, 2.15])  # all three likelier: an interval above 0
    assert three.interval[0] > 0 and three.verdict == "unclear"
    assert three.sentence().startswith("**Not clearly: too few texts to be sure.**")
    assert "at least 6 texts" in three.sentence() and "could be chance" not in three.sentence()
    six = _result([2.0] * 6, [2.2, 2.1, 2.15, 2.2, 2.1, 2.15])
    assert six.verdict == "yes" and "at least" not in six.sentence()
    assert KnowMe(nll=three.nll, strangers=three.strangers, seconds=0.1, sure_items=3).verdict == "yes"


def test_held_back_items_are_the_last_that_make_an_example():
    texts = [f"Item {i} talks about gardening, tomatoes and sunshine." for i in range(12)] + ["ok"]
    examples = held_back_examples(texts, SignalSettings(held_back=8))
    assert [e.index for e in examples] == list(range(4, 12)) and all(e.target for e in examples)


@pytest.fixture(scope="module")
def food(studio):
    owner = "know-me-owner-token-0123456789"
    made = studio.compute_profile(owner, "food", personas.persona_items("food_blogger"))
    return owner, made.profile_id


def test_the_measure_on_a_persona(studio, food):
    owner, profile_id = food
    result = studio.know_me(owner, profile_id)
    assert result.n_items == 8 and set(result.nll) == {"generic", "yours", "stranger"}
    assert all(math.isfinite(v) and 0 < v < 20 for values in result.nll.values() for v in values)
    assert "Food Blogger" not in result.strangers and set(result.strangers) <= {"FDR", "Lincoln", "Obama"}
    assert result.verdict in ("yes", "unclear", "no") and result.sentence()
    # Asked again (a returning visitor's page asks on load): the same measure, not scored again.
    assert studio.know_me(owner, profile_id) is result
    assert studio.know_me(owner, profile_id, settings=SignalSettings(held_back=6)) is not result
    with pytest.raises(ServiceError, match="No such profile"):  # kept per profile, still only for its owner
        studio.know_me("intruder-token-0123456789abc", profile_id)


def test_the_own_row_leaves_the_scored_item_out_and_strangers_use_their_own_writing(studio, food):
    owner, profile_id = food
    profile = studio._profile(owner, profile_id)
    examples = held_back_examples(profile.texts)
    settings = SignalSettings(bf16=False)
    requests = [e.request for e in examples[:2]]
    loo = studio.soft_without(profile, requests, [e.index for e in examples[:2]])
    full = studio.soft_without(profile, requests, [])
    assert not torch.allclose(loo, full)  # the item that is the answer is not in its own history
    scored = score(studio.generator, examples[:2], {"loo": loo, "full": full, "generic": None}, settings)
    assert all(math.isfinite(v) for values in scored.values() for v in values)
    direct = score(studio.generator, examples[:1], {"loo": loo[:1]}, settings)
    assert direct["loo"][0] == pytest.approx(scored["loo"][0], abs=1e-4)  # batching and sorting change nothing


def test_against_the_owners_other_profiles_and_clear_errors(studio, food):
    owner, profile_id = food
    with pytest.raises(ServiceError, match="compute another profile first"):
        studio.know_me("lonely-owner-token-0123456789", studio.compute_profile(
            "lonely-owner-token-0123456789", "one", personas.persona_items("obama")).profile_id, against="profiles")
    studio.compute_profile(owner, "lincoln", personas.persona_items("lincoln"))
    result = studio.know_me(owner, profile_id, against="profiles")
    assert set(result.strangers) == {"lincoln"}
    tiny = studio.compute_profile(owner, "tiny", ["Short one.", "Another short one.", "Hi."])
    with pytest.raises(ServiceError, match="Too few texts"):
        studio.know_me(owner, tiny.profile_id)
    with pytest.raises(ServiceError, match="No such profile"):
        studio.know_me("intruder-token-0123456789abc", profile_id)
    with pytest.raises(ServiceError, match="personas"):
        studio.know_me(owner, profile_id, against="everyone")
