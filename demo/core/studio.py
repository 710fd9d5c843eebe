"""The service layer: what the app can do, in plain Python calls.

The UI (``demo.app.ui``) and the API endpoints call only this module; it owns the models, the
plug and the store, and it is the only place that turns user actions into tensors and rows.

A request's path:
    history text/files --demo.core.history--> items --encode (cached by content hash)--> H [n, d_enc]
    --plug.project_items--> Proj(H) [n, d_llm]  (stored: the profile's personal embedding)
    request --encode--> x [d_enc] --plug.soft_tokens(x, H, Proj(H))--> [I; P; K] [n_soft, d_llm]
    --generation.Generator (one batched pass: personalized row + generic row)--> both texts
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import math
import sqlite3
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer

from . import know_me, personas
from .generation import GenerationParams, Generator, PromptIds, Request
from .history import ParsedHistory
from .inflight import SHUTTING_DOWN, InFlight, ShuttingDown
from .models import canonical_id, load_encoder, load_llm
from .plug import PPlug, add_shift
from .scheduler import Scheduler
from .settings import Settings
from .selfsup import examples_from_history
from .storage import Store
from .text import CONDITIONS, clean_text, has_visible_text, only_visible, plural, sha256_text
from .tuning import FitSettings, fit_shift

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (items encoded so far, total)


class ServiceError(ValueError):
    """A request the app cannot serve; the message is shown to the user as is."""


class NoSuchProfile(ServiceError):
    """The profile is not this owner's, or was deleted (perhaps while it was in use)."""


PROFILE_DELETED = "This profile was deleted (\"Delete my data\") while it was in use; nothing of it was kept."


@contextlib.contextmanager
def _profile_deleted_is_a_message() -> Iterator[None]:
    """A write for a profile that its owner deleted meanwhile fails its foreign key: say so in words."""
    try:
        yield
    except sqlite3.IntegrityError as err:
        if "FOREIGN KEY" not in str(err):
            raise
        raise NoSuchProfile(PROFILE_DELETED) from None


@dataclass
class ProfileResult:
    profile_id: str
    name: str
    n_items: int
    n_encoded: int  # items encoded now (the rest came from the cache)
    seconds: float
    reused: bool = False  # the owner had saved this writing under this name before: that profile, not a copy


@dataclass
class TuneResult:
    """How a "tune to me" fit went; ``gain`` is how much likelier the held-back items became per token."""

    profile_id: str
    steps: int  # the Adam step whose shift was kept (0: no step helped the held-back items, no shift)
    held_nll_before: float
    held_nll_after: float
    gain: float
    n_fit: int
    n_held: int
    seconds: float


@dataclass
class TopItem:
    position: int
    weight: float
    text: str


@dataclass
class Comparison:
    """The answers to one request under each condition, as far as generated."""

    outputs: dict[str, str] = field(default_factory=dict)  # condition -> text
    top_items: list[TopItem] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)  # the words of the keyword token K, nearest first
    notes: list[str] = field(default_factory=list)
    done: bool = False
    timings: dict = field(default_factory=dict)
    generation_id: int | None = None
    prompt_tokens: dict[str, int] = field(default_factory=dict)  # condition -> prompt length incl. soft tokens
    request: str = ""  # the request as answered (cleaned, perhaps cut)
    other: str = ""  # whose writing the "pplug-other" row used (a persona's label)
    cut: dict[str, bool] = field(default_factory=dict)  # condition -> it reached max_new_tokens (once done)
    closeness: dict[str, float] = field(default_factory=dict)  # condition -> to the visitor's writing (once done)

    @property
    def personalized(self) -> str:
        return self.outputs.get("pplug", "")

    @property
    def generic(self) -> str:
        return self.outputs.get("generic", "")


@dataclass
class _LoadedProfile:
    texts: list[str]
    items: torch.Tensor  # H [n, d_enc]
    projected: torch.Tensor  # Proj(H) [n, d_llm]
    # "Does it know me?" against the personas, by its settings: the same every time for this history and
    # plug, so a returning visitor's page (which asks it on load) gets it at once, not after seconds of scoring.
    measured: dict = field(default_factory=dict)


