"""Benchmark suite: the project's paths against the raw libraries, on the same machine, in one run.

    python -m demo.research.benchmark --data ../shared/data --out assets/results/benchmark

Every figure is a ratio against a baseline measured in the same run (medians over repeats):

1. side-by-side pair in one batch vs one single generation of the same length, and vs two
   sequential generations;
2. decode tokens/s of the project's path (soft tokens + streaming loop) vs ``model.generate``;
3. time to first token with PPlug vs with RAG top-4 on real histories, and the prompt lengths;
4. profile encoding vs raw ``SentenceTransformer.encode`` on the same items, and recomputing an
   unchanged history vs the first computation;
5. aggregator + projector time on histories of 10 .. 10,000 items (cached projections, as served);
6. app cold start (process start to HTTP ready) before and after the one-off model conversion,
   and the app's peak memory;
7. training examples/s: the current recipe (bf16 LLM, NLL, the chat-template prefix computed once
   per batch: the step of ``demo.research.distill``'s fits) vs the shipped plug's recipe (fp32 LLM,
   NLL + 0.1 KL, the prefix in every row) on one thread as it ran, batch 4 of real train examples,
   one step = forward, backward and an optimizer step of the plug; the current recipe on one thread
   and on every core;
8. "tune to me": fitting a personal token for a 60-item history, vs one 64-token answer;
9. decode throughput of the shared loop by rows per step (what ``PPLUG_BATCH_ROWS`` is chosen
   from), and the pair figure of 1 again with the rows going through the scheduler;
10. profile computation beside generation: each one's time alone and while the other runs;
11. serving: 1, 4 and 16 concurrent ``gradio_client`` visitors against one-at-a-time, and the
   study's vote-to-next-trial wait with 1 and 8 participants (``demo.app.loadtest``, run as a
   subprocess against ``python app.py``);
12. "does it know me?" on the four example personas: its time for 8 held-back items (wall and CPU),
    and its figures (bf16, as served, and fp32).

Writes ``<out>.json`` and ``<out>.md``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

from ..core import personas
from ..core.app_process import start_app
from ..core.generation import GenerationParams, Generator
from ..core.history import lamp_item_text
from ..core.scoring import target_ids
from ..core.settings import REPO_ROOT, Settings
from ..core.know_me import SignalSettings
from ..core.scheduler import Scheduler
from ..core.studio import Studio
from .lamp import DEFAULT_DATA, read_task
from .benchmark_report import markdown, serving_summary
from .runtime import Example, SoftTokenModule, ce_and_kl


def median_time(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_times(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Wall times of each of ``fns`` (name -> callable), run in turn within every repeat (after one
    warm-up each), so that a change in the machine's load falls on all of them alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        names = list(fns)
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate who goes first
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def median_ratio(a: list[float], b: list[float]) -> float:
    """Median over repeats of a_i / b_i (each pair measured in the same repeat)."""
    return statistics.median(x / y for x, y in zip(a, b))


def machine() -> dict:
    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def load_histories(data: Path, task: str = "tweets", n: int = 8) -> list[tuple[str, list[str]]]:
    """(request, history texts) for the first ``n`` dev queries of a shared task."""
    questions = json.loads((data / task / "dev_questions.json").read_text())
    return [(q["input"], [lamp_item_text(item) for item in q["profile"]]) for q in questions[:n]]


def stress_history(data: Path) -> list[str]:
    profile = json.loads((data / "stress" / "largest_blog_history.json").read_text())["profile"]
    return [lamp_item_text(item) for item in profile]


# --- figures -----------------------------------------------------------------------------


def fig_pair(studio: Studio, repeats: int, new_tokens: int) -> dict:
    """1 and 2: the batched pair vs single and sequential generation, and vs model.generate."""
    gen = studio.generator
    ids = gen.prompt_ids("Write a short blog post about my weekend hiking trip.")
    soft = studio.plug.rescale(torch.randn(2, studio.plug.config.d_llm)).to(gen.device, gen.embedding.weight.dtype)
    fixed = GenerationParams(max_new_tokens=new_tokens, stop_at_eos=False)

    def run(rows):
        embeds, mask = gen.embed([ids] * len(rows), rows)
        for _ in gen.stream(embeds, mask, fixed):
            pass

    def hf_generate():
        input_ids = torch.tensor([ids.plain], device=gen.device)
        with torch.inference_mode():
            gen.model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, do_sample=False)

    def scheduled(rows):
        for _ in studio.scheduler.submit(*gen.embed([ids] * len(rows), rows), fixed):
            pass

    t = interleaved_times({
        "single": lambda: run([None]), "pair": lambda: run([soft, None]), "personal": lambda: run([soft]),
        "hf": hf_generate, "scheduler_single": lambda: scheduled([None]),
        "scheduler_pair": lambda: scheduled([soft, None]),
    }, repeats)
    m = {name: statistics.median(v) for name, v in t.items()}
    return {
        "new_tokens": new_tokens,
        "single_s": m["single"],
        "pair_batched_s": m["pair"],
        "two_sequential_s": m["single"] + m["personal"],
        "pair_vs_single": median_ratio(t["pair"], t["single"]),
        "pair_vs_sequential": statistics.median(p / (s + q) for p, s, q in zip(t["pair"], t["single"], t["personal"])),
        "project_tokens_per_s": new_tokens / m["personal"],
        "hf_generate_tokens_per_s": new_tokens / m["hf"],
        "decode_speed_vs_hf_generate": median_ratio(t["hf"], t["personal"]),
        "scheduler_single_s": m["scheduler_single"],
        "scheduler_pair_s": m["scheduler_pair"],
        "pair_vs_single_scheduler": median_ratio(t["scheduler_pair"], t["scheduler_single"]),
        "scheduler_vs_direct_single": median_ratio(t["scheduler_single"], t["single"]),
    }


def fig_first_token(studio: Studio, histories, repeats: int) -> dict:
    """3: time to first token, PPlug vs RAG top-4, on real histories."""
    owner = secrets.token_urlsafe(24)
    pplug, rag, lengths = [], [], []
    params = GenerationParams(max_new_tokens=1)
    for request, items in histories:
        profile = studio.compute_profile(owner, "bench", items).profile_id

        def first(conditions):
            return next(iter(studio.generate(owner, profile, request, params, conditions=conditions)))

        pplug.append(median_time(lambda: first(("pplug",)), repeats))
        rag.append(median_time(lambda: first(("rag",)), repeats))
        lengths.append(first(("pplug", "rag")).prompt_tokens)
    studio.delete_my_data(owner)
    return {
        "queries": len(histories),
        "pplug_first_token_s": statistics.median(pplug),
        "rag4_first_token_s": statistics.median(rag),
        "pplug_vs_rag": statistics.median(pplug) / statistics.median(rag),
        "pplug_prompt_tokens": statistics.median(n["pplug"] for n in lengths),
        "soft_tokens": studio.plug.n_soft,
        "rag4_prompt_tokens": statistics.median(n["rag"] for n in lengths),
    }


def fig_encoding(studio: Studio, items: list[str]) -> dict:
    """4: the project's profile computation vs raw encode; recompute of an unchanged history."""
    owner = secrets.token_urlsafe(24)
    encoder = studio.encoder
    t0 = time.perf_counter()
    encoder.encode(items, batch_size=studio.settings.encode_batch_size, normalize_embeddings=True)
    raw = time.perf_counter() - t0
    # Fresh texts for the project path, so that the cache cannot help it.
    salt = secrets.token_hex(4)
    fresh = [f"{text} [{salt}]" for text in items]
    first = studio.compute_profile(owner, "bench", fresh)
    again = studio.compute_profile(owner, "bench again", fresh)
    studio.delete_my_data(owner)
    return {
        "items": len(items),
        "raw_encode_items_per_s": len(items) / raw,
        "project_items_per_s": len(items) / first.seconds,
        "project_vs_raw": raw / first.seconds,
        "first_compute_s": first.seconds,
        "unchanged_recompute_s": again.seconds,
        "recompute_speedup": first.seconds / again.seconds,
    }


