"""Retrieval of profile items for the RAG baselines: BM25 (default) or the history encoder."""
from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)


def tokenize(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def bm25_scores(query: str, documents: list[str], k1: float = 1.2, b: float = 0.75) -> np.ndarray:
    """Okapi BM25 score of each document for the query (IDF with the +1 smoothing of Lucene)."""
    docs = [tokenize(d) for d in documents]
    n = len(docs)
    if n == 0:
        return np.zeros(0)
    avg = sum(len(d) for d in docs) / n or 1.0
    df = Counter(term for d in docs for term in set(d))
    q = tokenize(query)
    scores = np.zeros(n)
    for i, d in enumerate(docs):
        tf = Counter(d)
        norm = k1 * (1 - b + b * len(d) / avg)
        for term in q:
            f = tf.get(term, 0)
            if f:
                idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
                scores[i] += idf * f * (k1 + 1) / (f + norm)
    return scores


def top_k(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the k best scores, best first (ties: the later, i.e. more recent, item first)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], -i))
    return order[:k]


def retrieve_bm25(query: str, documents: list[str], k: int) -> list[int]:
    return top_k(bm25_scores(query, documents), k)


def retrieve_dense(x: np.ndarray, items: np.ndarray, k: int) -> list[int]:
    """By cosine of L2-normalized encoder embeddings x [d] and items [n, d]."""
    return top_k(items @ x if len(items) else np.zeros(0), k)
