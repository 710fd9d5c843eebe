"""The decode loop on the real embedded LLM: equal to transformers' own generate, batched rows,
per-row stopping, seeded sampling, and the decoding policy against repetition."""
import re

import pytest
import torch

from demo.core.generation import GenerationParams, Generator, Request, apply_policy
from demo.research.runtime import generate as research_generate

REQUEST = "Write a tweet using these words: coffee, morning, rain"
NO_POLICY = dict(repetition_penalty=1.0, no_repeat_ngram_size=0)  # transformers' plain greedy decoding


@pytest.fixture(scope="module")
def gen(studio) -> Generator:
    return studio.generator


def test_soft_tokens_sit_inside_the_user_turn(gen):
    ids = gen.prompt_ids(REQUEST)
    prefix = gen.tokenizer.decode(ids.prefix)
    suffix = gen.tokenizer.decode(ids.suffix)
    assert prefix.endswith("<|im_start|>user\n")
    assert suffix.startswith(REQUEST) and suffix.endswith("<|im_start|>assistant\n")


def test_inputs_embeds_without_soft_tokens_equals_generate_from_input_ids(gen):
    ids = gen.prompt_ids(REQUEST)
    input_ids = torch.tensor([ids.plain])
    with torch.inference_mode():
        ref = gen.model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=12,
                                 do_sample=False)
    expected = gen.tokenizer.decode(ref[0, input_ids.shape[1]:], skip_special_tokens=True)
    embeds, mask = gen.embed([ids], [None])
    assert gen.generate(embeds, mask, GenerationParams(max_new_tokens=12, **NO_POLICY)) == [expected]


def test_a_row_in_a_left_padded_batch_generates_what_it_generates_alone(gen):
    ids = gen.prompt_ids(REQUEST)
    soft = torch.randn(2, gen.embedding.weight.shape[1], generator=torch.Generator().manual_seed(0)) * 3.0
    params = GenerationParams(max_new_tokens=12)
    alone = gen.generate(*gen.embed([ids], [None]), params)[0]
    embeds, mask = gen.embed([ids, ids], [soft, None])
    assert mask[1, :2].sum() == 0 and mask[0].sum() == mask.shape[1]  # generic row is left-padded by 2
    pair = gen.generate(embeds, mask, params)
    assert pair[1] == alone
    assert pair[0] != alone  # the soft tokens change the answer


def test_each_row_stops_at_its_own_end_token(gen):
    short = gen.prompt_ids("Answer with one word: what colour is the sky?")
    long = gen.prompt_ids("Write a long story about a dragon.")
    embeds, mask = gen.embed([short, long], [None, None])
    request = Request(embeds, mask, GenerationParams(max_new_tokens=24))
    steps = list(gen.run(request))
    assert request.cut == [False, True]  # the short row ended by itself, the long one at the limit
    short_len = len(gen.tokenizer(steps[-1][0])["input_ids"])
    assert short_len < 15
    # the short answer stops growing while the long one goes on to the token limit
    assert steps[-1][0] == steps[short_len + 2][0]
    assert len(steps) == 24


def test_sampling_is_reproducible_with_a_seed(gen):
    embeds, mask = gen.embed([gen.prompt_ids(REQUEST)], [None])
    a = gen.generate(embeds, mask, GenerationParams(max_new_tokens=8, temperature=1.0, seed=5))
    b = gen.generate(embeds, mask, GenerationParams(max_new_tokens=8, temperature=1.0, seed=5))
    c = gen.generate(embeds, mask, GenerationParams(max_new_tokens=8, temperature=1.0, seed=6))
    assert a == b and a != c


def repeats(text: str) -> bool:
    """A degenerate answer: a character three times in a row (emoji runs) or a repeated word 3-gram."""
    words = text.split()
    trigrams = list(zip(words, words[1:], words[2:]))
    return bool(re.search(r"(\S)\1\1", text)) or len(set(trigrams)) < len(trigrams)


