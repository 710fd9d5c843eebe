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
first run without it drifted into short, telegraphic outputs); ``--kl-reference`` puts a frozen
plug fed the same history in the generic model's place. Each step draws one task (with
probability proportional to the square root of its size) and a batch of its examples.

Item embeddings are computed once and kept in a Store file (``--cache``). Checkpoints (plug,
optimizer, scheduler, step, RNG states) go to ``<run-dir>/last.pt`` and a run resumes from it.
Every ``--eval-every`` steps the plug generates greedy answers on a small dev subset; the step
with the best mean ROUGE-L over the tasks is kept in ``<run-dir>/best`` and copied to ``--out``
(``--select last``: the last step's plug instead; the dev subset is six queries per task, too few to
tell close steps apart). A finished run started again only writes ``--out`` anew.
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from tqdm import tqdm

from ..core.plug import PPlug
from ..core.scoring import nll_per_row, target_ids, teacher_forced_logits
from ..core.settings import REPO_ROOT, Settings
from .lamp import DEFAULT_DATA, SHARED_TASKS, read_task, self_supervised_split
from .metrics import rouge
from .retrieval import lamp_rag_request
from .runtime import (Example, FrozenModels, SoftTokenModule, build_examples, ce_and_kl, generate, other_histories,
                      soft_tokens)
from .training_free import training_free_plug

log = logging.getLogger("demo.research.train")



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
                   help="start from this plug checkpoint: its weights, shift head, keyword bank, "
                        "standardization (whose statistics are recomputed when --standardize is set) and "
                        "input encoder (trained on with --train-input-encoder, else kept frozen)")
    p.add_argument("--freeze-shift-head", action="store_true",
                   help="with --init-from a plug with a shift head: train every part but the head")
    p.add_argument("--vocab-limit", type=int, default=16_000, help="training-free plug: first N vocabulary ids")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--kl-weight", type=float, default=0.1)
    p.add_argument("--kl-reference", default=None,
                   help="a plug folder: the KL term keeps the trained plug near this frozen plug fed the same "
                        "history, instead of near the generic model (holds what a plug before did well)")
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
    p.add_argument("--select", choices=["best", "last"], default="best",
                   help="the plug copied to --out: the evaluated step with the best dev-subset ROUGE-L, or the last")
    p.add_argument("--save-every", type=int, default=25)
    p.add_argument("--limit", type=int, default=None, help="use only the first N train queries per task")
    p.add_argument("--selfsup", type=int, default=0,
                   help="also N self-supervised examples per train user, made from their profile items "
                        "(demo.core.selfsup); 0 = LaMP queries only")
    p.add_argument("--selfsup-tasks", default=None,
                   help="the tasks whose train users give --selfsup examples (default: every task trained on)")
    p.add_argument("--task-weights", type=task_weights, default={},
                   help="task=factor,... : multiplies a task's chance in the draw of each batch's task "
                        "(square root of its size; default 1 for every task)")
    p.add_argument("--contrast-weight", type=float, default=0.0,
                   help="weight of the InfoNCE term over the batch's users (0 = off)")
    p.add_argument("--contrast-k", type=int, default=4, help="users scored per gold output by the InfoNCE term")
    p.add_argument("--llm-dtype", default=None, help="the frozen LLM's dtype (default PPLUG_LLM_DTYPE; "
                                                       "bfloat16 trains faster on CPUs with AMX/AVX-512 bf16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu / cuda (default: PPLUG_DEVICE or auto)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 is much faster than 2 on a busy 2-core machine)")
    args = p.parse_args(argv)
    if args.kl_reference and args.kl_weight <= 0:
        p.error("--kl-reference needs a --kl-weight above 0 (the reference plug only enters the KL term)")
    return args


def task_weights(text: str) -> dict[str, float]:
    """"blog_posts=2,tweets=0.5" -> {"blog_posts": 2.0, "tweets": 0.5} (argparse type of --task-weights)."""
    out = {}
    for part in filter(None, text.split(",")):
        name, _, factor = part.partition("=")
        try:
            value = float(factor)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: write task=factor, e.g. blog_posts=2") from None
        if not 0 < value < math.inf:
            raise argparse.ArgumentTypeError(f"{part!r}: the factor must be a number above 0")
        out[name.strip()] = value
    return out


