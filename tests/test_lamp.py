"""The LaMP readers and prompts on tiny self-made files of each LaMP task's shape."""
from __future__ import annotations

import json

import pytest

from demo.research.lamp import (LampFormatError, item_prompt, postprocess, rag_prompt, read_split, read_task,
                                task_spec)

# One query per LaMP task, in the shape of the benchmark's files (LaMP-2: the movie-tag version).
SHAPES = {
    "LaMP_1": ('For an author who has written the paper with the title "Deep nets", which reference is related? '
               'Just answer with [1] or [2] without explanation. [1]: "Shallow nets" [2]: "Soup recipes"',
               [{"id": "p1", "title": "Wide nets", "abstract": "We widen them."}], "[1]"),
    "LaMP_2": ("Which tag does this movie relate to among the following tags? ... description: A heist.",
               [{"id": "m1", "description": "A bank robbery goes wrong.", "tag": "crime"}], "crime"),
    "LaMP_3": ("What is the score of the following review on a scale of 1 to 5? just answer with 1, 2, 3, 4, "
               "or 5 without further explanation. review: Great blender.",
               [{"id": "r1", "text": "Broke after a week.", "score": "1"}], "5"),
    "LaMP_4": ("Generate a headline for the following article: The council met.",
               [{"id": "n1", "text": "The mayor spoke.", "title": "Mayor speaks"}], "Council meets"),
    "LaMP_5": ("Generate a title for the following abstract of a paper: We study nets.",
               [{"id": "s1", "title": "Old nets", "abstract": "Nets, old."}], "New nets"),
    "LaMP_6": ("Generate a subject for the following email: Lunch at noon?",
               [{"id": "e1", "text": "See you at 5.", "title": "Meeting"}], "Lunch"),
    "LaMP_7": ("Paraphrase the following tweet without any explanation before or after it: I like tea.",
               [{"id": "t1", "text": "coffee > tea"}], "tea is nice"),
}


def write_split(folder, split, questions, task, golds):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}_questions.json").write_text(json.dumps(questions))
    (folder / f"{split}_outputs.json").write_text(json.dumps({"task": task, "golds": golds}))


@pytest.mark.parametrize("task", sorted(SHAPES))
def test_read_each_lamp_shape(tmp_path, task):
    text, profile, gold = SHAPES[task]
    # real LaMP files have no user_id: each query is then its own user
    write_split(tmp_path, "dev", [{"id": "q1", "input": text, "profile": profile}], task,
                [{"id": "q1", "output": gold}])
    split = read_split(tmp_path, "dev")
    spec = task_spec(task)
    assert split.task == spec
    (q,) = split.queries
    assert (q.id, q.user_id, q.input, q.output) == ("q1", "q1", text, gold)
    assert q.item_texts() and all(q.item_texts())
    rendered = item_prompt(spec, profile[0])
    assert rendered and "{" not in rendered
    assert rag_prompt(spec, text, profile).endswith(text[1:])
    assert rag_prompt(spec, text, []) == text


def test_task_names_and_kinds():
    assert task_spec("lamp-3").kind == "regression"
    assert task_spec("LaMP_1").kind == "classification"
    assert task_spec("tweets").like == "LaMP-7"
    with pytest.raises(LampFormatError):
        task_spec("LaMP-9")


def test_item_prompts_follow_lamp():
    assert item_prompt(task_spec("LaMP-3"), {"text": "Fine.", "score": "4"}) == '4 is the score for "Fine."'
    assert item_prompt(task_spec("LaMP-5"), {"title": "T", "abstract": "A"}) == '"T" is a title for "A"'
    assert item_prompt(task_spec("LaMP-4"), {"title": "H", "text": "B"}) == '"H" is the title for "B"'
    assert item_prompt(task_spec("tweets"), {"text": "hello   world"}) == '"hello world"'
    long = item_prompt(task_spec("tweets"), {"text": "word " * 200}, max_chars=50)
    assert len(long) < 60 and long.endswith('..."')
    prompt = rag_prompt(task_spec("tweets"), "Write a tweet using these words: a, b", [{"text": "x"}, {"text": "y"}])
    assert prompt == '"x", and "y" are written by a person. Following the given patterns, write a tweet using these words: a, b'


def test_postprocess_labels_and_scores():
    assert postprocess(task_spec("LaMP-3"), "I would say 4 stars") == "4"
    assert postprocess(task_spec("LaMP-1"), "The answer is [2].") == "[2]"
    assert postprocess(task_spec("tweets"), "  hi  ") == "hi"


def test_shared_task_folder_user_ids_dates_and_limit(tmp_path):
    folder = tmp_path / "scholar_titles"
    profile = [{"id": "a", "title": "Newer", "abstract": "x", "date": "2020"},
               {"id": "b", "title": "Older", "abstract": "y", "date": "2011"},
               {"id": "c", "title": "Middle", "abstract": "z", "date": "2015"}]
    questions = [{"id": str(i), "user_id": f"u{i % 2}", "input": f"in {i}", "profile": profile} for i in range(5)]
    write_split(folder, "train", questions, "scholar_titles", [{"id": str(i), "output": f"out {i}"} for i in range(5)])
    split = read_task(tmp_path, "scholar_titles", "train", limit=3)
    assert split.task.name == "scholar_titles" and len(split.queries) == 3
    assert split.users == ["u0", "u1"]
    q = split.queries[0]
    assert [it["title"] for it in q.items()] == ["Older", "Middle", "Newer"]  # by date, most recent last
    assert q.item_texts(cap=2) == ["Middle\n\nz", "Newer\n\nx"]


def test_format_errors(tmp_path):
    with pytest.raises(LampFormatError, match="Missing file"):
        read_split(tmp_path, "dev")
    (tmp_path / "dev_questions.json").write_text('{"not": "a list"}')
    with pytest.raises(LampFormatError, match="list of queries"):
        read_split(tmp_path, "dev")
    (tmp_path / "dev_questions.json").write_text('[{"id": 1}]')
    with pytest.raises(LampFormatError, match="lacks"):
        read_split(tmp_path, "dev", task="tweets")
