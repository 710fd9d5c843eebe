"""The decode loop on the real embedded LLM: equal to transformers' own generate, batched rows,
per-row stopping, seeded sampling."""
import pytest
import torch

from demo.core.generation import GenerationParams, Generator
from demo.core.models import load_llm

REQUEST = "Write a tweet using these words: coffee, morning, rain"


@pytest.fixture(scope="module")
def gen(settings) -> Generator:
    model, tokenizer = load_llm(settings)
    return Generator(model, tokenizer)


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
        ref = gen.model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=24,
                                 do_sample=False)
    expected = gen.tokenizer.decode(ref[0, input_ids.shape[1]:], skip_special_tokens=True)
    embeds, mask = gen.embed([ids], [None])
    assert gen.generate(embeds, mask, GenerationParams(max_new_tokens=24)) == [expected]


def test_a_row_in_a_left_padded_batch_generates_what_it_generates_alone(gen):
    ids = gen.prompt_ids(REQUEST)
    soft = torch.randn(2, gen.embedding.weight.shape[1]) * 3.0
    params = GenerationParams(max_new_tokens=24)
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
    steps = list(gen.stream(embeds, mask, GenerationParams(max_new_tokens=40)))
    short_len = len(gen.tokenizer(steps[-1][0])["input_ids"])
    assert short_len < 15
    # the short answer stops growing while the long one goes on to the token limit
    assert steps[-1][0] == steps[short_len + 2][0]
    assert len(steps) == 40


def test_sampling_is_reproducible_with_a_seed(gen):
    embeds, mask = gen.embed([gen.prompt_ids(REQUEST)], [None])
    a = gen.generate(embeds, mask, GenerationParams(max_new_tokens=16, temperature=1.0, seed=5))
    b = gen.generate(embeds, mask, GenerationParams(max_new_tokens=16, temperature=1.0, seed=5))
    c = gen.generate(embeds, mask, GenerationParams(max_new_tokens=16, temperature=1.0, seed=6))
    assert a == b and a != c
