"""Assignment and randomization: which pair of conditions and which request each trial gets, and the
left/right order, drawn from seeds that are stored with the trial."""
from __future__ import annotations

import random
import secrets

from .definition import StudyDefinition


def schedule(definition: StudyDefinition, assignment_seed: int) -> list[tuple[tuple[str, str], str]]:
    """The (pair of conditions, request) of each trial of a participant.

    Pairs are balanced: every pair appears once per block of ``len(pairs)`` trials, in a shuffled
    order. Requests are the study's prompts, shuffled, repeated when there are fewer than trials
    (empty strings when participants write their own). Deterministic in ``assignment_seed``.
    """
    rng = random.Random(assignment_seed)
    pairs: list[tuple[str, str]] = []
    while len(pairs) < definition.trials_per_participant:
        block = definition.pairs
        rng.shuffle(block)
        pairs.extend(block)
    prompts: list[str] = []
    while definition.prompts and len(prompts) < definition.trials_per_participant:
        block = list(definition.prompts)
        rng.shuffle(block)
        prompts.extend(block)
    n = definition.trials_per_participant
    return list(zip(pairs[:n], prompts[:n] if prompts else [""] * n))


def side_order(pair: tuple[str, str], order_seed: int) -> tuple[str, str]:
    """(condition shown as A on the left, condition shown as B on the right): a fair coin from the seed."""
    first, second = pair
    return (second, first) if random.Random(order_seed).random() < 0.5 else (first, second)


def new_seed() -> int:
    return secrets.randbits(31)
