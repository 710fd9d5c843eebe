"""The participant flow (consent, history, next trial, vote) on top of :class:`demo.core.studio.Studio`,
and the admin functions (register, results, export)."""
from __future__ import annotations

import hmac
import logging
import random
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.generation import GenerationParams
from ..core.plug import PPlug
from ..core.settings import REPO_ROOT, STUDIES_DIR
from ..core.studio import ServiceError, Studio
from ..core.text import sha256_text, to_last_sentence
from .assign import new_seed, schedule, side_order
from .definition import (CHOICES, PARTICIPANT_RE, StudyDefinition, StudyError, load_definition_file, parse_definition,
                         persona_items)
from .results import Results, compute_results, write_export
from .store import StudyStore

log = logging.getLogger(__name__)

REASON_CHARS = 2000  # a vote's free-text reason is kept up to this length
PREFETCH_KEPT_S = 3600  # a prepared trial nobody came back for is forgotten after an hour


def _owner_for(token: str) -> str:
    """The owner of a participant's profiles: derived from the token, not the token itself."""
    return "study:" + sha256_text("owner:" + token)[:40]


def shown_answer(result, condition: str) -> str:
    """What a participant reads: an answer that reached the study's token limit ends at its last whole
    sentence (either side alike), so that a cut-off mid-word does not tell the answers apart."""
    text = result.outputs[condition]
    return to_last_sentence(text) if result.cut.get(condition) else text


@dataclass
class _Plan:
    """Trial ``index`` of a participant, everything but its answers."""

    index: int
    prompt: str
    request_source: str
    condition_a: str
    condition_b: str
    order_seed: int
    profile_id: str
    history_id: int


@dataclass
class _Prefetch:
    """A participant's next trial, generated in memory while they read the current one."""

    plan: _Plan
    started: float = field(default_factory=time.monotonic)
    ready: threading.Event = field(default_factory=threading.Event)
    abandoned: threading.Event = field(default_factory=threading.Event)  # the participant left
    result: object = None  # the Comparison, once generated (None if it failed or was abandoned)