@contextlib.contextmanager
def _counted(in_flight: InFlight) -> Iterator[None]:
    """The block as counted work (``demo.core.inflight``): at exit it is waited for, not cut off."""
    try:
        with in_flight.work():
            yield
    except ShuttingDown:
        raise ServiceError(SHUTTING_DOWN) from None


def _in_flight(method: Callable) -> Callable:
    """Run the method as counted work."""
    @functools.wraps(method)
    def counted(self: "Studio", *args, **kwargs):
        with _counted(self.in_flight):
            return method(self, *args, **kwargs)
    return counted


class Studio:
    """Models loaded once; every user action is a method."""

    def __init__(self, settings: Settings, *, encoder: SentenceTransformer | None = None,
                 generator: Generator | None = None, store: Store | None = None, plug: PPlug | None = None):
        """What is not given is built from ``settings``: the encoder and the LLM loaded, the store
        opened at ``settings.db_path``, the plug loaded from ``settings.plug`` (untrained if empty).
        Given ones are shared, e.g. the loaded models between two studios with other limits."""
        self.settings = settings
        self.store = store if store is not None else Store(settings.db_path, journal_mode=settings.db_journal_mode)
        self.encoder = encoder if encoder is not None else load_encoder(settings)
        self.generator = generator if generator is not None else Generator(*load_llm(settings))
        self.model, self.tokenizer = self.generator.model, self.generator.tokenizer
        self.scheduler = Scheduler(self.generator, settings.batch_rows)  # one decode loop for every request
        self.in_flight = InFlight()  # encoding, tuning, scoring running now in the server's threads
        closing = weakref.ref(self.in_flight)
        atexit.register(lambda: (in_flight := closing()) and in_flight.close())
        self.encoder_id = canonical_id(settings.encoder)
        self.llm_id = canonical_id(settings.llm)
        self.plug = (plug if plug is not None else self._load_plug()).to(settings.device).eval()
        self.plug.requires_grad_(False)
        self.plug_id = self.plug.plug_id
        log.info("Plug %s (%s) for %s and %s", self.plug_id, self.plug.config.origin, self.encoder_id, self.llm_id)
        self._profiles: OrderedDict[str, _LoadedProfile] = OrderedDict()  # small LRU of loaded histories
        self._profiles_lock = threading.Lock()
        self._personas: dict[str, _LoadedProfile] = {}  # the example personas, loaded when first needed

    # --- the plug ------------------------------------------------------------------------

    def _load_plug(self) -> PPlug:
        d_enc = self.encoder.get_embedding_dimension()
        token_embeddings = self.model.get_input_embeddings().weight
        if self.settings.plug and Path(self.settings.plug, "config.json").is_file():
            return PPlug.load(self.settings.plug, encoder_id=self.encoder_id, llm_id=self.llm_id,
                              d_enc=d_enc, d_llm=token_embeddings.shape[1])
        if self.settings.plug:
            log.warning("No plug checkpoint at %s: using an untrained plug", self.settings.plug)
        return PPlug.untrained(self.encoder_id, self.llm_id, d_enc, token_embeddings, tau=self.settings.tau)

    @property
    def plug_description(self) -> str:
        """One honest sentence about the plug in use."""
        made = self.plug.config.made
        if self.plug.config.origin == "untrained":
            return ("**Untrained plug** (random projector): the personalized side shows the mechanism, "
                    "not learned personalization.")
        what = (made.get("summary") or f"{self.plug.config.origin} plug").rstrip(". ")
        return f"Plug `{self.plug_id}`: {what}."

    # --- encoding ------------------------------------------------------------------------

    @torch.inference_mode()
    @_in_flight
    def encode(self, texts: list[str], progress: Progress | None = None) -> np.ndarray:
        """L2-normalized encoder embeddings [n, d_enc] (float32), in the order given.

        Sorted by length and encoded in chunks so that progress can be reported between them.
        """
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        out = np.zeros((len(texts), self.encoder.get_embedding_dimension()), dtype=np.float32)
        chunk = max(self.settings.encode_batch_size * 4, 1)
        for start in range(0, len(order), chunk):
            idx = order[start:start + chunk]
            # No progress bar: at INFO level sentence-transformers prints one per call, i.e. per request.
            out[idx] = self.encoder.encode([texts[i] for i in idx], batch_size=self.settings.encode_batch_size,
                                           normalize_embeddings=True, convert_to_numpy=True,
                                           show_progress_bar=False)
            if progress:
                progress(min(start + chunk, len(order)), len(order))
        return out

    def _item_matrix(self, texts: list[str], progress: Progress | None) -> tuple[np.ndarray, int]:
        """[n, d_enc] for the texts, encoding only what the cache lacks. -> (matrix, number encoded)."""
        hashes = [sha256_text(t) for t in texts]
        cached = self.store.cached_embeddings(self.encoder_id, list(dict.fromkeys(hashes)))
        missing = list(dict.fromkeys(h for h in hashes if h not in cached))
        if progress:
            progress(len(texts) - len(missing), len(texts))
        if missing:
            text_of = dict(zip(hashes, texts))
            done_before = len(texts) - len(missing)
            report = (lambda done, _total: progress(done_before + done, len(texts))) if progress else None
            vectors = self.encode([text_of[h] for h in missing], report)
            new = dict(zip(missing, vectors))
            self.store.put_embeddings(self.encoder_id, new)
            cached.update(new)
        return np.stack([cached[h] for h in hashes]).astype(np.float32), len(missing)

    # --- profiles ------------------------------------------------------------------------

    @staticmethod
    def _check_owner(owner: str) -> None:
        # Owner tokens are the only key to a person's data: refuse short, guessable ones.
        if not isinstance(owner, str) or len(owner) < 16:
            raise ServiceError("Missing or too short owner token (at least 16 characters): reload the page.")
        if len(owner) > 256 or not owner.isprintable() or not only_visible(owner):
            raise ServiceError("Invalid owner token: use at most 256 visible characters, without spaces.")

    @_in_flight
    def compute_profile(self, owner: str, name: str, items: list[str], source: str = "",
                        progress: Progress | None = None) -> ProfileResult:
        """Store a history, encode it (cached), and store its personal embedding for the plug."""
        self._check_owner(owner)
        if not items:
            raise ServiceError("The history is empty: paste some of your writing, one item per paragraph.")
        if len(items) > self.settings.limits.max_items:
            raise ServiceError(f"Too many items ({len(items):,}); the limit is {self.settings.limits.max_items:,}.")
        name = " ".join(clean_text(name if isinstance(name, str) else "").split())[:200]
        name = name if has_visible_text(name) else "My history"
        start = time.perf_counter()
        # The same writing under the same name again (an example persona clicked twice, a page reloaded):
        # the profile saved before, with its tuned token, not a second copy in the visitor's list.
        saved = self.store.find_profile(owner, name, items)
        if saved is not None:
            return ProfileResult(saved, name, len(items), 0, time.perf_counter() - start, reused=True)
        matrix, n_encoded = self._item_matrix(items, progress)
        loaded, summary = self._personal_embedding(matrix)
        # One transaction: the owner's "Delete my data" comes before all of it or after, never between.
        with self.store.transaction():
            profile_id = self.store.create_profile(owner, name, items, source=source)
            self.store.put_profile_matrix(profile_id, self.encoder_id, matrix)
            self.store.put_personal_embedding(profile_id, self.plug_id, loaded.projected.float().cpu().numpy(),
                                              summary)
        return ProfileResult(profile_id, name, len(items), n_encoded, time.perf_counter() - start)

    @torch.inference_mode()
    def _projected(self, matrix: np.ndarray) -> _LoadedProfile:
        """H [n, d_enc] on the device and Proj(H) [n, d_llm] (texts left empty)."""
        items = torch.from_numpy(matrix).to(self.settings.device)
        return _LoadedProfile([], items, self.plug.project_items(items))

    @torch.inference_mode()
    def _personal_embedding(self, matrix: np.ndarray) -> tuple[_LoadedProfile, np.ndarray]:
        """H [n, d_enc] -> (H and Proj(H) [n, d_llm] on the device, the input-free summary [d_llm])."""
        loaded = self._projected(matrix)
        summary = self.plug.rescale(loaded.projected.mean(0))  # input-free view of P (uniform weights)
        return loaded, summary.float().cpu().numpy()

    def _owned_profile(self, owner: str, profile_id: str) -> dict:
        """The profile's row, or a ServiceError unless it exists and belongs to ``owner``."""
        self._check_owner(owner)
        profile = self.store.get_profile(profile_id, owner) if profile_id else None
        if profile is None:
            raise NoSuchProfile("No such profile for you: compute your PPlug embedding first.")
        return profile

    def _profile(self, owner: str, profile_id: str) -> _LoadedProfile:
        """A profile's texts, H and Proj(H): from memory, else one read each from the store."""
        self._owned_profile(owner, profile_id)
        with self._profiles_lock:
            if profile_id in self._profiles:
                self._profiles.move_to_end(profile_id)
                return self._profiles[profile_id]
        texts = [row["text"] for row in self.store.profile_items(profile_id)]
        if not texts:  # deleted since the check above
            raise NoSuchProfile(PROFILE_DELETED)
        matrix = self.store.profile_matrix(profile_id, self.encoder_id)
        with _profile_deleted_is_a_message():
            if matrix is None:  # made with another encoder: encode again (cached per item)
                matrix, _ = self._item_matrix(texts, None)
                self.store.put_profile_matrix(profile_id, self.encoder_id, matrix)
            stored = self.store.personal_embedding(profile_id, self.plug_id)
            if stored is None:  # made with another plug
                loaded, summary = self._personal_embedding(matrix)
                self.store.put_personal_embedding(profile_id, self.plug_id, loaded.projected.float().cpu().numpy(),
                                                  summary)
            else:
                device = self.settings.device
                loaded = _LoadedProfile([], torch.from_numpy(matrix).to(device),
                                        torch.from_numpy(stored[0]).to(device))
        loaded.texts = texts
        with self._profiles_lock:
            self._profiles[profile_id] = loaded
            while len(self._profiles) > 32:
                self._profiles.popitem(last=False)
        return loaded

    def list_profiles(self, owner: str) -> list[dict]:
        self._check_owner(owner)
        return self.store.list_profiles(owner)

    def profile_writing(self, owner: str, profile_id: str) -> ParsedHistory:
        """A stored profile's items, as they were computed, and where they came from."""
        profile = self._owned_profile(owner, profile_id)
        texts = [row["text"] for row in self.store.profile_items(profile_id)]
        return ParsedHistory(texts, profile.get("source") or "pasted text", notes=[])

    def delete_my_data(self, owner: str) -> dict[str, int]:
        """Remove every row that belongs to ``owner``."""
        self._check_owner(owner)
        with self._profiles_lock:
            for p in self.store.list_profiles(owner):
                self._profiles.pop(p["id"], None)
        return self.store.delete_owner_data(owner)

    # --- "tune to me" ---------------------------------------------------------------------

    def _request_embeddings(self, requests: list[str]) -> torch.Tensor:
        """x for requests [B] -> [B, d_enc]: the plug's own input encoder when it has one."""
        if self.plug.input_encoder is not None:
            return self.plug.encode_inputs(requests).float()
        return torch.from_numpy(self.encode(requests)).to(self.settings.device)

    def soft_without(self, profile: _LoadedProfile, requests: list[str], left_out: list[int],
                     x: torch.Tensor | None = None) -> torch.Tensor:
        """Soft tokens [B, n_soft, d_llm] for each request with the history less item ``left_out[b]``.

        How a person's own items are scored as answers: the item that is the answer never
        counts in the history it is conditioned on. x: the requests' embeddings [B, d_enc], when
        already computed.
        """
        n = profile.items.shape[0]
        mask = torch.ones(len(requests), n, dtype=torch.bool, device=profile.items.device)
        for b, i in enumerate(left_out):
            if n > 1:
                mask[b, i] = False
        x = self._request_embeddings(requests) if x is None else x
        items = profile.items[None].expand(len(requests), -1, -1)
        projected = profile.projected[None].expand(len(requests), -1, -1)
        return self.plug.soft_tokens(x, items, mask, projected)[0]

    @_in_flight
    def tune_profile(self, owner: str, profile_id: str, progress: Callable[[int, int], None] | None = None,
                     settings: FitSettings = FitSettings()) -> TuneResult:
        """Fit and store the profile's "tune to me" token: a shift of P fitted on its own items.

        Per-person optimisation of one token (``demo.core.tuning``), not the plug's amortized map.
        """
        profile = self._profile(owner, profile_id)
        made = examples_from_history(profile.texts)
        problem = self._tune_problem(profile.texts, made, settings)
        if problem:
            raise ServiceError(problem)
        k = min(settings.fit_examples + settings.held_back, len(made))
        spread = [made[round(i * (len(made) - 1) / max(k - 1, 1))] for i in range(k)]
        spread = list({e.index: e for e in spread}.values())  # evenly over the history, no repeats
        token = fit_shift(self.generator, lambda r, lo: self.soft_without(profile, r, lo), spread, settings,
                          progress)
        meta = {"steps": token.steps, "held_nll_before": token.held_nll_before,
                "held_nll_after": token.held_nll_after, "gain": token.gain, "n_fit": token.n_fit,
                "n_held": token.n_held, "seconds": round(token.seconds, 2)}
        with _profile_deleted_is_a_message():
            self.store.put_personal_token(profile_id, self.plug_id, token.shift.float().cpu().numpy(), meta)
        return TuneResult(profile_id=profile_id, **meta)

    @staticmethod
    def _tune_problem(texts: list[str], made: list, settings: FitSettings) -> str | None:
        """Why a history cannot be tuned to (too few items that make an example), or None."""
        if len(made) >= settings.held_back + 2:
            return None
        return (f"Tuning needs at least {settings.held_back + 2} texts of a sentence or more (this history has "
                f"{plural(len(texts), 'text')}, {len(made)} of them long enough): add more of your writing.")

    def tune_problem(self, owner: str, profile_id: str, settings: FitSettings = FitSettings()) -> str | None:
        """What :meth:`tune_profile` would refuse this profile for, without fitting (the page says it
        beside a "Tune to me" button that is off). Reads only the texts: no embedding is loaded for it."""
        texts = self.profile_writing(owner, profile_id).items
        return self._tune_problem(texts, examples_from_history(texts), settings)

    def tune_result(self, owner: str, profile_id: str) -> TuneResult | None:
        """How the profile's stored "tune to me" token for this plug was fitted, or None when it has
        none (read-only; what the page shows beside the profile)."""
        self._check_owner(owner)
        if not profile_id or self.store.get_profile(profile_id, owner) is None:
            return None
        stored = self.store.personal_token(profile_id, self.plug_id)
        return None if stored is None else TuneResult(profile_id=profile_id, **stored[1])

    def _personal_token(self, profile_id: str) -> torch.Tensor:
        stored = self.store.personal_token(profile_id, self.plug_id)
        if stored is None:
            raise ServiceError("This profile has no tuned token for this plug yet: press \"Tune to me\" first.")
        return torch.from_numpy(stored[0]).to(self.settings.device)

    # --- someone else's writing ------------------------------------------------------------

    def persona(self, name: str) -> _LoadedProfile:
        """An example persona's texts, H and Proj(H) (encoded once, through the embedding cache)."""
        if name not in self._personas:
            texts = personas.persona_items(name)
            matrix, _ = self._item_matrix(texts, None)
            loaded = self._projected(matrix)
            loaded.texts = texts
            self._personas[name] = loaded
        return self._personas[name]

    def persona_of(self, owner: str, profile_id: str | None) -> str | None:
        """The example persona whose writing this profile of the owner's holds (one a persona's button
        saved), else None: a profile of the visitor's own, or none at all."""
        profile = self.store.get_profile(profile_id, owner) if owner and profile_id else None
        name = personas.persona_named(profile["name"]) if profile else None
        if name is None:
            return None
        texts = [row["text"] for row in self.store.profile_items(profile_id)]
        return name if texts == personas.persona_items(name) else None

    def strangers(self, texts: list[str], limit: int = 4) -> list[str]:
        """Personas whose writing is not this history (a persona shares at most a few items with it)."""
        mine = set(texts)
        return [name for name in personas.persona_names()
                if len(mine & set(personas.persona_items(name))) * 2 < len(personas.persona_items(name))][:limit]

    @torch.inference_mode()
    def closeness(self, owner: str, profile_id: str, outputs: dict[str, str]) -> dict[str, float]:
        """Per answer (condition -> text), how close it comes to the subjects of the profile's writing: the
        sentence encoder's cosine between the answer and the mean of the profile's item embeddings, -1 to 1.
        Compare the columns of one request. (Answers with nothing visible, or a profile deleted meanwhile: none.)"""
        try:
            items = self._profile(owner, profile_id).items  # [n, d_enc]
        except NoSuchProfile:
            return {}
        answered = {c: t for c, t in outputs.items() if has_visible_text(t)}
        if not answered:
            return {}
        centre = F.normalize(items.float().mean(0), dim=-1)  # [d_enc]
        answers = torch.from_numpy(self.encode(list(answered.values()))).to(centre.device)  # [answers, d_enc]
        return {c: round(float(v), 3) for c, v in zip(answered, answers @ centre)}

    # --- does it know me? ------------------------------------------------------------------

    @_in_flight
    def know_me(self, owner: str, profile_id: str, against: str = "personas",
                settings: know_me.SignalSettings = know_me.SignalSettings()) -> know_me.KnowMe:
        """Are the profile's own held-back items likelier with its plug than with strangers' histories?

        against: "personas" (the example personas that are not this history) or "profiles" (the
        owner's other profiles). See ``demo.core.know_me``.
        """
        profile = self._profile(owner, profile_id)
        if against == "personas" and settings in profile.measured:
            return profile.measured[settings]
        examples = know_me.held_back_examples(profile.texts, settings)
        if len(profile.texts) < settings.min_items or len(examples) < settings.min_items:
            raise ServiceError(f"Too few texts to measure: \"does it know me?\" needs at least {settings.min_items} "
                               "texts of a sentence or more (with three longer words) in the history.")
        if against == "personas":
            others = {personas.persona_label(n): self.persona(n) for n in self.strangers(profile.texts)}
        elif against == "profiles":
            others = {}
            for row in self.store.list_profiles(owner):
                other = self._profile(owner, row["id"]) if row["id"] != profile_id else None
                if other is not None and set(other.texts) != set(profile.texts) and len(others) < 4:
                    others[row["name"]] = other
        else:
            raise ServiceError('Compare against "personas" or "profiles".')
        if not others:
            raise ServiceError("There is no one else's writing to compare with: "
                               + ("compute another profile first." if against == "profiles" else "no personas."))
        requests = [e.request for e in examples]
        with torch.inference_mode():
            x = self._request_embeddings(requests)
            yours = self.soft_without(profile, requests, [e.index for e in examples], x)  # leave-one-out
            strangers = {name: self.soft_without(p, requests, [], x) for name, p in others.items()}
        result = know_me.measure(self.generator, examples, yours, strangers, settings)
        self._owned_profile(owner, profile_id)  # deleted while it was measured: nothing of it goes out
        if against == "personas":
            profile.measured[settings] = result
        return result

    # --- generation ----------------------------------------------------------------------

    def _fit_request(self, request: str, params: GenerationParams, notes: list[str]) -> PromptIds:
        """Prompt ids for the request, cut to fit the model's context (with a note) if needed."""
        ids = self.generator.fit_prompt(request, self.generator.max_context - params.max_new_tokens - self.plug.n_soft)
        if ids.cut_to is not None:
            notes.append(f"The request was cut to {ids.cut_to:,} tokens to fit the model's context.")
        return ids

    def generate(self, owner: str, profile_id: str, request: str, params: GenerationParams,
                 conditions: tuple[str, ...] = ("pplug", "generic"), top_k: int = 8,
                 rag_k: int = 4, tuned: bool = False, log: bool = True, measure: bool = True) -> Iterator[Comparison]:
        """Stream the answers to ``request`` under each condition, all rows in one batch.

        Conditions: ``pplug`` (soft tokens), ``generic`` (same model, same prompt, no plug),
        ``rag`` (the ``rag_k`` history items most similar to the request pasted into the prompt),
        ``pplug+rag`` (both), ``pplug-other`` (the same plug with someone else's history: an example
        persona that is not this one; a control that shows which part of an answer is personal).
        ``tuned``: the personalized rows add the profile's "tune to me"
        token (``tune_profile``) to P. The rows are decoded in the shared loop beside other
        requests' rows (``demo.core.scheduler``); closing this iterator takes them out at the next
        step. ``log=False`` stores nothing (a study trial prepared before it is reached). ``measure``: once
        done, how close each answer comes to the profile's writing (``closeness``; studies show no such thing).
        """
        t0 = time.perf_counter()
        result, embeds, mask = self._prepare(owner, profile_id, request, params, conditions, top_k, rag_k, tuned)
        t_prep = time.perf_counter()
        first = None
        # On ZeroGPU only this call holds the GPU: decode here; elsewhere join the shared loop.
        if self.settings.zero_gpu:
            decoding = Request(embeds, mask, params)
            rows = self._decode_here(decoding)
        else:
            rows = decoding = self.scheduler.submit(embeds, mask, params)
        stream = iter(rows)
        try:
            for texts in stream:
                first = first or time.perf_counter()
                result.outputs = dict(zip(conditions, texts))
                yield result
        finally:
            stream.close()  # a consumer that left (cancelled, disconnected) frees its rows now
        end = time.perf_counter()
        result.timings = {"prepare_s": t_prep - t0, "first_token_s": (first or end) - t0, "total_s": end - t0}
        if params.stop_at_eos:
            result.cut = dict(zip(conditions, decoding.cut))
        if any(result.cut.values()):
            result.notes.append(f"An answer reached the limit of {plural(params.max_new_tokens, 'new token')} and may "
                                "stop mid-sentence (raise Max new tokens to read more).")
        if log:
            result.generation_id = self.store.log_generation(
                owner=owner, profile_id=profile_id, plug_id=self.plug_id, prompt=result.request,
                params={**asdict(params), "conditions": list(conditions), "tuned": tuned},
                personalized=result.personalized, generic=result.generic, timings=result.timings,
            )
        if measure:
            result.closeness = self._closeness_or_none(owner, profile_id, result.outputs)
        result.done = True
        yield result

    def _closeness_or_none(self, owner: str, profile_id: str, outputs: dict[str, str]) -> dict[str, float]:
        """``closeness``, or none if it fails: a measure beside the answers never costs the answers themselves."""
        try:
            return self.closeness(owner, profile_id, outputs)
        except Exception as err:  # e.g. shutting down, or out of GPU memory
            log.warning("The answers' closeness to the writing was not measured: %s", type(err).__name__)
            return {}

    def _decode_here(self, request: Request) -> Iterator[list[str]]:
        """Decode the rows in this thread, counted as work in flight until the last step."""
        with _counted(self.in_flight):
            yield from self.generator.run(request)

    @_in_flight
    def _prepare(self, owner: str, profile_id: str, request: str, params: GenerationParams,
                 conditions: tuple[str, ...], top_k: int, rag_k: int,
                 tuned: bool) -> tuple[Comparison, torch.Tensor, torch.Tensor]:
        """Check a request and build its rows -> (result so far, embeds [n, T, d_llm], mask [n, T])."""
        limits = self.settings.limits
        unknown = set(conditions) - set(CONDITIONS)
        if unknown or not conditions:
            raise ServiceError(f"Unknown condition(s) {sorted(unknown)}; choose from {', '.join(CONDITIONS)}.")
        if params.max_new_tokens < 1 or params.max_new_tokens > limits.max_new_tokens:
            raise ServiceError(f"Max new tokens must be between 1 and {limits.max_new_tokens}.")
        if not math.isfinite(params.temperature) or not 0 <= params.temperature <= 5:
            raise ServiceError("Temperature must be between 0 (greedy) and 5.")
        if not math.isfinite(params.top_p) or not 0 < params.top_p <= 1:
            raise ServiceError("Top-p must be above 0 and at most 1.")
        if not 0 <= params.seed < 2**63:
            raise ServiceError("The seed must be a whole number from 0 to 2^63 - 1.")
        request = clean_text(request if isinstance(request, str) else "").strip()
        if not has_visible_text(request):
            raise ServiceError("Type a request first.")
        notes: list[str] = []
        if len(request) > limits.max_prompt_chars:
            request = request[:limits.max_prompt_chars]
            notes.append(f"The request was cut to {limits.max_prompt_chars:,} characters.")
        profile = self._profile(owner, profile_id)
        with torch.inference_mode():
            x = self._request_embeddings([request])  # [1, d_enc]
            soft, weights = self.plug.soft_tokens(x, profile.items[None], projected=profile.projected[None])
            if tuned:
                soft = add_shift(soft, self._personal_token(profile_id))
            w = weights[0].float().cpu()
            words = self.plug.keywords_of(weights, profile.items[None])[0]
            plain = self._fit_request(request, params, notes)
            rag = None
            if any("rag" in c for c in conditions):
                # Retrieval ranks items by x·h, the same similarity the aggregator uses.
                nearest = torch.topk(w, min(rag_k, w.numel())).indices.tolist()
                rag = self._fit_request(rag_request(request, [profile.texts[i] for i in nearest]), params, notes)
            row_soft = {"pplug": soft[0], "pplug+rag": soft[0]}
            other = ""
            if "pplug-other" in conditions:
                name = (self.strangers(profile.texts, limit=1) or [None])[0]
                if name is None:
                    raise ServiceError("There is no example persona to compare with.")
                stranger, other = self.persona(name), personas.persona_label(name)
                row_soft["pplug-other"] = self.plug.soft_tokens(x, stranger.items[None],
                                                                projected=stranger.projected[None])[0][0]
            prompts = [rag if "rag" in c else plain for c in conditions]
            embeds, mask = self.generator.embed(prompts, [row_soft.get(c) for c in conditions])
        top = torch.topk(w, min(top_k, w.numel()))
        result = Comparison(notes=list(dict.fromkeys(notes)), prompt_tokens=dict(zip(conditions, mask.sum(1).tolist())),
                            other=other, top_items=[
            TopItem(int(i), float(v), profile.texts[int(i)]) for v, i in zip(top.values, top.indices)
        ], keywords=words, request=request)
        return result, embeds, mask


def rag_request(request: str, items: list[str], max_chars: int = 600) -> str:
    """The request with retrieved history items pasted in front of it, as LaMP's RAG prompts do."""
    context = "\n".join(f"- {' '.join(t.split())[:max_chars]}" for t in items)
    return f"Here are some texts I wrote before:\n{context}\n\n{request}"
