"""The benchmark's report: its goals, and its results as Markdown (``demo.research.benchmark``)."""
from __future__ import annotations

from ..core.text import markdown_table

GOALS = [
    ("1. pair batched / single generation", ("pair", "pair_vs_single"), "<= 1.15", lambda v: v <= 1.15),
    ("1. pair batched / two sequential", ("pair", "pair_vs_sequential"), "(lower is better)", None),
    ("2. decode speed, project path / model.generate", ("pair", "decode_speed_vs_hf_generate"), ">= 0.9",
     lambda v: v >= 0.9),
    ("3. first token, PPlug / RAG top-4", ("first_token", "pplug_vs_rag"), "<= 0.5", lambda v: v <= 0.5),
    ("4. profile encoding / raw encode (throughput)", ("encoding", "project_vs_raw"), ">= 0.9", lambda v: v >= 0.9),
    ("4. unchanged recompute speed-up", ("encoding", "recompute_speedup"), ">= 50", lambda v: v >= 50),
    ("6. cold start, first / later", ("cold_start", "first_vs_later"), "(one-off conversion)", None),
    ("7. training examples/s, current / shipped recipe", ("training", "speedup"), ">= 3", lambda v: v >= 3),
    ("8. tune to me (60 items) / one 64-token answer", ("tune", "ratio"), "(fit <= 15 s)", None),
    ("9. pair / single generation through the scheduler", ("pair", "pair_vs_single_scheduler"), "<= 1.15",
     lambda v: v <= 1.15),
    ("9. decode tokens/s at the best rows per step / at 2 rows", ("rows", "best_vs_two_rows"), "(higher is better)",
     None),
    ("10. generation time while a profile is computed / alone", ("compute_sharing", "generation_slowdown"),
     "(not blocked)", None),
    ("11. answers/min, 16 visitors / one at a time", ("serving", "ratio_16"), ">= 4", lambda v: v >= 4),
    ("11. study wait vote -> next trial, p50 s, 1 participant", ("serving", "study_wait_p50_1"), "<= 1",
     lambda v: v <= 1),
]


# The absolute figures of each measured section, one line each, in this order.
LINES = {
    "pair": lambda p: (
        f"- {p['new_tokens']} new tokens: single {p['single_s']:.2f} s, pair in one batch "
        f"{p['pair_batched_s']:.2f} s, two sequential {p['two_sequential_s']:.2f} s; project path "
        f"{p['project_tokens_per_s']:.1f} tokens/s, model.generate {p['hf_generate_tokens_per_s']:.1f}."),
    "first_token": lambda f: (
        f"- First token: PPlug {f['pplug_first_token_s'] * 1000:.0f} ms "
        f"({f['pplug_prompt_tokens']:.0f} prompt tokens incl. {f.get('soft_tokens', 2)} soft), RAG top-4 "
        f"{f['rag4_first_token_s'] * 1000:.0f} ms ({f['rag4_prompt_tokens']:.0f} prompt tokens), "
        f"median over {f['queries']} real queries."),
    "encoding": lambda e: (
        f"- Encoding {e['items']:,} real posts: raw {e['raw_encode_items_per_s']:.0f} items/s, "
        f"project {e['project_items_per_s']:.0f} items/s; unchanged recompute "
        f"{e['unchanged_recompute_s'] * 1000:.0f} ms."),
    "training": lambda t: (
        f"- Training ({t['examples']} real tweets train examples, batch 4): shipped recipe on "
        f"one thread {t['shipped_examples_per_s']:.2f} examples/s; current recipe "
        f"{t['current_one_thread_examples_per_s']:.2f} on one thread "
        f"({t['speedup_one_thread']:.2f}x), {t['current_examples_per_s']:.2f} on {t['threads']} "
        f"({t['speedup']:.2f}x)."),
    "tune": lambda t: (
        f"- Tune to me: {t['fit_s']:.1f} s for a {t['items']}-item history "
        f"({t['ratio']:.1f}x one 64-token answer of {t['answer_64_tokens_s']:.1f} s)."),
    "cold_start": lambda c: (
        f"- Cold start: {c['first_start_s']:.1f} s with the conversion, {c['later_start_s']:.1f} s "
        f"after it; peak memory {c['peak_rss_mb']:.0f} MB."),
    "rows": lambda r: "- Shared loop, tokens/s by rows per step ({} new tokens): {}.".format(
        r["new_tokens"], ", ".join(f"{b} rows {v['tokens_per_s']:.0f} ({v['step_ms']:.0f} ms/step)"
                                   for b, v in r["rows"].items())),
    "compute_sharing": lambda c: (
        f"- Profile of {c['items']} items: {c['compute_alone_s']:.1f} s alone, "
        f"{c['compute_during_generation_s']:.1f} s beside generation; a {c['new_tokens']}-token pair "
        f"{c['generation_alone_s']:.1f} s alone, {c['generation_during_compute_s']:.1f} s during the "
        f"computation (with one queue it waited up to {c['one_queue_wait_s']:.1f} s first)."),
    "know_me": lambda k: (
        f"- Does it know me? (8 held-back items): at most {k['max_wall_s']:.2f} s wall, "
        f"{k['max_cpu_s']:.2f} s CPU per profile (goal <= 3 s on CPU)."),
}