# --- training ---------------------------------------------------------------------------------------


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
    def __init__(self, args, settings: Settings, accelerator: Accelerator):
        super().__init__(settings, args.cache, args.encoder_max_tokens)
        self.args = args
        self.acc = accelerator
        self.examples_by_id: dict[str, dict[str, Example]] = {}  # the dev subset's, per task

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
            # The start's parts beyond [I; P] (shift head, keyword bank and rule) and its standardization come
            # along; with --standardize the item statistics are this run's.
            extras = {name: getattr(start.config, name)
                      for name in ("shift_head", "keywords", "keyword_bank", "keyword_center", "separate_keywords")}
            plug = plug.rebuilt(**extras, standardize=self.args.standardize or start.config.standardize)
            plug.load_state_dict({k: v for k, v in start.state_dict().items()
                                  if not (self.args.standardize and k.startswith("item_"))}, strict=False)
            plug.keyword_words = list(start.keyword_words)
            if start.input_encoder is not None:  # the start's fine-tuned request encoder; trained on only if asked
                train = self.args.train_input_encoder
                plug.attach_input_encoder(start.input_encoder.train(train).requires_grad_(train))
        if self.args.train_input_encoder and plug.input_encoder is None:
            plug.attach_input_encoder(copy.deepcopy(self.encoder).train().requires_grad_(True))
        plug.config.origin = "trained"
        plug.config.made = {}
        if self.args.init_from:  # what the start was made of stays on record, its own start's parts included
            made = {**start.config.made.get("init_from", {}), **start.config.made}
            plug.config.made["init_from"] = {"plug": start.plug_id, **{
                k: made[k] for k in ("distill", "keywords") if k in made}}
        return plug

    def examples(self, splits) -> list[Example]:
        return build_examples(splits, self.cache, self.args.history_cap, progress=self.acc.is_main_process)

    def rows(self, examples: list[Example]):
        k = self.args.rag_k
        requests = [lamp_rag_request(e.task, e.query, k)[0] if k else e.query.input for e in examples]
        prompts = [self.generator.fit_prompt(r, self.args.max_prompt_tokens) for r in requests]
        targets = [target_ids(self.generator, e.query.output, self.args.max_target_tokens) for e in examples]
        return prompts, targets

    def _answers(self, task, queries, plug_module=None):
        """Greedy answers to the dev queries of a task, with the plug or (None) without.
        -> (examples, prompts, targets, soft [B, n_soft, d_llm] or None, texts)"""
        exs = [self.examples_by_id[task.name][q.id] for q in queries]
        prompts, targets = self.rows(exs)
        soft = soft_tokens(plug_module, exs, self.generator.device)[0] if plug_module is not None else None
        n_new = min(task.max_new_tokens, self.args.eval_max_new_tokens)
        texts = generate(self.generator, prompts, list(soft) if soft is not None else [None] * len(exs), n_new)
        return exs, prompts, targets, soft, texts

    @torch.no_grad()
    def evaluate(self, plug_module, subset) -> dict:
        """Greedy ROUGE-L (and teacher-forced NLL, own and another user's history) of the plug on ``subset``."""
        out = {}
        for task, queries in subset:
            exs, prompts, targets, soft, texts = self._answers(task, queries, plug_module)
            nll = nll_per_row(*teacher_forced_logits(self.generator, prompts, list(soft), targets))
            soft_o, _ = soft_tokens(plug_module, exs, self.generator.device, other_histories(exs))
            nll_o = nll_per_row(*teacher_forced_logits(self.generator, prompts, list(soft_o), targets))
            r = rouge(texts, [q.output for q in queries])
            out[task.name] = {"rougeL": r["rougeL"], "rouge1": r["rouge1"], "nll": float(nll.mean()),
                              "own_minus_other": float((nll - nll_o).mean()),
                              "mean_words": float(np.mean([len(t.split()) for t in texts])),
                              "example": texts[0][:160]}
        out["mean_rougeL"] = float(np.mean([v["rougeL"] for k, v in out.items() if isinstance(v, dict)]))
        return out

    @torch.no_grad()
    def evaluate_generic(self, subset) -> dict:
        """Greedy ROUGE-L of the model without a plug on ``subset``: {task: rougeL, "mean_rougeL"}."""
        out = {task.name: rouge(self._answers(task, queries)[-1], [q.output for q in queries])["rougeL"]
               for task, queries in subset}
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


