"""What crosses the boundary: every argument of every named API endpoint, checked with pydantic;
and error messages going out: to API callers as text, to a page's message area as Markdown-escaped text.

An endpoint is wrapped in :func:`checked`; its parameters are looked up by name in
:data:`ARGUMENTS` (one declaration per argument name, shared by all endpoints), so an endpoint with
an undeclared parameter fails at start-up, not at the first odd request. Values are checked
strictly: ``"false"`` is not a boolean, ``1.5`` not a whole number, ``None`` not text (``None`` for
a parameter that has a default means "use the default"). A bad value gets one sentence naming the
argument and what it must be, never the value itself (it may be a token).

:func:`guard_inputs` replaces Gradio's check of the number of arguments, whose error message
quotes every value received (owner tokens included) into the server log: trailing arguments a
named endpoint's caller left out take their defaults, and too few otherwise get a message naming
the parameters only. It also refuses file references that were not uploaded to this app before
Gradio touches them.
"""
from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import gradio as gr
from gradio import utils as gradio_utils
from gradio_client import utils as client_utils
from pydantic import AfterValidator, ConfigDict, Field, ValidationError, create_model

from ..core.text import markdown_text
from .identity import caller_token

MAX_ID = 2**63 - 1  # SQLite's largest integer
MAX_FILES = 20


class Argument(NamedTuple):
    type: Any  # a pydantic type (checked strictly)
    must_be: str  # finishes "<name> must be ..."


def text(max_chars: int | None = None, what: str = "text") -> Argument:
    limit = f" of at most {max_chars:,} characters" if max_chars else ""
    return Argument(Annotated[str, Field(max_length=max_chars)], what + limit)


def whole(low: int, high: int) -> Argument:
    return Argument(Annotated[int, Field(ge=low, le=high)], f"a whole number from {low:,} to {high:,}")


def number(low: float, high: float, low_open: bool = False) -> Argument:
    bound = Field(gt=low, le=high, allow_inf_nan=False) if low_open else Field(ge=low, le=high, allow_inf_nan=False)
    return Argument(Annotated[float, bound], f"a number {'above' if low_open else 'from'} {low:g} "
                                             f"{'and at most' if low_open else 'to'} {high:g}")


def _uploaded(path: str) -> str:
    """The path of a file uploaded to this app (Gradio's upload folder), else ValueError."""
    if client_utils.is_http_url_like(path):
        raise ValueError("each file must be uploaded (gradio_client's handle_file); links are not fetched.")
    resolved = Path(path).resolve()
    if not gradio_utils.is_in_or_equal(resolved, gradio_utils.get_upload_folder()) or not resolved.is_file():
        raise ValueError("each file must be uploaded to this app first (gradio_client's handle_file does it).")
    return str(resolved)


def _file_path(value: dict) -> str:
    """An uploaded file's reference (gradio_client sends ``{"path": ..., "meta": ...}``) -> its path."""
    if not isinstance(value.get("path"), str):
        raise ValueError("each file must be uploaded (gradio_client's handle_file).")
    return _uploaded(value["path"])


FILES = Argument(Annotated[list[Annotated[dict[str, Any], AfterValidator(_file_path)]],
                           Field(min_length=1, max_length=MAX_FILES)],
                 f"a list of 1 to {MAX_FILES} uploaded files (gradio_client's handle_file)")
# Its length and characters are the service's to check (demo.core.studio.Studio._check_owner).
TOKEN = Argument(Annotated[str, AfterValidator(caller_token)], "text: your own token of 16 to 256 visible characters")
PARTICIPANT_TOKEN = text(256, "text: the participant token returned by /study_consent")

ARGUMENTS: dict[str, Argument] = {
    "owner_token": TOKEN,
    "profile_id": text(64, "text: a profile id from /compute_profile"),
    "history": text(None, "text: items separated by blank lines"),
    "name": text(1000),
    "request": text(None),
    "max_new_tokens": whole(1, 100_000),
    "temperature": number(0, 5),
    "top_p": number(0, 1, low_open=True),
    "seed": whole(0, MAX_ID),
    "tuned": Argument(bool, "true or false"),
    "against": text(20, 'text: "personas" or "profiles"'),
    "files": FILES,
    "text_column": text(200, "text: the CSV column that holds the text"),
    "user": text(200, "text: a user id of a LaMP questions file"),
    "study": text(200, "text: a study's name"),
    "consent": Argument(bool, "true to agree (a JSON boolean)"),
    "participant_id": text(128),
    "prolific_study_id": text(128),
    "session_id": text(128),
    "participant_token": PARTICIPANT_TOKEN,
    "persona": text(200),
    "trial_id": whole(1, MAX_ID),
    "choice": text(20, "text: A, B, tie or both_bad"),
    "reason": text(10_000),
}