class StudyService:
    """Studies on top of a :class:`demo.core.studio.Studio` (models, plug, store).

    While a participant reads and votes on trial k, trial k+1 of a study with fixed prompts is
    generated into memory (``_Prefetch``), so it appears without waiting. Nothing of it is stored
    or shown before the participant reaches it; one who leaves takes it out of the decode loop at
    the next step and it is forgotten.
    """

    def __init__(self, studio: Studio, admin_token: str = "", studies_dir: str | Path | None = STUDIES_DIR,
                 prefetch: bool | None = None):
        self.studio = studio
        self.admin_token = admin_token
        self.db = StudyStore(studio.store)
        self.prefetch = studio.settings.study_prefetch if prefetch is None else prefetch
        self._prefetched: dict[int, _Prefetch] = {}  # participant row id -> their next trial
        self._prefetch_lock = threading.Lock()
        self.load_errors: list[str] = []
        if studies_dir and Path(studies_dir).is_dir():
            for path in sorted(Path(studies_dir).iterdir()):
                if path.suffix.lower() in (".json", ".yaml", ".yml"):
                    try:
                        self.register(load_definition_file(path), source=f"file:{path.name}")
                    except StudyError as err:
                        log.warning("Study file %s not loaded: %s", path, err)
                        self.load_errors.append(str(err))

    # -- checks ------------------------------------------------------------------------

    def check_admin(self, token: str) -> None:
        if not self.admin_token:
            raise StudyError("Admin functions are off: set PPLUG_ADMIN_TOKEN in the app's environment.")
        if not hmac.compare_digest(sha256_text(token or ""), sha256_text(self.admin_token)):
            raise StudyError("Wrong admin token.")

    def plug_problem(self, definition: StudyDefinition) -> str:
        """Why the loaded plug cannot run this study ("" if it can)."""
        wanted = definition.plug
        loaded = self.studio.plug_id
        if wanted in ("", "loaded", loaded):
            return ""
        folder = Path(wanted) if Path(wanted).is_absolute() else REPO_ROOT / wanted
        if (folder / "config.json").is_file():
            try:
                wanted_id = PPlug.load(folder).plug_id
            except Exception as err:  # noqa: BLE001 - any failure is reported as is
                return f"Study `{definition.name}` names the plug checkpoint {wanted}, which cannot be loaded ({err})."
            if wanted_id == loaded:
                return ""
            return (f"Study `{definition.name}` needs the plug in {wanted} (`{wanted_id}`), but the app runs "
                    f"`{loaded}`. Start the app with PPLUG_PLUG={wanted}, or change the study's `plug`.")
        return (f"Study `{definition.name}` needs plug `{wanted}`, but the app runs `{loaded}` "
                f"(PPLUG_PLUG={self.studio.settings.plug or '(untrained)'}). Start the app with that plug "
                "checkpoint, or set the study's `plug` to \"loaded\".")

    def _validate_for_app(self, definition: StudyDefinition) -> None:
        limit = self.studio.settings.limits.max_new_tokens
        if definition.generation.max_new_tokens > limit:
            raise StudyError(f"Study `{definition.name}`: generation.max_new_tokens is "
                             f"{definition.generation.max_new_tokens}, above the app's limit of {limit} "
                             "(PPLUG_MAX_NEW_TOKENS).")

    def register(self, definition: StudyDefinition, source: str) -> tuple[int, bool]:
        self._validate_for_app(definition)
        return self.db.register(definition, source)

    def _study(self, name: str, admin: bool = False) -> tuple[int, StudyDefinition]:
        found = self.db.definition((name or "").strip())
        if found is None:
            raise StudyError(f"There is no study called {name!r}. " + (
                "Choose one of the saved studies (Refresh studies)." if admin else "Check the link you were given."))
        return found

    # -- participant flow --------------------------------------------------------------

    def info(self, name: str) -> dict:
        """What a participant sees before consent; stores nothing."""
        version, d = self._study(name)
        return {"study": d.name, "version": version, "title": d.title, "consent_text": d.consent.text,
                "consent_version": d.consent.version, "instructions": d.instructions,
                "trials": d.trials_per_participant, "history_mode": d.history.mode,
                "personas": list(d.history.personas), "participant_prompts": d.participant_prompts,
                "on_withdraw": d.consent.on_withdraw, "problem": self.plug_problem(d)}

    def consent(self, name: str, agree: bool, participant_id: str = "", prolific_study_id: str = "",
                session_id: str = "") -> dict:
        """Record consent (the first row stored for a participant). Returns id and secret token."""
        version, d = self._study(name)
        if agree is not True:  # "false", "no", [False], 1: only an explicit yes is consent
            raise StudyError("Please tick the consent box to take part; nothing has been stored.")
        problem = self.plug_problem(d)
        if problem:
            raise StudyError(problem)
        participant_id = (participant_id or "").strip()
        if participant_id and not PARTICIPANT_RE.match(participant_id):
            raise StudyError("The participant id in the link is not valid (letters, digits and -_.:@ only).")
        id_source = "prolific" if participant_id else "generated"
        participant_id = participant_id or "P-" + secrets.token_hex(5).upper()
        token = secrets.token_urlsafe(24)
        self.db.add_participant(study=d.name, version=version, participant_id=participant_id, id_source=id_source,
                                prolific_study_id=(prolific_study_id or "")[:128],
                                prolific_session_id=(session_id or "")[:128], token=token,
                                consent_version=d.consent.version, assignment_seed=new_seed())
        status = self.status(name, participant_id, token)
        return {"participant_id": participant_id, "participant_token": token, **status}

    def _participant(self, name: str, participant_id: str, token: str) -> tuple[dict, StudyDefinition]:
        participant = self.db.participant(name, participant_id, token)
        _, d = self.db.definition(name, participant["study_version"])
        return participant, d

    def status(self, name: str, participant_id: str, token: str) -> dict:
        """Where the participant is: ``history`` (give a history), ``trial`` (an open trial, shown
        again as it was), ``request`` (write the next request), ``next`` (a trial is to be
        generated) or ``done``. Generates nothing."""
        participant, d = self._participant(name, participant_id, token)
        trials = self.db.trials(participant["id"])
        voted = sum(1 for t in trials if t["choice"] is not None)
        out = {"study": d.name, "participant_id": participant["participant_id"], "total": d.trials_per_participant,
               "voted": voted, "history_mode": d.history.mode, "personas": list(d.history.personas)}
        history = self.db.history(participant["id"])
        out["persona"] = history["persona"] if history else ""
        if voted >= d.trials_per_participant:
            return {**out, "stage": "done", "completion_code": d.completion.code,
                    "redirect_url": d.completion.redirect_url}
        open_trial = next((t for t in trials if t["choice"] is None), None)
        if open_trial:
            return {**out, "stage": "trial", "trial": self._public_trial(open_trial, d)}
        if history is None:
            return {**out, "stage": "history"}
        return {**out, "stage": "request" if d.participant_prompts else "next", "index": len(trials) + 1}

    @staticmethod
    def _public_trial(trial: dict, d: StudyDefinition) -> dict:
        """What the participant sees of a trial: never the conditions."""
        return {"trial_id": trial["id"], "index": trial["trial_index"], "total": d.trials_per_participant,
                "request": trial["request"], "A": trial["output_a"], "B": trial["output_b"]}

    def set_history(self, name: str, participant_id: str, token: str, items: list[str] | None = None,
                    persona: str = "", source: str = "pasted text") -> dict:
        """Compute the participant's profile from their own items, or from a persona of the study.

        With ``items`` None and no ``persona`` in a persona study, a persona is assigned at random.
        """
        participant, d = self._participant(name, participant_id, token)
        if self.db.history(participant["id"]) is not None:  # once: a second one would be another profile
            raise StudyError("Your history is already set for this study.")
        if items is None:
            if d.history.mode == "participant":
                raise StudyError("This study uses your own writing: paste or upload some of it.")
            if persona and persona not in d.history.personas:
                raise StudyError(f"Unknown persona {persona!r} for this study.")
            persona = persona or random.Random(participant["assignment_seed"]).choice(sorted(d.history.personas))
            items = persona_items(persona)
            kind, source = "persona", f"persona {persona}"
        else:
            if d.history.mode == "persona":
                raise StudyError("This study assigns a persona; you do not need to give a history.")
            kind, persona = "own", ""
            if len(items) < d.history.min_items:
                raise StudyError(f"This study needs at least {d.history.min_items} items of your writing; you gave "
                                 f"{len(items)}. Separate items with a blank line.")

        try:
            result = self.studio.compute_profile(_owner_for(token), f"study {d.name}", items, source=source)
        except ServiceError as err:
            raise StudyError(str(err)) from None
        self.db.add_history(participant["id"], result.profile_id, kind, persona, result.n_items)
        status = self.status(name, participant_id, token)
        if status["stage"] == "next":
            self._start_prefetch(participant, d, token, status["index"])
        return status

    def next_trial(self, name: str, participant_id: str, token: str, request: str = "") -> dict:
        """The participant's open trial, or a new one generated now; ``done`` after the last vote.

        In a study where participants write their requests, without ``request`` this only returns
        the status (stage ``request``)."""
        status = self.status(name, participant_id, token)
        if status["stage"] in ("trial", "done"):
            return status
        if status["stage"] == "history":
            if status["history_mode"] != "persona":
                raise StudyError("Give your writing history first.")
            status = self.set_history(name, participant_id, token)
        if status["stage"] == "request" and not (request or "").strip():
            return status  # the participant writes the request first
        participant, d = self._participant(name, participant_id, token)
        problem = self.plug_problem(d)
        if problem:
            raise StudyError(problem)
        plan = self._plan(participant, d, status["index"], request)
        plan, result = self._take_prefetched(participant["id"], plan) or (plan, self._generate(plan, d, token))
        if result is None:
            raise StudyError("The trial could not be generated; please try again.")
        params = self._params(d, plan)
        trial = self.db.add_trial(
            participant=participant["id"], study=d.name, study_version=participant["study_version"],
            trial_index=plan.index, request=plan.prompt, request_source=plan.request_source,
            condition_a=plan.condition_a, condition_b=plan.condition_b, order_seed=plan.order_seed,
            output_a=shown_answer(result, plan.condition_a), output_b=shown_answer(result, plan.condition_b),
            params=asdict(params), plug_id=self.studio.plug_id, encoder_id=self.studio.encoder_id,
            llm_id=self.studio.llm_id, history=plan.history_id,
            generation_seconds=round(result.timings.get("total_s", 0.0), 3))
        self._start_prefetch(participant, d, token, plan.index + 1)
        return {**status, "stage": "trial", "trial": self._public_trial(trial, d)}

    # -- generating trials (now or ahead of time) --------------------------------------

    def _plan(self, participant: dict, d: StudyDefinition, index: int, request: str = "") -> _Plan:
        pair, prompt = schedule(d, participant["assignment_seed"])[index - 1]
        request_source = "study"
        if d.participant_prompts:
            prompt = request.strip()
            request_source = "participant"
        history = self.db.history(participant["id"])
        order_seed = new_seed()
        condition_a, condition_b = side_order(pair, order_seed)
        return _Plan(index, prompt, request_source, condition_a, condition_b, order_seed, history["profile_id"],
                     history["id"])

    @staticmethod
    def _params(d: StudyDefinition, plan: _Plan) -> GenerationParams:
        g = d.generation
        return GenerationParams(g.max_new_tokens, g.temperature, g.top_p, seed=plan.order_seed)

    def _generate(self, plan: _Plan, d: StudyDefinition, token: str, stop: threading.Event | None = None):
        """The trial's two answers (a Comparison); None if ``stop`` was set first. Stores nothing:
        the trial row, written when the participant reaches it, is the record."""
        steps = self.studio.generate(_owner_for(token), plan.profile_id, plan.prompt, self._params(d, plan),
                                     conditions=(plan.condition_a, plan.condition_b), rag_k=d.generation.rag_k,
                                     log=False, measure=False)
        try:
            result = None
            for result in steps:
                if stop is not None and stop.is_set():
                    return None  # closing the steps takes the rows out of the loop
        except ServiceError as err:
            raise StudyError(str(err)) from None
        finally:
            steps.close()
        return result

    def _start_prefetch(self, participant: dict, d: StudyDefinition, token: str, index: int) -> None:
        """Generate trial ``index`` in the background, if the study's prompts are known in advance."""
        if not self.prefetch or d.participant_prompts or index > d.trials_per_participant:
            return
        with self._prefetch_lock:
            # A participant who closed the page without leaving the study: forget their trial.
            for row, old in list(self._prefetched.items()):
                if time.monotonic() - old.started > PREFETCH_KEPT_S:
                    old.abandoned.set()
                    del self._prefetched[row]
            if participant["id"] in self._prefetched:
                return
            job = self._prefetched[participant["id"]] = _Prefetch(self._plan(participant, d, index))

        def run() -> None:
            try:
                job.result = self._generate(job.plan, d, token, stop=job.abandoned)
            except Exception as err:  # noqa: BLE001 - the trial is then generated when reached
                log.info("Prefetching a trial failed (%s); it is generated when reached", err)
            finally:
                job.ready.set()

        threading.Thread(target=run, name="pplug-study-prefetch", daemon=True).start()

    def _take_prefetched(self, participant_row: int, plan: _Plan) -> tuple[_Plan, object] | None:
        """The prefetched trial for ``plan``'s index (waiting for it if it is still being generated)."""
        with self._prefetch_lock:
            job = self._prefetched.pop(participant_row, None)
        if job is None:
            return None
        same = (job.plan.index, job.plan.prompt, job.plan.profile_id) == (plan.index, plan.prompt, plan.profile_id)
        if not same:
            job.abandoned.set()
            return None
        job.ready.wait()
        return (job.plan, job.result) if job.result is not None else None

    def _drop_prefetch(self, participant_row: int) -> None:
        with self._prefetch_lock:
            job = self._prefetched.pop(participant_row, None)
        if job is not None:
            job.abandoned.set()

    def interact(self, name: str, participant_id: str, token: str, trial_id: int) -> None:
        participant, _ = self._participant(name, participant_id, token)
        self.db.interact(participant["id"], int(trial_id))

    def vote(self, name: str, participant_id: str, token: str, trial_id: int, choice: str, reason: str = "") -> dict:
        """Store a vote; returns the participant's status, with the conditions if the study reveals them."""
        if choice not in CHOICES:
            raise StudyError(f"Unknown choice {choice!r}; one of {', '.join(CHOICES)}.")
        participant, d = self._participant(name, participant_id, token)
        if type(trial_id) is not int or not 0 < trial_id < 2**63:  # 1.5 or "1" must not become trial 1
            raise StudyError("This trial id is not valid (a whole number from 1): reload the study page.")
        recorded = self.db.vote(participant["id"], trial_id, choice, (reason or "").strip()[:REASON_CHARS],
                                d.trials_per_participant, d.completion.code)
        out = self.status(name, participant_id, token)
        if d.reveal_conditions:
            out["revealed"] = {"A": recorded["condition_a"], "B": recorded["condition_b"]}
        return out

    def withdraw(self, name: str, participant_id: str, token: str) -> dict:
        """The participant leaves the study: their data goes as the study's consent says."""
        participant, d = self._participant(name, participant_id, token)
        return self._withdraw(participant, d)

    def _withdraw(self, participant: dict, d: StudyDefinition) -> dict:
        # Their writing (profile, items, embeddings, generations) goes in every mode, first: if the
        # study rows then failed, the withdrawal is not recorded and can be asked for again.
        self._drop_prefetch(participant["id"])
        deleted: dict[str, int] = {}
        for owner in self.studio.store.owners_of(self.db.profile_ids(participant["id"])):
            for table, n in self.studio.delete_my_data(owner).items():
                deleted[table] = deleted.get(table, 0) + n
        study_rows = self.db.withdraw(participant["id"], d.name, d.consent.on_withdraw)
        kept = d.consent.on_withdraw == "keep_anonymized"
        message = ("You have left the study. Your writing and everything made from it are deleted; "
                   + ("as the consent said, your votes are kept without your participant id, requests, "
                      "comments or texts made from your writing." if kept else
                      "your votes and every other study record of you are deleted."))
        return {"study": d.name, "withdrawn": True, "mode": d.consent.on_withdraw, "message": message,
                "deleted": deleted, "study_rows": study_rows}

    # -- admin -------------------------------------------------------------------------

    def admin_withdraw(self, admin_token: str, name: str, participant_id: str) -> dict:
        """Withdraw a participant who asked the researcher (they have no token at hand)."""
        self.check_admin(admin_token)
        found = self.db.find_participant(name, (participant_id or "").strip())
        if found is None or found["id_source"] == "withdrawn":
            raise StudyError(f"Study `{name}` has no participant {participant_id!r} (or they have withdrawn).")
        _, d = self.db.definition(name, found["study_version"])
        return self._withdraw(found, d)

    def admin_register(self, admin_token: str, text: str, source: str = "admin") -> str:
        self.check_admin(admin_token)
        definition = parse_definition(text, where="the definition")
        version, new = self.register(definition, source)
        problem = self.plug_problem(definition)
        note = f" Warning: {problem}" if problem else ""
        return (f"Saved study `{definition.name}` as version {version}." if new else
                f"Study `{definition.name}` is unchanged (version {version}).") + note

    def admin_studies(self, admin_token: str) -> list[dict]:
        self.check_admin(admin_token)
        return self.db.studies()

    def admin_results(self, admin_token: str, name: str, completed_only: bool = False) -> Results:
        self.check_admin(admin_token)
        _, d = self._study(name, admin=True)
        return compute_results(self.db.export_rows(d.name), list(d.conditions), completed_only=completed_only,
                               study=d.name)

    def admin_export(self, admin_token: str, name: str, folder: str | Path) -> list[Path]:
        self.check_admin(admin_token)
        _, d = self._study(name, admin=True)
        return write_export(self.db.export_rows(d.name), folder, d.name)
