"""The metric functions against values computed by hand."""
from __future__ import annotations

import math

import pytest

from demo.research.metrics import PersonalFit, accuracy, macro_f1, mae_rmse, paired_bootstrap, rouge, rouge_per_query


def test_rouge_hand_computed():
    # 3 of 3 predicted words in a 6-word reference: P = 1, R = 1/2, F = 2/3 (LCS is the same 3 words)
    r = rouge(["the cat sat"], ["the cat sat on the mat"])
    assert r["rouge1"] == pytest.approx(2 / 3)
    assert r["rougeL"] == pytest.approx(2 / 3)
    # all 4 unigrams match; the longest common subsequence of a b c d / a c b d has 3 words
    per = rouge_per_query(["a b c d", "x"], ["a c b d", "y"])
    assert per["rouge1"] == pytest.approx([1.0, 0.0])
    assert per["rougeL"] == pytest.approx([0.75, 0.0])


def test_rouge_stems_like_lamp():
    assert rouge(["running dogs"], ["dog runs"])["rouge1"] == pytest.approx(1.0)


def test_accuracy_and_macro_f1():
    preds, refs = ["[1]", "[2]", "[1]"], ["[1]", "[1]", "[1]"]
    assert accuracy(preds, refs) == pytest.approx(2 / 3)
    # labels from the references: only [1]; tp 2, fp 0, fn 1 -> F1 = 4/5
    assert macro_f1(preds, refs) == pytest.approx(0.8)
    # with both labels: [2] has no true positive -> F1 0; mean 0.4
    assert macro_f1(preds, refs, labels=["[1]", "[2]"]) == pytest.approx(0.4)


def test_mae_rmse_with_unparsable_answer():
    # errors 1, 0 and, for the unparsable answer with gold 1, the farthest score 5 -> 4
    m = mae_rmse(["1", "5", "no idea"], ["2", "5", "1"])
    assert m["mae"] == pytest.approx(5 / 3)
    assert m["rmse"] == pytest.approx(math.sqrt(17 / 3))


def test_paired_bootstrap():
    b = paired_bootstrap([1, 1, 1], [0, 0, 0], n_resamples=200)
    assert (b["diff"], b["low"], b["high"], b["p_better"]) == (1.0, 1.0, 1.0, 1.0)
    b = paired_bootstrap([0.5, 0.2, 0.9, 0.4], [0.5, 0.3, 0.6, 0.4], n_resamples=500, seed=1)
    assert b["diff"] == pytest.approx(0.05)
    assert b["low"] <= b["diff"] <= b["high"]
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0])


def test_personal_fit_ranks_the_author():
    histories = {
        "cats": ["I love my cats and kittens", "kittens purring on the sofa"],
        "physics": ["quantum chromodynamics on the lattice", "gauge fields and quarks"],
        "football": ["football match tonight, what a goal", "the striker scored twice"],
    }
    fit = PersonalFit(histories, n_candidates=20)
    assert fit.n_candidates == 3  # fewer users than asked: all of them
    assert fit.candidates("cats", "q1")[0] == "cats"
    assert fit.candidates("cats", "q1") == fit.candidates("cats", "q1")  # same candidates for every method
    s = fit.score(["my kittens love the sofa", "quarks in lattice gauge theory"], ["cats", "physics"], ["a", "b"])
    assert s["ranks"] == [1, 1]
    assert s["fit_top1"] == 1.0 and s["fit_mrr"] == 1.0
    s = fit.score(["quarks in lattice gauge theory"], ["cats"], ["c"])
    assert s["ranks"][0] > 1 and s["fit_mrr"] < 1


def test_bm25_ranks_by_rare_matching_words_and_survives_empty_input():
    from demo.research.retrieval import bm25_scores, retrieve_bm25

    docs = ["I love my bike and riding it", "Bread on Sunday with my sourdough starter", "The bike race", ""]
    assert retrieve_bm25("bike riding", docs, 2) == [0, 2]  # both words beat one
    assert retrieve_bm25("sourdough", docs, 1) == [1]
    assert bm25_scores("bike", ["", "!!"]).tolist() == [0.0, 0.0]
    assert bm25_scores("", docs).tolist() == [0.0] * 4
    assert bm25_scores("zebra", docs).tolist() == [0.0] * 4
    assert retrieve_bm25("anything", [], 4) == []


def test_lamp_rag_request_puts_the_best_items_before_the_request():
    import numpy as np

    from demo.research.lamp import TASKS, Query
    from demo.research.retrieval import lamp_rag_request

    profile = [{"id": "a", "text": "sourdough bread again"}, {"id": "b", "text": "long bike ride today"},
               {"id": "c", "text": "bike repair"}]
    q = Query("q1", "u1", "Write a tweet about a bike ride", profile)
    text, chosen = lamp_rag_request(TASKS["tweets"], q, 2)
    assert [c["id"] for c in chosen] == ["b", "c"]
    assert text == ('"long bike ride today", and "bike repair" are written by a person. '
                    "Following the given patterns, write a tweet about a bike ride")
    # by the encoder: the item whose embedding is closest to x
    _, chosen = lamp_rag_request(TASKS["tweets"], q, 1, x=np.array([1.0, 0.0]),
                                 item_matrix=np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))
    assert [c["id"] for c in chosen] == ["a"]
