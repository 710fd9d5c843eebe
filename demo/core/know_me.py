"""Does it know me? A person's own writing, held back, scored with their plug and with strangers'.

A few of the person's own items are held back and turned into requests whose answer is the item
(``demo.core.selfsup``). Each answer's likelihood is measured by teacher forcing
(``demo.core.scoring``) in three ways:

* ``generic``: the LLM alone, no soft tokens;
* ``yours``: the plug with the person's history, leaving out the item being scored (leave-one-out);
* ``stranger``: the plug with someone else's history (the example personas, or the owner's other
  profiles; one per item, in turn).

If the plug carries the person, their own items are likelier with their own history than with a
stranger's. The figure a person reads is the per-word likelihood ratio
exp(mean_j [NLL_stranger_j - NLL_yours_j]) - 1, "N% more likely", with a paired bootstrap interval
over the held-back items; the verdict says plainly when it is not above a stranger's.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from .generation import Generator
from .scoring import bf16_autocast, nll_per_row, target_ids, teacher_forced_logits
from .selfsup import SelfExample, examples_from_history


@dataclass(frozen=True)
class SignalSettings:
    held_back: int = 8  # items scored at most
    min_items: int = 3  # fewer than this many usable items: no measure
    # Fewer than this many held-back items: at most "unclear". Three items all a little likelier
    # made a bootstrap interval above 0, a "yes" on too little to go on.
    sure_items: int = 6
    # Short rows: the cost is the LLM's forward pass over every row's tokens.
    max_prompt_tokens: int = 80
    max_target_tokens: int = 24
    chunk_tokens: int = 1024  # rows of similar length are run together, about this many tokens at once
    bf16: bool = True  # autocast the LLM to bfloat16 where it is fast (scoring.fast_bf16)

    def __post_init__(self):
        if not self.min_items <= self.sure_items <= self.held_back:
            raise ValueError("SignalSettings needs min_items <= sure_items <= held_back (else a \"yes\" could never "
                             "be given, and the advice to add writing would be wrong).")


def held_back_examples(texts: list[str], settings: SignalSettings = SignalSettings()) -> list[SelfExample]:
    """The last ``held_back`` items of a history that make a self-supervised example.

    The last ones: a "tune to me" token is fitted on the first ones, so that for a history of
    twenty or more such items it is measured on items it never saw.
    """
    return examples_from_history(texts)[-settings.held_back:]


@dataclass
class KnowMe:
    """The measure for one profile. NLLs are mean nats per answer token, one per held-back item."""

    nll: dict[str, list[float]]  # "generic", "yours", "stranger" -> [n]
    strangers: list[str]  # whose writing stood in for a stranger's, per item [n]
    seconds: float
    ci_level: float = 0.9
    sure_items: int = SignalSettings.sure_items  # fewer held-back items than this: never "yes"

    @property
    def n_items(self) -> int:
        return len(self.nll["yours"])

    def _diff(self, other: str) -> np.ndarray:
        return np.asarray(self.nll[other]) - np.asarray(self.nll["yours"])  # > 0: yours is likelier

    @property
    def vs_stranger(self) -> float:
        """How much likelier, per word, the held-back items are with your plug than a stranger's (0.05 = 5%)."""
        return math.expm1(float(self._diff("stranger").mean()))

    @property
    def vs_generic(self) -> float:
        """The same against the model without a plug."""
        return math.expm1(float(self._diff("generic").mean()))

    @property
    def items_better(self) -> int:
        """Held-back items likelier with your plug than with a stranger's."""
        return int((self._diff("stranger") > 0).sum())

    @functools.cached_property  # read by the verdict, the sentence and to_dict: one bootstrap per result
    def interval(self) -> tuple[float, float]:
        """Paired bootstrap interval of ``vs_stranger`` over the held-back items (``ci_level``)."""
        diff = self._diff("stranger")
        if len(diff) < 2 or np.ptp(diff) == 0:
            value = self.vs_stranger
            return value, value
        ci = stats.bootstrap((diff,), np.mean, confidence_level=self.ci_level, n_resamples=2000,
                             method="percentile", random_state=0).confidence_interval
        return math.expm1(ci.low), math.expm1(ci.high)

    @property
    def verdict(self) -> str:
        """"yes" (the interval is above 0, on at least ``sure_items`` items), "unclear" (better on average,
        within chance or on too few items), or "no"."""
        if self.vs_stranger <= 0:
            return "no"
        return "yes" if self.interval[0] > 0 and self.n_items >= self.sure_items else "unclear"

    def sentence(self) -> str:
        """The result in plain words, with the item count."""
        n, pct, better = self.n_items, abs(self.vs_stranger) * 100, self.items_better
        # Leave-one-out: "8 texts held back" alone read as if a history of 8 had nothing left for the plug.
        items = (f"{n} of your own {'text' if n == 1 else 'texts'}, each held back from your plug in turn"
                 if n > 1 else "1 of your own texts held back from your plug")
        count = f"{better} of {n} were likelier with your plug"
        # A mean and a majority pointing different ways: say both, so that they do not seem to clash.
        if self.vs_stranger <= 0 and better * 2 > n:
            count += ", but the rest were much less likely"
        elif self.vs_stranger > 0 and better * 2 < n:
            count = f"only {count}, but by more than the others lost"
        if self.verdict == "no":
            how = (f"on average {pct:.1f}% *less* likely per word with your plug than with someone else's"
                   if pct >= 0.05 else "about as likely with your plug as with someone else's")
            return (f"**Not yet: the plug does not know you better than a stranger.** With {items}, your writing "
                    f"was {how} ({count}).")
        few = self.verdict == "unclear" and self.interval[0] > 0  # it would be a "yes" on more items
        head = ("**Yes, measurably.**" if self.verdict == "yes"
                else "**Not clearly: too few texts to be sure.**" if few
                else "**Not clearly: a small difference that could be chance.**")
        more = (f" A firm answer needs at least {self.sure_items} texts, each a sentence or longer: add more of "
                "your writing." if few else "")
        return (f"{head} With {items}, your writing was {pct:.1f}% more likely per word with your plug than "
                f"with someone else's ({count}).{more}")

    def relative_likelihood(self) -> dict[str, float]:
        """Per-word likelihood of the held-back items under each condition, the model without a plug = 100."""
        generic = np.asarray(self.nll["generic"])
        return {name: 100 * math.exp(float((generic - np.asarray(self.nll[name])).mean()))
                for name in ("generic", "stranger", "yours")}

    def to_dict(self) -> dict:
        low, high = self.interval
        return {"n_items": self.n_items, "verdict": self.verdict, "sentence": self.sentence(),
                "vs_stranger": self.vs_stranger, "vs_stranger_interval": [low, high], "ci_level": self.ci_level,
                "vs_generic": self.vs_generic, "items_better": self.items_better, "strangers": self.strangers,
                "relative_likelihood": self.relative_likelihood(), "nll": self.nll,
                "seconds": self.seconds}


