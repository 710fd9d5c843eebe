"""Turn pasted text and uploaded files into a clean list of history items.

A "history" is what the plug reads to build a user's personal embedding: a list
of short texts the user wrote (posts, reviews, abstracts, emails...). This module
accepts them in the forms people actually have at hand:

* pasted text, ``.txt`` or ``.md``: one item per paragraph (blank-line separated);
  text without any blank line but with several lines is split per line;
* ``.json``: a list of strings, a list of objects with a text field, a LaMP
  profile list, a LaMP ``*_questions.json`` file (pick a user with ``user``), or
  one user's ``{"profile": [...]}``;
* ``.jsonl``: one JSON string or object per line;
* ``.csv`` / ``.tsv``: one item per row, taken from the ``text_column`` column.

Every item is cleaned the same way: newlines normalised, control characters
removed, whitespace stripped, empty items and exact duplicates dropped (the first
copy is kept, order is preserved) and over-long items cut. Anything the user
should know about is recorded in ``ParsedHistory.notes``.

All problems with the input raise ``HistoryError``, whose message is written for
the person at the keyboard and can be shown as is. No other exception escapes
``parse_text``, ``parse_file`` or ``parse_files``.
"""
from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from .settings import Limits
from .text import clean_text, has_visible_text, markdown_text, plural

log = logging.getLogger(__name__)

# The defaults of the limits below are the app's (Limits); the app passes its configured ones.
MAX_BYTES = int(Limits.max_upload_mb * 2**20)

TEXT_SUFFIXES = (".txt", ".md")
ACCEPTED_SUFFIXES = (".txt", ".md", ".json", ".jsonl", ".csv", ".tsv")

# A NUL byte near the start is the cheapest reliable sign of a binary file.
_SNIFF_BYTES = 8192

# A paragraph break: a newline, any whitespace-only lines, another newline.
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")

# The csv module refuses cells over 128 KiB; a long item in a table is cut like any other item
# instead (the upload size limit already bounds what is read).
csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))


class HistoryError(ValueError):
    """Bad history input; its message is shown to the user as is (clear, one or two sentences, says what to do)."""


class EmptyHistoryError(HistoryError):
    """No text at all: among several uploads, that file is left out rather than the whole upload refused."""


@dataclass
class ParsedHistory:
    """The cleaned items of one history, where they came from, and what was changed."""

    items: list[str]  # stripped, non-empty, exact duplicates dropped (first kept), order kept
    source: str  # e.g. "pasted text", "blog.txt", "dev_questions.json (user 123)"
    notes: list[str]  # human-readable notices about what was changed
    users: list[str] = field(default_factory=list)  # user ids of a LaMP questions file, most items first
    user_items: dict[str, int] = field(default_factory=dict)  # user id -> number of distinct profile items


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def parse_text(
    text: str, *, max_items: int = Limits.max_items, max_item_chars: int = Limits.max_item_chars
) -> ParsedHistory:
    """Parse pasted text: one item per paragraph (or per line if there are no blank lines)."""
    try:
        raw_items = _split_paragraphs(text or "")
        return _finish(
            raw_items,
            source="pasted text",
            notes=[],
            max_items=max_items,
            max_item_chars=max_item_chars,
            empty_hint="paste some of your writing, one item per paragraph.",
        )
    except HistoryError:
        raise
    except Exception as exc:  # a bug or an input we did not foresee: still a clear message
        log.warning("Unexpected %s while parsing pasted text", type(exc).__name__)
        raise HistoryError("Could not read the pasted text. Check it and try again.") from exc


