"""The likelihood of a given answer: teacher forcing through the frozen LLM, with or without soft tokens.

A row is built exactly as ``demo.generation`` builds it for decoding, ``prefix + [I; P] + suffix``,
followed by the answer's ids and the end-of-turn token; the LLM's logits at the positions that
predict the answer give its NLL. Training, evaluation, the "tune to me" fit and the "does it know
me?" measure all score answers this way.
"""
from __future__ import annotations

import contextlib

import torch

from .generation import Generator, PromptIds


def fast_bf16(device: torch.device) -> bool:
    """Whether bfloat16 runs fast on ``device``: a GPU, or a CPU with AVX-512 bf16 or AMX. Elsewhere (an
    AVX2 CPU) it is emulated, about 100x slower than float32 per matrix product."""
    if device.type == "cuda":
        return True
    cpu = torch.cpu
    return device.type == "cpu" and any(getattr(cpu, name, lambda: False)()
                                        for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def bf16_autocast(device: torch.device, wanted: bool = True):
    """A bfloat16 autocast context where it is wanted and fast (``fast_bf16``), else none (float32)."""
    return (torch.autocast(device.type, dtype=torch.bfloat16) if wanted and fast_bf16(device)
            else contextlib.nullcontext())


def end_of_turn_ids(generator: Generator) -> list[int]:
    """The token(s) that end an assistant answer (what the decoder stops at)."""
    tok = generator.tokenizer
    for name in ("<|im_end|>", "<|eot_id|>"):
        tid = tok.convert_tokens_to_ids(name)
        if isinstance(tid, int) and tid != tok.unk_token_id and tid is not None and tid >= 0:
            return [tid]
    return [tok.eos_token_id]


def target_ids(generator: Generator, text: str, max_target_tokens: int) -> list[int]:
    """Gold output ids plus the end-of-turn token (dropped when the output is cut)."""
    ids = generator.tokenizer(text.strip(), add_special_tokens=False)["input_ids"]
    if len(ids) >= max_target_tokens:
        return ids[:max_target_tokens]
    return ids + end_of_turn_ids(generator)


def teacher_forced_logits(generator: Generator, prompts: list[PromptIds], soft: list[torch.Tensor | None],
                          targets: list[list[int]], prefix_once: bool = True
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded rows prefix + soft + suffix + target through the LLM.

    -> (logits at the positions that predict target tokens [B, L, V], target ids [B, L],
    target mask [B, L]), L the longest target.

    The chat-template prefix comes before anything personal, so when the rows share it (they do: one
    generator builds them) it goes through the LLM once, as one row, and the rows continue from its
    key/value cache: a third of a tweets row's tokens, not computed B times forward and backward.
    ``prefix_once=False`` computes it in every row (the same numbers; the benchmark's baseline).
    """
    emb = generator.embedding
    device = generator.device
    shared = prefix_once and all(ids.prefix == prompts[0].prefix for ids in prompts)
    rows, starts = [], []
    for ids, tokens, tgt in zip(prompts, soft, targets):
        parts = [] if shared else [emb(torch.tensor(ids.prefix, device=device))]
        if tokens is not None:
            parts.append(tokens.to(emb.weight.dtype))
        parts.append(emb(torch.tensor(ids.suffix + tgt, device=device)))
        row = torch.cat(parts)
        rows.append(row)
        starts.append(row.shape[0] - len(tgt))
    T = max(r.shape[0] for r in rows)
    B, d = len(rows), rows[0].shape[1]
    embeds = torch.zeros(B, T, d, dtype=rows[0].dtype, device=device)
    mask = torch.zeros(B, T, dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        embeds[i, :r.shape[0]] = r
        mask[i, :r.shape[0]] = 1
    # The decoder alone, then the LM head only where a target token is predicted: the head's
    # [vocab x d] product over every prompt position would cost as much as several layers.
    model = generator.model
    decoder = model.get_decoder()
    if shared:
        prefix = torch.tensor(prompts[0].prefix, device=device)
        with torch.no_grad():  # nothing before the soft tokens depends on what is trained
            cache = decoder(inputs_embeds=emb(prefix)[None], use_cache=True).cache
        cache.batch_repeat_interleave(B)
        mask = torch.cat([torch.ones(B, len(prefix), dtype=torch.long, device=device), mask], dim=1)
        hidden = decoder(inputs_embeds=embeds, attention_mask=mask, cache=cache,
                         use_cache=False).last_hidden_state
    else:
        hidden = decoder(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    L = max(len(t) for t in targets)
    picked = torch.zeros(B, L, hidden.shape[-1], dtype=hidden.dtype, device=device)
    tgt = torch.zeros(B, L, dtype=torch.long, device=device)
    tmask = torch.zeros(B, L, dtype=torch.bool, device=device)
    for i, (s, t) in enumerate(zip(starts, targets)):
        picked[i, :len(t)] = hidden[i, s - 1:s - 1 + len(t)]
        tgt[i, :len(t)] = torch.tensor(t, device=device)
        tmask[i, :len(t)] = True
    return model.get_output_embeddings()(picked), tgt, tmask


def nll_per_row(logits: torch.Tensor, tgt: torch.Tensor, tmask: torch.Tensor) -> torch.Tensor:
    """Mean NLL per target token of each row [B]."""
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, tgt[..., None]).squeeze(-1)
    return -(logp * tmask).sum(-1) / tmask.sum(-1).clamp(min=1)
