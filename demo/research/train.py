"""Train a PPlug on LaMP-format tasks, or build the training-free plug.

    python -m demo.research.train --data ../shared/data --tasks tweets,scholar_titles,blog_posts \\
        --steps 480 --out assets/plug
    accelerate launch -m demo.research.train ...          # several GPUs: Hugging Face accelerate
    python -m demo.research.train --training-free --out runs/training-free

Only the plug is trained (projector, instruction embedding, instruction projector, the log-gate)
and, with ``--train-input-encoder``, a copy of the encoder that embeds the request x, as in the
paper (saved in ``<out>/input_encoder``, about 90 MB for MiniLM); the history encoder and the LLM
stay frozen. The loss is the NLL of the gold output given
``prefix + [I; P] + request``, plus ``--kl-weight`` times KL(generic || plug) on the gold
output's tokens, which keeps the plug's next-token distributions near the generic model's (a
first run without it drifted into short, telegraphic outputs). Each step draws one task (with
probability proportional to the square root of its size) and a batch of its examples.

Item embeddings are computed once and kept in a Store file (``--cache``). Checkpoints (plug,
optimizer, scheduler, step, RNG states) go to ``<run-dir>/last.pt`` and a run resumes from it.
Every ``--eval-every`` steps the plug generates greedy answers on a small dev subset; the step
with the best mean ROUGE-L over the tasks is kept in ``<run-dir>/best`` and copied to ``--out``.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..core.plug import PPlug
from ..core.selfsup import example_for
from ..core.settings import REPO_ROOT, Settings
from ..core.scoring import fit_prompt, nll_per_row, target_ids, teacher_forced_logits
from .lamp import SELFSUP_RULE, SHARED_TASKS, LampSplit, Query, read_task
from .retrieval import lamp_rag_request
from .runtime import (EmbeddingCache, FrozenModels, Example, SoftTokenModule, ce_and_kl, generate, other_histories,
                      soft_tokens)

log = logging.getLogger("demo.research.train")

DEFAULT_DATA = str(REPO_ROOT.parent / "shared" / "data")
INSTRUCTION_TEXT = "Write the answer the way this particular person writes."


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo.research.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DEFAULT_DATA, help="folder of the LaMP-format tasks (default ../shared/data)")
    p.add_argument("--tasks", default=",".join(SHARED_TASKS), help="comma-separated task folders")
    p.add_argument("--out", default=str(REPO_ROOT / "assets" / "plug"), help="where the selected plug is saved")
    p.add_argument("--run-dir", default=str(REPO_ROOT / "runs" / "plug"), help="checkpoints and logs")
    p.add_argument("--cache", default=None, help="Store file of item embeddings (default: <cache dir>/train_cache.db)")
    p.add_argument("--training-free", action="store_true", help="only build the ridge-regression plug and save it")
    p.add_argument("--init", choices=["random", "training-free"], default="random")
    p.add_argument("--init-from", default=None,
                   help="start from this plug checkpoint's weights (its standardization statistics are "
                        "recomputed when --standardize is set)")
    p.add_argument("--vocab-limit", type=int, default=16_000, help="training-free plug: first N vocabulary ids")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--kl-weight", type=float, default=0.1)
    p.add_argument("--other-weight", type=float, default=0.0,
                   help="weight of the own-vs-other-user margin term (0 = plain NLL + KL)")
    p.add_argument("--other-margin", type=float, default=0.1,
                   help="nats per token by which the own history must beat another user's")
    p.add_argument("--gate-lr-scale", type=float, default=1.0,
                   help="learning rate of the plug's log-gate relative to --lr (the gate barely moves at 1)")
    p.add_argument("--train-input-encoder", action="store_true",
                   help="also fine-tune a copy of the encoder that embeds the request x (as the paper; slow on CPU, "
                        "and the checkpoint then holds the encoder too)")
    p.add_argument("--input-encoder-lr", type=float, default=2e-5)
    p.add_argument("--standardize", action="store_true",
                   help="standardize item embeddings (train-item mean and std) before the projector")
    p.add_argument("--tau", type=float, default=0.05, help="aggregator temperature (cosine logits / tau)")
    p.add_argument("--history-cap", type=int, default=16, help="most recent N history items per query")
    p.add_argument("--encoder-max-tokens", type=int, default=128,
                   help="history items are cut at this many encoder tokens (saves encoding time on CPU)")
    p.add_argument("--max-prompt-tokens", type=int, default=192)
    p.add_argument("--rag-k", type=int, default=0,
                   help="train for pplug+rag: put the top-k BM25 profile items before each request, as "
                        "demo.research.evaluate's rag does (raise --max-prompt-tokens to fit them)")
    p.add_argument("--max-target-tokens", type=int, default=48)
    p.add_argument("--augment", type=float, default=0.0,
                   help="history augmentation: share of examples whose history is randomly thinned")
    p.add_argument("--augment-drop", type=float, default=0.5, help="share of items dropped when thinned")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-per-task", type=int, default=6, help="dev queries per task for checkpoint selection")
    p.add_argument("--eval-max-new-tokens", type=int, default=32)
    p.add_argument("--save-every", type=int, default=25)
    p.add_argument("--limit", type=int, default=None, help="use only the first N train queries per task")
    p.add_argument("--selfsup", type=int, default=0,
                   help="also N self-supervised examples per train user, made from their profile items "
                        "(demo.core.selfsup); 0 = LaMP queries only")
    p.add_argument("--contrast-weight", type=float, default=0.0,
                   help="weight of the InfoNCE term over the batch's users (0 = off)")
    p.add_argument("--contrast-k", type=int, default=4, help="users scored per gold output by the InfoNCE term")
    p.add_argument("--llm-dtype", default=None, help="the frozen LLM's dtype (default PPLUG_LLM_DTYPE; "
                                                       "bfloat16 trains faster on CPUs with AMX/AVX-512 bf16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu / cuda (default: PPLUG_DEVICE or auto)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 is much faster than 2 on a busy 2-core machine)")
    return p.parse_args(argv)


# --- the training-free plug ----------------------------------------------------------------------


_BIAS_SHIFT = 8.0  # GELU(z + 8) - 8 == z to float precision for the |z| < 1 of token embeddings


@torch.no_grad()
def set_linear_map(mlp: torch.nn.Sequential, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Make Linear-GELU-Linear compute ``z = weight @ h + bias`` (GELU kept in its linear range)."""
    first, last = mlp[0], mlp[2]
    first.weight.copy_(weight)
    first.bias.copy_(bias + _BIAS_SHIFT)
    last.weight.copy_(torch.eye(last.weight.shape[0]))
    last.bias.fill_(-_BIAS_SHIFT)


