"""Evaluate PPlug against generic and RAG on LaMP-format tasks.

    python -m demo.research.evaluate --data ../shared/data --tasks tweets,scholar_titles,blog_posts \\
        --split dev --limit 80 --plug assets/plug --out assets/results

Every method uses the same chat template (``demo.core.generation``), the same prompt-length cap and
greedy decoding; they differ only in what goes into the prompt:

* ``generic``: the request alone, no soft tokens;
* ``rag``: the top-k profile items (BM25 over the whole profile, or the encoder) put before the
  request as the LaMP prompts do;
* ``pplug``: the request with the trained plug's soft tokens from the user's own history;
* ``pplug+rag``: both;
* ``pplug-untrained``: the app's untrained plug (control);
* ``pplug-other-user``: the trained plug fed another user's history (control: is the gain personal?);
* ``training-free``: the ridge-regression plug (see ``demo.research.training_free``);
* ``pplug-tuned``: the trained plug with a "tune to me" shift of P fitted per user on
  self-supervised examples from their own history (``demo.core.tuning``; per-user optimisation, a
  reference for what one personal token can carry, not the amortized plug).

``--selfsup N`` measures on queries made from each user's own history instead (``demo.core.selfsup``:
N items per user become requests with known answers, the rest of the history the plug's input): many
more queries than a dev split's users give, and still no train user.

Writes ``per_query.jsonl``, ``results.json`` and ``results.md`` into ``--out``. ``per_query.jsonl``
holds every query's outputs and scores, and each plug method's teacher-forced NLL of the gold output
with the own and the other user's history (``"<method>:nll": {"own", "other"}``, also with
``--diagnostics-only``): two runs on the same queries compare paired, plug against plug.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..core.history import lamp_item_text
from ..core.plug import PPlug, add_shift, cosine_spread, weight_entropy
from ..core.scoring import nll_per_row, target_ids, teacher_forced_logits
from ..core.settings import REPO_ROOT, Settings
from ..core.text import markdown_table
from ..core.tuning import FitSettings
from .lamp import (DEFAULT_DATA, SHARED_TASKS, LampSplit, postprocess, read_task, round_robin,
                   self_supervised_split)
from .metrics import PersonalFit, accuracy, macro_f1, mae_rmse, paired_bootstrap, rouge_per_query
from .retrieval import lamp_rag_request
from .runtime import FrozenModels, SoftTokenModule, build_examples, fit_user_shift, generate, soft_tokens
from .training_free import training_free_plug

log = logging.getLogger("demo.research.evaluate")

METHODS = ("generic", "rag", "pplug", "pplug+rag", "pplug-untrained", "pplug-other-user", "training-free",
           "pplug-tuned")
RAG_METHODS = ("rag", "pplug+rag")  # the retrieved items go into the prompt
PLUG_FREE = ("generic", "rag")  # the methods whose outputs no plug shapes


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo.research.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--tasks", default=",".join(SHARED_TASKS))
    p.add_argument("--split", default="dev")
    p.add_argument("--limit", type=int, default=None, help="first N queries of each task")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--plug", default=str(REPO_ROOT / "assets" / "plug"), help="trained plug checkpoint folder")
    p.add_argument("--training-free-plug", default=None,
                   help="folder of a training-free plug (default: built now, cached embeddings)")
    p.add_argument("--vocab-limit", type=int, default=16_000, help="training-free plug: first N vocabulary ids")
    p.add_argument("--k", type=int, default=4, help="retrieved items for rag")
    p.add_argument("--retriever", choices=["bm25", "encoder"], default="bm25")
    p.add_argument("--item-chars", type=int, default=300, help="characters of each retrieved item in the prompt")
    p.add_argument("--history-cap", type=int, default=None, help="history items for the plug (default: the plug's)")
    p.add_argument("--encoder-max-tokens", type=int, default=None,
                   help="cut history items at this many encoder tokens (default: as the plug was trained)")
    p.add_argument("--max-prompt-tokens", type=int, default=640)
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: per task")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--candidates", type=int, default=20, help="users ranked by the personal-fit metric")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--cache", default=None, help="Store file of item embeddings (default: <cache dir>/train_cache.db)")
    p.add_argument("--out", default=str(REPO_ROOT / "assets" / "results"))
    p.add_argument("--record-in-plug", action="store_true",
                   help="write the dev results and a summary sentence into the trained plug's config.json")
    p.add_argument("--reuse", default=None,
                   help="per_query.jsonl of an earlier run with the same settings: its outputs are reused "
                        "for the methods it holds (made by the same plug) instead of generating them again")
    p.add_argument("--diagnostics-only", action="store_true",
                   help="only the teacher-forced diagnostics (own vs other NLL, P spread): no generation")
    p.add_argument("--tune-steps", type=int, default=FitSettings.steps, help="pplug-tuned: Adam steps per user")
    p.add_argument("--tune-lr", type=float, default=FitSettings.lr, help="pplug-tuned: Adam learning rate")
    p.add_argument("--tune-examples", type=int, default=FitSettings.fit_examples,
                   help="pplug-tuned: self-supervised examples the shift is fitted on")
    p.add_argument("--selfsup", type=int, default=0,
                   help="measure on N queries per user made from the user's own history (demo.core.selfsup: "
                        "one item the answer, the rest the history) instead of the split's queries; --limit then "
                        "keeps the first of them taken user by user")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.selfsup < 0:
        p.error("--selfsup must be 0 or more")
    if args.selfsup and args.record_in_plug:
        p.error("--record-in-plug records the split's own queries: leave out --selfsup")
    return args


def other_user_order(user_ids: list[str]) -> list[int]:
    """For each query i, a query j of a different user (the next user in order, cyclically)."""
    users = list(dict.fromkeys(user_ids))
    if len(users) < 2:
        return list(range(len(user_ids)))
    first = {}
    for i, u in enumerate(user_ids):
        first.setdefault(u, i)
    nxt = {u: users[(k + 1) % len(users)] for k, u in enumerate(users)}
    return [first[nxt[u]] for u in user_ids]


def task_metrics(task, preds: list[str], refs: list[str]) -> tuple[dict, dict]:
    """(summary metrics, per-query scores) for one method on one task."""
    if task.kind == "generation":
        per = rouge_per_query(preds, refs)
        return {k: float(np.mean(v)) for k, v in per.items()}, per
    if task.kind == "classification":
        per = {"correct": [float(p.strip() == r.strip()) for p, r in zip(preds, refs)]}
        return {"accuracy": accuracy(preds, refs), "f1": macro_f1(preds, refs, task.labels or None)}, per
    summary = mae_rmse(preds, refs)
    per = {"abs_error": [abs(float(p) - float(r)) if p.replace(".", "", 1).isdigit() else 4.0
                         for p, r in zip(preds, refs)]}
    return summary, per


def main_metric(task) -> str:
    return {"generation": "rougeL", "classification": "correct", "regression": "abs_error"}[task.kind]


COMPARED = [("pplug", "generic"), ("pplug", "rag"), ("pplug", "pplug-other-user"), ("pplug+rag", "pplug"),
            ("pplug+rag", "rag"), ("training-free", "generic"), ("rag", "generic")]


def paired_comparisons(per_query: dict[str, dict], key: str, n_resamples: int, seed: int) -> dict:
    """Paired bootstrap of the per-query differences of the compared methods: the task's main
    metric ``key`` and, where measured, the personal and topic fits' reciprocal ranks."""
    comparisons = {}
    for a, b in COMPARED:
        if a in per_query and b in per_query:
            comparisons[f"{a} - {b}"] = {m: paired_bootstrap(per_query[a][m], per_query[b][m], n_resamples, seed)
                                         for m in (key, "fit_rr", "topic_rr") if m in per_query[a]}
    return comparisons


