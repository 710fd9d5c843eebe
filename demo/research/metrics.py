"""Metrics as LaMP defines them, a personal-fit metric, and a paired bootstrap interval.

* generation tasks: ROUGE-1 and ROUGE-L F-measure (``rouge-score``, with stemming, as LaMP);
* classification (LaMP-1/2): accuracy and macro-F1 over the labels seen in the golds;
* regression (LaMP-3): MAE and RMSE (an unparsable answer counts as the worst score's distance);
* personal fit: rank the true author among candidate users by the similarity of the output to
  each candidate's history (character 2-4-gram TF-IDF, cosine to the candidate's concatenated
  history); top-1 accuracy and mean reciprocal rank. The topic fit ranks the same candidates by the
  sentence encoder's cosine of the output to each candidate's mean history embedding.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
from rouge_score import rouge_scorer
from scipy.stats import bootstrap
from sklearn.feature_extraction.text import TfidfVectorizer

_SCORER = None


def _scorer():
    global _SCORER
    if _SCORER is None:
        _SCORER = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    return _SCORER


def rouge_per_query(predictions: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
    """ROUGE-1 and ROUGE-L F per pair."""
    r1, rl = [], []
    for p, r in zip(predictions, references, strict=True):
        s = _scorer().score(r, p)
        r1.append(s["rouge1"].fmeasure)
        rl.append(s["rougeL"].fmeasure)
    return {"rouge1": r1, "rougeL": rl}


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    per = rouge_per_query(predictions, references)
    return {k: float(np.mean(v)) if v else math.nan for k, v in per.items()}


def accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    pairs = list(zip(predictions, references, strict=True))
    return sum(p.strip() == r.strip() for p, r in pairs) / len(pairs) if pairs else math.nan


def macro_f1(predictions: Sequence[str], references: Sequence[str], labels: Sequence[str] | None = None) -> float:
    """Unweighted mean of per-label F1 over ``labels`` (default: the labels in the references)."""
    preds = [p.strip() for p in predictions]
    refs = [r.strip() for r in references]
    labels = list(dict.fromkeys(labels or refs))
    f1s = []
    for label in labels:
        tp = sum(p == label and r == label for p, r in zip(preds, refs))
        fp = sum(p == label and r != label for p, r in zip(preds, refs))
        fn = sum(p != label and r == label for p, r in zip(preds, refs))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(f1s)) if f1s else math.nan


def _as_score(text: str, low: float, high: float, reference: float) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        # LaMP: an answer that is no number counts as the farthest valid score
        return high if abs(reference - low) <= abs(reference - high) else low
    return min(max(value, low), high)


def mae_rmse(predictions: Sequence[str], references: Sequence[str], low: float = 1, high: float = 5) -> dict[str, float]:
    refs = [float(r) for r in references]
    preds = [_as_score(p, low, high, r) for p, r in zip(predictions, refs, strict=True)]
    err = np.abs(np.array(preds) - np.array(refs))
    return {"mae": float(err.mean()), "rmse": float(np.sqrt((err ** 2).mean()))}


# --- personal fit ----------------------------------------------------------------------------


def _author_rank(sims: np.ndarray) -> int:
    """1-based rank of the first candidate (the author) by similarities [n_candidates]; ties count against it."""
    return 1 + int((sims[1:] >= sims[0]).sum())


class PersonalFit:
    """Rank the true author of a text among candidate users by char n-gram TF-IDF similarity.

    ``histories``: user id -> list of that user's history texts. The vectorizer is fitted on all
    histories; each user is one document (their texts joined). Candidates for a query are the
    author and ``n_candidates - 1`` other users drawn with a per-query seed, so every method is
    ranked against the same candidates.
    """

    def __init__(self, histories: dict[str, list[str]], n_candidates: int = 20, seed: int = 0,
                 ngram_range: tuple[int, int] = (2, 4), max_chars_per_user: int = 20_000):
        self.users = list(histories)
        self.index = {u: i for i, u in enumerate(self.users)}
        self.n_candidates = min(n_candidates, len(self.users))
        self.seed = seed
        docs = ["\n".join(histories[u])[-max_chars_per_user:] for u in self.users]
        self.vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=ngram_range, sublinear_tf=True,
                                          min_df=1, lowercase=False)
        self.user_matrix = self.vectorizer.fit_transform(docs)  # rows are L2-normalized

    def candidates(self, author: str, key: str) -> list[str]:
        """The author first, then the other candidates (deterministic per ``key``)."""
        others = [u for u in self.users if u != author]
        rng = random.Random(f"{self.seed}:{key}")
        return [author, *rng.sample(others, self.n_candidates - 1)]

    def rank(self, text: str, author: str, key: str) -> int:
        """1-based rank of the author among the candidates (ties count against the author)."""
        cands = self.candidates(author, key)
        vec = self.vectorizer.transform([text])
        return _author_rank((self.user_matrix[[self.index[u] for u in cands]] @ vec.T).toarray().ravel())

    def score(self, texts: Sequence[str], authors: Sequence[str], keys: Sequence[str]) -> dict[str, float]:
        ranks = [self.rank(t, a, k) for t, a, k in zip(texts, authors, keys, strict=True)]
        return {"fit_top1": float(np.mean([r == 1 for r in ranks])),
                "fit_mrr": float(np.mean([1 / r for r in ranks])), "ranks": ranks}

    def topic_score(self, embeddings: np.ndarray, authors: Sequence[str], keys: Sequence[str],
                    centres: dict[str, np.ndarray]) -> dict[str, float]:
        """The topic fit: the same candidates ranked by the sentence encoder instead, the cosine of each output's
        embedding (``embeddings`` [n, d], unit rows) to each candidate's mean history embedding (``centres``:
        user -> [d], unit); what the app shows a visitor per answer."""
        ranks = []
        for e, author, key in zip(embeddings, authors, keys, strict=True):
            ranks.append(_author_rank(np.array([e @ centres[u] for u in self.candidates(author, key)])))
        return {"topic_fit_mrr": float(np.mean([1 / r for r in ranks])), "ranks": ranks}


# --- paired bootstrap -----------------------------------------------------------------------


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_resamples: int = 2000, seed: int = 0,
                     confidence: float = 0.95) -> dict[str, float]:
    """Mean difference a - b over paired per-query scores, with a percentile bootstrap interval
    (``scipy.stats.bootstrap`` over the queries).

    Also reports ``p_better``: the share of resamples in which a's mean exceeds b's.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("paired_bootstrap needs two non-empty sequences of the same length")
    diff = a - b
    if diff.size == 1:  # one query can only resample to itself
        return {"diff": float(diff[0]), "low": float(diff[0]), "high": float(diff[0]), "p_better": float(diff[0] > 0)}
    result = bootstrap((diff,), np.mean, n_resamples=n_resamples, confidence_level=confidence, method="percentile",
                       vectorized=True, rng=np.random.default_rng(seed))
    interval = result.confidence_interval
    return {"diff": float(diff.mean()), "low": float(interval.low), "high": float(interval.high),
            "p_better": float((result.bootstrap_distribution > 0).mean())}
