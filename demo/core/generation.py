"""Prompt building and batched generation with soft tokens.

Where the soft tokens go: inside the user turn, right after the role header, so the chat
template around them stays intact (placing them before the template knocked the small model
off its chat behaviour):

    <|im_start|>system ... <|im_end|> <|im_start|>user\\n [I][P] request <|im_end|> <|im_start|>assistant\\n

A prompt is therefore split once into ``prefix`` ids (up to the user role header) and
``suffix`` ids (the request and everything after it). A row is ``prefix + soft + suffix``;
the generic row is the same ids with no soft tokens.

``stream`` runs one batched forward pass per step for all rows (left padding, attention mask,
explicit position ids, KV cache), stops each row at its own end token, and yields the decoded
text of every row after each step. ``TextIteratorStreamer`` handles only one row, hence this loop.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

_MARKER = "\u2063PPLUG_REQUEST\u2063"  # invisible separator; never appears in real requests


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    stop_at_eos: bool = True  # False only for benchmarks that need a fixed length
    # The decoding policy against degeneration (emoji runs, "I'm glad to ... I'm glad to ..."), the
    # same for every row: personalized, generic, rag and control alike. Both look only at the
    # tokens a row has generated, never at its prompt, so a rag row's pasted history or a soft-token
    # row's missing ids cannot make the policy differ between rows.
    repetition_penalty: float = 1.2  # logits of already generated tokens: positive / 1.2, negative * 1.2
    no_repeat_ngram_size: int = 3  # a row never repeats one of its own 3-grams (0 = off)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def apply_policy(logits: torch.Tensor, tokens: list[list[int]], params: GenerationParams) -> torch.Tensor:
    """Logits [B, vocab] after the decoding policy, each row judged by its own generated ``tokens``.

    transformers' own logits processors do the work; rows of different lengths are left-padded
    with the id ``vocab``, which both processors ignore (it is past the logits' last column).
    """
    if not any(tokens) or (params.repetition_penalty == 1.0 and params.no_repeat_ngram_size <= 0):
        return logits
    vocab = logits.shape[-1]
    width = max(len(t) for t in tokens)
    ids = torch.full((len(tokens), width), vocab, dtype=torch.long)
    for i, row in enumerate(tokens):
        if row:
            ids[i, width - len(row):] = torch.tensor(row)
    ids = ids.to(logits.device)
    if params.repetition_penalty != 1.0:
        logits = RepetitionPenaltyLogitsProcessor(params.repetition_penalty)(ids, logits)
    if params.no_repeat_ngram_size > 0:
        logits = NoRepeatNGramLogitsProcessor(params.no_repeat_ngram_size)(ids, logits)
    return logits


@dataclass(frozen=True)
class PromptIds:
    prefix: list[int]  # chat template up to and including the user role header
    suffix: list[int]  # the request, end of turn, assistant header

    @property
    def plain(self) -> list[int]:
        return self.prefix + self.suffix


class Generator:
    """Frozen LLM + tokenizer, with the one decode loop the app uses for every row."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
        self.model = model
        self.tokenizer = tokenizer
        self.embedding = model.get_input_embeddings()
        self.decoder = model.get_decoder()  # the transformer without its output projection
        self.head = model.get_output_embeddings()
        eos = model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.stop_ids = {i for i in [*eos, tokenizer.eos_token_id] if i is not None}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(self.stop_ids))
        # The chat template around the request never changes: render and tokenize it once.
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": _MARKER}], tokenize=False, add_generation_prompt=True
        )
        head, tail = text.split(_MARKER)
        self._head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
        self._tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    @property
    def max_context(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    # --- prompts ---------------------------------------------------------------------------

    def prompt_ids(self, request: str) -> PromptIds:
        """Split the chat-templated request into the ids before and after the soft tokens."""
        # The request is the visitor's text: "<|im_end|>" typed into it stays text, never a real marker.
        request_ids = self.tokenizer(request, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return PromptIds(prefix=list(self._head_ids), suffix=request_ids + self._tail_ids)

    def embed(self, prompts: list[PromptIds], soft: list[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded input embeddings for a batch of rows.

        prompts: B prompts; soft: B tensors [k, d_llm] (k may differ) or None.
        -> (embeds [B, T, d_llm], attention mask [B, T] of 0/1).
        """
        rows = []
        for ids, tokens in zip(prompts, soft):
            pre = self.embedding(torch.tensor(ids.prefix, device=self.device))
            suf = self.embedding(torch.tensor(ids.suffix, device=self.device))
            parts = [pre] if tokens is None else [pre, tokens.to(pre.dtype)]
            rows.append(torch.cat([*parts, suf]))
        length = max(r.shape[0] for r in rows)
        d = rows[0].shape[1]
        embeds = torch.zeros(len(rows), length, d, dtype=rows[0].dtype, device=self.device)
        mask = torch.zeros(len(rows), length, dtype=torch.long, device=self.device)
        for i, r in enumerate(rows):
            embeds[i, length - r.shape[0]:] = r
            mask[i, length - r.shape[0]:] = 1
        return embeds, mask

    # --- decoding --------------------------------------------------------------------------

    @torch.inference_mode()
    def stream(self, embeds: torch.Tensor, mask: torch.Tensor, params: GenerationParams) -> Iterator[list[str]]:
        """Decode all rows together; yield every row's text so far after each step.

        embeds [B, T, d_llm], mask [B, T]. Each row stops at its own end token; the loop ends
        when all rows have stopped or after ``params.max_new_tokens`` steps.
        """
        batch = embeds.shape[0]
        generator = torch.Generator(device="cpu").manual_seed(params.seed)
        tokens: list[list[int]] = [[] for _ in range(batch)]  # each row's generated ids: its policy state
        done = torch.zeros(batch, dtype=torch.bool, device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits, cache = self._forward(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
        for _ in range(params.max_new_tokens):
            next_ids = self._pick(apply_policy(logits, tokens, params), params, generator)
            next_ids = torch.where(done, torch.full_like(next_ids, self.pad_id), next_ids)
            for i, (token, finished) in enumerate(zip(next_ids.tolist(), done.tolist())):
                if finished:
                    continue
                if params.stop_at_eos and token in self.stop_ids:
                    done[i] = True
                else:
                    tokens[i].append(token)
            # A trailing U+FFFD is a character whose bytes are not all generated yet.
            yield [self.tokenizer.decode(t, skip_special_tokens=True).rstrip("\ufffd") for t in tokens]
            if bool(done.all()):
                break
            mask = torch.cat([mask, (~done).long()[:, None]], dim=1)
            positions = positions[:, -1:] + 1
            logits, cache = self._forward(input_ids=next_ids[:, None], attention_mask=mask, position_ids=positions,
                                          cache=cache)

    def _forward(self, **inputs) -> tuple[torch.Tensor, object]:
        """One decoder pass -> (logits of the last position [B, vocab], KV cache).

        Only the last position is projected to the vocabulary (the prompt's other positions are
        never needed), and as W·hᵀ: for a batch of a few rows on CPU, MKL's gemm in the usual
        h·Wᵀ orientation reads the 49k x 576 matrix about three times slower (benchmark figure 1).
        """
        out = self.decoder(**inputs, use_cache=True)
        hidden = out.last_hidden_state[:, -1]  # [B, d_llm]
        logits = torch.mm(self.head.weight, hidden.t()).t()
        if getattr(self.head, "bias", None) is not None:
            logits = logits + self.head.bias
        return logits, out.cache

    def _pick(self, logits: torch.Tensor, params: GenerationParams, generator: torch.Generator) -> torch.Tensor:
        """Next token per row from logits [B, vocab]: argmax, or temperature/top-p sampling."""
        if params.greedy:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits.float() / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < params.top_p  # always keeps the top token
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p * keep)
        # Sampling on CPU with a seeded generator: the same seed gives the same text on any device.
        return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)

    def generate(self, embeds: torch.Tensor, mask: torch.Tensor, params: GenerationParams) -> list[str]:
        """Final texts of ``stream``."""
        texts: list[str] = [""] * embeds.shape[0]
        for texts in self.stream(embeds, mask, params):
            pass
        return texts