def parse_file(
    path: str | Path,
    *,
    text_column: str = "text",
    user: str | None = None,
    max_items: int = Limits.max_items,
    max_item_chars: int = Limits.max_item_chars,
    max_bytes: int = MAX_BYTES,
) -> ParsedHistory:
    """Parse one uploaded file; the format is chosen by its extension."""
    path = _as_path(path)
    try:
        return _parse_file(
            path,
            text_column=text_column,
            user=user,
            max_items=max_items,
            max_item_chars=max_item_chars,
            max_bytes=max_bytes,
        )
    except HistoryError:
        raise
    except FileNotFoundError as exc:
        raise HistoryError(f"Could not find {path.name}. Upload the file again.") from exc
    except OSError as exc:
        raise HistoryError(f"Could not read {path.name} ({exc.strerror or exc}). Upload the file again.") from exc
    except Exception as exc:  # an unexpected shape of data: still a clear message, without Python's words
        log.warning("Unexpected %s while parsing an upload", type(exc).__name__)
        raise HistoryError(f"Could not read {path.name}. Check the file's format and try again.") from exc


def parse_files(
    paths: list,
    *,
    text_column: str = "text",
    user: str | None = None,
    max_items: int = Limits.max_items,
    max_item_chars: int = Limits.max_item_chars,
    max_bytes: int = MAX_BYTES,
) -> ParsedHistory:
    """Parse several uploads and merge them into one history (duplicates across files dropped).

    ``user`` applies to every LaMP questions file among them.
    """
    paths = [p for p in (paths or []) if p]
    if not paths:
        raise HistoryError("No file was uploaded. Choose one or more .txt, .md, .json, .jsonl or .csv files.")
    options = dict(
        text_column=text_column,
        user=user,
        max_items=max_items,
        max_item_chars=max_item_chars,
        max_bytes=max_bytes,
    )
    parts: list[ParsedHistory] = []
    notes: list[str] = []
    for path in paths:
        try:
            parts.append(parse_file(path, **options))
        except EmptyHistoryError:
            if len(paths) == 1:
                raise
            notes.append(f"{_as_path(path).name}: no text was found in it, so it was left out.")
    if not parts:
        raise EmptyHistoryError("The history is empty: no text was found in any of the files. "
                                "Upload files with some of your writing.")
    if len(parts) == 1 and not notes:
        return parts[0]

    items: list[str] = []
    users: list[str] = []
    user_items: dict[str, int] = {}
    for part in parts:
        items.extend(part.items)
        # Say which file each notice is about once they are all in one list.
        notes.extend(f"{part.source}: {note}" for note in part.notes)
        users.extend(u for u in part.users if u not in users)
        user_items.update(part.user_items)
    # Items are already clean and cut; this drops duplicates across files and
    # checks the total count.
    merged = _finish(
        items,
        source=_join_names([part.source for part in parts]),
        notes=notes,
        max_items=max_items,
        max_item_chars=max_item_chars,
        empty_hint="upload a file with some of your writing.",
    )
    merged.users = users
    merged.user_items = user_items
    return merged


def preview(parsed: ParsedHistory, n: int = 5, width: int = 160) -> str:
    """A short markdown summary: item count, source, the first ``n`` items shortened, and the notes."""
    count = len(parsed.items)
    lines = [f"**{count:,} {'item' if count == 1 else 'items'}** from {markdown_text(parsed.source)}"]
    if len(parsed.users) > 1:
        lines.append(f"_{len(parsed.users):,} users in this file; showing one of them._")
    lines.append("")
    for number, item in enumerate(parsed.items[:n], start=1):
        lines.append(f"{number}. {markdown_text(_shorten(item, width))}")
    if count > n:
        lines.append(f"\n_…and {count - n:,} more._")
    if parsed.notes:
        lines.append("")
        lines.append("Notes:")
        lines.extend(f"- {markdown_text(note)}" for note in parsed.notes)
    return "\n".join(lines)


