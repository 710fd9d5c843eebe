"""Export files (CSV, JSONL) and the results of a study: pairwise win rates and Bradley–Terry scores."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..core.text import markdown_table
from . import stats as study_stats
from .store import EXPORT_COLUMNS


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(EXPORT_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else (str(v).lower() if isinstance(v, bool) else v))
                         for k, v in row.items()})
    return buffer.getvalue()


def to_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_export(rows: list[dict], folder: str | Path, study: str, formats=("csv", "jsonl")) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    paths = []
    for fmt in formats:
        path = folder / f"{study}-trials-{stamp}.{fmt}"
        path.write_text(to_csv(rows) if fmt == "csv" else to_jsonl(rows), encoding="utf-8")
        paths.append(path)
    return paths


@dataclass
class Results:
    study: str
    pairs: list[dict]
    bradley_terry: list[dict]
    participants: list[dict]
    trials: int
    included: int
    excluded: dict[str, int] = field(default_factory=dict)

    def markdown(self) -> str:
        pairs = [[f"{r['x']} (X) vs {r['y']} (Y)", r["votes"], r["x_wins"], r["y_wins"], r["ties"], r["both_bad"],
                  f"{r['win_rate']:.3f}", f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]", r["bootstrap_unit"]]
                 for r in self.pairs]
        lines = [f"### Study `{self.study}`: {self.included} votes analysed of {self.trials} trials",
                 "Excluded: " + (", ".join(f"{n} {why}" for why, n in self.excluded.items() if n) or "none") + ".",
                 "", markdown_table(pairs, ["pair", "votes", "X wins", "Y wins", "ties", "both bad", "win rate of X",
                                            "95% CI", "unit"])]
        if self.bradley_terry:
            scores = [[r["rank"], r["condition"], f"{r['score']:+.3f}", f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]",
                       r["votes"]] for r in self.bradley_terry]
            lines += ["", markdown_table(scores, ["rank", "condition", "Bradley–Terry score", "95% CI", "votes"])]
        return "\n".join(lines)


def compute_results(rows: list[dict], conditions: list[str] | None = None, completed_only: bool = False,
                    n_boot: int = study_stats.N_BOOT, seed: int = 0, study: str = "") -> Results:
    """Results from export rows (read from the database by :meth:`StudyStore.export_rows`)."""
    study = study or (rows[0]["study"] if rows else "")
    excluded = {"unvoted (unfinished) trials": sum(1 for r in rows if not r["voted"])}
    if completed_only:
        excluded["votes of participants who did not finish"] = sum(
            1 for r in rows if r["voted"] and not r["participant_completed"])
    used = [r for r in rows if r["voted"] and (r["participant_completed"] or not completed_only)]
    votes = [{"participant": r["participant_id"], "a": r["condition_a"], "b": r["condition_b"],
              "choice": r["choice"]} for r in used]
    per_participant: dict[str, dict] = {}
    for r in rows:
        p = per_participant.setdefault(r["participant_id"], {
            "participant_id": r["participant_id"], "trials": 0, "voted": 0, "A": 0, "B": 0, "tie": 0,
            "both_bad": 0, "completed": r["participant_completed"]})
        p["trials"] += 1
        if r["voted"]:
            p["voted"] += 1
            p[r["choice"]] += 1
    n_conditions = len({c for v in votes for c in (v["a"], v["b"])})
    return Results(
        study=study, pairs=study_stats.pairwise(votes, conditions, n_boot=n_boot, seed=seed),
        bradley_terry=(study_stats.bradley_terry(votes, conditions, n_boot=min(n_boot, 1000), seed=seed)
                       if n_conditions > 2 else []),
        participants=list(per_participant.values()), trials=len(rows), included=len(used), excluded=excluded)