def test_the_default_policy_keeps_a_row_from_repeating(gen):
    looping = ["Write a tweet about coffee.", REQUEST]
    requests = [looping[0], "Write a short blog post about my weekend.", looping[1]]
    # 16 tokens: without the policy both of these start looping after 9
    plain = gen.generate(*gen.embed([gen.prompt_ids(r) for r in looping], [None, None]),
                         GenerationParams(max_new_tokens=16, **NO_POLICY))
    assert repeats(plain[0]) and repeats(plain[1])  # without the policy the generic model loops on emoji
    embeds, mask = gen.embed([gen.prompt_ids(r) for r in requests], [None] * len(requests))
    with_policy = gen.generate(embeds, mask, GenerationParams(max_new_tokens=16))
    assert not any(repeats(text) for text in with_policy), with_policy
    assert all(len(text.split()) >= 3 for text in with_policy)


def test_the_policy_judges_each_row_by_its_own_tokens():
    logits = torch.randn(1, 50).repeat(3, 1)
    tokens = [[5, 6, 7, 5, 6], [9], [5, 6, 7, 5, 6]]
    out = apply_policy(logits, tokens, GenerationParams())
    assert out[0, 7] == float("-inf") and out[1, 7] == logits[1, 7]  # "5 6 7" again is banned only in row 0
    assert torch.equal(out[0], out[2])  # same tokens, same treatment, whatever the row's padding
    assert torch.equal(out[:1], apply_policy(logits[:1], tokens[:1], GenerationParams()))  # alone = in a batch
    seen = logits[1, 9]
    assert out[1, 9] == (seen / 1.2 if seen > 0 else seen * 1.2)
    assert torch.equal(out[1, :9], logits[1, :9])  # tokens the row has not generated are untouched


def test_the_policy_is_the_same_for_personalized_generic_and_rag_rows(gen):
    """Each row's policy state is its own: a row decodes the same alone and beside rows of other kinds."""
    plain = gen.prompt_ids("Write a tweet about coffee.")
    rag = gen.prompt_ids("Here are some texts I wrote before:\n- Espresso at dawn, again.\n\nWrite a tweet about coffee.")
    soft = torch.randn(2, gen.embedding.weight.shape[1]) * 3.0
    params = GenerationParams(max_new_tokens=12)
    rows = [(plain, soft), (plain, None), (rag, None), (rag, soft)]  # pplug, generic, rag, pplug+rag
    together = gen.generate(*gen.embed([p for p, _ in rows], [s for _, s in rows]), params)
    alone = [gen.generate(*gen.embed([p], [s]), params)[0] for p, s in rows]
    assert together == alone
    assert not any(repeats(text) for text in together)


def test_the_research_runtime_decodes_with_the_same_policy(gen):
    ids = gen.prompt_ids("Write a tweet about coffee.")
    ours = research_generate(gen, [ids], [None], 12)
    assert ours == [gen.generate(*gen.embed([ids], [None]), GenerationParams(max_new_tokens=12))[0].strip()]
    assert not repeats(ours[0])


def test_teacher_forcing_with_the_prefix_computed_once_scores_as_every_row_computing_it(gen):
    """The shared chat-template prefix goes through the LLM once; rows of different lengths, with and
    without soft tokens, get the NLL they get when each row computes the prefix itself."""
    from demo.core.scoring import nll_per_row, target_ids, teacher_forced_logits

    torch.manual_seed(0)
    requests = ["Write a tweet.", "Summarise: the river rose overnight and the bridge closed.", "Title?"]
    prompts = [gen.fit_prompt(r, 64) for r in requests]
    targets = [target_ids(gen, t, 16) for t in ["Rain again!", "Bridge shut as the river rises", "On floods"]]
    soft = [torch.randn(2, gen.embedding.weight.shape[1]) * 0.05, None, torch.randn(2, gen.embedding.weight.shape[1])]
    once = nll_per_row(*teacher_forced_logits(gen, prompts, soft, targets))
    every_row = nll_per_row(*teacher_forced_logits(gen, prompts, soft, targets, prefix_once=False))
    assert torch.allclose(once, every_row, atol=1e-4), (once, every_row)
    moved = nll_per_row(*teacher_forced_logits(gen, prompts, [None, None, soft[2]], targets))
    assert not torch.allclose(once[0], moved[0], atol=1e-3)  # the soft tokens are seen