def lamp_item_text(item: dict) -> str:
    """The text of one LaMP profile item.

    The LaMP tasks store profile items with different fields; they map to text as:

    * ``text`` (LaMP-3/4/6/7, any other field such as ``score`` or ``title`` ignored) -> text
    * ``title`` and/or ``abstract`` (LaMP-1/5) -> "title\\n\\nabstract", or either one alone
    * ``description`` with optional ``tag`` (LaMP-2) -> "description (tag)"

    Anything else raises ``HistoryError``.
    """
    if not isinstance(item, dict):
        raise HistoryError(
            f"Expected a history item with a text field, found {_describe(item)}. "
            'Use strings or objects with a "text" field.'
        )

    def get(key: str) -> str:
        value = item.get(key)
        return value.strip() if isinstance(value, str) else ""

    if isinstance(item.get("text"), str):
        return item["text"]
    if isinstance(item.get("title"), str) or isinstance(item.get("abstract"), str):
        return "\n\n".join(part for part in (get("title"), get("abstract")) if part)
    if isinstance(item.get("description"), str):
        tag = get("tag")
        return f"{get('description')} ({tag})" if tag else get("description")
    fields = ", ".join(sorted(str(key) for key in item)[:8]) or "none"
    raise HistoryError(
        f"Could not find the text in a history item (its fields: {fields}). "
        'Give each item a "text" field, or "title" and "abstract", or "description" and "tag".'
    )


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def _parse_file(
    path: Path,
    *,
    text_column: str,
    user: str | None,
    max_items: int,
    max_item_chars: int,
    max_bytes: int,
) -> ParsedHistory:
    name = path.name
    suffix = path.suffix.lower()
    if suffix not in ACCEPTED_SUFFIXES:
        kind = f'"{suffix}" files' if suffix else "files without an extension"
        raise HistoryError(
            f"Cannot read {name}: {kind} are not supported. "
            f"Upload one of these types: {', '.join(ACCEPTED_SUFFIXES)}."
        )

    # Check the size before reading, so a huge upload is never loaded into memory.
    size = path.stat().st_size
    if size > max_bytes:
        raise HistoryError(
            f"{name} is too large ({size / 2**20:.1f} MB); the limit is {max_bytes / 2**20:g} MB. "
            "Upload a smaller file or split it into parts."
        )

    notes: list[str] = []
    text = _decode(path.read_bytes(), name, notes)
    source = name
    users: dict[str, int] = {}

    if suffix in TEXT_SUFFIXES:
        raw_items = _split_paragraphs(text)
    elif suffix == ".json":
        raw_items, source, users = _json_items(text, name, text_column, user)
    elif suffix == ".jsonl":
        raw_items = _jsonl_items(text, name, text_column)
    else:
        raw_items = _csv_items(text, name, text_column, delimiter="\t" if suffix == ".tsv" else ",")

    parsed = _finish(
        raw_items,
        source=source,
        notes=notes,
        max_items=max_items,
        max_item_chars=max_item_chars,
        empty_hint=f"no text was found in {name}. Upload a file with some of your writing.",
    )
    parsed.users, parsed.user_items = list(users), users
    return parsed


