"""Self-supervised examples: a person's own history as requests with known answers.

Any item of a writing history can be turned into a request whose gold answer is that item, by
the rules the LaMP-style tasks use for their queries:

* a tweet-like item (one or two sentences): "Write a tweet using these words: a, b, c", the first
  three content words of the item -> the item;
* a longer post: "Continue this blog post with the next two sentences: <first sentence>" -> the
  next two sentences;
* a paper (an item with ``title`` and ``abstract``): "Generate a title for the following abstract
  of a paper: <abstract>" -> the title.

The rest of the history (without that item) is the history the answer is conditioned on. These
examples train the plug on every train user's profile, fit a per-user token ("tune to me"), and
measure whether the plug knows a person better than a stranger ("does it know me?").
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

TWEET_PROMPT = "Write a tweet using these words: "
CONTINUE_PROMPT = "Continue this blog post with the next two sentences: "
TITLE_PROMPT = "Generate a title for the following abstract of a paper: "

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")
_WORD = re.compile(r"[^\W\d_][\w'’-]*", re.UNICODE)


@dataclass(frozen=True)
class SelfExample:
    request: str  # the task prompt made from the item
    target: str  # what the person wrote
    index: int  # which history item it came from (left out of the history it is scored with)


def sentences(text: str) -> list[str]:
    """The text split after '.', '!' or '?' followed by white space."""
    return [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if s.strip()]


def content_words(text: str, n: int = 3) -> list[str]:
    """The first ``n`` distinct words of four or more letters that are not stop words, lower-cased."""
    words = []
    for w in _WORD.findall(text):
        w = w.lower().strip("'’-")
        if len(w) >= 4 and w not in ENGLISH_STOP_WORDS and w not in words:
            words.append(w)
            if len(words) == n:
                break
    return words


def tweet_example(text: str) -> tuple[str, str] | None:
    words = content_words(text)
    if len(words) < 3:
        return None
    return TWEET_PROMPT + ", ".join(words), " ".join(text.split())


def continuation_example(text: str) -> tuple[str, str] | None:
    parts = sentences(text)
    if len(parts) < 3:
        return None
    return CONTINUE_PROMPT + parts[0], " ".join(parts[1:3])


def title_example(item: dict) -> tuple[str, str] | None:
    title, abstract = str(item.get("title", "")).strip(), str(item.get("abstract", "")).strip()
    if not title or not abstract:
        return None
    return TITLE_PROMPT + " ".join(abstract.split()), title


def example_for(item: str | dict, kind: str = "auto") -> tuple[str, str] | None:
    """(request, target) made from one history item, or None when the rule does not apply.

    kind: "tweet", "continuation", "title", or "auto" (a paper gets a title; a text of three or
    more sentences a continuation; a shorter one the tweet rule).
    """
    if isinstance(item, dict):
        if kind in ("title", "auto") and "abstract" in item:
            return title_example(item)
        item = str(item.get("text", ""))
    if kind == "tweet":
        return tweet_example(item)
    if kind == "continuation":
        return continuation_example(item)
    if kind == "auto":
        return continuation_example(item) or tweet_example(item)
    return None


def examples_from_history(items: list, kind: str = "auto", limit: int | None = None) -> list[SelfExample]:
    """Self-supervised examples of a history, in history order (at most ``limit``)."""
    out = []
    for i, item in enumerate(items):
        made = example_for(item, kind)
        if made is not None:
            out.append(SelfExample(made[0], made[1], i))
            if limit is not None and len(out) >= limit:
                break
    return out
