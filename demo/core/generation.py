"""Prompt building and batched generation with soft tokens.

Where the soft tokens go: inside the user turn, right after the role header, so the chat
template around them stays intact (placing them before the template knocked the small model
off its chat behaviour):

    <|im_start|>system ... <|im_end|> <|im_start|>user\\n [I][P] request <|im_end|> <|im_start|>assistant\\n

A prompt is therefore split once into ``prefix`` ids (up to the user role header) and
``suffix`` ids (the request and everything after it). A row is ``prefix + soft + suffix``;
the generic row is the same ids with no soft tokens.

``DecodeBatch`` runs one batched forward pass per step for all rows (left padding, attention mask,
explicit position ids, KV cache), stops each row at its own end token, and lets the rows of new
requests join between steps; ``Generator.stream`` runs it for one set of rows and yields the
decoded text of every row after each step. ``TextIteratorStreamer`` handles only one row, hence
this loop.
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
        # Below 1e-4 sampling picks the top token anyway, and logits / 1e-40 overflow to nan.
        return self.temperature < 1e-4


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
    cut_to: int | None = None  # request tokens kept when the request was cut to fit (else None)

    @property
    def plain(self) -> list[int]:
        return self.prefix + self.suffix


class Generator:
    """Frozen LLM + tokenizer, with the one decode loop the app uses for every row."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_context: int | None = None):
        """``max_context``: the prompt + answer tokens allowed (default: the model's positions)."""
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
        self.max_context = max_context or int(getattr(model.config, "max_position_embeddings", 2048))

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    # --- prompts ---------------------------------------------------------------------------

    def prompt_ids(self, request: str) -> PromptIds:
        """Split the chat-templated request into the ids before and after the soft tokens."""
        # The request is the visitor's text: "<|im_end|>" typed into it stays text, never a real marker.
        request_ids = self.tokenizer(request, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return PromptIds(prefix=list(self._head_ids), suffix=request_ids + self._tail_ids)

    def fit_prompt(self, request: str, max_tokens: int) -> PromptIds:
        """:meth:`prompt_ids` with the request cut (its end) so that prefix + suffix fit ``max_tokens``;
        the chat template around it stays whole. ``cut_to`` says how many request tokens were kept."""
        ids = self.prompt_ids(request)
        if len(ids.plain) <= max_tokens:
            return ids
        keep = max(max_tokens - len(ids.prefix) - len(self._tail_ids), 1)
        return PromptIds(ids.prefix, ids.suffix[:keep] + self._tail_ids, cut_to=keep)

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

    def stream(self, embeds: torch.Tensor, mask: torch.Tensor, params: GenerationParams) -> Iterator[list[str]]:
        """Decode all rows together, in this thread; yield every row's text so far after each step.

        embeds [B, T, d_llm], mask [B, T]. Each row stops at its own end token; the loop ends
        when all rows have stopped or after ``params.max_new_tokens`` steps. (The app shares one
        such loop between requests: ``demo.core.scheduler``.)
        """
        yield from self.run(Request(embeds, mask, params))

    def run(self, request: "Request") -> Iterator[list[str]]:
        """``stream`` for a request made by the caller, who can read its rows (e.g. ``cut``) after."""
        batch = DecodeBatch(self)
        batch.join([request])
        while not request.finished:
            batch.step()
            yield list(request.texts)

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

    def generate(self, embeds: torch.Tensor, mask: torch.Tensor, params: GenerationParams) -> list[str]:
        """Final texts of ``stream``."""
        texts: list[str] = [""] * embeds.shape[0]
        for texts in self.stream(embeds, mask, params):
            pass
        return texts


def pick(logits: torch.Tensor, params: GenerationParams, rng: torch.Generator) -> torch.Tensor:
    """Next token per row from logits [B, vocab]: argmax, or temperature/top-p sampling."""
    if params.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < params.top_p  # always keeps the top token
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p * keep)
    # Sampling on CPU with a seeded generator: the same seed gives the same text on any device.
    return torch.multinomial(probs.cpu(), 1, generator=rng).squeeze(-1).to(logits.device)


class Request:
    """One request's rows in a decode loop: its prompt until it joins, then its tokens and texts.

    The rows' generated ids (``tokens``) are all the state the decoding policy needs; the seeded
    sampler is the request's own, so its text does not depend on the rows decoded beside it.
    """

    def __init__(self, embeds: torch.Tensor, mask: torch.Tensor, params: GenerationParams):
        self.embeds: torch.Tensor | None = embeds  # [n, T, d_llm], dropped once joined
        self.mask = mask  # [n, T]
        self.params = params
        self.n_rows = embeds.shape[0]
        self.tokens: list[list[int]] = [[] for _ in range(self.n_rows)]
        self.texts = [""] * self.n_rows
        self.steps = 0
        self.finished = False  # every row ended, or the request was cancelled
        self.cancelled = False
        self.rng = torch.Generator(device="cpu").manual_seed(params.seed)

    @property
    def cut(self) -> list[bool]:
        """Per row: it stopped at the token limit, not at an end token (its text may stop mid-sentence)."""
        return [len(tokens) >= self.params.max_new_tokens for tokens in self.tokens]

    def cancel(self) -> None:
        """Leave the loop at its next step."""
        self.cancelled = True

    def updated(self) -> None:
        """Called by the loop after each step of this request (and when it ends)."""


