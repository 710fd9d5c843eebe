"""Averaging two plugs' weights (demo.research.average)."""
import pytest
import torch

from demo.core.plug import PlugConfig, PPlug
from demo.research import average as average_cli
from demo.research.average import average

D_ENC, D_LLM = 16, 24


def make_plug(seed: int, **kw) -> PPlug:
    config = {"token_norm": 3.0, **kw}
    plug = PPlug(PlugConfig(encoder_id="enc", llm_id="llm", d_enc=D_ENC, d_llm=D_LLM, seed=seed, **config))
    words = [f"word{i}" for i in range(6)]
    torch.manual_seed(99)  # the same bank in every plug, as in a plug trained on from another
    plug.set_keyword_bank(words, torch.randn(6, D_ENC), torch.randn(6, D_LLM), k=2)
    return plug


def test_the_average_is_the_weighted_mean_of_every_weight_and_keeps_the_bank(tmp_path):
    a, b = make_plug(0, standardize=True), make_plug(1, standardize=True, made={"steps": 480, "summary": "B's"})
    a.set_item_statistics(torch.randn(10, D_ENC))
    b.set_item_statistics(torch.randn(10, D_ENC) + 1)  # data statistics: B's are kept, not averaged
    half = average(a, b, 0.5)
    params = dict(b.named_parameters())
    for name, tensor in half.state_dict().items():
        if name.startswith("keyword_") or name not in params:
            assert torch.equal(tensor, b.state_dict()[name])
        else:
            assert torch.allclose(tensor, (a.state_dict()[name] + b.state_dict()[name]) / 2)
    assert average(a, b, 1.0).plug_id == b.plug_id
    assert all(torch.equal(p, dict(a.named_parameters())[n]) for n, p in average(a, b, 0.0).named_parameters())
    assert half.plug_id not in (a.plug_id, b.plug_id)
    assert half.config.made == {"steps": 480, "averaged": {"with": a.plug_id, "of": b.plug_id, "weight": 0.5}}
    assert b.config.made == {"steps": 480, "summary": "B's"}  # the inputs are left as they were
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    average_cli.main([str(tmp_path / "a"), str(tmp_path / "b"), "--weight", "0.25", "--out", str(tmp_path / "avg")])
    assert PPlug.load(tmp_path / "avg").plug_id == average(a, b, 0.25).plug_id


def test_plugs_that_compute_differently_are_not_averaged(tmp_path):
    a = make_plug(0)
    with pytest.raises(ValueError, match="differ in tau"):
        average(a, make_plug(1, tau=0.08), 0.5)
    with pytest.raises(ValueError, match="differ in token_norm"):  # another LLM's scale
        average(a, make_plug(1, token_norm=3.5), 0.5)
    # ... but the same LLM measured in another dtype is the same plug
    assert average(a, make_plug(1, token_norm=3.0001), 0.5).config.token_norm == 3.0001
    other_bank = make_plug(1)
    other_bank.keyword_words = [f"other{i}" for i in range(6)]
    with pytest.raises(ValueError, match="keyword banks"):
        average(a, other_bank, 0.5)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        average(a, make_plug(1), 1.5)
    with pytest.raises(SystemExit, match="not a plug checkpoint"):
        average_cli.main([str(tmp_path / "none"), str(tmp_path / "none"), "--out", str(tmp_path / "x")])
