"""The training-free plug: projectors fitted by ridge regression from the encoder's space onto the
LLM's token embeddings, so that a history item lands near the tokens whose text it resembles.
No task data is used; ``python -m demo.research.train --training-free`` saves one, and
``demo.research.evaluate`` compares it with the trained plug (method ``training-free``).
"""
from __future__ import annotations

import torch

from ..core.plug import PPlug
from .runtime import EmbeddingCache

INSTRUCTION_TEXT = "Write the answer the way this particular person writes."

_BIAS_SHIFT = 8.0  # GELU(z + 8) - 8 == z to float precision for the |z| < 1 of token embeddings


@torch.no_grad()
def set_linear_map(mlp: torch.nn.Sequential, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Make Linear-GELU-Linear compute ``z = weight @ h + bias`` (GELU kept in its linear range)."""
    first, last = mlp[0], mlp[2]
    first.weight.copy_(weight)
    first.bias.copy_(bias + _BIAS_SHIFT)
    last.weight.copy_(torch.eye(last.weight.shape[0]))
    last.bias.fill_(-_BIAS_SHIFT)


@torch.no_grad()
def training_free_plug(cache: EmbeddingCache, model, tokenizer, encoder_id: str, llm_id: str,
                       tau: float = 0.05, alpha: float = 1.0, seed: int = 0, vocab_limit: int | None = 16_000) -> PPlug:
    """Projectors fitted by ridge regression from encoder space onto the LLM's token embeddings.

    Each vocabulary entry's text is encoded by the encoder (X) and regressed onto its embedding
    row (Y); the fitted linear map becomes both projectors, and the instruction vector is the
    encoding of a fixed instruction sentence. R^2 on a held-out tenth of the tokens is recorded.
    ``vocab_limit`` keeps the first ids only (the most frequent merges of a BPE vocabulary), to
    bound the encoding time on CPU.
    """
    table = model.get_input_embeddings().weight.detach().float().cpu()
    special = set(tokenizer.all_special_ids)
    ids, texts = [], []
    for i in range(min(table.shape[0], vocab_limit or table.shape[0])):
        text = tokenizer.decode([i]).strip()
        if text and i not in special:
            ids.append(i)
            texts.append(text)
    X = torch.from_numpy(cache.matrix(texts)).double()
    Y = table[ids].double()
    perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))
    held = perm[: len(ids) // 10]
    fit = perm[len(ids) // 10:]

    def ridge(rows):
        mx, my = X[rows].mean(0), Y[rows].mean(0)
        xc, yc = X[rows] - mx, Y[rows] - my
        W = torch.linalg.solve(xc.T @ xc + alpha * torch.eye(X.shape[1], dtype=X.dtype), xc.T @ yc)
        return W, my - mx @ W

    W, b = ridge(fit)
    pred = X[held] @ W + b
    r2 = 1 - ((pred - Y[held]) ** 2).sum() / ((Y[held] - Y[fit].mean(0)) ** 2).sum()
    W, b = ridge(torch.arange(len(ids)))  # final map on all tokens
    plug = PPlug.untrained(encoder_id, llm_id, X.shape[1], table, tau=tau, seed=seed)
    for mlp in (plug.projector, plug.instruction_projector):
        set_linear_map(mlp, W.T.float(), b.float())
    plug.instruction.copy_(torch.from_numpy(cache.matrix([INSTRUCTION_TEXT])[0]))
    plug.config.origin = "training-free"
    plug.config.made = {"method": "ridge regression, encoder(token text) -> token embedding row",
                        "alpha": alpha, "n_tokens": len(ids), "heldout_r2": round(float(r2), 4),
                        "instruction_text": INSTRUCTION_TEXT,
                        "summary": f"training-free (ridge map over {len(ids):,} vocabulary strings, "
                                   f"held-out R^2 {float(r2):.2f}); not trained on any task"}
    return plug
