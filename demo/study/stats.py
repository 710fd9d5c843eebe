"""Statistics of a user study: pairwise win rates and Bradley–Terry scores, with bootstrap intervals.

Input is one record per voted trial: ``{"participant", "a", "b", "choice"}`` where ``a`` and ``b``
are the conditions shown as "A" and "B" and ``choice`` is one of ``A``, ``B``, ``tie``, ``both_bad``.

Conventions (stated in the results tab and docs/studies.md):

* **Win rate** of condition X against Y = (wins of X + ½ · (ties + both bad)) / votes on the pair.
  "Both are bad" expresses no preference, so it counts as a tie here; its count is reported apart.
* **95% intervals** are percentile bootstrap intervals (``scipy.stats.bootstrap``). Votes of one
  participant are not independent, so the bootstrap resamples *participants* (with all their votes);
  with fewer than two participants it falls back to resampling single votes, and the table says which
  unit was used.
* **Bradley–Terry**: P(X beats Y) = p_X / (p_X + p_Y), the maximum-likelihood fit (``scipy.optimize``)
  with ties as half a win each way and 0.5 pseudo-wins each way per compared pair (keeps the fit
  finite when one condition always wins). Scores are log-strengths centred at mean 0 (difference of
  1 = odds e:1).
"""
from __future__ import annotations

from collections import defaultdict
from html import escape
from itertools import combinations

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit
from scipy.stats import bootstrap

CHOICES = ("A", "B", "tie", "both_bad")
LEVEL = 0.95
N_BOOT = 2000


def _score_for(vote: dict, condition: str) -> float:
    """1 if ``condition`` won the vote, 0 if it lost, 0.5 for a tie or both bad."""
    choice = vote["choice"]
    if choice in ("tie", "both_bad"):
        return 0.5
    winner = vote["a"] if choice == "A" else vote["b"]
    return 1.0 if winner == condition else 0.0


def _interval(data: tuple[np.ndarray, ...], statistic, n_boot: int, rng: np.random.Generator,
              level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of ``statistic(*data, axis=-1)``, the arrays of ``data`` resampled
    together along their last axis (one entry per unit). One unit can only resample to itself."""
    if data[0].shape[-1] < 2:
        value = statistic(*data, axis=-1)
        return value, value
    result = bootstrap(data, statistic, n_resamples=n_boot, paired=len(data) > 1, vectorized=True,
                       confidence_level=level, method="percentile", rng=rng)
    return result.confidence_interval.low, result.confidence_interval.high


def _ordered_pairs(votes: list[dict], conditions: list[str] | None) -> list[tuple[str, str]]:
    seen = list(conditions or [])
    for v in votes:
        for c in (v["a"], v["b"]):
            if c not in seen:
                seen.append(c)
    rank = {c: i for i, c in enumerate(seen)}
    present = {tuple(sorted((v["a"], v["b"]), key=rank.get)) for v in votes}
    return [p for p in combinations(seen, 2) if p in present]


def _win_rate(sums: np.ndarray, counts: np.ndarray, axis: int = -1) -> np.ndarray:
    """Win rate over the votes of the chosen units: their summed scores over their summed votes."""
    return sums.sum(axis) / counts.sum(axis)


def pairwise(votes: list[dict], conditions: list[str] | None = None, n_boot: int = N_BOOT,
             seed: int = 0, level: float = LEVEL) -> list[dict]:
    """One row per compared pair (X, Y), X first in ``conditions`` order.

    Columns: pair, x, y, votes, x_wins, y_wins, ties, both_bad, win_rate (of X), ci_low, ci_high,
    participants, bootstrap_unit.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for x, y in _ordered_pairs(votes, conditions):
        pv = [v for v in votes if {v["a"], v["b"]} == {x, y}]
        scores = np.array([_score_for(v, x) for v in pv])
        by_participant: dict[str, list[float]] = defaultdict(list)
        for v, s in zip(pv, scores):
            by_participant[v["participant"]].append(s)
        if len(by_participant) >= 2:
            unit = "participant"
            sums = np.array([sum(s) for s in by_participant.values()])
            counts = np.array([len(s) for s in by_participant.values()], dtype=float)
        else:
            unit = "vote"
            sums, counts = scores, np.ones_like(scores)
        low, high = _interval((sums, counts), _win_rate, n_boot, rng, level)
        rows.append({
            "pair": f"{x} vs {y}", "x": x, "y": y, "votes": len(pv),
            "x_wins": int(sum(1 for v in pv if v["choice"] in ("A", "B") and _score_for(v, x) == 1.0)),
            "y_wins": int(sum(1 for v in pv if v["choice"] in ("A", "B") and _score_for(v, x) == 0.0)),
            "ties": int(sum(1 for v in pv if v["choice"] == "tie")),
            "both_bad": int(sum(1 for v in pv if v["choice"] == "both_bad")),
            "win_rate": float(scores.mean()), "ci_low": float(low), "ci_high": float(high),
            "participants": len(by_participant), "bootstrap_unit": unit,
        })
    return rows


def _bt_fit(wins: np.ndarray, prior: float = 0.5) -> np.ndarray:
    """Log-strengths (mean 0) from ``wins[..., i, j]`` = (possibly fractional) wins of i over j.

    ``wins`` [k, k] -> [k]; or a stack [B, k, k] -> [B, k], fitted at once (the fits are independent).
    """
    compared = (wins + np.swapaxes(wins, -1, -2)) > 0
    w = wins + prior * compared
    shape = w.shape[:-1]  # [..., k]

    def nll(flat: np.ndarray) -> tuple[float, np.ndarray]:
        s = flat.reshape(shape)
        d = s[..., :, None] - s[..., None, :]  # [..., k, k]: s_i - s_j
        lost = w * expit(-d)  # the gradient's weight of each (i beat j)
        return -(w * log_expit(d)).sum(), (lost.sum(-2) - lost.sum(-1)).ravel()

    fit = minimize(nll, np.zeros(int(np.prod(shape))), jac=True, method="L-BFGS-B",
                   options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 10_000, "maxcor": 30})
    s = fit.x.reshape(shape)
    return s - s.mean(-1, keepdims=True)


