"""Retrieval of profile items for the RAG baselines: BM25 (default) or the history encoder."""
from __future__ import annotations

import logging
import re

import bm25s
import numpy as np

from ..core.history import lamp_item_text
from .lamp import Query, TaskSpec, rag_prompt

logging.getLogger("bm25s").setLevel(logging.WARNING)  # it sets DEBUG at import: a log line per index built
_WORD = re.compile(r"\w+", re.UNICODE)


def tokenize(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def bm25_scores(query: str, documents: list[str], k1: float = 1.2, b: float = 0.75) -> np.ndarray:
    """BM25 score of each document for the query (``bm25s``, Lucene's variant). -> [len(documents)]"""
    docs = [tokenize(d) for d in documents]
    if not any(docs):  # bm25s cannot index an empty vocabulary
        return np.zeros(len(documents))
    retriever = bm25s.BM25(method="lucene", k1=k1, b=b)
    retriever.index(docs, show_progress=False)
    terms = [t for t in tokenize(query) if t in retriever.vocab_dict]
    return retriever.get_scores(terms) if terms else np.zeros(len(documents))


def top_k(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the k best scores, best first (ties: the later, i.e. more recent, item first)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], -i))
    return order[:k]


def retrieve_bm25(query: str, documents: list[str], k: int) -> list[int]:
    return top_k(bm25_scores(query, documents), k)


def retrieve_dense(x: np.ndarray, items: np.ndarray, k: int) -> list[int]:
    """By cosine of L2-normalized encoder embeddings x [d] and items [n, d]."""
    return top_k(items @ x if len(items) else np.zeros(0), k)


def lamp_rag_request(task: TaskSpec, query: Query, k: int, item_chars: int = 300,
                     item_matrix=None, x=None) -> tuple[str, list[dict]]:
    """The query's request with its top-k profile items put before it as LaMP does, and the items.

    BM25 over the whole profile, or encoder cosine when ``x`` [d] and ``item_matrix`` [n, d] (the
    profile items' embeddings, in profile order) are given.
    """
    items = query.items()
    if x is not None:
        idx = retrieve_dense(x, item_matrix, k)
    else:
        idx = retrieve_bm25(query.input, [lamp_item_text(it) for it in items], k)
    chosen = [items[i] for i in idx]
    return rag_prompt(task, query.input, chosen, item_chars), chosen