@torch.no_grad()
def training_free_plug(cache: EmbeddingCache, model, tokenizer, encoder_id: str, llm_id: str,
                       tau: float = 0.05, alpha: float = 1.0, seed: int = 0, vocab_limit: int | None = 16_000) -> PPlug:
    """Projectors fitted by ridge regression from encoder space onto the LLM's token embeddings.

    Each vocabulary entry's text is encoded by the encoder (X) and regressed onto its embedding
    row (Y); the fitted linear map becomes both projectors, and the instruction vector is the
    encoding of a fixed instruction sentence. R^2 on a held-out tenth of the tokens is recorded.
    ``vocab_limit`` keeps the first ids only (the most frequent merges of a BPE vocabulary), to
    bound the encoding time on CPU.
    """
    table = model.get_input_embeddings().weight.detach().float().cpu()
    special = set(tokenizer.all_special_ids)
    ids, texts = [], []
    for i in range(min(table.shape[0], vocab_limit or table.shape[0])):
        text = tokenizer.decode([i]).strip()
        if text and i not in special:
            ids.append(i)
            texts.append(text)
    X = torch.from_numpy(cache.matrix(texts)).double()
    Y = table[ids].double()
    perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))
    held = perm[: len(ids) // 10]
    fit = perm[len(ids) // 10:]

    def ridge(rows):
        mx, my = X[rows].mean(0), Y[rows].mean(0)
        xc, yc = X[rows] - mx, Y[rows] - my
        W = torch.linalg.solve(xc.T @ xc + alpha * torch.eye(X.shape[1], dtype=X.dtype), xc.T @ yc)
        return W, my - mx @ W

    W, b = ridge(fit)
    pred = X[held] @ W + b
    r2 = 1 - ((pred - Y[held]) ** 2).sum() / ((Y[held] - Y[fit].mean(0)) ** 2).sum()
    W, b = ridge(torch.arange(len(ids)))  # final map on all tokens
    plug = PPlug.untrained(encoder_id, llm_id, X.shape[1], table, tau=tau, seed=seed)
    for mlp in (plug.projector, plug.instruction_projector):
        set_linear_map(mlp, W.T.float(), b.float())
    plug.instruction.copy_(torch.from_numpy(cache.matrix([INSTRUCTION_TEXT])[0]))
    plug.config.origin = "training-free"
    plug.config.made = {"method": "ridge regression, encoder(token text) -> token embedding row",
                        "alpha": alpha, "n_tokens": len(ids), "heldout_r2": round(float(r2), 4),
                        "instruction_text": INSTRUCTION_TEXT,
                        "summary": f"training-free (ridge map over {len(ids):,} vocabulary strings, "
                                   f"held-out R^2 {float(r2):.2f}); not trained on any task"}
    return plug


# --- training ---------------------------------------------------------------------------------------


def self_supervised_split(split: LampSplit, per_user: int, cap: int, seed: int) -> LampSplit:
    """Up to ``per_user`` queries made from each user's own profile items (``demo.core.selfsup``).

    Each query's gold output is one profile item, its input the task prompt made from that item,
    and its profile ``cap`` other items of the same profile drawn at random (never the item itself).
    The user's largest profile in the split is used.
    """
    kind = SELFSUP_RULE.get(split.task.like)
    if kind is None:
        return LampSplit(split.task, "self", [])
    profiles: dict[str, list[dict]] = {}
    for q in split.queries:
        if len(q.profile) > len(profiles.get(q.user_id, [])):
            profiles[q.user_id] = q.profile
    rng = random.Random(f"{seed}:{split.task.name}")
    queries = []
    for user, profile in sorted(profiles.items()):
        order = rng.sample(range(len(profile)), len(profile))
        made = 0
        for i in order:
            if made == per_user:
                break
            pair = example_for(profile[i], kind)
            if pair is None:
                continue
            others = [profile[j] for j in order if j != i][:cap]
            queries.append(Query(f"{user}-self-{i}", user, pair[0], others, pair[1]))
            made += 1
    return LampSplit(split.task, "self", queries)


def distinct_users(examples: list[Example], n: int, rng: random.Random) -> list[Example]:
    """``n`` examples of different users (fewer when the list has fewer users)."""
    batch, seen = [], set()
    for e in rng.sample(examples, min(len(examples), 8 * n)):
        if e.query.user_id not in seen:
            batch.append(e)
            seen.add(e.query.user_id)
            if len(batch) == n:
                break
    return batch


def dev_subset(args, splits_dev) -> list:
    """A few dev queries per task for checkpoint selection (tweets: its last ones)."""
    out = []
    for split in splits_dev:
        qs = split.queries
        pick = qs[-args.eval_per_task:] if len(qs) > 4 * args.eval_per_task else qs[:args.eval_per_task]
        out.append((split.task, pick))
    return out


class Trainer(FrozenModels):
    def __init__(self, args, settings: Settings, accelerator):
        super().__init__(settings, args.cache, args.encoder_max_tokens)
        self.args = args
        self.acc = accelerator

    def new_plug(self, train_examples: list[Example]) -> PPlug:
        """A plug to start from; the examples' items give the standardization statistics."""
        emb = self.model.get_input_embeddings().weight
        if self.args.init == "training-free":
            if self.args.standardize:
                raise SystemExit("--init training-free maps raw embeddings; it does not go with --standardize")
            plug = training_free_plug(self.cache, self.model, self.tokenizer, self.encoder_id, self.llm_id,
                                      tau=self.args.tau, seed=self.args.seed, vocab_limit=self.args.vocab_limit)
        else:
            plug = PPlug.untrained(self.encoder_id, self.llm_id, self.encoder.get_embedding_dimension(), emb,
                                   tau=self.args.tau, seed=self.args.seed, standardize=self.args.standardize)
            if self.args.standardize:
                plug.set_item_statistics(torch.cat([e.items for e in train_examples]))  # [n, d_enc]
        if self.args.init_from:
            start = PPlug.load(self.args.init_from, encoder_id=self.encoder_id, llm_id=self.llm_id)
            kept = {k: v for k, v in start.state_dict().items() if not k.startswith("item_")}
            plug.load_state_dict(kept, strict=False)
        if self.args.train_input_encoder:
            plug.attach_input_encoder(copy.deepcopy(self.encoder).train().requires_grad_(True))
        plug.config.origin = "trained"
        plug.config.made = {}
        return plug

    def examples(self, splits) -> list[Example]:
        from .runtime import build_examples

        return build_examples(splits, self.cache, self.args.history_cap, progress=self.acc.is_main_process)

    def rows(self, examples: list[Example]):
        k = self.args.rag_k
        requests = [lamp_rag_request(e.task, e.query, k)[0] if k else e.query.input for e in examples]
        prompts = [fit_prompt(self.generator, r, self.args.max_prompt_tokens) for r in requests]
        targets = [target_ids(self.generator, e.query.output, self.args.max_target_tokens) for e in examples]
        return prompts, targets

    @torch.no_grad()
    def evaluate(self, plug_module, subset) -> dict:
        """Greedy ROUGE-L (and teacher-forced NLL) of the plug and of the generic model on ``subset``."""
        from .metrics import rouge

        out = {}
        for task, queries in subset:
            ex = self.examples_by_id[task.name]
            exs = [ex[q.id] for q in queries]
            prompts, targets = self.rows(exs)
            soft, _ = soft_tokens(plug_module, exs, self.generator.device)
            n_new = min(task.max_new_tokens, self.args.eval_max_new_tokens)
            texts = generate(self.generator, prompts, list(soft), n_new)
            nll = nll_per_row(*teacher_forced_logits(self.generator, prompts, list(soft), targets))
            soft_o, _ = soft_tokens(plug_module, exs, self.generator.device, other_histories(exs))
            nll_o = nll_per_row(*teacher_forced_logits(self.generator, prompts, list(soft_o), targets))
            refs = [q.output for q in queries]
            r = rouge(texts, refs)
            out[task.name] = {"rougeL": r["rougeL"], "rouge1": r["rouge1"], "nll": float(nll.mean()),
                              "own_minus_other": float((nll - nll_o).mean()),
                              "mean_words": float(np.mean([len(t.split()) for t in texts])),
                              "example": texts[0][:160]}
        out["mean_rougeL"] = float(np.mean([v["rougeL"] for k, v in out.items() if isinstance(v, dict)]))
        return out

    @torch.no_grad()
    def evaluate_generic(self, subset) -> dict:
        from .metrics import rouge

        out = {}
        for task, queries in subset:
            exs = [self.examples_by_id[task.name][q.id] for q in queries]
            prompts, _ = self.rows(exs)
            n_new = min(task.max_new_tokens, self.args.eval_max_new_tokens)
            texts = generate(self.generator, prompts, [None] * len(prompts), n_new)
            out[task.name] = rouge(texts, [q.output for q in queries])["rougeL"]
        out["mean_rougeL"] = float(np.mean(list(out.values())))
        return out


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def thin_history(items: torch.Tensor, drop: float, rng: random.Random) -> torch.Tensor:
    """History augmentation: drop each item with probability ``drop``, keeping at least one."""
    n = items.shape[0]
    if n <= 1:
        return items
    keep = [i for i in range(n) if rng.random() >= drop] or [rng.randrange(n)]
    return items[keep]


def train(args) -> Path:
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from tqdm import tqdm

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings.from_env()
    if args.llm_dtype:
        settings = settings.with_(llm_dtype=args.llm_dtype)
    cpu = (args.device or settings.device) == "cpu"
    # a transformer encoder has weights its sentence embedding never uses (BERT's pooler): let DDP skip them
    ddp = DistributedDataParallelKwargs(find_unused_parameters=args.train_input_encoder)
    accelerator = Accelerator(cpu=cpu, kwargs_handlers=[ddp])
    settings = settings.with_(device=str(accelerator.device))
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    t = Trainer(args, settings, accelerator)
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    if args.training_free:
        plug = training_free_plug(t.cache, t.model, t.tokenizer, t.encoder_id, t.llm_id, tau=args.tau, seed=args.seed,
                                  vocab_limit=args.vocab_limit)
        plug.save(args.out)
        print(json.dumps(plug.config.made))
        return Path(args.out)

    tasks = [s for s in args.tasks.split(",") if s]
    train_splits = [read_task(args.data, name, "train", limit=args.limit) for name in tasks]
    dev_splits = [read_task(args.data, name, "dev") for name in tasks]
    subset = dev_subset(args, dev_splits)
    with accelerator.main_process_first():  # the main process encodes, the others then read its cache
        train_ex = {s.task.name: t.examples([s]) for s in train_splits}
        if args.selfsup:
            for s in train_splits:
                made = t.examples([self_supervised_split(s, args.selfsup, args.history_cap, args.seed)])
                train_ex[s.task.name] = train_ex[s.task.name] + made
        t.examples_by_id = {}
        for split, (task, queries) in zip(dev_splits, subset):
            t.examples_by_id[task.name] = {e.query.id: e for e in t.examples([type(split)(task, "dev", queries)])}
    sizes = {k: len(v) for k, v in train_ex.items()}
    names = list(train_ex)
    probs = np.sqrt(np.array([sizes[n] for n in names], dtype=float))
    probs = (probs / probs.sum()).tolist()

    plug = t.new_plug([e for ex in train_ex.values() for e in ex]).to(accelerator.device)
    module = SoftTokenModule(plug)
    encoder = list(module.input_encoder.parameters()) if module.input_encoder is not None else []
    groups = [{"params": [p for p in plug.parameters() if p is not plug.log_gate]},
              {"params": [plug.log_gate], "lr": args.lr * args.gate_lr_scale, "weight_decay": 0.0}]
    if encoder:
        groups.append({"params": encoder, "lr": args.input_encoder_lr})
    optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10%
        if step < args.warmup:
            return (step + 1) / args.warmup
        progress = (step - args.warmup) / max(args.steps - args.warmup, 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    state = {"step": 0, "best": None, "evals": [], "seconds": 0.0, "generic": None}
    last = run_dir / "last.pt"
    if last.is_file():
        ckpt = torch.load(last, weights_only=False, map_location="cpu")
        module.load_state_dict(ckpt["module"])  # the plug, and the input encoder if it trains
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state = ckpt["state"]
        _set_rng_state(ckpt["rng"])
        print(f"resumed from {last} at step {state['step']}", flush=True)
    module, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)
    sampler = random.Random(f"{args.seed}:{accelerator.process_index}:{state['step']}")
    unwrapped = lambda: accelerator.unwrap_model(module)  # noqa: E731
    main = accelerator.is_main_process

    def save_last():
        if main:
            _atomic_save({"module": unwrapped().state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "state": state, "rng": _rng_state(),
                          "args": vars(args)}, last)

    def run_eval(step: int):
        if main:
            module.eval()
            metrics = t.evaluate(unwrapped(), subset)
            module.train()
            metrics["step"] = step
            state["evals"].append(metrics)
            print("dev " + json.dumps(metrics), flush=True)
            if step > 0:
                unwrapped().plug.save(run_dir / f"step-{step}")  # every evaluated plug, to compare later
            if step > 0 and (state["best"] is None or metrics["mean_rougeL"] > state["best"]["mean_rougeL"]):
                state["best"] = metrics
                unwrapped().plug.save(run_dir / "best")
        accelerator.wait_for_everyone()

    if state["step"] == 0:
        if main:
            state["generic"] = t.evaluate_generic(subset)
            print("dev generic " + json.dumps(state["generic"]), flush=True)
        run_eval(0)  # every process: it ends in a barrier
    module.train()
    bar = tqdm(total=args.steps, initial=state["step"], disable=not main, mininterval=5, dynamic_ncols=True)
    running = None
    while state["step"] < args.steps:
        t0 = time.perf_counter()
        name = sampler.choices(names, probs)[0]
        batch = distinct_users(train_ex[name], args.batch_size, sampler)
        hist = None
        if args.augment > 0:
            hist = [thin_history(e.items, args.augment_drop, sampler) if sampler.random() < args.augment else e.items
                    for e in batch]
        prompts, targets = t.rows(batch)
        loss, stats = ce_and_kl(t.generator, module, batch, prompts, targets, args.kl_weight, hist,
                                other_weight=args.other_weight, other_margin=args.other_margin,
                                contrast_weight=args.contrast_weight, contrast_k=args.contrast_k)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        state["step"] += 1
        state["seconds"] += time.perf_counter() - t0
        running = stats["loss"] if running is None else 0.95 * running + 0.05 * stats["loss"]
        bar.set_postfix(task=name[:7], loss=f"{running:.3f}", nll=f"{stats['nll']:.3f}",
                        kl=f"{stats.get('kl', 0):.3f}", gate=f"{float(unwrapped().plug.log_gate.detach()):.2f}")
        bar.update(1)
        step = state["step"]
        if main and step % 10 == 0:
            print(f"step {step} task {name} " + json.dumps({k: round(v, 4) for k, v in stats.items()})
                  + f" lr {scheduler.get_last_lr()[0]:.2e} s/step {state['seconds'] / step:.2f}", flush=True)
        if step % args.eval_every == 0 or step == args.steps:
            run_eval(step)
        if step % args.save_every == 0 or step == args.steps:
            save_last()
    bar.close()
    if main:
        finish(args, t, state, sizes, run_dir)
    return Path(args.out)


def finish(args, t: Trainer, state: dict, sizes: dict, run_dir: Path) -> None:
    """Copy the selected plug to ``--out`` with a record of how it was made."""
    best = state["best"] or state["evals"][-1]
    plug = PPlug.load(run_dir / "best") if (run_dir / "best" / "config.json").is_file() else None
    if plug is None:
        raise SystemExit("no checkpoint was evaluated; nothing to ship")
    tasks = "+".join(sizes)
    per = ", ".join(f"{k} {v['rougeL']:.3f}" for k, v in best.items() if isinstance(v, dict))
    gen = ", ".join(f"{k} {v:.3f}" for k, v in (state["generic"] or {}).items() if k != "mean_rougeL")
    plug.config.origin = "trained"
    plug.config.made = {
        "encoder": t.encoder_id, "llm": t.llm_id,
        "data": {name: {"split": "train", "queries": n} for name, n in sizes.items()},
        "data_dir": str(args.data), "steps": args.steps, "selected_step": best["step"],
        "processes": t.acc.num_processes,  # each step saw batch_size examples per process
        "train_seconds": round(state["seconds"], 1),
        "settings": {k: v for k, v in vars(args).items() if k not in ("data", "out", "run_dir", "cache")},
        "dev_selection": {"what": f"greedy ROUGE-L on {args.eval_per_task} dev queries per task "
                                  "(tweets: the last ones, outside the evaluated first 80)",
                          "selected": best, "generic": state["generic"]},
        "evals": [{k: (v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if kk != "example"})
                   for k, v in e.items()} for e in state["evals"]],
        "summary": (f"trained on {tasks} train splits, {best['step']} of {args.steps} steps "
                    f"(batch {args.batch_size}, lr {args.lr:g}, KL weight {args.kl_weight:g}); "
                    f"dev-subset ROUGE-L {per} (generic {gen}); full results in assets/results/"),
    }
    plug.save(args.out)
    print(f"saved the plug of step {best['step']} to {args.out}", flush=True)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
