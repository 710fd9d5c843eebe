"""Small truths that several wings share, each kept once: the conditions an answer can be made
under, what a visitor's text is cleaned of, the content hash, the timestamp format, the
markdown table writer and a free local port."""
from __future__ import annotations

import hashlib
import re
import socket
from collections.abc import Sequence
from datetime import datetime, timezone

import pandas as pd

# What Studio.generate can make: the plug's soft tokens, the plain model, the history items most
# similar to the request pasted into the prompt, or both.
CONDITIONS = ("pplug", "generic", "rag", "pplug+rag")

# Control characters except tab and newline, and lone surrogates (only reachable through JSON
# "\ud800" escapes): they cannot be encoded as UTF-8, so they would break storage and tokenizers.
UNWANTED_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def clean_text(text: str) -> str:
    """Text typed or uploaded by a visitor, with newlines normalised and control characters removed."""
    return UNWANTED_CHARS.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for a server started next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
