"""What training and evaluation share: cached item embeddings, batches, the teacher-forced loss.

One example is a LaMP query: the request (its ``input``), the user's history capped to the most
recent items, and the gold output. Its rows are built exactly as the app builds them
(``demo.core.generation``): ``prefix + [I; P] + suffix`` with the soft tokens inside the user turn, and
for teacher forcing the gold output plus the end-of-turn token after the assistant header.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..core.generation import GenerationParams, Generator, PromptIds
from ..core.models import canonical_id, load_encoder, load_llm
from ..core.history import lamp_item_text
from ..core.plug import PPlug, weight_entropy
from ..core.scoring import nll_per_row, teacher_forced_logits
from ..core.settings import Settings
from ..core.selfsup import examples_from_history
from ..core.storage import Store
from ..core.text import sha256_text
from ..core.tuning import FitSettings, TunedToken, fit_shift
from .lamp import SELFSUP_RULE, LampSplit, Query, TaskSpec

log = logging.getLogger(__name__)


# --- item embeddings, cached by content -------------------------------------------------------


class EmbeddingCache:
    """Encoder embeddings of texts, each text encoded once across runs (the project's Store)."""

    def __init__(self, encoder, encoder_id: str, store: Store, batch_size: int = 64, max_tokens: int | None = None):
        self.encoder = encoder
        self.encoder_id = encoder_id
        if max_tokens and max_tokens != encoder.max_seq_length:
            # Texts cut at fewer tokens than the encoder's default are other vectors: keyed apart.
            encoder.max_seq_length = max_tokens
            self.encoder_id = f"{encoder_id}@max{max_tokens}"
        self.store = store
        self.batch_size = batch_size
        self.memory: dict[str, np.ndarray] = {}

    def ensure(self, texts: list[str], chunk: int = 2048, progress: bool = False) -> int:
        """Encode (and store) every text not yet cached. -> number encoded."""
        shas = {sha256_text(t): t for t in texts}
        missing = [s for s in shas if s not in self.memory]
        found = self.store.cached_embeddings(self.encoder_id, missing) if missing else {}
        self.memory.update(found)
        todo = [s for s in missing if s not in found]
        if not todo:
            return 0
        todo.sort(key=lambda s: len(shas[s]))
        iterator = range(0, len(todo), chunk)
        if progress:
            iterator = tqdm(iterator, desc=f"encoding {len(todo)} texts", unit="chunk")
        with torch.inference_mode():
            for start in iterator:
                part = todo[start:start + chunk]
                vectors = self.encoder.encode([shas[s] for s in part], batch_size=self.batch_size,
                                              normalize_embeddings=True, convert_to_numpy=True)
                new = dict(zip(part, vectors.astype(np.float32)))
                self.store.put_embeddings(self.encoder_id, new)
                self.memory.update(new)
        return len(todo)

    def matrix(self, texts: list[str]) -> np.ndarray:
        self.ensure(texts)
        if not texts:
            return np.zeros((0, self.encoder.get_embedding_dimension()), dtype=np.float32)
        return np.stack([self.memory[sha256_text(t)] for t in texts]).astype(np.float32)


# --- examples ---------------------------------------------------------------------------------


class FrozenModels:
    """What training and evaluation share: the frozen encoder and LLM, the decode loop, the item cache."""

    def __init__(self, settings: Settings, cache: str | None, encoder_max_tokens: int):
        self.settings = settings
        self.encoder = load_encoder(settings)
        self.model, self.tokenizer = load_llm(settings)
        self.generator = Generator(self.model, self.tokenizer)
        self.encoder_id = canonical_id(settings.encoder)
        self.llm_id = canonical_id(settings.llm)
        cache_path = Path(cache) if cache else settings.cache_dir / "train_cache.db"
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        self.cache = EmbeddingCache(self.encoder, self.encoder_id, Store(cache_path), settings.encode_batch_size,
                                    max_tokens=encoder_max_tokens)


@dataclass
class Example:
    task: TaskSpec
    query: Query
    x: torch.Tensor  # [d_enc] embedding of the request
    items: torch.Tensor  # [n, d_enc] history (most recent ``cap`` items)
    texts: list[str]  # the history texts, same order


def build_examples(splits: list[LampSplit], cache: EmbeddingCache, cap: int, progress: bool = False) -> list[Example]:
    """Examples of all queries of the splits, every needed text encoded once (cached)."""
    texts: list[str] = []
    for split in splits:
        for q in split.queries:
            texts.append(q.input)
            texts.extend(q.item_texts(cap))
    cache.ensure(list(dict.fromkeys(texts)), progress=progress)
    out = []
    for split in splits:
        for q in split.queries:
            hist = q.item_texts(cap)
            out.append(Example(split.task, q, torch.from_numpy(cache.matrix([q.input])[0]),
                               torch.from_numpy(cache.matrix(hist)), hist))
    return out


def fit_user_shift(generator: Generator, module: "SoftTokenModule", cache: EmbeddingCache, example: Example,
                   cap: int, settings: FitSettings, skip: int = 0) -> TunedToken:
    """The "tune to me" shift of one LaMP user, fitted on self-supervised examples from the history of
    ``example`` (its ``cap`` most recent items, as in ``example.items``), each scored with the other items;
    the ``skip`` examples of the most recent items are passed over."""
    q = example.query
    items = [it for it in q.items(cap) if lamp_item_text(it).strip()]  # as in example.items, oldest first
    made = examples_from_history(items[::-1], SELFSUP_RULE.get(example.task.like, "auto"))  # most recent first
    # the examples index items most recent first; the history tensor is oldest first
    made = [type(m)(m.request, m.target, len(items) - 1 - m.index) for m in made][skip:]
    cache.ensure([m.request for m in made])
    device = generator.device

    def soft_fn(requests: list[str], left_out: list[int]) -> torch.Tensor:
        x = torch.from_numpy(cache.matrix(requests)).to(device)  # [B, d_enc]
        items_b = example.items[None].expand(len(requests), -1, -1).to(device)  # [B, n, d_enc]
        mask = torch.ones(items_b.shape[:2], dtype=torch.bool, device=device)
        for b, i in enumerate(left_out):
            mask[b, i] = False
        return module(x, items_b, mask, requests)[0]

    try:
        return fit_shift(generator, soft_fn, made, settings)
    except ValueError:  # too few items that make an example: no shift
        return TunedToken(torch.zeros(module.plug.config.d_llm), 0, 0.0, 0.0, 0, 0, 0.0)


def stack_histories(histories: list[torch.Tensor], d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad histories [n_i, d] to ([B, n_max, d], mask [B, n_max]). An empty history gets one zero item."""
    n = max(max((h.shape[0] for h in histories), default=1), 1)
    items = torch.zeros(len(histories), n, d)
    mask = torch.zeros(len(histories), n, dtype=torch.bool)
    for i, h in enumerate(histories):
        if h.shape[0]:
            items[i, :h.shape[0]] = h
            mask[i, :h.shape[0]] = True
        else:
            mask[i, 0] = True  # a zero item: P is Proj(0), a constant
    return items, mask


def soft_tokens(plug_module: "SoftTokenModule", examples: list[Example], device,
                histories: list[torch.Tensor] | None = None):
    """[B, n_soft, d_llm] soft tokens and weights for the examples (``histories`` overrides their own)."""
    hist = histories if histories is not None else [e.items for e in examples]
    d = examples[0].x.shape[0]
    items, mask = stack_histories(hist, d)
    x = torch.stack([e.x for e in examples])
    return plug_module(x.to(device), items.to(device), mask.to(device), [e.query.input for e in examples])


class SoftTokenModule(torch.nn.Module):
    """``forward`` = ``plug.soft_tokens``, so the plug (and its input encoder, if it has one, whose
    x replaces the cached frozen-encoder x) can be wrapped by accelerate/DDP."""

    def __init__(self, plug: PPlug):
        super().__init__()
        self.plug = plug
        self.input_encoder = plug.input_encoder  # registered here so that its weights train

    def train(self, mode: bool = True) -> "SoftTokenModule":
        super().train(mode)
        if self.input_encoder is not None and not any(p.requires_grad for p in self.input_encoder.parameters()):
            self.input_encoder.eval()  # a frozen input encoder keeps its dropout off
        return self

    def forward(self, x, items, mask, texts: list[str] | None = None):
        if self.input_encoder is not None and texts is not None:
            x = self.plug.encode_inputs(texts)
        return self.plug.soft_tokens(x, items, mask)


def kl_to_reference(plug_logits: torch.Tensor, reference_logits: torch.Tensor, tmask: torch.Tensor) -> torch.Tensor:
    """Mean over target tokens of KL(reference || plug), logits [B, L, V], mask [B, L]: keeps the plug's
    next-token distributions near the reference's (the generic model's, or a plug before it)."""
    lp = torch.log_softmax(plug_logits.float(), dim=-1)
    lg = torch.log_softmax(reference_logits.float(), dim=-1)
    kl = (lg.exp() * (lg - lp)).sum(-1)
    return (kl * tmask).sum() / tmask.sum().clamp(min=1)


def generate(generator: Generator, prompts: list[PromptIds], soft: list[torch.Tensor | None],
             max_new_tokens: int, batch_size: int = 16) -> list[str]:
    """Greedy answers for the rows, in batches (the app's decode loop)."""
    out: list[str] = []
    params = GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0)
    for start in range(0, len(prompts), batch_size):
        embeds, mask = generator.embed(prompts[start:start + batch_size], soft[start:start + batch_size])
        out.extend(t.strip() for t in generator.generate(embeds, mask, params))
    return out


def other_histories(examples: list[Example], histories=None, shift: int = 1) -> list[torch.Tensor]:
    """Each example's history swapped for the one ``shift`` places on (another user of the same batch)."""
    hist = histories if histories is not None else [e.items for e in examples]
    return hist[shift:] + hist[:shift]


def contrastive_loss(own_sum: torch.Tensor, others_sum: list[torch.Tensor]) -> torch.Tensor:
    """InfoNCE over users: which history made the gold output likeliest?

    own_sum [B] and each of others_sum [B]: summed gold NLL (nats) of each example's output with its
    own history and with other users' histories. The log-likelihood of the whole output is the
    score, so p(own | output) is the posterior over the K candidate users: -> mean cross-entropy.
    """
    scores = -torch.stack([own_sum, *others_sum], dim=1)  # [B, K]
    return torch.nn.functional.cross_entropy(scores, torch.zeros(len(own_sum), dtype=torch.long,
                                                                 device=scores.device))


def ce_and_kl(generator: Generator, plug_module, examples: list[Example], prompts: list[PromptIds],
              targets: list[list[int]], kl_weight: float, histories=None, other_weight: float = 0.0,
              other_margin: float = 0.1, contrast_weight: float = 0.0, contrast_k: int = 4,
              prefix_once: bool = True, reference: "SoftTokenModule | None" = None) -> tuple[torch.Tensor, dict]:
    """The training loss of a batch.

    NLL of the gold output given the user's own history, + ``kl_weight`` * KL to the generic model
    (or, given a frozen ``reference`` plug, to that plug fed the same history),
    + ``other_weight`` * mean(relu(margin + NLL_own - NLL_other)): the same output must be likelier
    with the user's own history than with another user's by ``other_margin`` nats per token, which
    rewards a personal embedding that differs between users (NLL alone let it collapse to one vector),
    + ``contrast_weight`` * InfoNCE over ``contrast_k`` users: the gold output scored with its own
    history and with ``contrast_k - 1`` other users' histories of the batch (``contrastive_loss``).
    ``prefix_once``: see ``teacher_forced_logits``.
    """
    soft, weights = soft_tokens(plug_module, examples, generator.device, histories)
    logits, tgt, tmask = teacher_forced_logits(generator, prompts, list(soft), targets, prefix_once)
    own = nll_per_row(logits, tgt, tmask)
    nll = own.mean()
    loss = nll
    stats = {"nll": float(nll.detach())}
    if kl_weight > 0:
        with torch.no_grad():
            ref = ([None] * len(prompts) if reference is None
                   else list(soft_tokens(reference, examples, generator.device, histories)[0]))
            r_logits, _, _ = teacher_forced_logits(generator, prompts, ref, targets, prefix_once)
        kl = kl_to_reference(logits, r_logits, tmask)
        loss = loss + kl_weight * kl
        stats["kl"] = float(kl.detach())
    if other_weight > 0 and len(examples) > 1:
        soft_o, _ = soft_tokens(plug_module, examples, generator.device, other_histories(examples, histories))
        other = nll_per_row(*teacher_forced_logits(generator, prompts, list(soft_o), targets, prefix_once))
        loss = loss + other_weight * torch.relu(other_margin + own - other).mean()
        stats["own_minus_other"] = float((own - other).mean().detach())
    k = min(contrast_k, len(examples))
    if contrast_weight > 0 and k > 1:
        n_tokens = torch.tensor([len(t) for t in targets], dtype=own.dtype, device=own.device)
        others = []
        for shift in range(1, k):
            soft_o, _ = soft_tokens(plug_module, examples, generator.device,
                                    other_histories(examples, histories, shift))
            scored = teacher_forced_logits(generator, prompts, list(soft_o), targets, prefix_once)
            others.append(nll_per_row(*scored) * n_tokens)
        nce = contrastive_loss(own * n_tokens, others)
        loss = loss + contrast_weight * nce
        stats["nce"] = float(nce.detach())
        stats["own_minus_other"] = float((own - others[0] / n_tokens).mean().detach())
    stats["w_entropy"] = float(weight_entropy(weights).mean().detach())
    stats["loss"] = float(loss.detach())
    return loss, stats