class Evaluation(FrozenModels):
    def __init__(self, args, settings: Settings):
        super().__init__(settings, args.cache, args.encoder_max_tokens)
        self.args = args
        self.d_enc = self.encoder.get_embedding_dimension()
        self.plugs: dict[str, PPlug] = {}
        self.reuse: dict[tuple[str, str], dict] = {}
        self.tuned_tokens: dict[str, dict] = {}
        if args.reuse:
            for line in Path(args.reuse).read_text().splitlines():
                rec = json.loads(line)
                self.reuse[(rec["task"], rec["id"])] = rec

    def reused(self, task: str, query_id: str, method: str, plug_id: str | None) -> str | None:
        """An earlier run's output for this query and method (--reuse), only if the same plug made it
        (``plug_id`` None: a method no plug shapes)."""
        rec = self.reuse.get((task, query_id), {})
        return rec.get(method) if plug_id is None or rec.get(f"{method}:plug") == plug_id else None

    def plug(self, method: str) -> PPlug:
        if method in self.plugs:
            return self.plugs[method]
        emb = self.model.get_input_embeddings().weight
        if method in ("pplug", "pplug+rag", "pplug-other-user", "pplug-tuned"):
            plug = PPlug.load(self.args.plug, encoder_id=self.encoder_id, llm_id=self.llm_id, d_enc=self.d_enc,
                              d_llm=emb.shape[1])
        elif method == "pplug-untrained":
            plug = PPlug.untrained(self.encoder_id, self.llm_id, self.d_enc, emb, tau=self.settings.tau)
        elif method == "training-free":
            if self.args.training_free_plug and Path(self.args.training_free_plug, "config.json").is_file():
                plug = PPlug.load(self.args.training_free_plug, encoder_id=self.encoder_id, llm_id=self.llm_id)
            else:
                plug = training_free_plug(self.cache, self.model, self.tokenizer, self.encoder_id, self.llm_id,
                                          tau=self.settings.tau, vocab_limit=self.args.vocab_limit)
        else:
            raise ValueError(method)
        plug = plug.to(self.settings.device).eval()
        plug.requires_grad_(False)
        for key in (("pplug", "pplug+rag", "pplug-other-user", "pplug-tuned") if method.startswith("pplug") and
                    method != "pplug-untrained" else (method,)):
            self.plugs[key] = plug
        return plug

    def history_cap(self) -> int:
        return self.args.history_cap or 32

    def run_task(self, split: LampSplit, methods: list[str], records: list[dict]) -> dict:
        args = self.args
        task = split.task
        queries = split.queries
        examples = build_examples([split], self.cache, self.history_cap())
        others = other_user_order([q.user_id for q in queries])
        recs = [{"task": task.name, "id": q.id, "user_id": q.user_id, "gold": q.output,
                 "other_user": queries[others[i]].user_id} for i, q in enumerate(queries)]
        if args.diagnostics_only:  # teacher-forced measures only: no generation, no ROUGE
            diagnostics = self.diagnostics(split, examples, others, methods, recs)
            records.extend(recs)
            return {"task": task.name, "kind": task.kind, "n_queries": len(queries), "n_users": len(split.users),
                    "methods": {}, "comparisons": {}, "diagnostics": diagnostics}
        refs = [q.output for q in queries]
        n_new = args.max_new_tokens or task.max_new_tokens
        plain = [self.generator.fit_prompt(q.input, args.max_prompt_tokens) for q in queries]
        rag_prompts, rag_items = [], []
        for q, e in zip(queries, examples):
            dense = {}
            if args.retriever == "encoder":
                dense = {"x": e.x.numpy(), "item_matrix": self.cache.matrix([lamp_item_text(it) for it in q.items()])}
            text, chosen = lamp_rag_request(task, q, args.k, args.item_chars, **dense)
            rag_items.append([c.get("id") for c in chosen])
            rag_prompts.append(self.generator.fit_prompt(text, args.max_prompt_tokens))
        results: dict[str, dict] = {}
        per_query: dict[str, dict] = {}
        outputs: dict[str, list[str]] = {}
        # the plug behind each method's outputs (hashing a plug's weights takes a while: once per task)
        made_by = {m: None if m in PLUG_FREE else self.plug(m).plug_id for m in methods}
        for method in methods:
            t0 = time.perf_counter()
            prompts = rag_prompts if method in RAG_METHODS else plain
            reused = [self.reused(task.name, q.id, method, made_by[method]) for q in queries]
            if all(r is not None for r in reused):
                texts = reused  # generated by an earlier run with the same settings (--reuse)
                soft = None
            elif method in PLUG_FREE:
                soft = [None] * len(queries)
            else:
                plug = self.plug(method)
                hist = [examples[j].items for j in others] if method == "pplug-other-user" else None
                with torch.inference_mode():
                    s, _ = soft_tokens(SoftTokenModule(plug), examples, self.generator.device, hist)
                if method == "pplug-tuned":
                    s = add_shift(s, torch.stack([self.tuned(split, examples, plug)[q.user_id].shift for q in queries]))
                soft = list(s)
            if soft is not None:
                texts = generate(self.generator, prompts, soft, n_new, args.batch_size)
            preds = [postprocess(task, t) for t in texts]
            summary, per = task_metrics(task, preds, refs)
            summary["mean_words"] = float(np.mean([len(p.split()) for p in preds]))
            summary["seconds"] = round(time.perf_counter() - t0, 1) if soft is not None else "reused"
            results[method] = summary
            per_query[method] = per
            outputs[method] = preds
            log.info("%s %s %s", task.name, method, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}))
        if task.kind == "generation" and len(split.users) > 2:
            self.personal_fit(split, methods, outputs, results, per_query)
        for i, rec in enumerate(recs):
            rec["rag_items"] = rag_items[i]
            for method in methods:
                rec[method] = outputs[method][i]
                if made_by[method]:  # what --reuse checks before it takes this output again
                    rec[f"{method}:plug"] = made_by[method]
                rec[f"{method}:score"] = {k: round(v[i], 4) for k, v in per_query[method].items()}
        comparisons = paired_comparisons(per_query, main_metric(task), args.bootstrap, args.seed)
        diagnostics = self.diagnostics(split, examples, others, methods, recs)
        records.extend(recs)
        return {"task": task.name, "kind": task.kind, "n_queries": len(queries), "n_users": len(split.users),
                "max_new_tokens": n_new, "methods": results, "comparisons": comparisons,
                "diagnostics": diagnostics}

    def personal_fit(self, split: LampSplit, methods: list[str], outputs: dict[str, list[str]], results: dict,
                     per_query: dict) -> None:
        """Personal fit of each method's outputs and of the gold outputs (added to ``results`` and
        ``per_query``): the true author's rank among candidate users, by char n-gram TF-IDF similarity, and
        the topic fit: the same ranking by the sentence encoder."""
        queries = split.queries
        # A user's queries made from their own history (--selfsup) hold each other's answers in their
        # histories: items holding any of the user's gold answers are left out of the history compared.
        golds: dict[str, list[str]] = {}
        for q in queries:
            golds.setdefault(q.user_id, []).append(" ".join(q.output.split()))

        def holds_a_gold(user: str, text: str) -> bool:
            return any(g and g in " ".join(text.split()) for g in golds[user])

        histories: dict[str, list[str]] = {}
        for q in queries:
            known = histories.setdefault(q.user_id, [])
            known.extend(t for t in q.item_texts() if t not in known and not holds_a_gold(q.user_id, t))
        fit = PersonalFit(histories, n_candidates=self.args.candidates, seed=self.args.seed)
        keys = [q.id for q in queries]
        authors = [q.user_id for q in queries]
        gold = fit.score([q.output for q in queries], authors, keys)
        results["gold"] = {"fit_top1": gold["fit_top1"], "fit_mrr": gold["fit_mrr"]}
        per_query["gold"] = {"fit_rr": [1 / r for r in gold["ranks"]]}
        for method in methods:
            s = fit.score(outputs[method], authors, keys)
            results[method].update(fit_top1=s["fit_top1"], fit_mrr=s["fit_mrr"])
            per_query[method]["fit_rr"] = [1 / r for r in s["ranks"]]
        # The topic fit, by the sentence encoder: each user's mean embedding of the history items the plug saw
        # (capped, already cached), less any item holding one of the user's gold answers.
        capped: dict[str, list[str]] = {}
        for q in queries:
            if q.user_id not in capped:  # a user's first query: the history the plug saw for them
                capped[q.user_id] = [t for t in q.item_texts(self.history_cap()) if not holds_a_gold(q.user_id, t)]
        if not all(capped.values()):  # a history made only of gold answers: no topic fit
            return
        self.cache.ensure([t for texts in capped.values() for t in texts])
        centres = {}
        for user, texts in capped.items():
            mean = self.cache.matrix(texts).mean(0)  # [d_enc]
            centres[user] = mean / np.linalg.norm(mean)
        for method, texts in [("gold", [q.output for q in queries]), *((m, outputs[m]) for m in methods)]:
            embeddings = self.encoder.encode(list(texts), normalize_embeddings=True, show_progress_bar=False)
            s = fit.topic_score(embeddings, authors, keys, centres)
            results[method]["topic_fit_mrr"] = s["topic_fit_mrr"]
            per_query[method]["topic_rr"] = [1 / r for r in s["ranks"]]

    def tuned(self, split, examples, plug) -> dict:
        """user id -> TunedToken fitted on self-supervised examples from the user's history (cached per task)."""
        key = split.task.name
        if key in self.tuned_tokens:
            return self.tuned_tokens[key]
        module = SoftTokenModule(plug)
        tokens, t0 = {}, time.perf_counter()
        for q, e in zip(split.queries, examples):
            if q.user_id not in tokens:
                tokens[q.user_id] = fit_user_shift(self.generator, module, self.cache, e, self.history_cap(),
                                                   FitSettings(steps=self.args.tune_steps, lr=self.args.tune_lr,
                                                               fit_examples=self.args.tune_examples))
        log.info("%s: tuned %d users in %.0f s", key, len(tokens), time.perf_counter() - t0)
        self.tuned_tokens[key] = tokens
        return tokens

    def diagnostics(self, split, examples, others, methods, recs: list[dict]) -> dict:
        if "pplug-tuned" in methods:
            self.tuned(split, examples, self.plug("pplug-tuned"))
        with torch.inference_mode():
            return self._diagnostics(split, examples, others, methods, recs)

    def _diagnostics(self, split, examples, others, methods, recs: list[dict]) -> dict:
        """Spread of P across users and the paired teacher-forced NLL own vs other user's history
        (summed up in the result; each query's pair goes into its record in ``recs``)."""
        out = {}
        queries = split.queries
        prompts = [self.generator.fit_prompt(q.input, self.args.max_prompt_tokens) for q in queries]
        targets = [target_ids(self.generator, q.output, 48) for q in queries]
        firsts = list({q.user_id: i for i, q in enumerate(queries)}.values())
        generic_nll = []
        for start in range(0, len(queries), self.args.batch_size):
            sl = slice(start, start + self.args.batch_size)
            logits, tgt, tmask = teacher_forced_logits(self.generator, prompts[sl], [None] * len(prompts[sl]),
                                                       targets[sl])
            generic_nll.extend(nll_per_row(logits, tgt, tmask).tolist())
        out["generic_nll"] = float(np.mean(generic_nll))
        for method in ("pplug", "training-free", "pplug-untrained", "pplug-tuned"):
            if method not in methods:
                continue
            plug = self.plug(method)
            module = SoftTokenModule(plug)
            own_soft, weights = soft_tokens(module, examples, self.generator.device)
            other_soft, _ = soft_tokens(module, examples, self.generator.device, [examples[j].items for j in others])
            if method == "pplug-tuned":  # each user's own shift; the other user's history with their shift
                tokens = self.tuned_tokens[split.task.name]  # fitted before (needs autograd)
                own_soft = add_shift(own_soft, torch.stack([tokens[q.user_id].shift for q in queries]))
                other_soft = add_shift(other_soft, torch.stack([tokens[queries[j].user_id].shift for j in others]))
            own, other = [], []
            for start in range(0, len(queries), self.args.batch_size):
                sl = slice(start, start + self.args.batch_size)
                for soft, acc in ((own_soft, own), (other_soft, other)):
                    logits, tgt, tmask = teacher_forced_logits(self.generator, prompts[sl], list(soft[sl]),
                                                               targets[sl])
                    acc.extend(nll_per_row(logits, tgt, tmask).tolist())
            for rec, a, b in zip(recs, own, other):
                rec[f"{method}:nll"] = {"own": round(a, 5), "other": round(b, 5)}
            entropy = weight_entropy(weights)
            n_items = torch.tensor([max(e.items.shape[0], 1) for e in examples], dtype=torch.float)
            out[method] = {
                "p_mean_pairwise_cosine": cosine_spread(own_soft[firsts, 1]),
                "nll_own": float(np.mean(own)), "nll_other": float(np.mean(other)),
                "nll_own_minus_other": paired_bootstrap(own, other, self.args.bootstrap, self.args.seed),
                "own_better_share": float(np.mean([a < b for a, b in zip(own, other)])),
                "weight_entropy_over_log_n": float((entropy / n_items.log().clamp(min=1e-6)).mean()),
                "gate": float(plug.log_gate.exp()),
            }
        return out


