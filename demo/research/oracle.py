"""Can one soft token carry a user? A per-user oracle for the frozen LLM and a trained plug.

    python -m demo.research.oracle --tasks tweets,scholar_titles --users 24 --steps 20 --lr 0.02 --out runs/oracle

For each of ``--users`` train users with at least three queries, the plug's personal token P is
shifted by a vector delta_u fitted by gradient descent on the NLL of the user's first two gold
outputs (the LLM, the encoder and the plug stay frozen). The third query is held out, and its gold
NLL is measured with the user's own delta_u, with the next user's delta_v, and with no shift (the
plug as trained). A held-out own - other below 0 means that a soft token *can* carry something
about the user that this LLM uses for a new request; the trained plug's own - other history
difference (``demo.research.evaluate``) then says how much of that its history -> P map recovers.
"""
from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..core.plug import PPlug, add_shift
from ..core.settings import REPO_ROOT, Settings
from ..core.scoring import nll_per_row, target_ids, teacher_forced_logits
from .lamp import DEFAULT_DATA, SHARED_TASKS, read_task
from .metrics import paired_bootstrap
from .runtime import (FrozenModels, SoftTokenModule, build_examples, soft_tokens)

FIT, HELD_OUT = 2, 1  # queries per user: fitted on, held out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo.research.oracle", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--tasks", default=",".join(t for t in SHARED_TASKS if t != "blog_posts"),
                   help="tasks whose train users have three queries (blog_posts has at most two)")
    p.add_argument("--plug", default=str(REPO_ROOT / "assets" / "plug"))
    p.add_argument("--users", type=int, default=24, help="train users per task")
    p.add_argument("--steps", type=int, default=20, help="Adam steps fitting each user's shift")
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--history-cap", type=int, default=16)
    p.add_argument("--encoder-max-tokens", type=int, default=128)
    p.add_argument("--max-prompt-tokens", type=int, default=192)
    p.add_argument("--max-target-tokens", type=int, default=48)
    p.add_argument("--cache", default=None, help="Store file of item embeddings (default: <cache dir>/train_cache.db)")
    p.add_argument("--out", default=str(REPO_ROOT / "runs" / "oracle"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args(argv)


class Oracle(FrozenModels):
    def __init__(self, args, settings: Settings):
        super().__init__(settings, args.cache, args.encoder_max_tokens)
        self.args = args
        self.model.requires_grad_(False)
        plug = PPlug.load(args.plug, encoder_id=self.encoder_id, llm_id=self.llm_id).requires_grad_(False)
        self.plug = SoftTokenModule(plug.to(self.generator.device)).eval()

    def nll(self, prompts, soft, targets) -> torch.Tensor:
        """Mean gold NLL per token of each row [B]; soft [B, n_soft, d_llm] or None rows."""
        return nll_per_row(*teacher_forced_logits(self.generator, prompts, list(soft), targets))

    def fit_user(self, examples) -> tuple[torch.Tensor, tuple]:
        """delta_u [d_llm] fitted on the first FIT examples, and the held-out row (prompt, soft, target)."""
        g, a = self.generator, self.args
        prompts = [g.fit_prompt(e.query.input, a.max_prompt_tokens) for e in examples]
        targets = [target_ids(g, e.query.output, a.max_target_tokens) for e in examples]
        with torch.no_grad():
            soft, _ = soft_tokens(self.plug, examples, g.device)  # [FIT + HELD_OUT, n_soft, d_llm]
        delta = torch.zeros(soft.shape[-1], device=g.device, requires_grad=True)
        optimizer = torch.optim.Adam([delta], lr=a.lr)
        for _ in range(a.steps):
            loss = self.nll(prompts[:FIT], add_shift(soft[:FIT], delta), targets[:FIT]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return delta.detach(), (prompts[FIT], soft[FIT], targets[FIT])

    @torch.no_grad()
    def held_out(self, deltas: list[torch.Tensor], rows: list[tuple]) -> dict[str, list[float]]:
        """Per user: held-out NLL with the own shift, the next user's shift, no shift, and no plug."""
        out = collections.defaultdict(list)
        for i, (prompt, soft, target) in enumerate(rows):
            for name, delta in (("own", deltas[i]), ("other", deltas[(i + 1) % len(deltas)]),
                                ("plug", torch.zeros_like(deltas[i]))):
                shifted = add_shift(soft, delta)  # [n_soft, d_llm]
                out[name].append(float(self.nll([prompt], shifted[None], [target])[0]))
            out["generic"].append(float(self.nll([prompt], [None], [target])[0]))
        return out

    def run_task(self, name: str) -> dict:
        a = self.args
        split = read_task(a.data, name, "train")
        by_user = collections.defaultdict(list)
        for q in split.queries:
            by_user[q.user_id].append(q)
        users = sorted(u for u, qs in by_user.items() if len(qs) >= FIT + HELD_OUT)
        if len(users) < 2:
            raise SystemExit(f"{name}: fewer than two train users with {FIT + HELD_OUT} queries")
        random.Random(a.seed).shuffle(users)
        users = users[:a.users]
        t0 = time.perf_counter()
        deltas, rows = [], []
        for u in users:
            queries = by_user[u][:FIT + HELD_OUT]
            examples = build_examples([type(split)(split.task, "train", queries)], self.cache, a.history_cap)
            delta, row = self.fit_user(examples)
            deltas.append(delta)
            rows.append(row)
        nll = self.held_out(deltas, rows)
        own_other = paired_bootstrap(nll["own"], nll["other"])
        return {"users": len(users), **{f"nll_{k}": float(np.mean(v)) for k, v in nll.items()},
                "own_minus_other": own_other,
                "own_better_share": float(np.mean(np.array(nll["own"]) < np.array(nll["other"]))),
                "own_minus_plug": paired_bootstrap(nll["own"], nll["plug"]),
                "shift_norm": float(torch.stack(deltas).norm(dim=-1).mean()),
                "p_norm": float(torch.stack([soft[1] for _, soft, _ in rows]).norm(dim=-1).mean()),
                "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    oracle = Oracle(args, Settings.from_env())
    results = {"plug": str(args.plug), "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
               "tasks": {}}
    for name in [t for t in args.tasks.split(",") if t]:
        results["tasks"][name] = r = oracle.run_task(name)
        d = r["own_minus_other"]
        print(f"{name}: held-out NLL own {r['nll_own']:.3f} other {r['nll_other']:.3f} plug {r['nll_plug']:.3f} "
              f"generic {r['nll_generic']:.3f}; own - other {d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}], "
              f"own better for {r['own_better_share']:.0%} of {r['users']} users", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "oracle.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