def _decode(data: bytes, name: str, notes: list[str]) -> str:
    """Bytes to text: UTF-8 (BOM or not), UTF-32 or UTF-16 with a BOM, else Windows-1252 / Latin-1
    with a note. Binary data (a NUL byte, or control characters in text that is not UTF-8) is refused."""
    # UTF-32's little-endian BOM starts with UTF-16's, so it is tried first.
    for boms, encoding in (((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE), "UTF-32"),
                           ((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE), "UTF-16")):
        if data.startswith(boms):  # these encodings have NUL bytes
            try:
                text = data.decode(encoding.lower())
            except UnicodeDecodeError:
                break
            notes.append(f"decoded as {encoding}")
            return text
    if b"\x00" in data[:_SNIFF_BYTES]:
        raise _binary(name)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    # Old Windows editors save cp1252; a few bytes are undefined there, and
    # Latin-1 accepts every byte, so it is the last resort.
    try:
        text, encoding = data.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        text, encoding = data.decode("latin-1"), "latin-1"
    # Every byte decodes in Latin-1, so random bytes would pass as text: real text in these
    # encodings has almost no control characters, while random bytes are about 11% controls.
    controls = sum(1 for ch in text if ch < " " and ch not in "\t\n\r\f\x1a" or "\x7f" <= ch <= "\x9f")
    if controls > max(2, len(text) // 100):
        raise _binary(name)
    notes.append(f"decoded as {encoding} (file was not valid UTF-8)")
    return text


def _binary(name: str) -> HistoryError:
    return HistoryError(
        f"{name} looks like a binary file, not text. "
        "Upload your writing as a .txt, .md, .json, .jsonl or .csv file saved as UTF-8."
    )


def _load_json(text: str, where: str, fix: str, one_line: bool = False):
    """``json.loads`` with every way it can fail said in words (``where`` names the file or its line)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        at = f"column {exc.colno}" if one_line else f"line {exc.lineno}, column {exc.colno}"
        raise HistoryError(f"{where} is not valid JSON ({at}: {exc.msg}). {fix}") from exc
    except RecursionError as exc:
        raise HistoryError(f"{where} is nested too deeply to be a history file. Check its format.") from exc
    except ValueError as exc:  # an integer of thousands of digits
        raise HistoryError(f"{where} holds a number too long to read. {fix}") from exc


def _json_items(
    text: str, name: str, text_column: str, user: str | None
) -> tuple[list[str], str, dict[str, int]]:
    """Items, source label and users (id -> item count, most first) of a .json file."""
    data = _load_json(text, name, "Fix the file or export it again.")

    # One user's profile, e.g. {"user_id": "42", "profile": [...]}.
    if isinstance(data, dict):
        if not isinstance(data.get("profile"), list):
            raise HistoryError(
                f"{name} holds a JSON object without a \"profile\" list. "
                "Upload a list of texts, a list of objects with a \"text\" field, or a LaMP file."
            )
        source = f"{name} (user {data['user_id']})" if "user_id" in data else name
        return _list_items(data["profile"], name, text_column), source, {}

    if not isinstance(data, list):
        raise HistoryError(
            f"{name} holds {_describe(data)}, not a list. "
            "Upload a list of texts or a list of objects with a \"text\" field."
        )

    if data and all(isinstance(q, dict) and isinstance(q.get("profile"), list) for q in data):
        return _questions_items(data, name, text_column, user)
    return _list_items(data, name, text_column), name, {}


def _questions_items(
    questions: list[dict], name: str, text_column: str, user: str | None
) -> tuple[list[str], str, dict[str, int]]:
    """A LaMP ``*_questions.json`` file: every question carries its user's profile.

    -> (the chosen user's raw items, source, user id -> distinct profile items, most first).
    """
    # The user id is "user_id" when present (time-based LaMP splits), else the
    # question "id" (user-based splits have one question per user).
    def user_of(position: int, question: dict) -> str:
        return str(question.get("user_id", question.get("id", position)))

    # A user may have several questions whose profiles overlap: count each item once.
    distinct: dict[str, set[str]] = {}
    for position, question in enumerate(questions):
        seen = distinct.setdefault(user_of(position, question), set())
        seen.update(json.dumps(item, sort_keys=True, default=str) for item in question["profile"])
    # Largest histories first (file order among equals): the default user is one worth trying.
    users = dict(sorted(((u, len(items)) for u, items in distinct.items()), key=lambda kv: -kv[1]))

    chosen = next(iter(users)) if user is None else str(user)
    if chosen not in users:
        examples = ", ".join(list(users)[:5])
        raise HistoryError(
            f"User {chosen} is not in {name}. Pick one of its {len(users):,} users, for example {examples}."
        )

    raw_items: list[str] = []
    for position, question in enumerate(questions):
        if user_of(position, question) == chosen:
            raw_items.extend(_list_items(question["profile"], name, text_column))
    return raw_items, f"{name} (user {chosen})", users


def _list_items(values: list, name: str, text_column: str) -> list[str]:
    """Texts of a JSON list of strings and/or objects."""
    items = []
    for number, value in enumerate(values, start=1):
        try:
            items.append(_value_text(value, text_column))
        except HistoryError as exc:
            raise HistoryError(f"{name}, item {number}: {exc}") from exc
    return items


def _value_text(value, text_column: str) -> str:
    """Text of one JSON value: a string, or an object with a text field."""
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        raise HistoryError(
            f"expected text or an object with a \"{text_column}\" field, found {_describe(value)}."
        )
    if isinstance(value.get(text_column), str):
        return value[text_column]
    for key in ("text", "content", "body"):
        if isinstance(value.get(key), str):
            return value[key]
    return lamp_item_text(value)


def _jsonl_items(text: str, name: str, text_column: str) -> list[str]:
    """One JSON string or object per line; blank lines are skipped."""
    items = []
    lines = text.replace("\r\n", "\n").split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        value = _load_json(line, f"{name}, line {number}", "Each line must hold one JSON string or object.",
                           one_line=True)
        try:
            items.append(_value_text(value, text_column))
        except HistoryError as exc:
            raise HistoryError(f"{name}, line {number}: {exc}") from exc
    return items


def _csv_items(text: str, name: str, text_column: str, delimiter: str) -> list[str]:
    """The ``text_column`` cell of every row of a CSV/TSV file with a header row."""
    # newline="" lets the csv module handle line breaks inside quoted cells.
    # strict: an unclosed or stray quote is an error, not rows silently merged into one cell.
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        columns = reader.fieldnames or []
        if not columns:
            return []  # empty file: reported as an empty history
        if text_column not in columns:
            available = ", ".join(f'"{c}"' for c in columns[:20])
            raise HistoryError(
                f'{name} has no "{text_column}" column. Available columns: {available}. '
                "Choose the column that holds the text."
            )
        # Short rows give None for missing cells.
        return [row[text_column] or "" for row in reader]
    except csv.Error as exc:
        raise HistoryError(
            f"{name}: could not read the table near line {max(reader.line_num, 1)} ({exc}). "
            "Check that it is a valid CSV file."
        ) from exc


# ---------------------------------------------------------------------------
# Cleaning
# ---------------------------------------------------------------------------


def _split_paragraphs(text: str) -> list[str]:
    """Paragraphs if there is any blank line, else lines."""
    text = clean_text(text).strip()
    if _PARAGRAPH_BREAK.search(text):
        return _PARAGRAPH_BREAK.split(text)
    return text.split("\n")


def _finish(
    raw_items: list[str],
    *,
    source: str,
    notes: list[str],
    max_items: int,
    max_item_chars: int,
    empty_hint: str,
) -> ParsedHistory:
    """Clean, cut and de-duplicate raw items, then check their count."""
    items: list[str] = []
    seen: set[str] = set()
    duplicates = 0
    cut = 0
    for raw in raw_items:
        item = clean_text(raw).strip()
        if not has_visible_text(item):  # blank, or only zero-width/bidi-control characters
            continue
        too_long = len(item) > max_item_chars
        if too_long:
            item = item[:max_item_chars].rstrip()
        # Cut first, so two items that only differ past the limit count as duplicates.
        if item in seen:
            duplicates += 1
            continue
        seen.add(item)
        items.append(item)
        cut += too_long

    if not items:
        raise EmptyHistoryError(f"The history is empty: {empty_hint}")
    if len(items) > max_items:
        raise HistoryError(
            f"Too many items: found {len(items):,}, the limit is {max_items:,}. "
            "Keep your most recent writing or split the history into smaller parts."
        )
    notes = list(notes)
    if duplicates:
        notes.append(f"dropped {plural(duplicates, 'duplicate item')}")
    if cut:
        notes.append(f"{plural(cut, 'item')} cut to {max_item_chars:,} characters")
    return ParsedHistory(items=items, source=source, notes=notes)


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def _as_path(value) -> Path:
    """A path from a str/Path, or from an upload object with a ``.name`` (older Gradio)."""
    if isinstance(value, (str, Path)):
        return Path(value)
    return Path(getattr(value, "name", str(value)))


def _describe(value) -> str:
    """A few words naming a JSON value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "a string" if isinstance(value, str) else type(value).__name__


def _join_names(names: list[str]) -> str:
    if len(names) <= 3:
        return ", ".join(names)
    return f"{', '.join(names[:3])} and {len(names) - 3} more files"


def _shorten(text: str, width: int) -> str:
    """One line, at most ``width`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(width - 1, 0)].rstrip() + "…"