def markdown(results: dict) -> str:
    settings = results["settings"]
    rag = any(m in RAG_METHODS for t in results["tasks"] for m in t["methods"])
    retrieval = f"{settings['k']} retrieved items ({settings['retriever']}) for rag; " if rag else ""
    lines = [f"# Results on the {results['split']} splits", "",
             f"Greedy decoding; {retrieval}plug `{results['plug_id']}`. Personal fit: rank of the true author among "
             f"{settings['candidates']} candidate users (or all the split's users if fewer) by "
             "character 2-4-gram TF-IDF cosine of the output to each user's history; topic fit: the same "
             "ranking by the sentence encoder's cosine to each user's mean history embedding.", ""]
    if settings.get("selfsup"):
        lines += [f"Queries made from the users' own histories ({settings['selfsup']} per user at most: one "
                      "item the gold answer, the rest the history), not the split's queries.", ""]
    for t in results["tasks"]:
        gen = t["kind"] == "generation"
        cols = ["ROUGE-1", "ROUGE-L", "fit top-1", "fit MRR", "topic fit MRR", "words"] if gen else (
            ["accuracy", "F1"] if t["kind"] == "classification" else ["MAE", "RMSE"])
        keys = ["rouge1", "rougeL", "fit_top1", "fit_mrr", "topic_fit_mrr", "mean_words"] if gen else (
            ["accuracy", "f1"] if t["kind"] == "classification" else ["mae", "rmse"])
        rows = [[method] + [f"{m[k]:.3f}" if k in m and k != "mean_words" else (f"{m[k]:.1f}" if k in m else "")
                            for k in keys] for method, m in t["methods"].items()]
        lines += [f"## {t['task']} ({t['n_queries']} queries, {t['n_users']} users)", "",
                  markdown_table(rows, ["method", *cols]), ""]
        for name, comp in t["comparisons"].items():
            parts = [f"{k} {v['diff']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]" for k, v in comp.items()]
            lines.append(f"- {name}: " + "; ".join(parts))
        for method, d in t["diagnostics"].items():
            if isinstance(d, dict):
                b = d["nll_own_minus_other"]
                lines.append(f"- {method} diagnostics: P mean pairwise cosine {d['p_mean_pairwise_cosine']:.3f}; "
                             f"NLL own {d['nll_own']:.3f} vs other {d['nll_other']:.3f} nats/token "
                             f"(diff {b['diff']:+.3f} [{b['low']:+.3f}, {b['high']:+.3f}], own better on "
                             f"{d['own_better_share']:.0%}); weight entropy / log n {d['weight_entropy_over_log_n']:.2f}"
                             f"; gate {d['gate']:.2f}")
        if "generic_nll" in t["diagnostics"]:
            lines.append(f"- generic teacher-forced NLL {t['diagnostics']['generic_nll']:.3f} nats/token")
        lines.append("")
    return "\n".join(lines)


