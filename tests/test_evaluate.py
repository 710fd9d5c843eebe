"""The training and evaluation commands end to end on a tiny self-made data set and a tiny LLM.

The LLM is a tiny random Llama saved with the real SmolLM2 tokenizer and given to the commands
through ``PPLUG_LLM`` (a local folder), so the whole pipeline runs in seconds; the encoder is
the real embedded all-MiniLM-L6-v2.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from demo.core.models import llm_folder
from demo.core.plug import PPlug
from demo.core.settings import REPO_ROOT
from demo.core.text import free_port
from demo.research import evaluate as evaluate_cli
from demo.research import keywords as keywords_cli
from demo.research import oracle as oracle_cli
from demo.research import train as train_cli
from demo.research.evaluate import other_user_order

WORDS = "tea coffee goal match paper model river bike song snow".split()


def write_task(folder, task, split, n_users, queries_per_user=1):
    folder.mkdir(parents=True, exist_ok=True)
    questions, golds = [], []
    for u in range(n_users):
        profile = [{"id": f"{split}-{u}-{j}", "text": f"user {u} likes {WORDS[(u + j) % 10]} and {WORDS[u % 10]}"}
                   for j in range(4)]
        for k in range(queries_per_user):
            qid = f"{split}-{u}-q{k}"
            questions.append({"id": qid, "user_id": f"{split}-u{u}", "profile": profile,
                              "input": f"Write a tweet using these words: {WORDS[u % 10]}, {WORDS[(u + k) % 10]}"})
            golds.append({"id": qid, "output": f"{WORDS[u % 10]} with {WORDS[(u + k) % 10]} today"})
    (folder / f"{split}_questions.json").write_text(json.dumps(questions))
    (folder / f"{split}_outputs.json").write_text(json.dumps({"task": task, "golds": golds}))


@pytest.fixture(scope="module")
def tiny_env(settings, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    tokenizer = AutoTokenizer.from_pretrained(llm_folder(settings.llm, settings.cache_dir))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))
    LlamaForCausalLM(config).save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    data = root / "data"
    write_task(data / "tweets", "tweets", "train", 4, queries_per_user=2)
    write_task(data / "tweets", "tweets", "dev", 5)
    return root


@pytest.fixture()
def tiny_llm_env(tiny_env, monkeypatch):
    monkeypatch.setenv("PPLUG_LLM", str(tiny_env / "llm"))
    monkeypatch.setenv("PPLUG_DEVICE", "cpu")
    return tiny_env


def common(root) -> list[str]:
    return ["--data", str(root / "data"), "--tasks", "tweets", "--cache", str(root / "cache.db")]


def test_train_resumes_and_evaluate_runs_end_to_end(tiny_llm_env):
    root = tiny_llm_env
    run, out = root / "run", root / "plug"
    args = [*common(root), "--run-dir", str(run), "--out", str(out), "--batch-size", "2", "--eval-every", "2",
            "--eval-per-task", "2", "--eval-max-new-tokens", "4", "--save-every", "1", "--lr", "1e-2"]
    assert train_cli.main([*args, "--steps", "2"]) == 0
    first = torch.load(run / "last.pt", weights_only=False)
    assert first["state"]["step"] == 2
    # a second call with more steps resumes from the checkpoint instead of starting over
    assert train_cli.main([*args, "--steps", "3"]) == 0
    resumed = torch.load(run / "last.pt", weights_only=False)
    assert resumed["state"]["step"] == 3
    assert [e["step"] for e in resumed["state"]["evals"]] == [0, 2, 3]
    config = json.loads((out / "config.json").read_text())
    made = config["made"]
    assert config["origin"] == "trained"
    assert made["llm"] == str(root / "llm") and made["encoder"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert made["data"] == {"tweets": {"split": "train", "queries": 8}}
    assert made["steps"] == 3 and made["selected_step"] in (2, 3)
    assert "tweets" in made["dev_selection"]["selected"] and made["summary"].startswith("trained on tweets")

    # a plug for pplug+rag trains on prompts that carry the retrieved items, and records k
    assert train_cli.main([*common(root), "--run-dir", str(root / "run-rag"), "--out", str(root / "plug-rag"),
                           "--steps", "1", "--batch-size", "2", "--eval-per-task", "1", "--eval-max-new-tokens", "2",
                           "--rag-k", "2", "--max-prompt-tokens", "320"]) == 0
    assert json.loads((root / "plug-rag" / "config.json").read_text())["made"]["settings"]["rag_k"] == 2

    # the training-free plug as its own command
    assert train_cli.main([*common(root), "--training-free", "--vocab-limit", "300", "--out",
                           str(root / "free")]) == 0
    assert json.loads((root / "free" / "config.json").read_text())["origin"] == "training-free"

    # the keyword token, added to the trained plug: every method below runs with three soft tokens
    assert keywords_cli.main(["--plug", str(out), "--words", "300", "--k", "4"]) == 0
    keyed = PPlug.load(out)
    assert keyed.n_soft == 3 and len(keyed.keyword_words) == 300
    # training on from it keeps K and its words
    assert train_cli.main([*common(root), "--run-dir", str(root / "run-on"), "--out", str(root / "plug-on"),
                           "--steps", "1", "--batch-size", "2", "--eval-per-task", "1", "--eval-max-new-tokens", "2",
                           "--init-from", str(out)]) == 0
    on = PPlug.load(root / "plug-on")
    assert on.n_soft == 3 and on.keyword_words == keyed.keyword_words
    assert torch.equal(on.keyword_tokens, keyed.keyword_tokens)
    # with a shift head kept frozen: the head stays, the rest trains; the record of K carries through
    # a second training on
    on.rebuilt(shift_head=True, keyword_center=True).save(root / "plug-head")
    assert train_cli.main([*common(root), "--run-dir", str(root / "run-head"), "--out", str(root / "plug-headed"),
                           "--steps", "1", "--batch-size", "2", "--eval-per-task", "1", "--eval-max-new-tokens", "2",
                           "--lr", "1e-2", "--warmup", "0", "--init-from", str(root / "plug-head"),
                           "--freeze-shift-head"]) == 0
    start, headed = PPlug.load(root / "plug-head"), PPlug.load(root / "plug-headed")
    assert headed.config.shift_head and torch.equal(headed.shift_head.weight, start.shift_head.weight)
    assert headed.config.keyword_center  # the way K's words are chosen comes along too
    assert headed.config.made["init_from"]["plug"] == start.plug_id
    assert not torch.equal(headed.projector[0].weight, start.projector[0].weight)
    # started again for one more step with --select last: --out gets the last step's plug, not the best
    assert train_cli.main([*common(root), "--run-dir", str(root / "run-head"), "--out", str(root / "plug-last"),
                           "--steps", "2", "--batch-size", "2", "--eval-per-task", "1", "--eval-max-new-tokens", "2",
                           "--lr", "1e-2", "--warmup", "0", "--init-from", str(root / "plug-head"),
                           "--freeze-shift-head", "--select", "last"]) == 0
    last = PPlug.load(root / "plug-last")
    assert last.config.made["selected_step"] == 2 and last.plug_id == PPlug.load(root / "run-head" / "step-2").plug_id
    assert PPlug.load(root / "run-head" / "best").plug_id != last.plug_id  # the best (step 1) is not what --out got

    results_dir = root / "results"
    assert evaluate_cli.main([*common(root), "--split", "dev", "--limit", "4", "--plug", str(out),
                              "--training-free-plug", str(root / "free"), "--max-new-tokens", "4",
                              "--candidates", "3", "--bootstrap", "50", "--out", str(results_dir),
                              "--record-in-plug"]) == 0
    results = json.loads((results_dir / "results.json").read_text())
    (task,) = results["tasks"]
    assert task["n_queries"] == 4
    assert set(task["methods"]) == set(evaluate_cli.METHODS) | {"gold"}
    for method in evaluate_cli.METHODS:
        m = task["methods"][method]
        assert 0 <= m["rougeL"] <= 1 and 0 <= m["fit_top1"] <= 1 and 0 < m["fit_mrr"] <= 1
        assert 1 / 3 <= m["topic_fit_mrr"] <= 1  # the topic fit ranks the same 3 candidates by the encoder
    assert task["methods"]["gold"]["fit_top1"] >= 0 and 0 < task["methods"]["gold"]["topic_fit_mrr"] <= 1
    assert "topic_rr" in task["comparisons"]["pplug - pplug-other-user"]
    assert "topic fit MRR" in (results_dir / "results.md").read_text()
    diag = task["diagnostics"]["pplug"]
    assert -1 <= diag["p_mean_pairwise_cosine"] <= 1 and "nll_own_minus_other" in diag
    assert "pplug - pplug-other-user" in task["comparisons"]
    lines = (results_dir / "per_query.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all(m in json.loads(lines[0]) for m in evaluate_cli.METHODS)
    # each query's own and other NLL, which the diagnostics sum up: two plugs compare paired on them
    nll = [json.loads(line)["pplug:nll"] for line in lines]
    assert sum(r["own"] for r in nll) / 4 == pytest.approx(diag["nll_own"], abs=1e-4)
    assert sum(r["other"] for r in nll) / 4 == pytest.approx(diag["nll_other"], abs=1e-4)
    # ... and so does a diagnostics-only run, the same numbers without generating
    assert evaluate_cli.main([*common(root), "--split", "dev", "--limit", "4", "--plug", str(out), "--methods",
                              "pplug", "--bootstrap", "50", "--diagnostics-only", "--out", str(root / "diag")]) == 0
    only = [json.loads(line) for line in (root / "diag" / "per_query.jsonl").read_text().splitlines()]
    assert [r["pplug:nll"] for r in only] == nll and "pplug" not in only[0]
    # --selfsup: queries made from the dev users' own histories, taken user by user
    assert evaluate_cli.main([*common(root), "--split", "dev", "--selfsup", "2", "--limit", "7", "--plug", str(out),
                              "--methods", "generic,pplug", "--max-new-tokens", "4", "--candidates", "3",
                              "--bootstrap", "50", "--out", str(root / "self")]) == 0
    made = [json.loads(line) for line in (root / "self" / "per_query.jsonl").read_text().splitlines()]
    assert len(made) == 7 and len({r["user_id"] for r in made[:5]}) == 5 and all("-self-" in r["id"] for r in made)
    assert all(re.fullmatch(r"user \d likes \w+ and \w+", r["gold"]) for r in made)  # a history item is the answer
    assert "made from the users' own histories" in (root / "self" / "results.md").read_text()
    with pytest.raises(SystemExit):
        evaluate_cli.parse_args(["--selfsup", "2", "--record-in-plug"])
    # --reuse takes an earlier run's outputs again only where the same plug made them

    def seconds_with(plug: Path) -> dict:
        assert evaluate_cli.main([*common(root), "--split", "dev", "--limit", "4", "--plug", str(plug), "--methods",
                                  "generic,pplug", "--max-new-tokens", "4", "--candidates", "3", "--bootstrap", "50",
                                  "--reuse", str(results_dir / "per_query.jsonl"), "--out", str(root / "again")]) == 0
        methods = json.loads((root / "again" / "results.json").read_text())["tasks"][0]["methods"]
        return {m: methods[m]["seconds"] for m in ("generic", "pplug")}

    assert seconds_with(out) == {"generic": "reused", "pplug": "reused"}
    again = seconds_with(root / "plug-on")  # another plug: its answers are generated, the generic ones are not
    assert again["generic"] == "reused" and isinstance(again["pplug"], float)
    recorded = json.loads((out / "config.json").read_text())["made"]
    assert recorded["dev_results"]["tasks"]["tweets"]["pplug"]["rougeL"] == task["methods"]["pplug"]["rougeL"]
    assert "dev ROUGE-L tweets" in recorded["summary"]
    assert "keyword token (the 4 of 300 bank words nearest to the history)" in recorded["summary"]
    # a plug trained on from the keyword plug names the parts it kept, and how K's words are chosen
    assert "keyword token (the 4 of 300 bank words nearest to what sets the history apart) in place" in \
        evaluate_cli.record_in_plug(results, root / "plug-headed")
    headed_config = root / "plug-headed" / "config.json"
    headed_config.write_text(json.dumps({**json.loads(headed_config.read_text()), "keyword_center": False}))
    assert "keyword token (the 4 of 300 bank words nearest to the history) in place" in evaluate_cli.record_in_plug(
        results, root / "plug-headed")
    # one token per word, k as its config now has it (the keyword step's record said 4)
    headed_config.write_text(json.dumps({**json.loads(headed_config.read_text()), "keywords": 3,
                                         "separate_keywords": True}))
    assert ("3 keyword tokens (one per bank word: the 3 of 300 bank words nearest to the history) in place"
            in evaluate_cli.record_in_plug(results, root / "plug-headed"))
    headed_config.write_text(json.dumps({**json.loads(headed_config.read_text()), "keywords": 4,
                                         "separate_keywords": False}))
    # ... and, with a shift head distilled onto it after the training, says that head is the new one
    config = json.loads((root / "plug-headed" / "config.json").read_text())
    config["made"]["distill"] = {"users": {"tweets": 5, "blog_posts": 2}}
    (root / "plug-headed" / "config.json").write_text(json.dumps(config))
    summary = evaluate_cli.record_in_plug(results, root / "plug-headed")
    assert "nearest to the history) in place; its shift head distilled afterwards from 7 train users" in summary
    config["made"]["averaged"] = {"with": "trained-123", "weight": 0.5}  # demo.research.average
    (root / "plug-headed" / "config.json").write_text(json.dumps(config))
    assert "its weights averaged with plug trained-123's (50% its own)" in evaluate_cli.record_in_plug(
        results, root / "plug-headed")
    assert "examples per train user made from their own writing" not in summary  # trained without --selfsup
    config["made"].setdefault("settings", {})["selfsup"] = 16
    (root / "plug-headed" / "config.json").write_text(json.dumps(config))
    assert "steps, and 16 examples per train user made from their own writing)" in evaluate_cli.record_in_plug(
        results, root / "plug-headed")
    assert PPlug.load(out).plug_id == results["plug_id"]  # the weights are untouched
    md = (results_dir / "results.md").read_text()
    assert re.search(r"^\| pplug\+rag +\|", md, re.M) and "fit MRR" in md


@pytest.mark.slow
def test_accelerate_launch_trains_in_two_processes_and_resumes(tiny_llm_env):
    """``accelerate launch`` with two CPU processes (gloo): the DDP path GPUs take, input encoder included."""
    root = tiny_llm_env
    run, out = root / "run-ddp", root / "plug-ddp"
    env = {**os.environ, "PPLUG_LLM": str(root / "llm"), "PPLUG_DEVICE": "cpu"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), "-m", "demo.research.train"]
    args = [*common(root), "--run-dir", str(run), "--out", str(out), "--batch-size", "2", "--eval-every", "2",
            "--eval-per-task", "2", "--eval-max-new-tokens", "4", "--save-every", "1",
            "--train-input-encoder", "--standardize", "--other-weight", "1"]
    # Two steps in this process, then the launch resumes from last.pt in two processes (one launch:
    # each costs two interpreters loading the models).
    assert train_cli.main([*args, "--steps", "2"]) == 0
    done = subprocess.run([*launch, *args, "--threads", "1", "--steps", "3"], cwd=REPO_ROOT, env=env, timeout=300,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    state = torch.load(run / "last.pt", weights_only=False)["state"]
    assert state["step"] == 3 and [e["step"] for e in state["evals"]] == [0, 2, 3]
    made = json.loads((out / "config.json").read_text())["made"]
    assert made["processes"] == 2 and made["steps"] == 3
    trained = PPlug.load(out)
    assert trained.input_encoder is not None
    # training on from it keeps its fine-tuned input encoder: trained on when asked, else as it was
    for flag, name in (["--train-input-encoder"], "on-trained"), ([], "on-frozen"):
        assert train_cli.main([*common(root), "--run-dir", str(root / f"run-{name}"), "--out", str(root / name),
                               "--steps", "1", "--batch-size", "2", "--eval-per-task", "1",
                               "--eval-max-new-tokens", "2", "--lr", "1e-2", "--warmup", "0",
                               "--init-from", str(out), *flag]) == 0
        on = PPlug.load(root / name).input_encoder
        assert on is not None
        same = [torch.equal(a, b) for a, b in zip(on.state_dict().values(), trained.input_encoder.state_dict().values())]
        assert all(same) != bool(flag)


def test_the_oracle_finds_a_personal_shift_that_carries_to_a_held_out_query(tiny_llm_env):
    """Each user's gold outputs share one word, so a shift fitted on two of them helps the third."""
    root = tiny_llm_env
    write_task(root / "data" / "three", "tweets", "train", 6, queries_per_user=3)
    llm = LlamaForCausalLM.from_pretrained(root / "llm")
    PPlug.untrained("sentence-transformers/all-MiniLM-L6-v2", str(root / "llm"), 384,
                    llm.get_input_embeddings().weight, seed=0).save(root / "oracle-plug")
    out = root / "oracle"
    assert oracle_cli.main(["--data", str(root / "data"), "--tasks", "three", "--cache", str(root / "cache.db"),
                            "--plug", str(root / "oracle-plug"), "--users", "6", "--steps", "30", "--lr", "0.05",
                            "--out", str(out)]) == 0
    r = json.loads((out / "oracle.json").read_text())["tasks"]["three"]
    assert r["users"] == 6 and r["shift_norm"] > 0
    assert r["own_minus_other"]["diff"] < 0 and r["own_better_share"] >= 0.5
    assert r["nll_own"] < r["nll_plug"]  # the own shift beats no shift on the held-out query


def test_saved_plug_reloads_bit_identically(tmp_path):
    plug = PPlug.untrained("enc", "llm", 8, torch.randn(20, 6), tau=0.07, seed=3)
    with torch.no_grad():
        for p in plug.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # not just the seeded init
    plug.config.origin = "trained"
    plug.config.made = {"summary": "test", "steps": 3}
    plug.save(tmp_path)
    again = PPlug.load(tmp_path, encoder_id="enc", llm_id="llm", d_enc=8, d_llm=6)
    assert again.plug_id == plug.plug_id
    assert again.config == plug.config
    for (name, a), (_, b) in zip(plug.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_other_user_order_never_pairs_a_user_with_themself():
    users = ["a", "a", "b", "c", "c", "d"]
    order = other_user_order(users)
    assert all(users[j] != users[i] for i, j in enumerate(order))
    assert other_user_order(["a", "a"]) == [0, 1]  # a single user has no other