def _win_matrix(votes: list[dict], index: dict[str, int]) -> np.ndarray:
    wins = np.zeros((len(index), len(index)))
    for v in votes:
        a, b = index[v["a"]], index[v["b"]]
        s = _score_for(v, v["a"])
        wins[a, b] += s
        wins[b, a] += 1 - s
    return wins


def bradley_terry(votes: list[dict], conditions: list[str] | None = None, n_boot: int = 1000,
                  seed: int = 0, level: float = LEVEL) -> list[dict]:
    """Bradley–Terry scores with bootstrap intervals (participants resampled), best first.

    Columns: condition, score, ci_low, ci_high, votes (comparisons it took part in), rank.
    """
    names = [c for c in (conditions or []) if any(c in (v["a"], v["b"]) for v in votes)]
    for v in votes:
        for c in (v["a"], v["b"]):
            if c not in names:
                names.append(c)
    if len(names) < 2:
        return []
    index = {c: i for i, c in enumerate(names)}
    scores = _bt_fit(_win_matrix(votes, index))
    groups: dict[str, list[dict]] = defaultdict(list)
    for v in votes:
        groups[v["participant"]].append(v)
    units = list(groups.values()) if len(groups) >= 2 else [[v] for v in votes]
    unit_wins = np.stack([_win_matrix(u, index) for u in units])  # [units, k, k]

    def scores_of(chosen: np.ndarray, axis: int = -1) -> np.ndarray:
        """Scores [k, B] of B resamples of units, ``chosen`` [B, units] (or [units]) their indices."""
        return _bt_fit(unit_wins[chosen.astype(int)].sum(axis - 2)).T

    low, high = _interval((np.arange(len(units), dtype=float),), scores_of, n_boot, np.random.default_rng(seed), level)
    rows = []
    for c, i in index.items():
        rows.append({"condition": c, "score": float(scores[i]), "ci_low": float(low[i]), "ci_high": float(high[i]),
                     "votes": sum(1 for v in votes if c in (v["a"], v["b"]))})
    rows.sort(key=lambda r: -r["score"])
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def forest_svg(rows: list[dict], label: str, value: str, low: str, high: str, ref: float,
               lo_axis: float, hi_axis: float, title: str) -> str:
    """A small SVG dot-and-whisker plot (one row per estimate, a dashed reference line)."""
    if not rows:
        return ""
    width, left, right, row_h, top = 640, 170, 30, 30, 36
    height = top + row_h * len(rows) + 30
    span = hi_axis - lo_axis or 1.0

    def x(v: float) -> float:
        v = min(max(v, lo_axis), hi_axis)
        return left + (v - lo_axis) / span * (width - left - right)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
             f'<text x="{left}" y="18" font-weight="bold">{escape(title)}</text>',
             f'<line x1="{x(ref):.1f}" y1="{top - 8}" x2="{x(ref):.1f}" y2="{height - 24}" '
             'stroke="#999" stroke-dasharray="4 3"/>']
    for tick in np.linspace(lo_axis, hi_axis, 5):
        parts.append(f'<text x="{x(tick):.1f}" y="{height - 8}" text-anchor="middle" fill="#555">{tick:.2f}</text>')
    for i, r in enumerate(rows):
        y = top + row_h * i + row_h / 2
        parts.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{escape(str(r[label]))}</text>')
        if np.isfinite(r[low]) and np.isfinite(r[high]):
            parts.append(f'<line x1="{x(r[low]):.1f}" y1="{y:.1f}" x2="{x(r[high]):.1f}" y2="{y:.1f}" '
                         'stroke="#4f46e5" stroke-width="2"/>')
        parts.append(f'<circle cx="{x(r[value]):.1f}" cy="{y:.1f}" r="5" fill="#4f46e5"/>')
    parts.append("</svg>")
    return "".join(parts)