def markdown(results: dict) -> str:
    figures = []
    for label, (section, key), goal, check in GOALS:
        if section in results and key in results[section]:
            value = results[section][key]
            met = "" if check is None else ("yes" if check(value) else "**no**")
            figures.append([label, f"{value:.2f}", goal, met])
    lines = [markdown_table(figures, ["figure", "ratio", "goal", "met"])]
    if "aggregator" in results:
        sizes = [[f"{int(n):,}", f"{row['cached_ms']:.3f}", f"{row['projecting_now_ms']:.2f}"]
                 for n, row in results["aggregator"].items() if n.isdigit()]
        lines += ["", markdown_table(sizes, ["history items", "aggregator + projector, cached (ms)",
                                             "projecting now (ms)"])]
    if "serving" in results:
        lines += ["", serving_table(results["serving"])]
    if "know_me" in results:
        lines += ["", markdown_table(
            [(name, f"{r['vs_stranger']:+.1%} [{r['interval'][0]:+.1%}, {r['interval'][1]:+.1%}]",
              f"{r['items_better']} of {r['items']}", r["verdict"], f"{r['vs_generic']:+.1%}",
              f"{r['vs_stranger_fp32']:+.1%} ({r['verdict_fp32']})", f"{r['wall_s']:.2f}", f"{r['cpu_s']:.2f}")
             for name, r in results["know_me"]["personas"].items()],
            ["persona", "own vs stranger, per word [90% CI]", "items better", "verdict", "vs no plug",
             "own vs stranger in fp32", "wall (s)", "CPU (s)"])]
    absolute = [line(results[section]) for section, line in LINES.items() if section in results]
    m = results["machine"]
    head = (f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, torch {m['torch']}"
            f"{', GPU ' + m['gpu'] if 'gpu' in m else ''}; dtype {results['dtype']}; "
            f"load average at start {m['load_average_at_start'][0]:.1f}.")
    return "\n".join([head, "", *lines, "", *absolute, ""])


def serving_table(serving: dict) -> str:
    """The visitors and study figures of ``demo.app.loadtest`` as Markdown."""
    v = serving["visitors"]
    levels = [[n, f"{x['answers_per_min']:.1f}", f"{x['answers_per_min_vs_one_at_a_time']:.2f}",
               f"{x['latency_p50_s']:.1f} / {x['latency_p95_s']:.1f}",
               f"{x['first_token_p50_s']:.2f} / {x['first_token_p95_s']:.2f}"] for n, x in v["levels"].items()]
    lines = [f"Serving ({v['max_new_tokens']} new tokens, {v['requests_per_visitor']} requests per visitor, medians "
             f"of {v['repeats']} repeats; load average at start {serving['load_average_at_start'][0]:.1f}):", "",
             markdown_table(levels, ["visitors", "answers/min", "vs one at a time", "latency p50 / p95 (s)",
                                     "first token p50 / p95 (s)"])]
    if "study" in serving:
        st = serving["study"]
        waits = {**st["participants"], **({"1, no prefetch": st["no_prefetch_1"]} if "no_prefetch_1" in st else {})}
        rows = [[n, f"{w['wait_p50_s']:.2f} / {w['wait_p95_s']:.2f}", str(w["waits"])] for n, w in waits.items()]
        lines += ["", f"Study `{st['study']}`, reading {st['reading_s']:g} s per trial:", "",
                  markdown_table(rows, ["participants", "vote -> next trial p50 / p95 (s)", "waits"])]
    return "\n".join(lines)


def serving_summary(serving: dict) -> dict:
    """The two goal figures of the serving run, at the top level of its section."""
    out = dict(serving)
    levels = serving.get("visitors", {}).get("levels", {})
    if "16" in levels:
        out["ratio_16"] = levels["16"]["answers_per_min_vs_one_at_a_time"]
    one = serving.get("study", {}).get("participants", {}).get("1")
    if one:
        out["study_wait_p50_1"] = one["wait_p50_s"]
    return out
