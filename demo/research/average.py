"""Average two plugs' weights: a plug trained on from another, pulled part of the way back to it.

    python -m demo.research.average assets/plug runs/plug/step-480 --weight 0.5 --out runs/plug-avg

The result is (1 - weight) * A + weight * B for every trained parameter; the keyword bank (a fixed table
of the LLM's own embeddings, which must be the same in both) and B's data statistics are kept as they
are. Both plugs must have been made for the same models with the same config (tau, k, head, ...): the
usual case is B trained on from A with ``train --init-from A``. Averaging a fine-tuned model with the one it started from keeps much of what the
later training gained while undoing part of what it cost elsewhere (Wortsman et al. 2022, "Robust
fine-tuning of zero-shot models"); here it keeps the self-supervised run's tweets gain and the blog posts
its longer training lost (docs/personalization.md).
"""
from __future__ import annotations

import argparse
import math
from dataclasses import asdict
from pathlib import Path

import torch

from ..core.plug import PPlug

# Config fields that may differ between the two: what describes how each was made, not what it computes.
_DESCRIPTIVE = ("made", "seed", "origin")


def average(a: PPlug, b: PPlug, weight: float) -> PPlug:
    """(1 - weight) * a + weight * b, parameter by parameter, as a new plug with b's config. Raises
    ValueError when the two cannot be averaged (other models, config, keyword bank) or weight is outside
    [0, 1]."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], not {weight}")
    config_a, config_b = ({k: v for k, v in asdict(p.config).items() if k not in _DESCRIPTIVE} for p in (a, b))
    # token_norm is measured from the LLM's embeddings: float32 and bfloat16 runs differ in its 5th digit
    differ = sorted(k for k in config_a if config_a[k] != config_b[k]
                    and not (k == "token_norm" and math.isclose(config_a[k], config_b[k], rel_tol=1e-4)))
    if differ:
        raise ValueError(f"the plugs differ in {', '.join(differ)}: only plugs of one config can be averaged")
    if a.config.input_encoder:
        raise ValueError("plugs with their own input encoder are not averaged (the encoder would be B's alone)")
    if a.keyword_words != b.keyword_words:
        raise ValueError("the plugs have different keyword banks")
    state_a, trained_a = a.state_dict(), dict(a.named_parameters())
    mixed = {}
    for name, tensor in b.state_dict().items():
        if name.startswith("keyword_") and not torch.equal(state_a[name], tensor):
            raise ValueError(f"the plugs' keyword banks differ ({name})")
        if name in trained_a and not name.startswith("keyword_"):
            mixed[name] = (1 - weight) * state_a[name].float() + weight * tensor.float()
        else:  # the keyword bank and data statistics (item mean and std): B's, not weights to average
            mixed[name] = tensor
    # B's record of its own training stays; what B's dev scores said is not said of the average.
    made = {k: v for k, v in b.config.made.items() if k not in ("summary", "dev_results", "dev_selection", "evals")}
    made["averaged"] = {"with": a.plug_id, "of": b.plug_id, "weight": weight}
    out = b.rebuilt(made=made)
    out.load_state_dict(mixed)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m demo.research.average", description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="plug folder A (weight 0 gives A)")
    p.add_argument("b", help="plug folder B (weight 1 gives B); its config and description are kept")
    p.add_argument("--weight", type=float, default=0.5, help="share of B in [0, 1]")
    p.add_argument("--out", required=True, help="folder of the averaged plug")
    args = p.parse_args(argv)
    try:
        plug = average(PPlug.load(args.a), PPlug.load(args.b), args.weight)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(str(err)) from None
    plug.save(Path(args.out))
    print(f"{plug.plug_id} -> {args.out}")


if __name__ == "__main__":
    main()