def api_error(err: Exception) -> gr.Error:
    """An error for an API caller: the message as plain text."""
    return gr.Error(str(err), print_exception=False)


def message(text: str = ""):
    """A page's one message area: shown with ``text``, hidden without."""
    return gr.update(value=text, visible=bool(text))


def warning(err: Exception | str):
    """A problem for the message area, as text (it may quote a file name, a CSV header or a study name).
    Its lines stay lines and its "- " lines a list (a study definition's problems, one per line)."""
    shown = ""
    for line in str(err).splitlines() or [""]:
        item = line.startswith("- ")
        # stripped: an indented line (YAML quotes the bad line so) would be a code block showing the escapes
        text = "- " + markdown_text(line[2:]) if item else markdown_text(line.strip())
        # an item goes on the next line (a list may follow a paragraph at once); anything else is a paragraph
        shown += ("\n" if item else "\n\n") + text if shown else text
    return message(f"⚠️ {shown}")


def _first_problem(err: ValidationError, arguments: dict[str, Argument]) -> str:
    """One sentence for the first problem: the argument's name and what it must be."""
    problem = err.errors(include_input=False)[0]
    name = str(problem["loc"][0]) if problem["loc"] else "arguments"
    if problem["type"] == "value_error":
        return f"{name}: {problem['ctx']['error']}"
    what = arguments[name].must_be if name in arguments else "valid"
    if problem["type"] == "missing":
        return f"{name} is missing: it must be {what}."
    return f"{name} must be {what}."


def checked(fn=None, **overrides: Argument):
    """Wrap a named endpoint so that its arguments are checked (``overrides``: per-endpoint limits)."""
    if fn is None:
        return lambda f: checked(f, **overrides)
    signature = inspect.signature(fn)
    arguments = {name: overrides.get(name) or ARGUMENTS[name] for name in signature.parameters}
    defaults = {name: p.default for name, p in signature.parameters.items() if p.default is not p.empty}
    model = create_model(f"{fn.__name__}_arguments", __config__=ConfigDict(strict=True),
                         **{name: (arg.type, defaults.get(name, ...)) for name, arg in arguments.items()})

    def valid(args, kwargs) -> dict:
        given = signature.bind_partial(*args, **kwargs).arguments
        given = {k: v for k, v in given.items() if not (v is None and k in defaults)}  # None: the default
        try:
            values = model.model_validate(given)
        except ValidationError as err:
            raise gr.Error(_first_problem(err, arguments), print_exception=False) from None
        return {name: getattr(values, name) for name in arguments}

    if inspect.isgeneratorfunction(fn):  # Gradio streams generator functions: stay one
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            yield from fn(**valid(args, kwargs))
    else:
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            return fn(**valid(args, kwargs))

    inner.checked_arguments = arguments
    return inner


def guard_inputs(demo: gr.Blocks) -> None:
    """Check each event's raw inputs before Gradio does: the count, and file references."""

    def validate_inputs(block_fn, inputs: list) -> None:
        wanted = len(block_fn.inputs)
        names = list(getattr(block_fn.fn, "checked_arguments", {}))
        if len(inputs) < wanted and names:  # a named endpoint: trailing arguments left out take their defaults
            defaults = inspect.signature(block_fn.fn).parameters
            missing = [defaults[name].default for name in names[len(inputs):]]
            if inspect.Parameter.empty not in missing:
                inputs.extend(missing)
        if len(inputs) < wanted:
            listed = f" ({', '.join(names)})" if names else ""
            raise gr.Error(f"This endpoint takes {wanted} arguments{listed}; {len(inputs)} were sent.",
                           print_exception=False)
        try:  # Gradio would refuse (with a traceback) a path not uploaded here, and download a link
            client_utils.traverse(inputs, lambda f: _uploaded(f["path"]), client_utils.is_file_obj_with_meta)
        except ValueError as err:
            raise gr.Error(str(err), print_exception=False) from None

    # Gradio calls self.validate_inputs from preprocess_data; an instance attribute takes its place.
    demo.validate_inputs = validate_inputs
