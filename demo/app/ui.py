"""The Gradio app: history in, personal embedding computed, two answers side by side.

Everything here is layout and glue. The handlers call ``demo.core.studio.Studio`` and turn its
errors (``HistoryError``, ``ServiceError``) into messages; no torch, no SQL.

The visitor's identity is an unguessable owner token kept in their browser
(``gr.BrowserState``), or their Hugging Face account when the Space offers "Sign in with Hugging
Face"; every profile and generation is stored under it.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd
import spaces

from ..core.generation import GenerationParams
from ..core.history import HistoryError, ParsedHistory, preview
from ..core.settings import PERSONAS_DIR, REPO_ROOT
from ..core.studio import Comparison, ServiceError, Studio
from ..core.text import markdown_text
from .api import PROFILE_QUEUE, add_api, generate_queue, parse_history
from .identity import Identity
from .study_pages import add_study
from .validation import guard_inputs, page_error

RESULTS_FILES = [REPO_ROOT / "assets" / "results" / name for name in ("results.md", "benchmark.md")]

INTRO = """# PPlug Studio
**PPlug** turns your writing history into a *personal embedding*: each item is embedded by a
frozen sentence encoder, weighed by how related it is to your current request, and projected
into the language model's input space as a soft token, next to a learned instruction token. The
model itself is not changed: the same model answers everyone, and only these tokens carry you.
"""

EXAMPLE_REQUESTS = [
    "Write a short blog post about my weekend.",
    "Write a tweet about the news today.",
    "Describe your ideal Sunday in three sentences.",
]


def _personas() -> dict[str, Path]:
    def label(stem: str) -> str:  # "food_blogger" -> "Food Blogger", "fdr" -> "FDR"
        return stem.upper() if len(stem) <= 3 else stem.replace("_", " ").title()

    return {label(p.stem): p for p in sorted(PERSONAS_DIR.glob("*.txt"))}


def _parse(studio: Studio, text: str, files: list | None, column: str, user: str | None) -> ParsedHistory:
    return parse_history(studio.settings.limits, text, files, column, user)


def _plug_report(studio: Studio) -> str:
    """What the plug is, how it was made, and the committed evaluation and benchmark tables."""
    config = studio.plug.config
    lines = [f"**Plug** `{studio.plug_id}` ({config.origin}), made for `{config.encoder_id}` and `{config.llm_id}`; "
             f"aggregator temperature {config.tau:g}."]
    made = config.made
    if made.get("summary"):
        lines.append(f"How it was made: {made['summary'].rstrip('. ')}.")
    # Scalar facts and the training settings; the per-evaluation history stays in config.json.
    facts = {k: v for k, v in made.items() if isinstance(v, (int, float, str)) and k not in ("summary", "data_dir")}
    facts.update(made.get("settings", {}))
    if facts:
        lines.append("Details: " + ", ".join(f"{k} = {v}" for k, v in facts.items()) + ".")
    for path in RESULTS_FILES:
        if path.is_file():
            lines += ["", f"From `assets/results/{path.name}`:", "", path.read_text(encoding="utf-8")]
    return "\n".join(lines)


def _weights_frame(result: Comparison) -> pd.DataFrame:
    return pd.DataFrame(
        [{"item": f"#{t.position + 1}", "weight": round(t.weight, 4), "text": t.text[:300]} for t in result.top_items],
        columns=["item", "weight", "text"],
    )


def build_demo(studio: Studio) -> gr.Blocks:
    limits = studio.settings.limits
    personas = _personas()

    # --- handlers ------------------------------------------------------------------------

    identity = Identity(studio.store, studio.settings.db_path)

    def ensure_owner(owner: str | None) -> str:
        return identity.browser_token(owner)

    def identify(token: str | None, user: gr.OAuthProfile | None) -> str:
        """Who the visitor acts as: their Hugging Face account when signed in, else this browser's token."""
        return identity.visitor(token, user.username if user is not None else None)

    def show_preview(text, files, column, user):
        try:
            parsed = _parse(studio, text, files, column, user)
        except HistoryError as err:
            return f"⚠️ {markdown_text(str(err))}", gr.update(visible=False)
        users = gr.update(choices=parsed.users, value=user if user in parsed.users else (parsed.users or [None])[0],
                          visible=bool(parsed.users))
        return preview(parsed), users

    def profile_choices(owner: str | None, selected: str | None = None):
        profiles = studio.list_profiles(owner) if owner else []
        choices = [(f"{p['name']} · {p['n_items']} items · {p['created_at'][:16]}", p["id"]) for p in profiles]
        ids = [c[1] for c in choices]
        value = selected if selected in ids else (ids[0] if ids else None)
        return gr.update(choices=choices, value=value)

    @spaces.GPU(duration=120)
    def on_compute(owner, text, files, column, user, name, progress=gr.Progress()):
        if not owner:  # the button is enabled only after the page's load event has set it
            raise gr.Error("The page is still loading; try again in a moment.", print_exception=False)
        try:
            parsed = _parse(studio, text, files, column, user)
            progress((0, len(parsed.items)), desc="Encoding history items", unit="items")
            result = studio.compute_profile(
                owner, name.strip() or parsed.source, parsed.items, source=parsed.source,
                progress=lambda done, total: progress((done, total), desc="Encoding history items", unit="items"),
            )
        except (HistoryError, ServiceError) as err:
            raise page_error(err) from None
        cached = result.n_items - result.n_encoded
        status = (f"✅ **{markdown_text(result.name)}**: {result.n_items} items, {result.n_encoded} encoded now"
                  f" ({cached} from the cache) in {result.seconds:.1f} s. Your PPlug embedding is ready.")
        return status, profile_choices(owner, result.profile_id), result.profile_id

    @spaces.GPU(duration=60)
    def on_generate(owner, profile_id, request, max_new_tokens, decoding, temperature, top_p, seed):
        params = GenerationParams(
            max_new_tokens=int(max_new_tokens),
            temperature=float(temperature) if decoding == "Sample" else 0.0,
            top_p=float(top_p),
            seed=int(seed or 0),
        )
        try:
            for result in studio.generate(owner, profile_id, request, params):
                notes = " ".join(result.notes)
                if result.done:
                    notes = (notes + f" Generated in {result.timings['total_s']:.1f} s "
                             f"(first token after {result.timings['first_token_s']:.2f} s).").strip()
                frame = _weights_frame(result)
                yield result.personalized, result.generic, frame, frame, notes
        except ServiceError as err:
            raise page_error(err) from None

    def on_delete(owner):
        try:
            counts = studio.delete_my_data(owner)
        except ServiceError as err:
            raise page_error(err) from None
        removed = ", ".join(f"{n} {table}" for table, n in counts.items() if n) or "nothing"
        return f"Deleted: {removed}.", profile_choices(owner), None

    def load_persona(name):
        return personas[name].read_text(encoding="utf-8"), None, name

    # --- layout --------------------------------------------------------------------------

    # Uploaded files sit in Gradio's cache: delete them within two hours, whatever "Delete my data" does.
    with gr.Blocks(title="PPlug Studio", delete_cache=(3600, 3600)) as demo:
        # This browser's owner token. The BrowserState secret is public (Gradio sends it in /config).
        token = gr.BrowserState(None, storage_key="pplug_owner", secret=identity.browser_secret)
        owner = gr.State(None)  # who the visitor acts as (see identify)
        profile_id = gr.State(None)
        if studio.settings.hf_login:
            with gr.Row():
                gr.LoginButton(scale=0)
                gr.Markdown("Signed in, your profiles follow your Hugging Face account to any browser; "
                            "profiles made before signing in stay with this browser.")
        gr.Markdown(INTRO)
        gr.Markdown(studio.plug_description)

        with gr.Row():
            with gr.Column(scale=3):
                history = gr.Textbox(label="Your writing history", lines=10, max_lines=20,
                                     placeholder="Paste your posts, e-mails or essays here: one item per paragraph "
                                                 "(separate items with a blank line).")
                files = gr.File(label="…or upload files (.txt, .md, .json, .jsonl, .csv)", file_count="multiple",
                                file_types=[".txt", ".md", ".json", ".jsonl", ".csv", ".tsv"])
                with gr.Row():
                    column = gr.Textbox(label="CSV text column", value="text", scale=1)
                    lamp_user = gr.Dropdown(label="LaMP user", choices=[], visible=False, scale=1)
                if personas:
                    gr.Markdown("Or try an example persona:")
                    with gr.Row():
                        persona_buttons = [gr.Button(name, size="sm") for name in personas]
            with gr.Column(scale=2):
                parsed_preview = gr.Markdown("Paste or upload a history to see its items here.")
                name = gr.Textbox(label="Profile name", placeholder="e.g. My blog")
                # Enabled once the page's load event has given this browser its owner token (below).
                compute_btn = gr.Button("Compute my PPlug embedding", variant="primary", interactive=False)
                status = gr.Markdown()
                profiles = gr.Dropdown(label="Your profiles", choices=[], interactive=True)

        gr.Markdown("## Ask for something")
        request = gr.Textbox(label="Request", lines=2, placeholder=EXAMPLE_REQUESTS[0])
        gr.Examples(EXAMPLE_REQUESTS, inputs=request)
        with gr.Accordion("Generation settings (shared by both sides)", open=False):
            with gr.Row():
                max_new_tokens = gr.Slider(1, limits.max_new_tokens, value=min(64, limits.max_new_tokens), step=1,
                                           label="Max new tokens")
                decoding = gr.Radio(["Greedy", "Sample"], value="Greedy", label="Decoding")
                temperature = gr.Slider(0.05, 2.0, value=0.7, step=0.05, label="Temperature (sampling)")
                top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="Top-p (sampling)")
                seed = gr.Number(0, precision=0, label="Seed")
            policy = GenerationParams()
            gr.Markdown(f"Both sides avoid loops the same way: repetition penalty {policy.repetition_penalty:g} "
                        f"on tokens already written, no repeated {policy.no_repeat_ngram_size}-token sequence.")
        generate_btn = gr.Button("Generate", variant="primary")
        with gr.Row():
            personalized = gr.Textbox(label="Personalized (PPlug)", lines=8, interactive=False)
            generic = gr.Textbox(label="Generic (same model, no plug)", lines=8, interactive=False)
        notes = gr.Markdown()
        with gr.Row():
            weights_plot = gr.BarPlot(x="item", y="weight", tooltip=["item", "weight", "text"], sort="-y",
                                      title="History items that weighed most for this request",
                                      y_title="aggregator weight")
            weights_table = gr.Dataframe(headers=["item", "weight", "text"], wrap=True, interactive=False,
                                         label="Their text")

        with gr.Accordion("About the plug and its measured results", open=False):
            gr.Markdown(_plug_report(studio))

        with gr.Accordion("Your data", open=False):
            gr.Markdown(f"Limits: {limits.max_items:,} items, {limits.max_item_chars:,} characters per item, "
                        f"{limits.max_upload_mb:g} MB per file, {limits.max_new_tokens} new tokens. Your profiles "
                        "are visible only from this browser" + (" (or, signed in, from your Hugging Face account)."
                                                                 if studio.settings.hf_login else "."))
            delete_btn = gr.Button("Delete my data", variant="stop")
            deleted = gr.Markdown()

        # --- wiring ----------------------------------------------------------------------
        private = dict(api_visibility="private")
        demo.load(ensure_owner, token, token, **private).then(identify, token, owner, **private).then(
            profile_choices, owner, profiles, **private).then(
            lambda: gr.update(interactive=True), None, compute_btn, **private)
        for trigger in (history.change, files.change, column.submit, lamp_user.change):
            trigger(show_preview, [history, files, column, lamp_user], [parsed_preview, lamp_user], **private)
        if personas:
            for button, persona in zip(persona_buttons, personas):
                button.click(lambda p=persona: load_persona(p), None, [history, files, name], **private)
        compute_btn.click(on_compute, [owner, history, files, column, lamp_user, name],
                          [status, profiles, profile_id], **PROFILE_QUEUE, **private)
        profiles.change(lambda p: p, profiles, profile_id, **private)
        gen_inputs = [owner, profile_id, request, max_new_tokens, decoding, temperature, top_p, seed]
        gen_outputs = [personalized, generic, weights_plot, weights_table, notes]
        generate_btn.click(on_generate, gen_inputs, gen_outputs, **generate_queue(studio), **private)
        request.submit(on_generate, gen_inputs, gen_outputs, **generate_queue(studio), **private)
        delete_btn.click(on_delete, owner, [deleted, profiles, profile_id], **private)

        add_api(studio)
    add_study(demo, studio)  # the user-study pages: /study?study=NAME and /study-admin
    guard_inputs(demo)  # raw inputs: argument count and file references, before Gradio reads them
    demo.queue(default_concurrency_limit=1, max_size=limits.max_queue)
    return demo
