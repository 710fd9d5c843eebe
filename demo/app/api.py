"""The named endpoints for ``gradio_client``: compute a profile, generate, list and delete."""
from __future__ import annotations

from dataclasses import asdict

import gradio as gr
import spaces

from ..core.generation import GenerationParams
from ..core.history import HistoryError, parse_text
from ..core.studio import ServiceError, Studio

# Profile work (computing, tuning) runs one at a time beside the generations. Generations run
# together: the shared decode loop batches their rows (two per request), Gradio's queue holds the rest.
PROFILE_QUEUE = dict(concurrency_id="profile", concurrency_limit=1)


def generate_queue(studio: Studio) -> dict:
    return dict(concurrency_id="generate", concurrency_limit=max(1, studio.settings.batch_rows // 2))


def add_api(studio: Studio) -> None:
    """Named endpoints for ``gradio_client``. The caller passes its own owner token."""

    @spaces.GPU(duration=120)
    def compute_profile(history: str, owner_token: str, name: str = "API profile") -> dict:
        """Parse a pasted history (items separated by blank lines), encode it and store the PPlug profile."""
        limits = studio.settings.limits
        try:
            if history is not None and not isinstance(history, str):
                raise HistoryError("history must be text: items separated by blank lines.")
            parsed = parse_text(history, max_items=limits.max_items, max_item_chars=limits.max_item_chars)
            result = studio.compute_profile(owner_token, name, parsed.items, source="api")
        except (HistoryError, ServiceError) as err:
            raise gr.Error(str(err), print_exception=False) from None
        return {"profile_id": result.profile_id, "n_items": result.n_items, "n_encoded": result.n_encoded,
                "seconds": round(result.seconds, 3), "notes": parsed.notes}

    @spaces.GPU(duration=120)
    def tune_profile(owner_token: str, profile_id: str) -> dict:
        """"Tune to me": fit the profile's personal token on its own items (per-person optimisation of one
        token, not the plug's amortized map) and store it; generate with tuned=True then uses it."""
        try:
            result = studio.tune_profile(owner_token, profile_id)
        except ServiceError as err:
            raise gr.Error(str(err), print_exception=False) from None
        return asdict(result)

    @spaces.GPU(duration=60)
    def generate(owner_token: str, profile_id: str, request: str, max_new_tokens: int = 64,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, tuned: bool = False) -> dict:
        """Generate the personalized and the generic answer to a request (temperature 0 = greedy);
        tuned=True adds the profile's "tune to me" token to the personalized answer.

        Streams the answers as they grow (``Client.submit``); ``Client.predict`` returns the last,
        complete one, which has ``done`` true."""
        try:
            params = GenerationParams(int(max_new_tokens), float(temperature), float(top_p), int(seed))
        except (TypeError, ValueError, OverflowError):
            raise gr.Error("max_new_tokens and seed must be whole numbers; temperature and top_p numbers.",
                           print_exception=False) from None
        # A generator, so that a cancelled or disconnected call is closed and leaves the decode loop.
        try:
            if not isinstance(tuned, bool):
                raise ServiceError("tuned must be true or false.")
            for result in studio.generate(owner_token, profile_id, request, params, tuned=tuned):
                yield {"personalized": result.personalized, "generic": result.generic, "notes": result.notes,
                       "top_items": [asdict(t) for t in result.top_items], "timings": result.timings,
                       "plug_id": studio.plug_id, "generation_id": result.generation_id, "done": result.done}
        except ServiceError as err:
            raise gr.Error(str(err), print_exception=False) from None

    def list_profiles(owner_token: str) -> list[dict]:
        """The caller's profiles, newest first."""
        try:
            return studio.list_profiles(owner_token)
        except ServiceError as err:
            raise gr.Error(str(err), print_exception=False) from None

    def delete_my_data(owner_token: str) -> dict:
        """Delete every profile, embedding and generation of the caller."""
        try:
            return studio.delete_my_data(owner_token)
        except ServiceError as err:
            raise gr.Error(str(err), print_exception=False) from None

    gr.api(compute_profile, api_name="compute_profile", **PROFILE_QUEUE)
    gr.api(generate, api_name="generate", **generate_queue(studio))
    gr.api(tune_profile, api_name="tune_profile", **PROFILE_QUEUE)
    gr.api(list_profiles, api_name="list_profiles")
    gr.api(delete_my_data, api_name="delete_my_data")
