"""Small truths that several wings share, each kept once: the conditions an answer can be made
under, what a visitor's text is cleaned of, whether any of it is visible, how it is shown in
Markdown as typed, the content hash, the timestamp format, the markdown table writer, a count with
its noun, an answer cut back to its last sentence and a free local port."""
from __future__ import annotations

import hashlib
import re
import socket
from collections.abc import Sequence
from datetime import datetime, timezone

import pandas as pd
import regex

# What Studio.generate can make: the plug's soft tokens, the plain model, the history items most
# similar to the request pasted into the prompt, or both; or the plug with someone else's writing
# (an example persona: a control that shows which part of an answer is personal).
CONDITIONS = ("pplug", "generic", "rag", "pplug+rag", "pplug-other")

# Control characters except tab and newline, and lone surrogates (only reachable through JSON
# "\ud800" escapes): they cannot be encoded as UTF-8, so they would break storage and tokenizers.
UNWANTED_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")

# What renders as nothing: whitespace, controls, unassigned code points and Unicode's
# default-ignorable ones (zero-width spaces and joiners, bidi controls, variation selectors,
# Hangul fillers, soft hyphen...).
_INVISIBLE = regex.compile(r"[\p{White_Space}\p{Default_Ignorable_Code_Point}\p{Cc}\p{Cn}\p{Cs}]")

# Every ASCII punctuation character may be backslash-escaped in Markdown (CommonMark): escaped,
# none of them can open a link, an image, an autolink (":" "@" "."), HTML ("<" "&"), LaTeX ("$"),
# a heading, a list or emphasis.
_ASCII_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


def clean_text(text: str) -> str:
    """Text typed or uploaded by a visitor, with newlines normalised and control characters removed."""
    return UNWANTED_CHARS.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def has_visible_text(text: str) -> bool:
    """True when ``text`` holds at least one character that is seen (zero-width, bidi-control and
    other default-ignorable characters, whitespace and controls are not)."""
    return bool(_INVISIBLE.sub("", text))


def only_visible(text: str) -> bool:
    """True when every character of ``text`` is seen: no spaces, controls or zero-width characters."""
    return not _INVISIBLE.search(text)


def markdown_text(text: str) -> str:
    """``text`` (from a person, a file or a link) escaped for ``gr.Markdown``: it renders exactly as
    written, never as a link, an image, HTML, LaTeX or emphasis."""
    return _ASCII_PUNCTUATION.sub(r"\\\1", text)


def sha256_text(text: str) -> str:
    """Hex sha256 of the UTF-8 text: the key of an item in the embedding cache, and of hashed secrets."""
    return hashlib.sha256(text.encode()).hexdigest()


def utc_now() -> str:
    """The timestamp stored in every table: ISO-8601 UTC with microseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def markdown_table(rows: Sequence[Sequence], columns: Sequence[str]) -> str:
    """A markdown (pipe) table of already formatted cells, one row per sequence."""
    # disable_numparse: cells are formatted by the caller ("+0.031", "1,000") and stay as written.
    return pd.DataFrame(list(rows), columns=list(columns)).to_markdown(index=False, tablefmt="pipe",
                                                                       disable_numparse=True)


# A sentence's end: . ! ? … with any closing quotes, brackets or emphasis marks, before a space or
# the end (not the period of a title, "Dr. Smith", of an abbreviation that never ends one, "e.g.", or
# of a list number at a line's start); or 。！？.
_NEVER_LAST = ("Mr", "Mrs", "Ms", "Dr", "St", "Prof", "Mt", "vs", "e.g", "i.e", "E.g", "I.e", "cf", "approx")
_SENTENCE_END = re.compile("".join(rf"(?<!\b{re.escape(w)})" for w in _NEVER_LAST)
                           + r"(?<!^\d)(?<!\n\d)(?<!^\d\d)(?<!\n\d\d)"
                           r"(?:[.!?…][\"'”’)\]*_]*(?=\s|$)|[。！？][」』）]*)")


def to_last_sentence(text: str) -> str:
    """An answer that stopped at its token limit, cut back to the end of its last whole sentence;
    with no sentence end in its second half, to its last whole word and "…" (blank stays blank)."""
    text = text.rstrip()
    if not has_visible_text(text):
        return text
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if ends and ends[-1] >= len(text) / 2:
        return text[:ends[-1]]
    head = text.rsplit(None, 1)[0] if len(text.split()) > 1 else text
    return head.rstrip(" ,;:-–—") + "…"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for a server started next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plural(count: int, noun: str) -> str:
    """``plural(1, "item")`` -> "1 item", ``plural(1200, "item")`` -> "1,200 items"."""
    return f"{count:,} {noun}" + ("" if count == 1 else "s")
