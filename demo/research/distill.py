"""Distil per-user "tune to me" shifts into the plug: a shift of P computed from the history alone.

    python -m demo.research.distill fit --tasks tweets,blog_posts --shard 0/2 --out runs/distill
    python -m demo.research.distill map --out runs/distill --save runs/distill/plug

``fit``: for every train user (one per user: the history of their first query, the ``--history-cap``
most recent items), the shift delta_u [d_llm] of P that "tune to me" fits (``demo.core.tuning``) on
self-supervised examples made from the user's own items, with nothing held back and a fixed number of
steps. Each is saved with the user's mean history embedding [d_enc] to ``<out>/<task>.<i>of<n>.pt``;
a rerun skips the users already there, so the fits resume across sessions and run in shards.
``--part k`` fits again on the user's next examples (the k-th group of ``--examples``), into
``<task>.<i>of<n>.p<k>.pt``: an independent, equally noisy target, which ``map`` averages with the others.

``map``: ridge regression (scikit-learn ``RidgeCV``, the penalty chosen by cross-validation over
users) from the standardized mean history embedding to delta_u (the mean over a user's parts), over every
fitted user of every task.
It becomes the plug's shift head (``PPlug.history_shift``): for a person it never saw, the plug
predicts from their history alone the shift a fit on their own writing would have found.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..core.plug import PPlug
from ..core.settings import REPO_ROOT, Settings
from ..core.tuning import FitSettings
from .lamp import DEFAULT_DATA, read_task
from .runtime import FrozenModels, SoftTokenModule, build_examples, fit_user_shift


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo.research.distill", description=__doc__.split("\n\n")[0])
    p.add_argument("step", choices=["fit", "map"])
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--tasks", default="tweets,blog_posts")
    p.add_argument("--plug", default=str(REPO_ROOT / "assets" / "plug"),
                   help="the plug whose P is shifted (a shift head it has is left out and replaced)")
    p.add_argument("--out", default=str(REPO_ROOT / "runs" / "distill"), help="folder of the fitted shifts")
    p.add_argument("--shard", default="0/1", help="i/n: fit every n-th user from the i-th")
    p.add_argument("--users", type=int, default=None, help="at most this many users per task (and shard)")
    p.add_argument("--history-cap", type=int, default=32)
    p.add_argument("--encoder-max-tokens", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="Adam steps per user")
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--examples", type=int, default=8, help="self-supervised examples per user")
    p.add_argument("--part", type=int, default=0, help="fit: on the part-th group of --examples examples")
    p.add_argument("--gain", type=float, default=1.0,
                   help="map: scale of the predicted shift's personal part (ridge shrinks it toward the mean)")
    p.add_argument("--save", default=None, help="map: folder of the plug with its shift head")
    p.add_argument("--cache", default=None)
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args(argv)


def base_plug(folder: str | Path, **models: str) -> PPlug:
    """The plug without its shift head, if it has one: the P that the shifts are fitted to and added to.
    ``models`` (encoder_id, llm_id) are checked by ``PPlug.load``."""
    plug = PPlug.load(folder, **models)
    return plug.rebuilt(shift_head=False) if plug.config.shift_head else plug


def shard_path(out: Path, task: str, shard: str, part: int = 0) -> Path:
    i, n = shard.split("/")
    return out / (f"{task}.{i}of{n}.pt" if not part else f"{task}.{i}of{n}.p{part}.pt")


def fit(args) -> None:
    """Fit and save delta_u for the shard's train users of each task."""
    models = FrozenModels(Settings.from_env(), args.cache, args.encoder_max_tokens)
    models.model.requires_grad_(False)
    plug = base_plug(args.plug, encoder_id=models.encoder_id, llm_id=models.llm_id).requires_grad_(False)
    module = SoftTokenModule(plug.to(models.generator.device)).eval()
    settings = FitSettings(steps=args.steps, lr=args.lr, fit_examples=args.examples, held_back=0)
    i, n = (int(v) for v in args.shard.split("/"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for task in [t for t in args.tasks.split(",") if t]:
        split = read_task(args.data, task, "train")
        first = list({q.user_id: q for q in split.queries}.values())[i::n][:args.users]
        path = shard_path(out, task, args.shard, args.part)
        done = torch.load(path) if path.is_file() else {}
        todo = [q for q in first if q.user_id not in done]
        print(f"{task}: {len(done)} users fitted, {len(todo)} to go", flush=True)
        t0 = time.perf_counter()
        for k, q in enumerate(todo, 1):
            [example] = build_examples([type(split)(split.task, "train", [q])], models.cache, args.history_cap)
            token = fit_user_shift(models.generator, module, models.cache, example, args.history_cap, settings,
                                   skip=args.part * args.examples)
            if token.steps and 2 * token.n_fit >= args.examples:  # a part of too few examples is left out
                done[q.user_id] = {"shift": token.shift.cpu(), "mean": example.items.mean(0),
                                   "n_items": example.items.shape[0], "n_fit": token.n_fit}
            if k % 10 == 0 or k == len(todo):
                torch.save(done, path)
                print(f"{task}: {k}/{len(todo)} users, {(time.perf_counter() - t0) / k:.1f} s per user", flush=True)


def fit_map(args) -> dict:
    """Ridge from standardized mean history embeddings to the fitted shifts; the plug with its head.

    Two ridges, one linear head: the first predicts the mean shift of the user's task (which the
    embedding tells apart easily), the second the user's own departure from it, the personal part,
    which ``--gain`` scales. Scaling one ridge of the whole shift would scale the task part too and
    push P off for a kind of writing (scholar titles got worse that way).
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import cross_val_predict

    parts: dict[tuple[str, str], list[dict]] = {}
    for path in sorted(Path(args.out).glob("*.pt")):
        for u, r in torch.load(path).items():
            parts.setdefault((path.name.split(".")[0], u), []).append(r)
    # a user's parts share the history; their mean shift is a less noisy target
    rows = {k: {"mean": r[0]["mean"], "shift": torch.stack([p["shift"] for p in r]).mean(0)} for k, r in parts.items()}
    if len(rows) < 10:
        raise SystemExit(f"only {len(rows)} fitted users in {args.out}: run the fit step first")
    tasks = [task for task, _ in rows]
    X = torch.stack([r["mean"] for r in rows.values()]).double().numpy()  # [U, d_enc]
    Y = torch.stack([r["shift"] for r in rows.values()]).double().numpy()  # [U, d_llm]
    task_mean = {t: Y[[k == t for k in tasks]].mean(0) for t in set(tasks)}
    Y_task = np.stack([task_mean[t] for t in tasks])  # [U, d_llm]
    personal = Y - Y_task  # [U, d_llm]: each user's departure from their task's mean shift
    mean, std = X.mean(0), X.std(0).clip(1e-4)
    Z = (X - mean) / std
    alphas = np.logspace(0, 5, 11)
    task_ridge = RidgeCV(alphas=alphas).fit(Z, Y_task)
    ridge = RidgeCV(alphas=alphas).fit(Z, personal)
    predicted = cross_val_predict(RidgeCV(alphas=[ridge.alpha_]), Z, personal, cv=5)
    r2 = 1 - ((personal - predicted) ** 2).sum() / (personal ** 2).sum()
    report = {"users": {t: sum(1 for k in tasks if k == t) for t in dict.fromkeys(tasks)},
              "fits": sum(len(r) for r in parts.values()),
              "alpha": float(ridge.alpha_), "task_alpha": float(task_ridge.alpha_),
              "cv_r2_personal": float(r2), "gain": args.gain,
              "shift_norm": float(np.linalg.norm(Y, axis=1).mean()),
              "personal_norm": float(np.linalg.norm(personal, axis=1).mean()),
              "predicted_personal_norm": float(np.linalg.norm(predicted, axis=1).mean())}
    print(json.dumps(report), flush=True)
    if args.save:
        source = base_plug(args.plug)
        plug = source.rebuilt(shift_head=True, made={**source.config.made, "distill": {
            **report, "steps": args.steps, "lr": args.lr, "examples": args.examples,
            "history_cap": args.history_cap}})
        with torch.no_grad():
            plug.history_mean.copy_(torch.from_numpy(mean))
            plug.history_std.copy_(torch.from_numpy(std))
            # [d_llm, d_enc]: the task part as fitted, the personal part scaled
            plug.shift_head.weight.copy_(torch.from_numpy(task_ridge.coef_ + ridge.coef_ * args.gain))
            plug.shift_head.bias.copy_(torch.from_numpy(task_ridge.intercept_ + ridge.intercept_ * args.gain))
        plug.save(args.save)
        print(f"saved {plug.plug_id} to {args.save}", flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    fit(args) if args.step == "fit" else fit_map(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