@dataclass
class TrainData:
    examples: dict[str, list[Example]]  # task -> its train examples
    subset: list  # (task, dev queries) for checkpoint selection
    factors: dict[str, float] = field(default_factory=dict)  # task -> multiplier of its draw weight

    @property
    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.examples.items()}

    @classmethod
    def read(cls, args, t: Trainer) -> "TrainData":
        """The train splits' examples and the dev subset's (the latter kept in ``t.examples_by_id``)."""
        tasks = [s for s in args.tasks.split(",") if s]
        unknown = set(args.task_weights) - set(tasks)
        if unknown:  # said before the examples are encoded, which takes long on a first run
            raise SystemExit(f"--task-weights names tasks not trained on: {', '.join(sorted(unknown))}")
        train_splits = [read_task(args.data, name, "train", limit=args.limit) for name in tasks]
        dev_splits = [read_task(args.data, name, "dev") for name in tasks]
        subset = dev_subset(args, dev_splits)
        with t.acc.main_process_first():  # the main process encodes, the others then read its cache
            examples = {s.task.name: t.examples([s]) for s in train_splits}
            selfsup_tasks = (args.selfsup_tasks or args.tasks).split(",") if args.selfsup else []
            for s in [s for s in train_splits if s.task.name in selfsup_tasks]:
                made = t.examples([self_supervised_split(s, args.selfsup, args.history_cap, args.seed)])
                examples[s.task.name] = examples[s.task.name] + made
            for split, (task, queries) in zip(dev_splits, subset):
                t.examples_by_id[task.name] = {e.query.id: e for e in t.examples([type(split)(task, "dev", queries)])}
        return cls(examples, subset, args.task_weights)

    def batch(self, sampler: random.Random, size: int) -> tuple[str, list[Example]]:
        """One task, drawn with probability proportional to the square root of its size (times its
        --task-weights factor), and a batch of its examples from distinct users."""
        names = list(self.examples)
        weights = np.array([len(self.examples[n]) ** 0.5 * self.factors.get(n, 1.0) for n in names])
        name = sampler.choices(names, (weights / weights.sum()).tolist())[0]
        return name, distinct_users(self.examples[name], size, sampler)