def plug_settings(folder: str) -> dict:
    """The training settings a plug checkpoint records (empty for other checkpoints)."""
    try:
        return json.loads(Path(folder, "config.json").read_text()).get("made", {}).get("settings", {}) or {}
    except (OSError, ValueError):
        return {}


def record_in_plug(results: dict, folder: str | Path) -> str:
    """Write the dev results into the plug's ``config.json`` (``made.dev_results`` and its summary).

    The weights (and so the plug id) are untouched. -> the new summary sentence.
    """
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text())
    made = config.setdefault("made", {})
    per = []
    dev = {}
    for t in results["tasks"]:
        m = t["methods"]
        if "pplug" in m and "rougeL" in m["pplug"]:
            per.append(f"{t['task']} {m['pplug']['rougeL']:.3f}"
                       + (f" (generic {m['generic']['rougeL']:.3f})" if "generic" in m else ""))
        dev[t["task"]] = {k: {kk: vv for kk, vv in v.items() if kk != "seconds"} for k, v in m.items()}
    made["dev_results"] = {"split": results["split"], "limit": results["settings"].get("limit"), "tasks": dev}
    steps = f"{made.get('selected_step', '?')} of {made.get('steps', '?')} steps"
    selfsup = made.get("settings", {}).get("selfsup")  # train --selfsup N: the histories were trained on too
    if selfsup:
        steps += f", and {selfsup} examples per train user made from their own writing"
    tasks = "+".join(made.get("data", {})) or "LaMP-format"
    start = made.get("init_from")  # a plug trained on from another: the start's parts, kept in place
    parts = start or made
    redistilled = start is not None and "distill" in made  # a new shift head, distilled after the training
    said = []
    if "distill" in parts and not redistilled:
        said.append(f"a shift head distilled from {sum(parts['distill']['users'].values())} train users' "
                    "fitted shifts")
    if "keywords" in parts:
        # k as the plug uses it now (a start's k may have been changed in its config)
        k, bank = config.get("keywords") or parts["keywords"]["k"], f"{parts['keywords']['bank']:,}"
        tokens = f"{k} keyword tokens (one per bank word: " if config.get("separate_keywords") else "a keyword token ("
        nearest = "what sets the history apart" if config.get("keyword_center") else "the history"
        said.append(f"{tokens}the {k} of {bank} bank words nearest to {nearest})")
    head = (", with " + ", and ".join(said) + (" in place" if start else "")) if said else ""
    if redistilled:
        head += (f"; its shift head distilled afterwards from {sum(made['distill']['users'].values())} "
                 "train users' shifts fitted on its own P")
    if "averaged" in made:  # demo.research.average: its weights mixed with another plug's
        head += f"; its weights averaged with plug {made['averaged']['with']}'s ({made['averaged']['weight']:.0%} its own)"
    made["summary"] = (f"trained on the {tasks} train splits ({steps}){head}; dev ROUGE-L " + ", ".join(per)
                       + "; full results in assets/results/results.md")
    path.write_text(json.dumps(config, indent=2) + "\n")
    return made["summary"]


