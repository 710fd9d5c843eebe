"""Whose writing a text resembles: the measure the app shows per answer and the evaluation's personal fit."""
import pytest

from demo.core.resemblance import Resemblance

WRITINGS = {
    "baker": ["Sourdough again today: the crumb was open, the crust crackled.",
              "Rye starter fed at dawn, proofing baskets dusted with rice flour."],
    "cyclist": ["Sixty miles along the coast, a headwind the whole way back.",
                "New chain, new cassette, and the climb to the pass felt easy."],
    "lawyer": ["The appellate court reversed the judgment on procedural grounds.",
               "Counsel filed the motion to dismiss before the statutory deadline."],
}


def test_a_text_resembles_its_own_writer_most():
    resemblance = Resemblance(WRITINGS)
    sims = resemblance.similarities(["the crust crackled and the crumb was open", "a headwind on the climb",
                                     "the court reversed the judgment"])
    assert sims.shape == (3, 3)
    assert list(sims.argmax(1)) == [0, 1, 2]
    assert resemblance.rank("the crust crackled and the crumb was open", "baker", ["cyclist", "lawyer"]) == 1
    assert resemblance.rank("the crust crackled and the crumb was open", "lawyer", ["baker", "cyclist"]) == 3


def test_writers_can_be_chosen_and_ties_count_against_the_writer():
    resemblance = Resemblance(WRITINGS)
    assert resemblance.similarities(["sourdough"], ["lawyer", "baker"]).shape == (1, 2)
    # a text sharing no character sequence with anyone ties everyone at 0: the writer is last
    assert resemblance.rank("zzzz", "baker", ["cyclist", "lawyer"]) == 3
    with pytest.raises(KeyError):
        resemblance.similarities(["sourdough"], ["nobody"])