class Run:
    """One training run: the wrapped plug, optimizer and schedule, the step state, checkpoints in
    ``--run-dir`` (resumed from ``last.pt``) and the dev evaluations that pick the best step."""

    def __init__(self, args, t: Trainer, plug: PPlug):
        self.args, self.t, self.acc = args, t, t.acc
        self.run_dir = Path(args.run_dir)
        self.last = self.run_dir / "last.pt"
        module = SoftTokenModule(plug)
        encoder = [p for p in module.input_encoder.parameters() if p.requires_grad] if module.input_encoder is not None else []
        if args.freeze_shift_head and plug.config.shift_head:
            plug.shift_head.requires_grad_(False)  # the distilled personal map stays as it was
        groups = [{"params": [p for p in plug.parameters() if p.requires_grad and p is not plug.log_gate]},
                  {"params": [plug.log_gate], "lr": args.lr * args.gate_lr_scale, "weight_decay": 0.0}]
        if encoder:
            groups.append({"params": encoder, "lr": args.input_encoder_lr})
        optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_at)
        self.state = {"step": 0, "best": None, "evals": [], "seconds": 0.0, "generic": None}
        if self.last.is_file():
            ckpt = torch.load(self.last, weights_only=False, map_location="cpu")
            module.load_state_dict(ckpt["module"])  # the plug, and the input encoder if it trains
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            self.state = ckpt["state"]
            _set_rng_state(ckpt["rng"])
            print(f"resumed from {self.last} at step {self.state['step']}", flush=True)
        self.module, self.optimizer, self.scheduler = self.acc.prepare(module, optimizer, scheduler)
        self.main = self.acc.is_main_process
        self.reference = None
        if args.kl_reference:
            ref = PPlug.load(args.kl_reference, encoder_id=t.encoder_id, llm_id=t.llm_id)
            self.reference = SoftTokenModule(ref.to(self.acc.device).requires_grad_(False)).eval()

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to 10% of the learning rate."""
        a = self.args
        if step < a.warmup:
            return (step + 1) / a.warmup
        progress = (step - a.warmup) / max(a.steps - a.warmup, 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    def unwrapped(self) -> SoftTokenModule:
        return self.acc.unwrap_model(self.module)

    def save_last(self) -> None:
        if self.main:
            _atomic_save({"module": self.unwrapped().state_dict(), "optimizer": self.optimizer.state_dict(),
                          "scheduler": self.scheduler.state_dict(), "state": self.state, "rng": _rng_state(),
                          "args": vars(self.args)}, self.last)

    def evaluate(self, step: int, subset) -> None:
        """Dev metrics of this step (main process); the best step's plug is kept in ``<run-dir>/best``.
        Every process calls it: it ends in a barrier."""
        if self.main:
            self.module.eval()
            metrics = self.t.evaluate(self.unwrapped(), subset)
            self.module.train()
            metrics["step"] = step
            self.state["evals"].append(metrics)
            print("dev " + json.dumps(metrics), flush=True)
            if step > 0:
                self.unwrapped().plug.save(self.run_dir / f"step-{step}")  # every evaluated plug, to compare later
            best = self.state["best"]
            if step > 0 and (best is None or metrics["mean_rougeL"] > best["mean_rougeL"]):
                self.state["best"] = metrics
                self.unwrapped().plug.save(self.run_dir / "best")
        self.acc.wait_for_everyone()

    def step(self, batch: list[Example], sampler: random.Random) -> dict:
        """One optimizer step on a batch. -> the loss's parts (floats)."""
        a = self.args
        hist = None
        if a.augment > 0:
            hist = [thin_history(e.items, a.augment_drop, sampler) if sampler.random() < a.augment else e.items
                    for e in batch]
        prompts, targets = self.t.rows(batch)
        loss, stats = ce_and_kl(self.t.generator, self.module, batch, prompts, targets, a.kl_weight, hist,
                                other_weight=a.other_weight, other_margin=a.other_margin,
                                contrast_weight=a.contrast_weight, contrast_k=a.contrast_k,
                                reference=self.reference)
        self.optimizer.zero_grad(set_to_none=True)
        self.acc.backward(loss)
        self.acc.clip_grad_norm_(self.module.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        return stats

    def loop(self, data: TrainData) -> None:
        """Steps until ``--steps``, with dev evaluations and checkpoints on the way."""
        a, state = self.args, self.state
        if state["step"] == 0:
            if self.main:
                state["generic"] = self.t.evaluate_generic(data.subset)
                print("dev generic " + json.dumps(state["generic"]), flush=True)
            self.evaluate(0, data.subset)
        sampler = random.Random(f"{a.seed}:{self.acc.process_index}:{state['step']}")
        self.module.train()
        bar = tqdm(total=a.steps, initial=state["step"], disable=not self.main, mininterval=5, dynamic_ncols=True)
        running = None
        while state["step"] < a.steps:
            t0 = time.perf_counter()
            name, batch = data.batch(sampler, a.batch_size)
            stats = self.step(batch, sampler)
            state["step"] += 1
            state["seconds"] += time.perf_counter() - t0
            running = stats["loss"] if running is None else 0.95 * running + 0.05 * stats["loss"]
            bar.set_postfix(task=name[:7], loss=f"{running:.3f}", nll=f"{stats['nll']:.3f}",
                            kl=f"{stats.get('kl', 0):.3f}", gate=f"{float(self.unwrapped().plug.log_gate.detach()):.2f}")
            bar.update(1)
            step = state["step"]
            if self.main and step % 10 == 0:
                print(f"step {step} task {name} " + json.dumps({k: round(v, 4) for k, v in stats.items()})
                      + f" lr {self.scheduler.get_last_lr()[0]:.2e} s/step {state['seconds'] / step:.2f}", flush=True)
            if step % a.eval_every == 0 or step == a.steps:
                self.evaluate(step, data.subset)
            if step % a.save_every == 0 or step == a.steps:
                self.save_last()
        bar.close()


def _start(args) -> Trainer:
    """Threads, seeds, accelerate (one process or several under ``accelerate launch``) and the models."""
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings.from_env()
    if args.llm_dtype:
        settings = settings.with_(llm_dtype=args.llm_dtype)
    cpu = (args.device or settings.device) == "cpu"
    # a transformer encoder has weights its sentence embedding never uses (BERT's pooler): let DDP skip them
    ddp = DistributedDataParallelKwargs(find_unused_parameters=args.train_input_encoder)
    accelerator = Accelerator(cpu=cpu, kwargs_handlers=[ddp])
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    return Trainer(args, settings.with_(device=str(accelerator.device)), accelerator)


def train(args) -> Path:
    t = _start(args)
    Path(args.run_dir).mkdir(parents=True, exist_ok=True)
    if args.training_free:
        plug = training_free_plug(t.cache, t.model, t.tokenizer, t.encoder_id, t.llm_id, tau=args.tau, seed=args.seed,
                                  vocab_limit=args.vocab_limit)
        plug.save(args.out)
        print(json.dumps(plug.config.made))
        return Path(args.out)
    data = TrainData.read(args, t)
    plug = t.new_plug([e for ex in data.examples.values() for e in ex]).to(t.acc.device)
    run = Run(args, t, plug)
    run.loop(data)
    if run.main:
        finish(args, t, run.state, data.sizes, run.run_dir)
    return Path(args.out)


def finish(args, t: Trainer, state: dict, sizes: dict, run_dir: Path) -> None:
    """Copy the selected plug to ``--out`` with a record of how it was made."""
    best = state["evals"][-1] if args.select == "last" or not state["best"] else state["best"]
    folder = run_dir / (f"step-{best['step']}" if args.select == "last" else "best")
    plug = PPlug.load(folder) if best["step"] > 0 and (folder / "config.json").is_file() else None
    if plug is None:
        raise SystemExit("no checkpoint was evaluated; nothing to ship")
    tasks = "+".join(sizes)
    per = ", ".join(f"{k} {v['rougeL']:.3f}" for k, v in best.items() if isinstance(v, dict))
    gen = ", ".join(f"{k} {v:.3f}" for k, v in (state["generic"] or {}).items() if k != "mean_rougeL")
    plug.config.origin = "trained"
    started = {"init_from": plug.config.made["init_from"]} if "init_from" in plug.config.made else {}
    plug.config.made = {
        **started,
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
