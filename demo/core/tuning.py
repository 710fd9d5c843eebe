""""Tune to me": one personal token fitted to a person's own history.

This is per-user optimisation, not PPlug's amortized map: the plug computes P from the history as
usual, and a shift delta [d_llm] is added to P, fitted by a few Adam steps on self-supervised
examples made from the person's own items (``demo.core.selfsup``: each item is the answer to a request
made from it, with the rest of the history as the history). The LLM, the encoder and the plug stay
frozen. A few examples are held back; the fit keeps the delta with the lowest held-back NLL
(early stopping), so a fit that does not help returns a zero shift.

    soft tokens [I; P + delta] -> the personalized row, as in ``demo.generation``
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .generation import Generator
from .plug import add_shift
from .scoring import bf16_autocast, nll_per_row, target_ids, teacher_forced_logits
from .selfsup import SelfExample

# soft(requests, left_out) -> [B, n_soft, d_llm]: the plug's soft tokens for each request, computed with
# the history without item left_out[b] (the item that is the answer).
SoftFn = Callable[[list[str], list[int]], torch.Tensor]
Progress = Callable[[int, int], None]  # (steps done, steps planned)


@dataclass(frozen=True)
class FitSettings:
    steps: int = 16  # Adam steps at most (of 8 and 16 steps at lr 0.02-0.03, the best on dev users)
    lr: float = 0.02
    fit_examples: int = 10  # self-supervised examples the shift is fitted on (6 was too few for blogs)
    held_back: int = 4  # examples kept apart for early stopping (0: none, the last step is kept)
    patience: int = 3  # stop after this many steps without a better held-back NLL ...
    # ... but not before this step: on two held-back items the first steps often looked worse by noise
    # (the example personas stopped at step 3 with nothing kept, where 8 other items of theirs were
    # already .1-.3 nats/token likelier by step 10); 6 keeps a fit that helps nothing under 15 s on 2 cores.
    min_steps: int = 6
    # Short rows: the fit's cost is the LLM's forward and backward over every row's tokens.
    max_prompt_tokens: int = 96
    max_target_tokens: int = 24
    bf16: bool = True  # autocast the LLM to bfloat16 while fitting, where it is fast (scoring.fast_bf16)


@dataclass
class TunedToken:
    shift: torch.Tensor  # [d_llm], added to P (the second soft token)
    steps: int  # the step whose shift was kept (0 = none helped)
    held_nll_before: float  # mean held-back NLL per token with the plug alone
    held_nll_after: float  # ... with the kept shift
    n_fit: int
    n_held: int
    seconds: float

    @property
    def gain(self) -> float:
        """How much likelier the held-back items became, as a share of per-token probability."""
        return float(torch.tensor(self.held_nll_before - self.held_nll_after).exp() - 1)


def fit_shift(generator: Generator, soft_fn: SoftFn, examples: list[SelfExample],
              settings: FitSettings = FitSettings(), progress: Progress | None = None) -> TunedToken:
    """Fit delta on the first ``fit_examples`` examples, stop early on the next ``held_back``."""
    t0 = time.perf_counter()
    need = settings.fit_examples + settings.held_back
    if len(examples) < settings.held_back + 2:
        raise ValueError(f"Tuning needs at least {settings.held_back + 2} texts that make an example; "
                         f"this history has {len(examples)}.")
    examples = examples[:need]
    held, fit = examples[:settings.held_back], examples[settings.held_back:]
    prompts = [generator.fit_prompt(e.request, settings.max_prompt_tokens) for e in examples]
    targets = [target_ids(generator, e.target, settings.max_target_tokens) for e in examples]
    with torch.no_grad():
        soft = soft_fn([e.request for e in examples], [e.index for e in examples]).float()  # [B, n_soft, d_llm]
    device = generator.device
    autocast = bf16_autocast(device, settings.bf16)
    nh = len(held)

    def nll(rows: slice, shift: torch.Tensor) -> torch.Tensor:
        with autocast:
            return nll_per_row(*teacher_forced_logits(generator, prompts[rows], list(add_shift(soft[rows], shift)),
                                                      targets[rows]))

    delta = torch.zeros(soft.shape[-1], device=device, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=settings.lr)
    with torch.no_grad():
        before = float(nll(slice(0, nh), delta).mean()) if nh else float("nan")
    best, best_step, best_delta, since = before, 0, delta.detach().clone(), 0
    for step in range(1, settings.steps + 1):
        loss = nll(slice(nh, None), delta).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if progress:
            progress(step, settings.steps)
        if not nh:  # nothing held back: keep the last step
            best_step, best_delta = step, delta.detach().clone()
            continue
        with torch.no_grad():
            held_nll = float(nll(slice(0, nh), delta).mean())
        if held_nll < best:
            best, best_step, best_delta, since = held_nll, step, delta.detach().clone(), 0
        else:
            since += 1
        if since >= settings.patience and step >= settings.min_steps:
            break
    return TunedToken(best_delta, best_step, before, best, len(fit), nh, time.perf_counter() - t0)
