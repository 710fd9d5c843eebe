"""Whose writing does a text resemble? Character n-grams, with no model in the loop.

Each writer is one document: their texts joined, the last ``max_chars`` characters. A text is compared
with every writer's document by the cosine of character 2-4-gram TF-IDF vectors (sublinear term
frequency, case kept). Character n-grams catch subject words and style alike (spelling, punctuation,
@-mentions, emoji). The evaluation's personal-fit metric ranks a text's true author this way
(``demo.research.metrics.PersonalFit``); the app tells a visitor whose writing each answer resembles.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer


class Resemblance:
    """Similarity of texts to writers' histories. ``writings``: writer -> their texts (at least one writer)."""

    def __init__(self, writings: dict[str, list[str]], ngram_range: tuple[int, int] = (2, 4),
                 max_chars: int = 20_000):
        self.writers = list(writings)
        self.index = {w: i for i, w in enumerate(self.writers)}
        docs = ["\n".join(writings[w])[-max_chars:] for w in self.writers]
        self.vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=ngram_range, sublinear_tf=True,
                                          min_df=1, lowercase=False)
        self.writer_matrix = self.vectorizer.fit_transform(docs)  # [writers, n-grams], rows L2-normalized

    def similarities(self, texts: Sequence[str], writers: Sequence[str] | None = None) -> np.ndarray:
        """Cosine similarities [len(texts), len(writers)] (default: every writer, in their order)."""
        rows = self.writer_matrix if writers is None else self.writer_matrix[[self.index[w] for w in writers]]
        return (self.vectorizer.transform(list(texts)) @ rows.T).toarray()

    def rank(self, text: str, writer: str, among: Sequence[str]) -> int:
        """1-based rank of ``writer`` among ``writer`` and ``among`` (ties count against ``writer``)."""
        sims = self.similarities([text], [writer, *among])[0]
        return 1 + int((sims[1:] >= sims[0]).sum())
