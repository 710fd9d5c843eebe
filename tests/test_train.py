"""Training pieces on a tiny random LLM with the real tokenizer: the loss goes down, the LLM stays frozen."""
from __future__ import annotations

import argparse
import random

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from demo.core.generation import Generator
from demo.core.models import llm_folder
from demo.core.plug import PPlug, add_shift
from demo.core.scoring import bf16_autocast, end_of_turn_ids, fast_bf16, target_ids
from demo.core.selfsup import examples_from_history
from demo.core.tuning import FitSettings, fit_shift
from demo.research.lamp import LampSplit, Query, self_supervised_split, task_spec
from demo.research.runtime import (Example, SoftTokenModule, ce_and_kl, contrastive_loss, other_histories,
                                   stack_histories)
from demo.research.train import TrainData, distinct_users, parse_args, task_weights, thin_history
from demo.research.training_free import set_linear_map


def tiny_llm(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.3,
                         tie_word_embeddings=True, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))
    model = LlamaForCausalLM(config).eval()
    model.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def tiny(settings):
    tokenizer = AutoTokenizer.from_pretrained(llm_folder(settings.llm, settings.cache_dir))
    model = tiny_llm(tokenizer)
    return Generator(model, tokenizer)


def make_examples(n: int, d_enc: int, seed: int = 0) -> list[Example]:
    g = torch.Generator().manual_seed(seed)
    outputs = ["great game tonight #hockey", "reading a paper on nets", "coffee first, then code"]
    out = []
    for i in range(n):
        q = Query(id=str(i), user_id=f"u{i}", input=f"Write a tweet using these words: w{i}, x, y",
                  profile=[], output=outputs[i % len(outputs)])
        x = torch.nn.functional.normalize(torch.randn(d_enc, generator=g), dim=0)
        items = torch.nn.functional.normalize(torch.randn(3 + i, d_enc, generator=g), dim=-1)
        out.append(Example(task_spec("tweets"), q, x, items, [f"item {j}" for j in range(3 + i)]))
    return out


def train_steps(tiny, module, examples, optimizer, steps: int, **loss_args) -> list[dict]:
    """``steps`` optimizer steps of ``ce_and_kl`` on one fixed batch; the stats of each step."""
    prompts = [tiny.fit_prompt(e.query.input, 64) for e in examples]
    targets = [target_ids(tiny, e.query.output, 16) for e in examples]
    out = []
    for _ in range(steps):
        loss, stats = ce_and_kl(tiny, module, examples, prompts, targets, **loss_args)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        out.append(stats)
    return out


def test_the_kl_term_can_hold_the_plug_near_a_plug_before_it(tiny):
    """--kl-reference: the KL is to a frozen plug fed the same history, not to the generic model."""
    d_enc = 16
    examples = make_examples(3, d_enc)
    prompts = [tiny.fit_prompt(e.query.input, 64) for e in examples]
    targets = [target_ids(tiny, e.query.output, 16) for e in examples]
    module = SoftTokenModule(PPlug.untrained("enc", "llm", d_enc, tiny.embedding.weight, tau=0.1, seed=0))
    same = SoftTokenModule(PPlug.untrained("enc", "llm", d_enc, tiny.embedding.weight, tau=0.1, seed=0))
    other = SoftTokenModule(PPlug.untrained("enc", "llm", d_enc, tiny.embedding.weight, tau=0.1, seed=1))
    kl = {name: ce_and_kl(tiny, module, examples, prompts, targets, 1.0, reference=ref)[1]["kl"]
          for name, ref in (("generic", None), ("same", same), ("other", other))}
    assert kl["same"] < 1e-5 < kl["other"] and abs(kl["other"] - kl["generic"]) > 1e-4
    loss, _ = ce_and_kl(tiny, module, examples, prompts, targets, 1.0, reference=other)
    loss.backward()  # the reference is scored without gradients: the loss never trains it
    assert any(p.grad is not None for p in module.parameters())
    assert all(p.grad is None for p in other.parameters())  # the reference stays frozen


