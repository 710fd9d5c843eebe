"""The named endpoints for ``gradio_client``: compute a profile (pasted or uploaded), tune it, generate,
"does it know me?", list, delete.

Every argument is checked by :mod:`demo.app.validation` before the function runs; the function
turns the service's errors into messages. Errors go to API callers as plain text.
"""
from __future__ import annotations

from dataclasses import asdict

import gradio as gr
from gradio import FileData

from ..core.generation import GenerationParams
from ..core.history import HistoryError, ParsedHistory, parse_files, parse_text
from ..core.settings import Limits
from ..core.studio import ServiceError, Studio
from .binding import bind
from .validation import api_error, checked, whole

# Profile work (computing, tuning) runs one at a time beside the generations. Generations run
# together: the shared decode loop batches their rows (two per request), Gradio's queue holds the rest.
PROFILE_QUEUE = dict(concurrency_id="profile", concurrency_limit=1)


def generate_queue(studio: Studio) -> dict:
    return dict(concurrency_id="generate", concurrency_limit=max(1, studio.settings.batch_rows // 2))


def parse_history(limits: Limits, text: str | None, files: list | None, column: str = "text",
                  user: str | None = None) -> ParsedHistory:
    """A pasted history or uploaded files (paths), parsed within the app's limits: the pages and the API."""
    sizes = dict(max_items=limits.max_items, max_item_chars=limits.max_item_chars)
    if files:
        parsed = parse_files([getattr(f, "name", f) for f in files], text_column=column or "text", user=user or None,
                             max_bytes=int(limits.max_upload_mb * 2**20), **sizes)
        if (text or "").strip():  # both given: the files win, and the visitor is told
            parsed.notes.append("The pasted text is not used while files are uploaded; remove the files to use it.")
        return parsed
    return parse_text(text or "", **sizes)


def _stored(studio: Studio, owner_token: str, name: str, parsed: ParsedHistory, source: str) -> dict:
    result = studio.compute_profile(owner_token, name, parsed.items, source=source)
    return {"profile_id": result.profile_id, "n_items": result.n_items, "n_encoded": result.n_encoded,
            "seconds": round(result.seconds, 3), "reused": result.reused, "notes": parsed.notes}


# ---------------------------------------------------------------------------------------
# Endpoints: module-level functions of the studio and the caller's arguments (bound in add_api)
# ---------------------------------------------------------------------------------------


def compute_profile(studio: Studio, history: str, owner_token: str, name: str = "API profile") -> dict:
    """Parse a pasted history (items separated by blank lines), encode it and store the PPlug profile."""
    try:
        return _stored(studio, owner_token, name, parse_history(studio.settings.limits, history, None), "api")
    except (HistoryError, ServiceError) as err:
        raise api_error(err) from None


def compute_profile_from_files(studio: Studio, files: list[FileData], owner_token: str, name: str = "API profile",
                               text_column: str = "text", user: str = "") -> dict:
    """Like /compute_profile, from uploaded files (.txt, .md, .json, .jsonl, .csv, .tsv; send each with
    gradio_client's ``handle_file``), parsed as the page parses uploads. ``text_column``: the CSV/TSV
    column with the text; ``user``: which user of a LaMP questions file."""
    try:
        parsed = parse_history(studio.settings.limits, None, files, text_column, user)
        return _stored(studio, owner_token, name, parsed, f"api: {parsed.source}")
    except (HistoryError, ServiceError) as err:
        raise api_error(err) from None


def tune_profile(studio: Studio, owner_token: str, profile_id: str) -> dict:
    """"Tune to me": fit the profile's personal token on its own items (per-person optimisation of one
    token, not the plug's amortized map) and store it; generate with tuned=True then uses it."""
    try:
        result = studio.tune_profile(owner_token, profile_id)
    except ServiceError as err:
        raise api_error(err) from None
    return asdict(result)


def generate(studio: Studio, owner_token: str, profile_id: str, request: str, max_new_tokens: int = 64,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, tuned: bool = False) -> dict:
    """Generate the personalized and the generic answer to a request (temperature 0 = greedy);
    tuned=True adds the profile's "tune to me" token to the personalized answer. Once done, ``closeness``
    says per answer how close it comes to the subjects of the caller's writing: the sentence encoder's cosine
    between the answer and the mean of their texts (higher is closer; compare the two answers).

    Streams the answers as they grow (``Client.submit``); ``Client.predict`` returns the last,
    complete one, which has ``done`` true."""
    params = GenerationParams(max_new_tokens, temperature, top_p, seed)
    # A generator, so that a cancelled or disconnected call is closed and leaves the decode loop.
    try:
        for result in studio.generate(owner_token, profile_id, request, params, tuned=tuned):
            yield {"personalized": result.personalized, "generic": result.generic, "notes": result.notes,
                   "top_items": [asdict(t) for t in result.top_items], "keywords": result.keywords,
                   "timings": result.timings,
                   "closeness": {("personalized" if c == "pplug" else c): v for c, v in result.closeness.items()},
                   "plug_id": studio.plug_id, "generation_id": result.generation_id, "done": result.done}
    except ServiceError as err:
        raise api_error(err) from None


def know_me(studio: Studio, owner_token: str, profile_id: str, against: str = "personas") -> dict:
    """Does the plug know this profile better than a stranger? Up to 8 of its own items, held back, scored
    with no plug, with the plug and the profile's other items, and with someone else's history
    (against: "personas" or "profiles", the caller's other profiles)."""
    try:
        return studio.know_me(owner_token, profile_id, against).to_dict()
    except ServiceError as err:
        raise api_error(err) from None


def list_profiles(studio: Studio, owner_token: str) -> list[dict]:
    """The caller's profiles, newest first."""
    try:
        return studio.list_profiles(owner_token)
    except ServiceError as err:
        raise api_error(err) from None


def delete_my_data(studio: Studio, owner_token: str) -> dict:
    """Delete every profile, embedding and generation of the caller."""
    try:
        return studio.delete_my_data(owner_token)
    except ServiceError as err:
        raise api_error(err) from None


def add_api(studio: Studio) -> None:
    """Named endpoints for ``gradio_client`` (named as their functions). The caller passes its own owner token."""
    no_queue: dict = {}
    for fn, gpu_seconds, queue, limits in (
        (compute_profile, 120, PROFILE_QUEUE, {}),
        (compute_profile_from_files, 120, PROFILE_QUEUE, {}),
        (generate, 60, generate_queue(studio), {"max_new_tokens": whole(1, studio.settings.limits.max_new_tokens)}),
        (tune_profile, 120, PROFILE_QUEUE, {}),
        (know_me, 60, PROFILE_QUEUE, {}),
        (list_profiles, None, no_queue, {}),
        (delete_my_data, None, no_queue, {}),
    ):
        gr.api(checked(bind(fn, studio, gpu_seconds=gpu_seconds), **limits), api_name=fn.__name__, **queue)
