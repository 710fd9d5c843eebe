"""The PPlug module on its own: aggregator, projector, soft tokens, save/load."""
import json

import pytest
import torch
from safetensors.torch import load_file

from demo.core.plug import PlugConfig, PlugMismatchError, PPlug, add_shift, cosine_spread

D_ENC, D_LLM = 16, 24


def make_plug(**kw) -> PPlug:
    return PPlug(PlugConfig(encoder_id="enc", llm_id="llm", d_enc=D_ENC, d_llm=D_LLM, token_norm=3.0, **kw))


def unit(*shape):
    return torch.nn.functional.normalize(torch.randn(*shape), dim=-1)


def test_weights_sum_to_one_and_prefer_similar_items():
    plug = make_plug(tau=0.05)
    items = unit(2, 5, D_ENC)
    x = items[:, 3].clone()  # the input equals item 3
    w = plug.weights(x, items)
    assert w.shape == (2, 5)
    assert torch.allclose(w.sum(-1), torch.ones(2))
    assert (w.argmax(-1) == 3).all()


def test_padding_is_masked_and_changes_nothing():
    plug = make_plug()
    items = unit(1, 4, D_ENC)
    x = unit(1, D_ENC)
    padded = torch.cat([items, unit(1, 3, D_ENC)], dim=1)
    mask = torch.tensor([[True] * 4 + [False] * 3])
    w = plug.weights(x, padded, mask)
    assert torch.all(w[0, 4:] == 0)
    soft_padded, _ = plug.soft_tokens(x, padded, mask)
    soft_plain, _ = plug.soft_tokens(x, items)
    assert torch.allclose(soft_padded, soft_plain, atol=1e-6)


def test_soft_token_shapes_and_norm():
    plug = make_plug()
    soft, w = plug.soft_tokens(unit(3, D_ENC), unit(3, 7, D_ENC))
    assert soft.shape == (3, 2, D_LLM) and w.shape == (3, 7)
    assert torch.allclose(soft.norm(dim=-1), torch.full((3, 2), 3.0), atol=1e-5)  # token_norm, gate 1
    # Cached projections give the same result as projecting on the fly.
    items = unit(1, 5, D_ENC)
    x = unit(1, D_ENC)
    a, _ = plug.soft_tokens(x, items)
    b, _ = plug.soft_tokens(x, items, projected=plug.project_items(items))
    assert torch.equal(a, b)


def test_personal_embedding_is_the_weighted_sum_of_projected_items():
    plug = make_plug(tau=1.0)
    items = unit(1, 3, D_ENC)
    x = unit(1, D_ENC)
    w = torch.softmax(items[0] @ x[0], dim=0)
    expected = (w[:, None] * plug.projector(items[0])).sum(0)
    soft, _ = plug.soft_tokens(x, items)
    assert torch.allclose(soft[0, 1], plug.rescale(expected), atol=1e-5)


