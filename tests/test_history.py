"""Tests for demo.core.history: pasted text and uploaded files into history items."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from demo.core.history import (
    HistoryError,
    ParsedHistory,
    lamp_item_text,
    parse_file,
    parse_files,
    parse_text,
    preview,
)

PERSONAS = Path(__file__).resolve().parent.parent / "assets" / "personas"


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


def write_json(tmp_path: Path, name: str, data) -> Path:
    return write(tmp_path, name, json.dumps(data))


# ---------------------------------------------------------------------------
# Pasted text
# ---------------------------------------------------------------------------


def test_paragraphs_keep_inner_newlines():
    parsed = parse_text("First line\nsame item\n\nSecond item\n\n\n\nThird item\n")
    assert parsed.items == ["First line\nsame item", "Second item", "Third item"]
    assert parsed.source == "pasted text"
    assert parsed.notes == []
    assert parsed.users == []


def test_whitespace_only_line_counts_as_blank():
    parsed = parse_text("one\n   \t \ntwo\nstill two")
    assert parsed.items == ["one", "two\nstill two"]


def test_no_blank_line_splits_per_line():
    assert parse_text("alpha\nbeta\ngamma\n").items == ["alpha", "beta", "gamma"]


def test_single_line_is_one_item():
    assert parse_text("  just one thought  ").items == ["just one thought"]


def test_crlf_and_cr_normalised():
    assert parse_text("a\r\nb\r\n\r\nc").items == ["a\nb", "c"]
    assert parse_text("x\ry\rz").items == ["x", "y", "z"]


def test_items_stripped_and_duplicates_dropped_in_order():
    parsed = parse_text("  b  \n\na\n\nb\n\n  a\n\nc")
    assert parsed.items == ["b", "a", "c"]
    assert parsed.notes == ["dropped 2 duplicate items"]


def test_control_characters_removed_but_unicode_kept():
    parsed = parse_text("caf\u00e9 \U0001F600\x07 tab\tok\x00\x1b[0m\n\n\x7fna\u00efve \u4e2d\u6587\x9b")
    assert parsed.items == ["caf\u00e9 \U0001F600 tab\tok[0m", "na\u00efve \u4e2d\u6587"]


def test_line_of_control_characters_is_blank():
    assert parse_text("one\n\x01\x02\ntwo").items == ["one", "two"]


@pytest.mark.parametrize("text", ["", "   \n\n \t\n", "\x00\x01", None])
def test_empty_history(text):
    with pytest.raises(HistoryError, match="The history is empty: paste some of your writing"):
        parse_text(text)


def test_long_items_cut_with_note():
    parsed = parse_text("a" * 50 + "\n\n" + "b" * 50 + "\n\n" + "short", max_item_chars=10)
    assert parsed.items == ["a" * 10, "b" * 10, "short"]
    assert parsed.notes == ["2 items cut to 10 characters"]


def test_items_equal_after_cut_are_duplicates():
    parsed = parse_text("x" * 20 + "1\n\n" + "x" * 20 + "2", max_item_chars=20)
    assert parsed.items == ["x" * 20]
    assert "dropped 1 duplicate item" in parsed.notes


def test_too_many_items_is_an_error_not_a_truncation():
    text = "\n\n".join(f"item {i}" for i in range(12))
    assert len(parse_text(text, max_items=12).items) == 12
    with pytest.raises(HistoryError, match=r"found 12, the limit is 10"):
        parse_text(text, max_items=10)


def test_duplicates_do_not_count_towards_the_limit():
    assert parse_text("same\n\n" * 50 + "other", max_items=2).items == ["same", "other"]


# ---------------------------------------------------------------------------
# Text files
# ---------------------------------------------------------------------------


def test_txt_and_md_files(tmp_path):
    txt = parse_file(write(tmp_path, "blog.txt", "Post one.\r\n\r\nPost two.\r\n"))
    assert txt.items == ["Post one.", "Post two."]
    assert txt.source == "blog.txt"
    md = parse_file(write(tmp_path, "notes.MD", "# Title\n\nSome *text*."))
    assert md.items == ["# Title", "Some *text*."]


def test_utf8_bom_removed(tmp_path):
    parsed = parse_file(write(tmp_path, "bom.txt", b"\xef\xbb\xbfhello\n\nworld"))
    assert parsed.items == ["hello", "world"]
    assert parsed.notes == []


def test_non_utf8_falls_back_with_note(tmp_path):
    parsed = parse_file(write(tmp_path, "old.txt", "Caf\u00e9 cr\u00e8me \u2013 \u201cquoted\u201d".encode("cp1252")))
    assert parsed.items == ["Caf\u00e9 cr\u00e8me \u2013 \u201cquoted\u201d"]
    assert parsed.notes == ["decoded as cp1252 (file was not valid UTF-8)"]


def test_bytes_undefined_in_cp1252_fall_back_to_latin1(tmp_path):
    parsed = parse_file(write(tmp_path, "odd.txt", b"abc\x81def"))
    assert parsed.items == ["abcdef"]  # U+0081 is a control character, removed
    assert parsed.notes == ["decoded as latin-1 (file was not valid UTF-8)"]


def test_binary_file_rejected(tmp_path):
    path = write(tmp_path, "photo.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    with pytest.raises(HistoryError, match="photo.txt looks like a binary file"):
        parse_file(path)


def test_oversize_file_rejected_with_limit_in_mb(tmp_path):
    path = write(tmp_path, "big.txt", b"word " * (2**20 // 5 + 1))
    with pytest.raises(HistoryError, match=r"big\.txt is too large \(1\.0 MB\); the limit is 1 MB"):
        parse_file(path, max_bytes=2**20)
    assert parse_file(path, max_bytes=2 * 2**20).items  # fine under a larger limit


def test_unknown_extension_lists_accepted_types(tmp_path):
    with pytest.raises(HistoryError) as info:
        parse_file(write(tmp_path, "report.docx", "whatever"))
    message = str(info.value)
    assert '".docx"' in message
    for suffix in (".txt", ".md", ".json", ".jsonl", ".csv"):
        assert suffix in message
    with pytest.raises(HistoryError, match="without an extension"):
        parse_file(write(tmp_path, "README", "text"))


def test_missing_file(tmp_path):
    with pytest.raises(HistoryError, match="Could not find gone.txt"):
        parse_file(tmp_path / "gone.txt")


def test_empty_file(tmp_path):
    with pytest.raises(HistoryError, match="The history is empty: no text was found in empty.txt"):
        parse_file(write(tmp_path, "empty.txt", "\n \n"))


def test_file_too_many_items(tmp_path):
    path = write(tmp_path, "many.txt", "\n".join(f"line {i}" for i in range(30)))
    with pytest.raises(HistoryError, match=r"found 30, the limit is 20"):
        parse_file(path, max_items=20)


def test_file_items_cut(tmp_path):
    parsed = parse_file(write(tmp_path, "long.txt", "z" * 100), max_item_chars=40)
    assert parsed.items == ["z" * 40]
    assert parsed.notes == ["1 item cut to 40 characters"]


# ---------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------


def test_json_list_of_strings(tmp_path):
    parsed = parse_file(write_json(tmp_path, "h.json", [" one ", "two", "", "one", "bell\u0007"]))
    assert parsed.items == ["one", "two", "bell"]
    assert parsed.notes == ["dropped 1 duplicate item"]


def test_json_objects_default_fields(tmp_path):
    data = [
        {"text": "from text"},
        {"content": "from content"},
        {"body": "from body"},
        {"title": "A title", "abstract": "An abstract."},
    ]
    parsed = parse_file(write_json(tmp_path, "posts.json", data))
    assert parsed.items == ["from text", "from content", "from body", "A title\n\nAn abstract."]


def test_json_text_column_preferred(tmp_path):
    data = [{"text": "ignored", "review": "chosen one"}, {"text": "fallback"}]
    parsed = parse_file(write_json(tmp_path, "r.json", data), text_column="review")
    assert parsed.items == ["chosen one", "fallback"]


def test_json_object_without_text_names_item_and_fields(tmp_path):
    path = write_json(tmp_path, "bad.json", [{"text": "ok"}, {"rating": 5, "user": "x"}])
    with pytest.raises(HistoryError, match=r"bad\.json, item 2: .*rating, user"):
        parse_file(path)


def test_json_wrong_value_types(tmp_path):
    with pytest.raises(HistoryError, match=r"item 2: .*a number"):
        parse_file(write_json(tmp_path, "nums.json", ["ok", 3]))
    with pytest.raises(HistoryError, match="not a list"):
        parse_file(write_json(tmp_path, "str.json", "just a string"))
    with pytest.raises(HistoryError, match='without a "profile" list'):
        parse_file(write_json(tmp_path, "obj.json", {"items": ["a"]}))


def test_json_empty_list(tmp_path):
    with pytest.raises(HistoryError, match="The history is empty"):
        parse_file(write_json(tmp_path, "none.json", []))


def test_malformed_json_reports_line_and_column(tmp_path):
    path = write(tmp_path, "broken.json", '[\n  "fine",\n  "missing comma" "oops"\n]')
    with pytest.raises(HistoryError, match=r"broken\.json is not valid JSON \(line 3, column 19"):
        parse_file(path)


def test_deeply_nested_json(tmp_path):
    with pytest.raises(HistoryError, match="nested too deeply"):
        parse_file(write(tmp_path, "deep.json", "[" * 100_000))


def test_lamp_profile_shapes(tmp_path):
    profile = [
        {"id": "1", "title": "Deep nets", "abstract": "We study them."},  # LaMP-1/5
        {"id": "2", "title": "Only a title"},
        {"id": "3", "abstract": "Only an abstract."},
        {"id": "4", "description": "A heist goes wrong.", "tag": "crime"},  # LaMP-2
        {"id": "5", "text": "Great blender.", "score": "5"},  # LaMP-3
        {"id": "6", "text": "Some tweet"},  # LaMP-7
    ]
    parsed = parse_file(write_json(tmp_path, "profile.json", profile))
    assert parsed.items == [
        "Deep nets\n\nWe study them.",
        "Only a title",
        "Only an abstract.",
        "A heist goes wrong. (crime)",
        "Great blender.",
        "Some tweet",
    ]


def test_lamp_item_text_mapping():
    assert lamp_item_text({"title": "T", "abstract": "A"}) == "T\n\nA"
    assert lamp_item_text({"title": "T"}) == "T"
    assert lamp_item_text({"abstract": "A", "id": 1}) == "A"
    assert lamp_item_text({"description": "D", "tag": "comedy"}) == "D (comedy)"
    assert lamp_item_text({"description": "D"}) == "D"
    assert lamp_item_text({"text": "body", "score": "3"}) == "body"
    assert lamp_item_text({"text": "news body", "title": "headline"}) == "news body"


@pytest.mark.parametrize("item", [{"score": 3}, {}, {"tag": "x"}, "plain", 7, None])
def test_lamp_item_text_unknown_shape(item):
    with pytest.raises(HistoryError):
        lamp_item_text(item)


def lamp_questions():
    return [
        {"id": "100", "user_id": "u1", "input": "q?", "profile": [{"text": "u1 first"}, {"text": "u1 second"}]},
        {"id": "101", "user_id": "u2", "input": "q?", "profile": [{"title": "u2 paper", "abstract": "abs"}]},
        {"id": "102", "user_id": "u1", "input": "q?", "profile": [{"text": "u1 second"}, {"text": "u1 third"}]},
        {"id": "103", "user_id": "u3", "input": "q?", "profile": [{"text": "u3 only"}]},
    ]


def test_lamp_questions_first_user_by_default(tmp_path):
    parsed = parse_file(write_json(tmp_path, "dev_questions.json", lamp_questions()))
    assert parsed.users == ["u1", "u2", "u3"]
    assert parsed.source == "dev_questions.json (user u1)"
    # Both of u1's questions contribute; the shared item is kept once.
    assert parsed.items == ["u1 first", "u1 second", "u1 third"]


def test_lamp_questions_pick_user(tmp_path):
    parsed = parse_file(write_json(tmp_path, "dev_questions.json", lamp_questions()), user="u2")
    assert parsed.items == ["u2 paper\n\nabs"]
    assert parsed.source == "dev_questions.json (user u2)"
    assert parsed.users == ["u1", "u2", "u3"]


def test_lamp_questions_unknown_user_names_valid_ones(tmp_path):
    path = write_json(tmp_path, "dev_questions.json", lamp_questions())
    with pytest.raises(HistoryError) as info:
        parse_file(path, user="nobody")
    message = str(info.value)
    assert "nobody" in message and "u1" in message and "u2" in message


def test_lamp_questions_without_user_id_use_question_id(tmp_path):
    data = [
        {"id": "310", "input": "x", "profile": [{"text": "a"}]},
        {"id": "311", "input": "y", "profile": [{"text": "b"}]},
    ]
    parsed = parse_file(write_json(tmp_path, "train_questions.json", data), user="311")
    assert parsed.users == ["310", "311"]
    assert parsed.items == ["b"]


def test_single_profile_object(tmp_path):
    data = {"user_id": "stress-7", "profile": [{"text": "first"}, {"title": "T", "abstract": "A"}, "plain"]}
    parsed = parse_file(write_json(tmp_path, "stress_user.json", data))
    assert parsed.items == ["first", "T\n\nA", "plain"]
    assert parsed.source == "stress_user.json (user stress-7)"
    bare = parse_file(write_json(tmp_path, "bare.json", {"profile": ["x"]}))
    assert bare.items == ["x"] and bare.source == "bare.json"


# ---------------------------------------------------------------------------
# JSON lines
# ---------------------------------------------------------------------------


def test_jsonl_strings_and_objects(tmp_path):
    lines = ['"plain string"', "", '{"text": "object text"}', "   ", '{"title": "T", "abstract": "A"}']
    parsed = parse_file(write(tmp_path, "h.jsonl", "\r\n".join(lines) + "\n"))
    assert parsed.items == ["plain string", "object text", "T\n\nA"]


def test_jsonl_text_column(tmp_path):
    parsed = parse_file(write(tmp_path, "h.jsonl", '{"msg": "hi", "text": "no"}\n'), text_column="msg")
    assert parsed.items == ["hi"]


def test_jsonl_bad_line_number(tmp_path):
    path = write(tmp_path, "h.jsonl", '"ok"\n\n{"text": "fine"}\n{"text": broken}\n"ok again"\n')
    with pytest.raises(HistoryError, match=r"h\.jsonl, line 4 is not valid JSON"):
        parse_file(path)


def test_jsonl_wrong_value_names_line(tmp_path):
    with pytest.raises(HistoryError, match=r"line 2: .*a list"):
        parse_file(write(tmp_path, "h.jsonl", '"ok"\n[1, 2]\n'))


# ---------------------------------------------------------------------------
# CSV / TSV
# ---------------------------------------------------------------------------


def test_csv_default_column_with_quoted_newlines(tmp_path):
    content = 'id,text\r\n1,"Hello, world"\r\n2,"two\nlines"\r\n3,\r\n4,"Hello, world"\r\n'
    parsed = parse_file(write(tmp_path, "posts.csv", content))
    assert parsed.items == ["Hello, world", "two\nlines"]
    assert parsed.notes == ["dropped 1 duplicate item"]


def test_csv_chosen_column(tmp_path):
    content = "title,review\nFirst,Loved it\nSecond,Hated it\n"
    parsed = parse_file(write(tmp_path, "reviews.csv", content), text_column="review")
    assert parsed.items == ["Loved it", "Hated it"]


def test_csv_missing_column_lists_available(tmp_path):
    path = write(tmp_path, "reviews.csv", "title,review\nFirst,Loved it\n")
    with pytest.raises(HistoryError) as info:
        parse_file(path)
    message = str(info.value)
    assert '"text"' in message and '"title"' in message and '"review"' in message


def test_csv_with_bom_and_short_rows(tmp_path):
    parsed = parse_file(write(tmp_path, "bom.csv", b"\xef\xbb\xbftext,extra\nkept,1\n\nsolo\n"))
    assert parsed.items == ["kept", "solo"]


def test_csv_empty_file(tmp_path):
    with pytest.raises(HistoryError, match="The history is empty"):
        parse_file(write(tmp_path, "empty.csv", ""))


def test_tsv(tmp_path):
    parsed = parse_file(write(tmp_path, "h.tsv", "user\ttext\na\tfirst, with comma\nb\tsecond\n"))
    assert parsed.items == ["first, with comma", "second"]


# ---------------------------------------------------------------------------
# Several files, preview
# ---------------------------------------------------------------------------


def test_parse_files_merges_and_drops_duplicates_across_files(tmp_path):
    a = write(tmp_path, "a.txt", "shared\n\nonly in a")
    b = write_json(tmp_path, "b.json", ["only in b", "shared"])
    c = write(tmp_path, "c.txt", "only in c\n\nonly in c")
    parsed = parse_files([a, str(b), c])
    assert parsed.items == ["shared", "only in a", "only in b", "only in c"]
    assert parsed.source == "a.txt, b.json, c.txt"
    assert "c.txt: dropped 1 duplicate item" in parsed.notes
    assert "dropped 1 duplicate item" in parsed.notes  # the one across files


def test_parse_files_single_file_is_parse_file(tmp_path):
    a = write(tmp_path, "a.txt", "x\n\ny")
    assert parse_files([a]) == parse_file(a)


def test_parse_files_total_limit_and_errors(tmp_path):
    a = write(tmp_path, "a.txt", "1\n2\n3")
    b = write(tmp_path, "b.txt", "4\n5\n6")
    with pytest.raises(HistoryError, match=r"found 6, the limit is 5"):
        parse_files([a, b], max_items=5)
    with pytest.raises(HistoryError, match="No file was uploaded"):
        parse_files([])
    with pytest.raises(HistoryError, match="not supported"):
        parse_files([a, write(tmp_path, "x.pdf", "%PDF")])


def test_an_empty_file_among_several_is_left_out_with_a_note(tmp_path):
    notes = write(tmp_path, "notes.txt", "one\n\ntwo")
    empty = write(tmp_path, "empty.txt", " \n\n ")
    parsed = parse_files([notes, empty])
    assert parsed.items == ["one", "two"] and parsed.source == "notes.txt"
    assert parsed.notes == ["empty.txt: no text was found in it, so it was left out."]
    with pytest.raises(HistoryError, match="no text was found in any of the files"):
        parse_files([empty, write(tmp_path, "blank.md", "")])
    with pytest.raises(HistoryError, match="no text was found in empty.txt"):
        parse_files([empty])


def test_parse_files_keeps_users_and_passes_user(tmp_path):
    q = write_json(tmp_path, "dev_questions.json", lamp_questions())
    a = write(tmp_path, "a.txt", "mine")
    parsed = parse_files([q, a], user="u3")
    assert parsed.items == ["u3 only", "mine"]
    assert parsed.users == ["u1", "u2", "u3"]


def test_preview():
    parsed = ParsedHistory(
        items=["x" * 300, "<b>bold</b>", "c", "d", "e", "f", "g"],
        source="blog.txt",
        notes=["dropped 3 duplicate items"],
    )
    text = preview(parsed, n=3, width=50)
    assert text.startswith("**7 items** from blog\\.txt")  # the file name is escaped like all user text
    assert "1. " + "x" * 49 + "…" in text
    assert "<b>" not in text  # user text is not rendered as HTML
    assert "4 more" in text
    assert "dropped 3 duplicate items" in text
    assert "3. c" in text and "4. " not in text  # only the first n items are listed
    assert preview(parse_text("solo")).startswith("**1 item** from pasted text")


# ---------------------------------------------------------------------------
# Bundled personas
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(PERSONAS.glob("*.txt")), ids=lambda p: p.name)
def test_personas_parse(path):
    assert path.stat().st_size < 60_000
    parsed = parse_file(path)
    assert 15 <= len(parsed.items) <= 40
    assert parsed.notes == []


def test_personas_exist():
    assert len(list(PERSONAS.glob("*.txt"))) >= 3
    assert (PERSONAS / "README.md").is_file()


# ---------------------------------------------------------------------------
# Property: nothing but HistoryError ever escapes
# ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_parse_text_only_raises_history_error(text):
    try:
        parsed = parse_text(text)
    except HistoryError:
        return
    assert parsed.items
    assert all(item == item.strip() and item for item in parsed.items)
    assert len(set(parsed.items)) == len(parsed.items)


# Bytes that are mostly structure characters, so JSON and CSV parsers get past the first byte.
_structured_bytes = st.lists(
    st.one_of(
        st.binary(max_size=8),
        st.sampled_from([b"[", b"]", b"{", b"}", b'"', b",", b":", b"\n", b"\r\n", b"\t", b" ",
                         b'"text"', b'"profile"', b"null", b"1", b"\xef\xbb\xbf", b"\xe9", b"\x00"]),
    ),
    max_size=40,
).map(b"".join)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=200), _structured_bytes), suffix=st.sampled_from([".txt", ".json", ".jsonl", ".csv"]))
def test_parse_file_only_raises_history_error(data, suffix):
    fd, name = tempfile.mkstemp(suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        try:
            parsed = parse_file(name)
        except HistoryError:
            return
        assert parsed.items
        assert all(item == item.strip() and item for item in parsed.items)
    finally:
        os.unlink(name)


def test_lamp_users_are_listed_with_item_counts_largest_first(tmp_path):
    data = [{"user_id": "small", "profile": [{"text": "one"}]},
            {"user_id": "big", "profile": [{"text": f"post {i}"} for i in range(5)]},
            {"user_id": "mid", "profile": [{"text": "a"}, {"text": "b"}]},
            {"user_id": "big", "profile": [{"text": "post 1"}, {"text": "post 9"}]}]  # overlaps count once
    parsed = parse_file(write_json(tmp_path, "dev_questions.json", data))
    assert parsed.users == ["big", "mid", "small"]
    assert parsed.user_items == {"big": 6, "mid": 2, "small": 1}
    assert parsed.source == "dev_questions.json (user big)" and len(parsed.items) == 6  # the largest by default
    merged = parse_files([write_json(tmp_path, "q.json", data), write(tmp_path, "a.txt", "mine")], user="mid")
    assert merged.user_items["big"] == 6 and merged.items == ["a", "b", "mine"]