def fig_aggregator(studio: Studio, items: list[str], repeats: int) -> dict:
    """5: aggregator + projector cost by history size, with the projections cached as served."""
    plug = studio.plug
    base = torch.from_numpy(studio.encode(items[:1000])).to(studio.settings.device)
    x = base[:1]
    rows = {}
    for n in (10, 100, 1_000, 10_000):
        h = base.repeat((n + len(base) - 1) // len(base), 1)[:n][None]  # replicate real posts up to n
        with torch.inference_mode():
            projected = plug.project_items(h)
            cached = median_time(lambda: plug.soft_tokens(x, h, projected=projected), repeats)
            uncached = median_time(lambda: plug.soft_tokens(x, h), max(repeats // 4, 3))
        rows[str(n)] = {"cached_ms": cached * 1000, "projecting_now_ms": uncached * 1000}
    return rows


def fig_know_me(studio: Studio, repeats: int) -> dict:
    """Time and figures of "does it know me?" for each example persona (8 held-back items, vs the others)."""
    owner = secrets.token_urlsafe(24)
    out: dict = {"personas": {}}
    for name in personas.persona_names():
        profile_id = studio.compute_profile(owner, name, personas.persona_items(name)).profile_id
        studio.know_me(owner, profile_id)  # warm-up: the other personas' histories are encoded once
        walls, cpus = [], []
        for _ in range(repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            result = studio.know_me(owner, profile_id)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        fp32 = studio.know_me(owner, profile_id, settings=SignalSettings(bf16=False))
        low, high = result.interval
        out["personas"][personas.persona_label(name)] = {
            "items": result.n_items, "wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus),
            "vs_stranger": result.vs_stranger, "interval": [low, high], "items_better": result.items_better,
            "verdict": result.verdict, "vs_generic": result.vs_generic, "vs_stranger_fp32": fp32.vs_stranger,
            "verdict_fp32": fp32.verdict}
    rows = out["personas"].values()
    out["max_wall_s"] = max(r["wall_s"] for r in rows)
    out["max_cpu_s"] = max(r["cpu_s"] for r in rows)
    return out
def fig_rows(studio: Studio, repeats: int, new_tokens: int = 16, sizes=(2, 8, 16, 32, 48, 64)) -> dict:
    """9: decode tokens/s of the shared loop by rows per step (fixed length, one request of B rows)."""
    gen = studio.generator
    ids = gen.prompt_ids("Write a short blog post about my weekend hiking trip.")
    fixed = GenerationParams(max_new_tokens=new_tokens, stop_at_eos=False)
    scheduler = Scheduler(gen, max_rows=max(sizes))

    def run(b):
        embeds, mask = gen.embed([ids] * b, [None] * b)
        for _ in scheduler.submit(embeds, mask, fixed):
            pass

    times = interleaved_times({str(b): (lambda b=b: run(b)) for b in sizes}, repeats)
    rows = {}
    for b in sizes:
        seconds = statistics.median(times[str(b)])
        rows[str(b)] = {"seconds": seconds, "tokens_per_s": b * new_tokens / seconds,
                        "step_ms": seconds / new_tokens * 1000}
    best = max(rows, key=lambda b: rows[b]["tokens_per_s"])
    return {"new_tokens": new_tokens, "rows": rows, "best_rows": int(best),
            "best_vs_two_rows": median_ratio(times["2"], times[best]) * int(best) / 2}


def fig_compute_sharing(studio: Studio, items: list[str], repeats: int, new_tokens: int = 64) -> dict:
    """10: a profile computation beside generation, each timed alone and while the other runs.

    Before the scheduler both shared one queue, so a generation that arrived during a computation
    waited for all of it; now both run, and what matters is how much each slows the other."""
    owner = secrets.token_urlsafe(24)
    gen = studio.generator
    ids = gen.prompt_ids("Write a short blog post about my weekend.")
    fixed = GenerationParams(max_new_tokens=new_tokens, stop_at_eos=False)
    embeds, mask = gen.embed([ids, ids], [None, None])

    def generate():
        for _ in studio.scheduler.submit(embeds, mask, fixed):
            pass

    def compute():
        salt = secrets.token_hex(4)  # fresh texts: the embedding cache cannot help
        return studio.compute_profile(owner, "bench", [f"{t} [{salt}]" for t in items]).seconds

    gen_alone = median_time(generate, repeats)
    compute_alone = statistics.median(compute() for _ in range(repeats))
    gen_during, compute_during = [], []
    for _ in range(repeats):
        done = threading.Event()
        worker = threading.Thread(target=lambda: (compute_during.append(compute()), done.set()))
        worker.start()
        while not done.is_set():
            t0 = time.perf_counter()
            generate()
            if not done.is_set():
                gen_during.append(time.perf_counter() - t0)
        worker.join()
    studio.delete_my_data(owner)
    return {"items": len(items), "new_tokens": new_tokens, "generation_alone_s": gen_alone,
            "generation_during_compute_s": statistics.median(gen_during) if gen_during else float("nan"),
            "generation_slowdown": (statistics.median(gen_during) / gen_alone) if gen_during else float("nan"),
            "compute_alone_s": compute_alone, "compute_during_generation_s": statistics.median(compute_during),
            "compute_slowdown": statistics.median(compute_during) / compute_alone,
            "one_queue_wait_s": compute_alone}


def fig_serving(args) -> dict:
    """11: ``demo.app.loadtest`` in a subprocess (it starts its own app servers)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "load.json"
        command = [sys.executable, "-m", "demo.app.loadtest", "--out", str(out), "--repeats",
                   str(args.serving_repeats), "--per-visitor", str(args.per_visitor), "--reading-s",
                   str(args.reading_s), "--visitors", *map(str, args.serving_visitors)]
        subprocess.run(command, cwd=REPO_ROOT, check=True)
        return json.loads(out.read_text())


def _cold_start(cache_dir: Path, db: Path, timeout: float = 900) -> dict:
    """Start ``python app.py`` and time it until the page answers; peak RSS of the process tree."""
    peak = 0

    def measure(proc) -> None:
        nonlocal peak
        try:
            root = psutil.Process(proc.pid)
            peak = max(peak, sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]))
        except psutil.Error:
            pass

    t0 = time.perf_counter()
    proc, _ = start_app({"PPLUG_CACHE_DIR": str(cache_dir), "PPLUG_DB": str(db)}, timeout, while_waiting=measure)
    ready = time.perf_counter() - t0
    proc.terminate()
    proc.wait(30)
    return {"seconds": ready, "peak_rss_mb": peak / 2**20}


def fig_cold_start() -> dict:
    """6: cold start with an empty model cache (includes the conversion) and with a warm one."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        first = _cold_start(tmp / "cache", tmp / "a.db")
        later = _cold_start(tmp / "cache", tmp / "b.db")
    return {"first_start_s": first["seconds"], "later_start_s": later["seconds"],
            "first_vs_later": first["seconds"] / later["seconds"], "peak_rss_mb": max(first["peak_rss_mb"],
                                                                                      later["peak_rss_mb"])}


def fig_training(studio: Studio, data: Path, repeats: int) -> dict:
    """Training examples/s of the shipped recipe and of the current one, on the same batches."""
    queries = [q for q in read_task(data, "tweets", "train", limit=64).queries if q.output][:8]
    examples = []
    for q in queries:
        x = torch.from_numpy(studio.encode([q.input])[0])
        items = torch.from_numpy(studio.encode(q.item_texts(16)))
        examples.append(Example(None, q, x, items, q.item_texts(16)))
    batches = [examples[:4], examples[4:8]]
    plug = copy.deepcopy(studio.plug).requires_grad_(True)
    module = SoftTokenModule(plug)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    bf16 = Generator(copy.deepcopy(studio.model).to(torch.bfloat16), studio.tokenizer)

    def step(generator, **loss_args):
        for batch in batches:
            prompts = [generator.fit_prompt(e.query.input, 128) for e in batch]
            targets = [target_ids(generator, e.query.output, 32) for e in batch]
            loss, _ = ce_and_kl(generator, module, batch, prompts, targets, **loss_args)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the shipped run had one core
        shipped = median_time(lambda: step(studio.generator, kl_weight=0.1, prefix_once=False), repeats)
        current_1 = median_time(lambda: step(bf16, kl_weight=0.0), repeats)
    finally:
        torch.set_num_threads(threads)
    current = median_time(lambda: step(bf16, kl_weight=0.0), repeats)
    n = sum(len(b) for b in batches)
    return {"examples": n, "threads": threads, "shipped_examples_per_s": n / shipped,
            "current_examples_per_s": n / current, "current_one_thread_examples_per_s": n / current_1,
            "speedup": shipped / current, "speedup_one_thread": shipped / current_1}


def fig_tune(studio: Studio, data: Path, repeats: int) -> dict:
    """Seconds to fit a "tune to me" token for a 60-item history, and one 64-token answer for scale."""
    split = read_task(data, "tweets", "train", limit=400)
    history = max((q.item_texts() for q in split.queries), key=len)[:60]
    owner = secrets.token_urlsafe(24)
    profile = studio.compute_profile(owner, "bench", history).profile_id
    results = []
    fit = median_time(lambda: results.append(studio.tune_profile(owner, profile)), repeats)
    answer = median_time(lambda: list(studio.generate(owner, profile, "Write a tweet about my weekend.",
                                                      GenerationParams(max_new_tokens=64, stop_at_eos=False))),
                         repeats)
    last = results[-1]
    return {"items": len(history), "fit_s": fit, "answer_64_tokens_s": answer, "ratio": fit / answer,
            "steps_kept": last.steps, "held_back_gain": last.gain}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "assets" / "results" / "benchmark")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--queries", type=int, default=8, help="real queries for the first-token figure")
    parser.add_argument("--serving-repeats", type=int, default=3)
    parser.add_argument("--serving-visitors", type=int, nargs="+", default=[1, 4, 16],
                        help="concurrent visitors per level; the first is the one-at-a-time baseline")
    parser.add_argument("--per-visitor", type=int, default=3, help="requests per visitor and level (serving)")
    parser.add_argument("--reading-s", type=float, default=15.0, help="a participant's reading time (serving)")
    parser.add_argument("--skip", nargs="*", default=[], help="figures to skip: pair first_token encoding "
                                                              "aggregator cold_start training tune rows "
                                                              "compute_sharing serving know_me")
    args = parser.parse_args(argv)

    # Figures skipped in this run keep their values from an earlier run of the same file.
    results_file = args.out.with_suffix(".json")
    results: dict = json.loads(results_file.read_text()) if results_file.is_file() else {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env().with_(db_path=Path(tmp) / "bench.db")
        studio = Studio(settings)
        results.update(machine=machine(), dtype=str(settings.dtype), device=settings.device, repeats=args.repeats)
        blog = stress_history(args.data)
        figures = {
            "pair": lambda: fig_pair(studio, args.repeats, args.new_tokens),
            "first_token": lambda: fig_first_token(studio, load_histories(args.data, n=args.queries), args.repeats),
            "encoding": lambda: fig_encoding(studio, blog),
            "aggregator": lambda: fig_aggregator(studio, blog, args.repeats * 4),
            "cold_start": fig_cold_start,
            "training": lambda: fig_training(studio, args.data, max(args.repeats // 2, 1)),
            "tune": lambda: fig_tune(studio, args.data, max(args.repeats // 2, 1)),
            "rows": lambda: fig_rows(studio, args.repeats, sizes=(2, 8, 16, 32, 48, 64) if settings.device == "cpu"
                                     else (2, 16, 64, 128, 256, 512)),
            "compute_sharing": lambda: fig_compute_sharing(studio, blog[:256], max(args.repeats // 2, 2)),
            "serving": lambda: serving_summary(fig_serving(args)),
            "know_me": lambda: fig_know_me(studio, args.repeats),
        }
        for name, run in figures.items():
            if name in args.skip:
                continue
            print(f"[benchmark] {name} ...", flush=True)
            results[name] = {**run(), "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                             "torch_threads": torch.get_num_threads()}
            print(json.dumps(results[name], indent=1), flush=True)
            results_file.write_text(json.dumps(results, indent=2) + "\n")  # kept even if a later figure fails
        studio.store.close()

    table = markdown(results)
    args.out.with_suffix(".md").write_text("# Benchmark results\n\n" + table)
    print(table)


if __name__ == "__main__":
    main()