def evaluate(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    trained = plug_settings(args.plug)
    args.history_cap = args.history_cap or int(trained.get("history_cap", 32))
    args.encoder_max_tokens = args.encoder_max_tokens or trained.get("encoder_max_tokens")
    settings = Settings.from_env()
    torch.manual_seed(args.seed)
    ev = Evaluation(args, settings)
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown methods: {sorted(unknown)}; known: {', '.join(METHODS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    tasks = []
    t0 = time.perf_counter()
    for name in [t for t in args.tasks.split(",") if t]:
        split = read_task(args.data, name, args.split, limit=None if args.selfsup else args.limit)
        if args.selfsup:
            made = self_supervised_split(split, args.selfsup, None, args.seed).queries
            split = LampSplit(split.task, args.split, round_robin(made)[:args.limit])
        tasks.append(ev.run_task(split, methods, records))
    plug_id = ev.plug("pplug").plug_id if any(m.startswith("pplug") and m != "pplug-untrained" for m in methods) \
        else None
    results = {"split": args.split, "plug": str(args.plug), "plug_id": plug_id,
               "encoder": ev.encoder_id, "llm": ev.llm_id, "seconds": round(time.perf_counter() - t0, 1),
               "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
               "history_cap": ev.history_cap(), "tasks": tasks}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    if args.record_in_plug and plug_id and plug_id.startswith("trained"):
        record_in_plug(results, args.plug)
    (out / "results.md").write_text(markdown(results) + "\n")
    with open(out / "per_query.jsonl", "w") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return results


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = evaluate(parse_args(argv))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