def score(generator: Generator, examples: list[SelfExample], soft: dict[str, torch.Tensor | None],
          settings: SignalSettings = SignalSettings()) -> dict[str, list[float]]:
    """Teacher-forced NLL of every example's answer under each condition.

    soft: condition -> soft tokens [n, k, d_llm] for the n examples, or None (no soft tokens).
    -> condition -> [n] mean NLL per answer token.

    Rows are sorted by length and run in chunks of about ``chunk_tokens`` tokens, so that short
    rows are not padded to the longest one.
    """
    prompts = [generator.fit_prompt(e.request, settings.max_prompt_tokens) for e in examples]
    targets = [target_ids(generator, e.target, settings.max_target_tokens) for e in examples]
    rows = [(c, j) for c in soft for j in range(len(examples))]
    rows.sort(key=lambda r: len(prompts[r[1]].plain) + len(targets[r[1]]))
    out = {c: [math.nan] * len(examples) for c in soft}
    autocast = bf16_autocast(generator.device, settings.bf16)
    start = 0
    while start < len(rows):
        width = len(prompts[rows[start][1]].plain) + len(targets[rows[start][1]]) + 2
        chunk = rows[start:start + max(1, settings.chunk_tokens // width)]
        start += len(chunk)
        with torch.inference_mode(), autocast:
            nll = nll_per_row(*teacher_forced_logits(
                generator, [prompts[j] for _, j in chunk], [None if soft[c] is None else soft[c][j] for c, j in chunk],
                [targets[j] for _, j in chunk]))
        for (c, j), value in zip(chunk, nll.float().tolist()):
            out[c][j] = value
    return out


def measure(generator: Generator, examples: list[SelfExample], yours: torch.Tensor,
            strangers: dict[str, torch.Tensor], settings: SignalSettings = SignalSettings()) -> KnowMe:
    """Score the held-back examples with no plug, with ``yours`` and with a stranger's soft tokens.

    yours: [n, n_soft, d_llm]; strangers: name -> [n, n_soft, d_llm]. Item j is scored with stranger
    j mod K (one stranger row per item keeps the cost at three rows per item).
    """
    t0 = time.perf_counter()
    names = list(strangers)
    whose = [names[j % len(names)] for j in range(len(examples))]
    stranger = torch.stack([strangers[name][j] for j, name in enumerate(whose)])
    nll = score(generator, examples, {"generic": None, "yours": yours, "stranger": stranger}, settings)
    return KnowMe(nll=nll, strangers=whose, seconds=time.perf_counter() - t0, sure_items=settings.sure_items)
