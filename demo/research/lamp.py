"""LaMP-format data: readers, task descriptions, and the LaMP-style retrieval prompt.

A LaMP task split is two files (the format of the LaMP benchmark, Salemi et al. 2023, and of
the shared tasks in ``../shared/data``):

* ``<split>_questions.json``: ``[{"id", "input", "profile": [item, ...], "user_id"?}, ...]``
* ``<split>_outputs.json``: ``{"task": name, "golds": [{"id", "output"}, ...]}``

Real LaMP files carry no ``user_id`` in every release; a query without one is its own user.
Profile items differ per task; ``demo.core.history.lamp_item_text`` is the one place that maps an
item to the text the encoder reads, and ``item_prompt`` below renders an item for the RAG
prompt the way the LaMP paper's retrieval prompts do.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..core.history import lamp_item_text
from ..core.selfsup import example_for
from ..core.settings import REPO_ROOT

SHARED_TASKS = ("tweets", "scholar_titles", "blog_posts")
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"  # where the shared LaMP-format tasks are kept


@dataclass(frozen=True)
class TaskSpec:
    name: str  # canonical name: LaMP-1 .. LaMP-7, or a shared task name
    kind: str  # "classification" | "regression" | "generation"
    like: str  # which LaMP task it mirrors
    max_new_tokens: int  # a generous cap for the outputs of this task
    labels: tuple[str, ...] = ()  # classification labels, when fixed


TASKS: dict[str, TaskSpec] = {
    "LaMP-1": TaskSpec("LaMP-1", "classification", "LaMP-1", 8, ("[1]", "[2]")),
    "LaMP-2": TaskSpec("LaMP-2", "classification", "LaMP-2", 12),
    "LaMP-3": TaskSpec("LaMP-3", "regression", "LaMP-3", 4, ("1", "2", "3", "4", "5")),
    "LaMP-4": TaskSpec("LaMP-4", "generation", "LaMP-4", 32),
    "LaMP-5": TaskSpec("LaMP-5", "generation", "LaMP-5", 32),
    "LaMP-6": TaskSpec("LaMP-6", "generation", "LaMP-6", 32),
    "LaMP-7": TaskSpec("LaMP-7", "generation", "LaMP-7", 48),
    "tweets": TaskSpec("tweets", "generation", "LaMP-7", 48),
    "scholar_titles": TaskSpec("scholar_titles", "generation", "LaMP-5", 32),
    "blog_posts": TaskSpec("blog_posts", "generation", "LongLaMP", 64),
}


# The demo.core.selfsup rule that makes a task's kind of query from one profile item.
SELFSUP_RULE = {"LaMP-7": "tweet", "LongLaMP": "continuation", "LaMP-5": "title"}


class LampFormatError(ValueError):
    """A file is not in the LaMP format; the message says what is wrong."""


def task_spec(name: str) -> TaskSpec:
    """The spec of a task by any of its spellings: ``LaMP_1``, ``lamp-1``, ``LaMP-1``, ``tweets``."""
    m = re.fullmatch(r"(?i)lamp[-_ ]?(\d)", name.strip())
    key = f"LaMP-{m.group(1)}" if m else name.strip()
    if key not in TASKS:
        raise LampFormatError(f"Unknown task {name!r}; known: {', '.join(TASKS)}.")
    return TASKS[key]


@dataclass
class Query:
    id: str
    user_id: str
    input: str
    profile: list[dict]
    output: str = ""

    def items(self, cap: int | None = None) -> list[dict]:
        """The profile, most recent last, capped to the ``cap`` most recent items.

        Items with a ``date`` are ordered by it (stable, so equal dates keep file order);
        without dates the file order is taken as the time order.
        """
        items = list(self.profile)
        if items and all("date" in it for it in items):
            items = sorted(items, key=lambda it: str(it["date"]))
        return items[-cap:] if cap else items

    def item_texts(self, cap: int | None = None) -> list[str]:
        return [t for t in (lamp_item_text(it).strip() for it in self.items(cap)) if t]


@dataclass
class LampSplit:
    task: TaskSpec
    split: str
    queries: list[Query] = field(default_factory=list)

    @property
    def users(self) -> list[str]:
        return list(dict.fromkeys(q.user_id for q in self.queries))


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LampFormatError(f"Missing file {path}.") from None
    except json.JSONDecodeError as err:
        raise LampFormatError(f"{path} is not valid JSON ({err}).") from None


def read_split(folder: str | Path, split: str, task: str | None = None, limit: int | None = None) -> LampSplit:
    """Read ``<folder>/<split>_questions.json`` and, when present, ``<split>_outputs.json``.

    ``task`` overrides the task named in the outputs file (or the folder name). Queries keep
    file order; ``limit`` keeps the first ``limit`` of them.
    """
    folder = Path(folder)
    questions = _read_json(folder / f"{split}_questions.json")
    if not isinstance(questions, list):
        raise LampFormatError(f"{folder}/{split}_questions.json must hold a list of queries.")
    outputs_path = folder / f"{split}_outputs.json"
    golds: dict[str, str] = {}
    name = task
    if outputs_path.is_file():
        outputs = _read_json(outputs_path)
        if not isinstance(outputs, dict) or not isinstance(outputs.get("golds"), list):
            raise LampFormatError(f"{outputs_path} must be an object with a 'golds' list.")
        golds = {str(g["id"]): str(g["output"]) for g in outputs["golds"]}
        name = name or outputs.get("task")
    spec = task_spec(name or folder.name)
    queries = []
    for i, q in enumerate(questions):
        if not isinstance(q, dict) or "input" not in q or "profile" not in q:
            raise LampFormatError(f"Query {i} of {folder}/{split}_questions.json lacks 'input' or 'profile'.")
        qid = str(q.get("id", i))
        queries.append(Query(id=qid, user_id=str(q.get("user_id", qid)), input=str(q["input"]),
                             profile=list(q["profile"]), output=golds.get(qid, "")))
        if limit and len(queries) >= limit:
            break
    return LampSplit(spec, split, queries)


def read_task(data_dir: str | Path, task: str, split: str, limit: int | None = None) -> LampSplit:
    """A shared task (``<data_dir>/<task>/``) or any folder holding LaMP files."""
    folder = Path(data_dir) / task if (Path(data_dir) / task).is_dir() else Path(data_dir)
    return read_split(folder, split, task=task if task in TASKS or task.lower().startswith("lamp") else None,
                      limit=limit)


def self_supervised_split(split: LampSplit, per_user: int, cap: int | None, seed: int) -> LampSplit:
    """Up to ``per_user`` queries made from each user's own profile items (``demo.core.selfsup``).

    Each query's gold output is one profile item, its input the task prompt made from that item,
    and its profile ``cap`` other items of the same profile drawn at random (never the item itself).
    The user's largest profile in the split is used (``cap`` None: all its other items).
    """
    kind = SELFSUP_RULE.get(split.task.like)
    if kind is None:
        return LampSplit(split.task, "self", [])
    profiles: dict[str, list[dict]] = {}
    for q in split.queries:
        if len(q.profile) > len(profiles.get(q.user_id, [])):
            profiles[q.user_id] = q.profile
    rng = random.Random(f"{seed}:{split.task.name}")
    queries = []
    for user, profile in sorted(profiles.items()):
        order = rng.sample(range(len(profile)), len(profile))
        made = 0
        for i in order:
            if made == per_user:
                break
            pair = example_for(profile[i], kind)
            if pair is None:
                continue
            # in profile order when uncapped, so that a history cap keeps the most recent as for LaMP queries
            others = [profile[j] for j in order if j != i][:cap] if cap else profile[:i] + profile[i + 1:]
            queries.append(Query(f"{user}-self-{i}", user, pair[0], others, pair[1]))
            made += 1
    return LampSplit(split.task, "self", queries)


def round_robin(queries: list[Query]) -> list[Query]:
    """Queries reordered as every user's first, then every user's second, ... (users in first-seen
    order): the first N of them then cover as many users as N allows."""
    by_user: dict[str, list[Query]] = {}
    for q in queries:
        by_user.setdefault(q.user_id, []).append(q)
    rounds = max((len(v) for v in by_user.values()), default=0)
    return [qs[r] for r in range(rounds) for qs in by_user.values() if r < len(qs)]


# --- prompts -------------------------------------------------------------------------------


def _clip(text: str, max_chars: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= max_chars else text[:max_chars].rsplit(" ", 1)[0] + " ..."


def item_prompt(task: TaskSpec, item: dict, max_chars: int = 300) -> str:
    """One profile item as the LaMP retrieval prompts render it."""
    get = lambda k: _clip(item.get(k, ""), max_chars)  # noqa: E731
    like = task.like
    if like == "LaMP-1":
        return f'"{get("title")}"'
    if like == "LaMP-2":
        if "tag" in item:
            return f'the tag for the movie: "{get("description")}" is "{get("tag")}"'
        return f'the category for the article: "{get("text")}" is "{get("category")}"'
    if like == "LaMP-3":
        return f'{get("score")} is the score for "{get("text")}"'
    if like in ("LaMP-4", "LaMP-6"):
        return f'"{get("title")}" is the title for "{get("text")}"'
    if like == "LaMP-5":
        return f'"{get("title")}" is a title for "{get("abstract")}"'
    return f'"{_clip(lamp_item_text(item), max_chars)}"'


def rag_prompt(task: TaskSpec, request: str, items: list[dict], max_chars: int = 300) -> str:
    """The request with retrieved profile items put before it, in the manner of LaMP."""
    if not items:
        return request
    rendered = ", and ".join(item_prompt(task, it, max_chars) for it in items)
    if task.like == "LaMP-1":
        return f"{rendered}. {request}"
    if task.like in ("LaMP-7", "LongLaMP"):
        return f"{rendered} are written by a person. Following the given patterns, {request[0].lower()}{request[1:]}"
    return f"{rendered}. {request}"


def postprocess(task: TaskSpec, text: str) -> str:
    """Normalize a generated answer for scoring (labels and scores are pulled out of free text)."""
    text = text.strip()
    if task.kind == "regression":
        m = re.search(r"[1-5]", text)
        return m.group(0) if m else text
    if task.like == "LaMP-1":
        m = re.search(r"\[?([12])\]?", text)
        return f"[{m.group(1)}]" if m else text
    return text