def test_a_kl_reference_without_a_kl_weight_is_refused(capsys):
    assert parse_args(["--kl-reference", "some/plug", "--kl-weight", "0.5"]).kl_weight == 0.5
    with pytest.raises(SystemExit):
        parse_args(["--kl-reference", "some/plug", "--kl-weight", "0"])
    assert "needs a --kl-weight above 0" in capsys.readouterr().err


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(tiny):
    d_enc = 16
    plug = PPlug.untrained("enc", "llm", d_enc, tiny.embedding.weight, tau=0.1, seed=0)
    module = SoftTokenModule(plug)
    llm_before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    optimizer = torch.optim.AdamW(module.parameters(), lr=5e-2)
    stats = train_steps(tiny, module, make_examples(3, d_enc), optimizer, 8, kl_weight=0.1)
    assert all(set(s) >= {"nll", "kl", "loss", "w_entropy"} for s in stats)
    assert stats[-1]["loss"] < stats[0]["loss"] - 0.05
    # only the plug learns; the LLM is frozen and untouched
    assert all(p.grad is None for p in tiny.model.parameters())
    assert all(torch.equal(v, llm_before[k]) for k, v in tiny.model.state_dict().items())


def test_targets_end_with_the_end_of_turn_unless_cut(tiny):
    end = end_of_turn_ids(tiny)
    assert end == [tiny.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    short = target_ids(tiny, "hello there", 16)
    assert short[-1] == end[0]
    cut = target_ids(tiny, "word " * 50, 8)
    assert len(cut) == 8 and end[0] not in cut


def test_fit_prompt_cuts_the_request_but_keeps_the_template(tiny):
    full = tiny.prompt_ids("word " * 300)
    fitted = tiny.fit_prompt("word " * 300, 64)
    assert len(fitted.plain) <= 64
    assert fitted.prefix == full.prefix
    assert fitted.suffix[-3:] == full.suffix[-3:]  # end of turn + assistant header kept
    assert fitted.cut_to == len(fitted.plain) - len(tiny.prompt_ids("").plain)  # request tokens kept
    assert tiny.fit_prompt("word", 64).cut_to is None


def test_stack_histories_pads_and_masks():
    items, mask = stack_histories([torch.ones(2, 4), torch.zeros(0, 4)], 4)
    assert items.shape == (2, 2, 4)
    assert mask.tolist() == [[True, True], [True, False]]  # an empty history: one zero item


def test_training_free_projector_is_the_linear_map():
    plug = PPlug.untrained("enc", "llm", 6, torch.randn(10, 5), seed=0)
    W, b = torch.randn(5, 6) * 0.3, torch.randn(5) * 0.1
    set_linear_map(plug.projector, W, b)
    h = torch.nn.functional.normalize(torch.randn(4, 6), dim=-1)
    assert torch.allclose(plug.project_items(h), h @ W.T + b, atol=1e-5)


def test_history_augmentation_keeps_at_least_one_item():
    rng = random.Random(0)
    items = torch.arange(10.0)[:, None]
    for _ in range(20):
        thinned = thin_history(items, 0.99, rng)
        assert 1 <= thinned.shape[0] <= 10
    assert thin_history(items, 0.0, rng).shape[0] == 10


def test_the_other_user_term_makes_the_own_history_count(tiny):
    """With the margin term, the gold output becomes likelier with its own history than another's."""
    d_enc = 16
    plug = PPlug.untrained("enc", "llm", d_enc, tiny.embedding.weight, tau=0.1, seed=1)
    module = SoftTokenModule(plug)
    optimizer = torch.optim.AdamW(module.parameters(), lr=5e-2)
    stats = train_steps(tiny, module, make_examples(3, d_enc, seed=3), optimizer, 12, kl_weight=0.0,
                        other_weight=1.0, other_margin=0.5)
    gaps = [s["own_minus_other"] for s in stats]
    assert gaps[-1] < gaps[0] - 0.05 and gaps[-1] < 0


def test_the_contrastive_term_makes_the_own_history_the_likeliest(tiny):
    """InfoNCE over the batch's users: the own history's share of the posterior over users grows."""
    d_enc = 16
    plug = PPlug.untrained("enc", "llm", d_enc, tiny.embedding.weight, tau=0.1, seed=1)
    module = SoftTokenModule(plug)
    optimizer = torch.optim.AdamW(module.parameters(), lr=5e-2)
    stats = train_steps(tiny, module, make_examples(3, d_enc, seed=3), optimizer, 12, kl_weight=0.0,
                        contrast_weight=1.0, contrast_k=3)
    assert stats[-1]["nce"] < stats[0]["nce"] - 0.1
    assert stats[-1]["own_minus_other"] < 0


def test_contrastive_loss_is_the_cross_entropy_of_the_own_user():
    own = torch.tensor([10.0, 30.0])  # summed NLL of each example's output with its own history
    others = [torch.tensor([30.0, 10.0]), torch.tensor([30.0, 30.0])]
    loss = contrastive_loss(own, others)
    expected = -(torch.log_softmax(torch.tensor([-10.0, -30.0, -30.0]), 0)[0]
                 + torch.log_softmax(torch.tensor([-30.0, -10.0, -30.0]), 0)[0]) / 2
    assert torch.isclose(loss, expected)


def test_self_supervised_queries_never_hold_their_own_answer():
    tweets = [f"Item number {i}: morning coffee tastes wonderful today friends" for i in range(12)]
    users = {"u1": tweets[:8], "u2": tweets[8:]}
    split = LampSplit(task_spec("tweets"), "train", [
        Query(f"q-{u}", u, "Write a tweet using these words: a, b, c", [{"text": t} for t in items], "gold")
        for u, items in users.items()])
    made = self_supervised_split(split, per_user=3, cap=4, seed=0)
    assert [q.user_id for q in made.queries] == ["u1"] * 3 + ["u2"] * 3
    for q in made.queries:
        assert q.input.startswith("Write a tweet using these words: ")
        assert q.output not in [it["text"] for it in q.profile]  # the answer is left out of its history
        assert all(it["text"] in users[q.user_id] for it in q.profile) and len(q.profile) <= 4
    assert self_supervised_split(LampSplit(task_spec("LaMP-1"), "train", split.queries), 3, 4, 0).queries == []


def test_task_weights_change_the_task_draw():
    examples = {"tweets": make_examples(16, 4), "blog_posts": make_examples(16, 4, seed=1)}
    def share(factors):
        data, rng = TrainData(examples, [], factors), random.Random(0)
        return sum(data.batch(rng, 1)[0] == "blog_posts" for _ in range(2000)) / 2000
    assert 0.45 < share({}) < 0.55  # equal sizes, equal chances
    assert 0.70 < share(task_weights("blog_posts=3")) < 0.80  # 3 : 1
    assert task_weights("blog_posts=2, tweets=0.5") == {"blog_posts": 2.0, "tweets": 0.5}
    for bad in ("blog_posts", "blog_posts=0", "blog_posts=x", "blog_posts=inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            task_weights(bad)


def test_batches_hold_distinct_users():
    examples = make_examples(6, 4) + make_examples(6, 4, seed=1)  # two examples of each user
    batch = distinct_users(examples, 4, random.Random(0))
    assert len(batch) == 4 and len({e.query.user_id for e in batch}) == 4


def test_a_tune_to_me_shift_makes_held_back_items_likelier(tiny):
    """fit_shift on a history that repeats one voice: the held-back items get likelier, or nothing is kept."""
    history = [f"Honestly the best coffee in town, trust me #{i}" for i in range(8)]
    examples = examples_from_history(history, "tweet")
    d = tiny.embedding.weight.shape[1]
    soft = torch.randn(len(examples), 2, d, generator=torch.Generator().manual_seed(0))

    def soft_fn(requests, left_out):
        assert len(requests) == len(left_out)
        return soft[:len(requests)]

    token = fit_shift(tiny, soft_fn, examples, FitSettings(steps=6, lr=0.1, fit_examples=4, held_back=2))
    assert token.steps > 0 and token.held_nll_after < token.held_nll_before and token.gain > 0
    assert token.shift.shape == (d,) and token.shift.norm() > 0
    shifted = add_shift(soft[:2], token.shift)
    assert torch.equal(shifted[:, 0], soft[:2, 0]) and torch.allclose(shifted[:, 1], soft[:2, 1] + token.shift)
    per_row = torch.stack([token.shift, -token.shift])  # one shift per row (the evaluation's users)
    assert add_shift(soft[:2], per_row).shape == soft[:2].shape
    assert torch.allclose(add_shift(soft[:2], per_row)[1, 1], soft[1, 1] - token.shift)
    nothing = fit_shift(tiny, soft_fn, examples, FitSettings(steps=2, lr=0.0, fit_examples=4, held_back=2))
    assert nothing.steps == 0 and nothing.shift.norm() == 0  # no step helped: no shift is kept
    ran = []  # early stopping waits for min_steps: a noisy start on few held-back items is not the verdict
    fit_shift(tiny, soft_fn, examples, FitSettings(steps=9, lr=0.0, fit_examples=4, held_back=2, patience=1,
                                                   min_steps=5), lambda done, total: ran.append(done))
    assert ran == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="at least"):
        fit_shift(tiny, soft_fn, examples[:3], FitSettings(held_back=2))
    seen = []
    last = fit_shift(tiny, soft_fn, examples, FitSettings(steps=3, lr=0.1, fit_examples=4, held_back=0),
                     lambda done, total: seen.append(done))
    assert last.steps == 3 and seen == [1, 2, 3] and last.n_held == 0 and last.shift.norm() > 0  # the last step


def test_other_histories_rotate_within_the_batch():
    examples = make_examples(3, 4)
    swapped = other_histories(examples)
    assert [h.shape[0] for h in swapped] == [4, 5, 3]  # each example gets the next one's history


def test_the_input_encoder_trains_while_the_history_encoder_stays_frozen(tiny, studio):
    import copy

    encoder = copy.deepcopy(studio.encoder).train().requires_grad_(True)
    d_enc = encoder.get_embedding_dimension()
    plug = PPlug.untrained("enc", "llm", d_enc, tiny.embedding.weight, tau=0.1, seed=0)
    plug.attach_input_encoder(encoder)
    module = SoftTokenModule(plug)
    frozen = {k: v.clone() for k, v in studio.encoder.state_dict().items()}
    start = {k: v.clone() for k, v in encoder.state_dict().items()}
    optimizer = torch.optim.AdamW([{"params": plug.parameters()}, {"params": encoder.parameters(), "lr": 1e-3}],
                                  lr=5e-2)
    stats = train_steps(tiny, module, make_examples(3, d_enc), optimizer, 6, kl_weight=0.0)
    assert stats[-1]["loss"] < stats[0]["loss"] - 0.05
    assert any(not torch.equal(v, start[k]) for k, v in encoder.state_dict().items())  # x is learned
    assert all(torch.equal(v, frozen[k]) for k, v in studio.encoder.state_dict().items())  # items' encoder is not


@pytest.mark.parametrize("avx512_bf16, amx, wanted, autocast", [
    (False, False, True, False),  # an AVX2 CPU: bfloat16 emulated, ~100x slower, so float32
    (True, False, True, True), (False, True, True, True),
    (True, True, False, False),  # not wanted
])
def test_bf16_only_where_the_cpu_runs_it_fast(monkeypatch, avx512_bf16, amx, wanted, autocast):
    """"Tune to me" and "does it know me?" autocast to bfloat16 only on CPUs that have it (or a GPU)."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    context = bf16_autocast(torch.device("cpu"), wanted)
    assert isinstance(context, torch.autocast) is autocast
    assert fast_bf16(torch.device("cuda")) and not fast_bf16(torch.device("meta"))