def test_save_load_round_trip_is_bit_identical(tmp_path):
    plug = make_plug(seed=7)
    with torch.no_grad():
        plug.log_gate.fill_(0.25)
    plug.save(tmp_path / "p")
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    assert config["encoder_id"] == "enc" and config["d_llm"] == D_LLM
    loaded = PPlug.load(tmp_path / "p", encoder_id="enc", llm_id="llm", d_enc=D_ENC, d_llm=D_LLM)
    for (name, a), (_, b) in zip(plug.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded.plug_id == plug.plug_id


def test_loading_against_other_models_fails_clearly(tmp_path):
    make_plug().save(tmp_path / "p")
    with pytest.raises(PlugMismatchError, match="llm_id is 'llm' in the plug but 'other/llm'"):
        PPlug.load(tmp_path / "p", encoder_id="enc", llm_id="other/llm")
    with pytest.raises(PlugMismatchError, match="d_enc"):
        PPlug.load(tmp_path / "p", d_enc=D_ENC + 1)
    with pytest.raises(FileNotFoundError, match="not a plug checkpoint"):
        PPlug.load(tmp_path / "missing")


def test_untrained_plug_is_seeded_and_ids_differ_by_weights_and_behaviour():
    a, b, c = make_plug(seed=1), make_plug(seed=1), make_plug(seed=2)
    assert a.plug_id == b.plug_id != c.plug_id
    assert a.plug_id.startswith("untrained-")
    # Another temperature is another plug (a stored "tune to me" token fits one P), a description is not.
    assert a.rebuilt(tau=a.config.tau / 2).plug_id != a.plug_id
    assert a.rebuilt(made={"summary": "described"}).plug_id == a.plug_id


def test_cosine_spread():
    v = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    assert cosine_spread(v) == pytest.approx(1.0)
    assert cosine_spread(torch.tensor([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(0.0)


def test_standardized_items_spread_p_apart_and_round_trip(tmp_path):
    torch.manual_seed(0)
    common, users = unit(D_ENC), unit(4, 1, D_ENC)  # one kind of text, four writers
    items = torch.nn.functional.normalize(common + 0.1 * users + 0.02 * torch.randn(4, 6, D_ENC), dim=-1)
    x = unit(4, D_ENC)
    raw = make_plug(seed=1)
    std = make_plug(seed=1, standardize=True)
    std.set_item_statistics(items.reshape(-1, D_ENC))
    assert torch.allclose(std.project_items(items), raw.project_items((items - std.item_mean) / std.item_std))
    spread_raw = cosine_spread(raw.soft_tokens(x, items)[0][:, 1])
    spread_std = cosine_spread(std.soft_tokens(x, items)[0][:, 1])
    assert spread_std < spread_raw - 0.2  # users' P differ far more once the shared part is taken out
    std.save(tmp_path / "std")
    back = PPlug.load(tmp_path / "std")
    assert back.config.standardize and torch.equal(back.item_mean, std.item_mean)
    assert back.plug_id == std.plug_id and back.plug_id != raw.plug_id
    assert "item_mean" not in raw.state_dict()  # plugs without it keep their weights and ids


def test_a_plug_with_its_own_input_encoder_saves_and_reloads_it(tmp_path, studio):
    import copy

    d = studio.encoder.get_embedding_dimension()
    plain = PPlug.untrained("enc", "llm", d, torch.randn(10, 24), seed=3)
    plug = PPlug.untrained("enc", "llm", d, torch.randn(10, 24), seed=3)
    plug.attach_input_encoder(copy.deepcopy(studio.encoder))
    with torch.no_grad():
        x = plug.encode_inputs(["Write about bread.", "A tweet on bikes."])
    assert x.shape == (2, d) and torch.allclose(x.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert not any(k.startswith("input_encoder") for k in plug.state_dict())  # the small weights stay small
    plug.save(tmp_path / "p")
    back = PPlug.load(tmp_path / "p")
    assert back.config.input_encoder and back.plug_id == plug.plug_id != plain.plug_id
    with torch.no_grad():
        assert torch.allclose(back.encode_inputs(["Write about bread.", "A tweet on bikes."]), x, atol=1e-5)


def test_the_shift_head_moves_p_by_a_map_of_the_mean_history_and_round_trips(tmp_path):
    torch.manual_seed(0)
    plain, headed = make_plug(seed=2), make_plug(seed=2, shift_head=True)
    headed.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        headed.history_mean.copy_(torch.randn(D_ENC))
        headed.history_std.uniform_(0.5, 2.0)
    items, x = unit(3, 5, D_ENC), unit(3, D_ENC)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, 3:] = False  # padding leaves the mean of the real items
    base, w = plain.soft_tokens(x, items, mask)
    soft, w2 = headed.soft_tokens(x, items, mask)
    mean = torch.stack([items[0, :3].mean(0), items[1].mean(0), items[2].mean(0)])
    expected = headed.shift_head((mean - headed.history_mean) / headed.history_std)
    assert torch.equal(w, w2) and torch.equal(soft[:, 0], base[:, 0])  # the instruction token stays
    assert torch.allclose(soft[:, 1], base[:, 1] + expected, atol=1e-6)
    assert torch.allclose(headed.history_shift(items[:1, :3]), expected[:1], atol=1e-6)
    headed.save(tmp_path / "head")
    back = PPlug.load(tmp_path / "head")
    assert back.config.shift_head and back.plug_id == headed.plug_id != plain.plug_id
    assert torch.equal(back.soft_tokens(x, items, mask)[0], soft)
    assert "shift_head.weight" not in plain.state_dict()  # plugs without a head keep their weights and ids


def test_the_keyword_token_is_the_mean_llm_embedding_of_the_nearest_bank_words_and_round_trips(tmp_path):
    torch.manual_seed(0)
    plain, keyed = make_plug(seed=4), make_plug(seed=4)
    words = [f"word{i}" for i in range(12)]
    bank_items, bank_tokens = unit(12, D_ENC), torch.randn(12, D_LLM)
    keyed.set_keyword_bank(words, bank_items, bank_tokens, k=3)
    items, x = unit(2, 5, D_ENC), unit(2, D_ENC)
    base, w = plain.soft_tokens(x, items)
    soft, w2 = keyed.soft_tokens(x, items)
    assert soft.shape == (2, 3, D_LLM) and keyed.n_soft == 3 and plain.n_soft == 2
    assert torch.equal(w, w2) and torch.equal(soft[:, :2], base)  # I and P as without the bank
    mean = torch.nn.functional.normalize(torch.einsum("bn,bnd->bd", w, items), dim=-1)
    nearest = (mean @ bank_items.T).topk(3).indices  # the bank is kept in float16: compare the choice
    assert torch.equal(keyed.nearest_keywords(w, items), nearest)
    assert keyed.keywords_of(w, items) == [[words[i] for i in row] for row in nearest.tolist()]
    assert plain.keywords_of(w, items) == [[], []]
    rows = torch.nn.functional.normalize(bank_tokens, dim=-1)[nearest].mean(1)
    expected = torch.nn.functional.normalize(rows, dim=-1) * 3.0  # at the token norm
    assert torch.allclose(soft[:, 2], expected, atol=5e-3)
    keyed.save(tmp_path / "keyed")
    back = PPlug.load(tmp_path / "keyed")
    assert back.keyword_words == words and back.plug_id == keyed.plug_id != plain.plug_id
    assert load_file(str(tmp_path / "keyed" / "model.safetensors"))["keyword_items"].dtype == torch.float16  # small on disk
    assert torch.equal(back.soft_tokens(x, items)[0], soft)
    assert "keyword_items" not in plain.state_dict()  # plugs without a bank keep their weights and ids
    with pytest.raises(ValueError, match="k <= its words"):
        make_plug().set_keyword_bank(words[:2], bank_items[:2], bank_tokens[:2], k=3)
    # separate keywords: one soft token per word, nearest first, each at the token norm; a new id
    separate = keyed.rebuilt(separate_keywords=True)
    apart, _ = separate.soft_tokens(x, items)
    assert apart.shape == (2, 5, D_LLM) and separate.n_soft == 5 and torch.equal(apart[:, :2], base)
    each = torch.nn.functional.normalize(torch.nn.functional.normalize(bank_tokens, dim=-1)[nearest], dim=-1) * 3.0
    assert torch.allclose(apart[:, 2:], each, atol=5e-3)
    assert separate.plug_id != keyed.plug_id and keyed.rebuilt().plug_id == keyed.plug_id
    separate.save(tmp_path / "separate")
    assert torch.equal(PPlug.load(tmp_path / "separate").soft_tokens(x, items)[0], apart)


def test_a_shift_moves_p_only_when_there_is_a_keyword_token():
    soft, shift = torch.randn(4, 3, D_LLM), torch.randn(4, D_LLM)
    shifted = add_shift(soft, shift)
    assert torch.equal(shifted[:, 0], soft[:, 0]) and torch.equal(shifted[:, 2], soft[:, 2])
    assert torch.allclose(shifted[:, 1], soft[:, 1] + shift)


def test_the_keyword_bank_of_the_real_models_finds_what_a_history_is_about(studio):
    """Words both real models know as one token; a cook's history and a senator's pick their own words."""
    import copy

    from demo.research.keywords import bank_words

    words = bank_words(studio.tokenizer, studio.encoder.tokenizer, 3000)
    assert len(words) == 3000 and all(w.isalpha() and w.islower() and len(w) >= 4 for _, w in words)
    assert all(studio.tokenizer.decode([i]) == " " + w for i, w in words[:50])
    plug = copy.deepcopy(studio.plug)
    items = torch.from_numpy(studio.encoder.encode([w for _, w in words], normalize_embeddings=True))
    plug.set_keyword_bank([w for _, w in words], items, studio.model.get_input_embeddings().weight[
        torch.tensor([i for i, _ in words])].detach(), k=8)
    histories = {"cook": ["Roast the garlic, then fold it into the butter for the bread.",
                          "My tomato pasta sauce simmers for three hours."],
                 "senator": ["The Senate passed the budget bill after a long debate.",
                             "Voters deserve a government that answers to Congress and the courts."]}
    picked = {}
    for name, texts in histories.items():
        h = torch.from_numpy(studio.encoder.encode(texts, normalize_embeddings=True))[None]
        w = torch.full((1, len(texts)), 1 / len(texts))
        picked[name] = {plug.keyword_words[i] for i in plug.nearest_keywords(w, h)[0].tolist()}
    assert picked["cook"] & {"bread", "butter", "garlic", "pasta", "sauce", "tomato", "cooking", "recipe", "food"}
    assert picked["senator"] & {"senate", "congress", "government", "budget", "voters", "political", "politics"}
    assert not picked["cook"] & picked["senator"]


def test_centred_keywords_pass_over_words_near_every_formal_text(studio, tmp_path):
    """Lincoln's addresses, weighed for a weekend blog post: the plain rule's words include "summary" and
    "report(s)", words near any formal text; ``keyword_center`` picks what sets his writing apart, and the
    choice is part of the plug's id."""
    import copy

    from demo.core import personas

    encode = lambda texts: torch.from_numpy(studio.encoder.encode(texts, normalize_embeddings=True))  # noqa: E731
    items = encode(personas.persona_items("lincoln"))[None]
    w = studio.plug.weights(encode(["Write a short blog post about my weekend."]), items)  # as the app weighs them
    picked = {}
    for centre in (False, True):
        plug = copy.deepcopy(studio.plug)
        plug.config.keyword_center = centre
        picked[centre] = set(plug.keywords_of(w, items)[0])
        plug.save(tmp_path / str(centre))
        assert PPlug.load(tmp_path / str(centre)).config.keyword_center is centre
    hubs = {"summary", "report", "reports", "overview", "reporting"}
    assert picked[False] & hubs and not picked[True] & hubs, picked
    assert {"constitution", "slavery"} <= picked[True], picked
    assert PPlug.load(tmp_path / "True").plug_id != PPlug.load(tmp_path / "False").plug_id