class DecodeBatch:
    """The rows of several requests decoded together, one token per row per step.

    Requests join between steps (their prompts are run in one pass, then their KV cache is
    left-padded to the batch's length and stacked under it) and each row leaves as soon as it
    ends. Shapes: attention mask [B, L] (0 = padding), positions [B, 1] (each row's own), logits
    [B, vocab] for each row's next token, and per layer of the KV cache keys/values
    [B, heads, L, d_head]. Padding columns that no row needs any more are cut off.
    """

    def __init__(self, generator: Generator):
        self.gen = generator
        self.slots: list[tuple[Request, int]] = []  # batch row -> (request, its row)
        self.mask: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None
        self.cache = None

    @property
    def rows(self) -> int:
        return len(self.slots)

    @property
    def requests(self) -> list[Request]:
        return list(dict.fromkeys(r for r, _ in self.slots))

    @torch.inference_mode()
    def join(self, requests: list[Request]) -> None:
        """Run the prompts of ``requests`` (one pass) and add their rows to the batch."""
        width = max(r.mask.shape[1] for r in requests)
        embeds = torch.cat([_left_pad(r.embeds, width, 1) for r in requests])
        mask = torch.cat([_left_pad(r.mask, width, 1) for r in requests])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits, cache = self.gen._forward(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
        for r in requests:
            r.embeds = None
        slots = [(r, i) for r in requests for i in range(r.n_rows)]
        if self.cache is None:
            self.slots, self.mask, self.positions, self.logits, self.cache = slots, mask, positions[:, -1:], logits, cache
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for old, new in zip(self.cache.layers, cache.layers):
            old.keys = torch.cat([_left_pad(old.keys, width, 2), _left_pad(new.keys, width, 2)])
            old.values = torch.cat([_left_pad(old.values, width, 2), _left_pad(new.values, width, 2)])
        self.mask = torch.cat([_left_pad(self.mask, width, 1), _left_pad(mask, width, 1)])
        self.positions = torch.cat([self.positions, positions[:, -1:]])
        self.logits = torch.cat([self.logits, logits])
        self.slots += slots

    @torch.inference_mode()
    def step(self) -> None:
        """One new token for every row; rows that end (and cancelled requests) leave the batch."""
        cancelled = {r for r, _ in self.slots if r.cancelled}
        if cancelled:
            self._select([b for b, (r, _) in enumerate(self.slots) if r not in cancelled])
            for request in cancelled:
                request.finished = True
                request.updated()
        if not self.slots:
            return
        stepped = self.requests
        next_ids = self._pick()
        going: list[int] = []
        for b, ((request, row), token) in enumerate(zip(self.slots, next_ids.tolist())):
            if request.params.stop_at_eos and token in self.gen.stop_ids:
                continue  # the row ends here
            request.tokens[row].append(token)
            # A trailing U+FFFD is a character whose bytes are not all generated yet.
            request.texts[row] = self.gen.tokenizer.decode(request.tokens[row], skip_special_tokens=True).rstrip("\ufffd")
            if request.steps + 1 < request.params.max_new_tokens:
                going.append(b)
        for request in stepped:
            request.steps += 1
        if len(going) < self.rows:
            self._select(going)
            next_ids = next_ids[going]
        going_on = set(self.requests)
        for request in stepped:
            request.finished = request not in going_on
            request.updated()
        if self.slots:
            self.mask = torch.cat([self.mask, self.mask.new_ones(self.rows, 1)], dim=1)
            self.positions = self.positions + 1
            self.logits, self.cache = self.gen._forward(input_ids=next_ids[:, None], attention_mask=self.mask,
                                                        position_ids=self.positions, cache=self.cache)

    def _pick(self) -> torch.Tensor:
        """The next token of every row [B]: each request's policy and sampler on its own rows."""
        by_request: dict[Request, list[int]] = {}
        for b, (request, _) in enumerate(self.slots):
            by_request.setdefault(request, []).append(b)
        next_ids = torch.empty(self.rows, dtype=torch.long, device=self.logits.device)
        for request, rows in by_request.items():
            index = torch.tensor(rows, device=self.logits.device)
            logits = apply_policy(self.logits[index], [request.tokens[self.slots[b][1]] for b in rows], request.params)
            next_ids[index] = pick(logits, request.params, request.rng)
        return next_ids

    def _select(self, keep: list[int]) -> None:
        """Keep only the batch rows ``keep``; cut the padding columns no row needs any more."""
        self.slots = [self.slots[b] for b in keep]
        if not keep:
            self.mask = self.positions = self.logits = self.cache = None
            return
        index = torch.tensor(keep, device=self.mask.device)
        self.mask, self.positions, self.logits = self.mask[index], self.positions[index], self.logits[index]
        start = int(self.mask.any(0).long().argmax())  # first column some row attends to
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, start:]
            layer.values = layer.values[index, :, start:]


def _left_pad(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """``tensor`` with zeros in front along ``dim`` up to ``width``."""
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
