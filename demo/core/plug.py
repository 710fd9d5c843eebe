"""The PPlug module: history embeddings in, two or three soft tokens for the frozen LLM out.

Following Liu et al. (ACL 2025), for one user with history items h_1..h_n and current input x
(all embedded by the frozen sentence encoder and L2-normalized):

    w_i = softmax_i(x · h_i / tau)                      input-aware aggregator
    P   = sum_i w_i · Proj(h_i)                          personal embedding, Proj = Linear-GELU-Linear
          (optionally Proj((h_i - mean) / std), the statistics of the training items' embeddings)
    I   = Proj_I(e)                                      learned instruction embedding, own projector
    soft tokens = [I; P], each rescaled to the norm of the LLM's own token embeddings
    P  += S((mean_i h_i - m) / s)                        optional shift head, a linear map of the
                                                         standardized mean history embedding
                                                         (``demo.research.distill``)
    K   = mean of E[v] over the k words v nearest to     optional third token, the *keyword token*:
          sum_i w_i h_i in the encoder's space           words the history is about, in the LLM's own
                                                         embeddings E (``demo.research.keywords``)

x comes from the frozen encoder, or (as in the paper, optional) from the plug's own fine-tuned copy
of it, the *input encoder*, kept in ``input_encoder/`` beside the weights.

The keyword token needs no training: a bank of words, each embedded once by the frozen encoder
and by the LLM's embedding table, bridges the two spaces. It carries what the history is *about*
("recipe", "cooking", "bread") where P carries how it is written.

The soft tokens are placed into the prompt by ``demo.core.generation``. Only this module's
parameters (and the optional input encoder) are trained; the history encoder and the LLM stay
frozen.

A checkpoint is a folder with ``config.json`` (``PlugConfig``) and ``model.safetensors``,
in the manner of sentence-transformers' modules.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformer
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INPUT_ENCODER_DIR = "input_encoder"  # a sentence-transformers folder, when the plug has one
KEYWORDS_NAME = "keywords.json"  # the keyword bank's words, when the plug has one


class PlugMismatchError(ValueError):
    """The plug was made for other models than the ones loaded."""


@dataclass
class PlugConfig:
    encoder_id: str  # canonical (Hub) id of the history encoder it was made for
    llm_id: str  # canonical (Hub) id of the LLM it was made for
    d_enc: int  # encoder embedding size (384 for all-MiniLM-L6-v2)
    d_llm: int  # LLM hidden size (576 for SmolLM2-135M)
    tau: float = 0.05  # aggregator temperature on cosine logits
    token_norm: float = 1.0  # mean L2 norm of the LLM's token-embedding rows
    origin: str = "untrained"  # "untrained" | "training-free" | "trained"
    # Standardize item embeddings before Proj: sentence embeddings of one kind of text share a large
    # common part, which left P nearly the same vector for every user (mean pairwise cosine .96).
    standardize: bool = False
    input_encoder: bool = False  # the plug embeds the request with its own encoder (INPUT_ENCODER_DIR)
    # A linear head from the mean history embedding to a shift of P, distilled from per-user fitted
    # shifts: the part of a person the input-aware mean of Proj(h_i) did not carry.
    shift_head: bool = False
    # The keyword token K: the k bank words nearest to the input-aware history mean (0 = no K).
    keywords: int = 0
    keyword_bank: int = 0  # words in the bank (``set_keyword_bank``); their text is in KEYWORDS_NAME
    # Choose K's words by what sets this history apart: without it, words that sit near any formal text
    # ("summary", "report", "overview") crowded out a history's own subjects (``nearest_keywords``).
    keyword_center: bool = False
    # K as k soft tokens, one per word (nearest first), instead of one token, their mean: the mean of
    # eight words blurred them into a general direction the answers hardly took up.
    separate_keywords: bool = False
    seed: int = 0
    made: dict = field(default_factory=dict)  # how it was made: data, steps, settings, dev metrics

    @classmethod
    def from_dict(cls, data: dict) -> "PlugConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def add_shift(soft: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
    """[..., n_soft, d_llm] soft tokens with ``shift`` added to P (the second token): one shift [d_llm]
    for every row, or one per row [..., d_llm]. The result has the shape of ``soft``."""
    if shift is None:
        return soft
    p = soft[..., 1:2, :] + shift.to(soft.dtype).unsqueeze(-2)
    return torch.cat([soft[..., :1, :], p, soft[..., 2:, :]], dim=-2)


def _mlp(d_in: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out))


class PPlug(nn.Module):
    def __init__(self, config: PlugConfig):
        super().__init__()
        self.config = config
        # Seeded so that an "untrained plug" is the same plug in every process.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.projector = _mlp(config.d_enc, config.d_llm)
            self.instruction_projector = _mlp(config.d_enc, config.d_llm)
            # Random, not zero: all-zero soft tokens gave NaN gradients through the rescaling.
            self.instruction = nn.Parameter(F.normalize(torch.randn(config.d_enc), dim=0))
        # Learned strength of the soft tokens (log scale; 0 = the norm of a token embedding).
        self.log_gate = nn.Parameter(torch.zeros(()))
        if config.standardize:  # set by set_item_statistics, saved with the weights
            self.register_buffer("item_mean", torch.zeros(config.d_enc))
            self.register_buffer("item_std", torch.ones(config.d_enc))
        if config.shift_head:
            self.shift_head = nn.Linear(config.d_enc, config.d_llm)
            self.register_buffer("history_mean", torch.zeros(config.d_enc))  # over users' mean embeddings
            self.register_buffer("history_std", torch.ones(config.d_enc))
        if config.keyword_bank:  # float16 values (saved as float16: the bank is most of the plug's size)
            self.register_buffer("keyword_items", torch.zeros(config.keyword_bank, config.d_enc))
            self.register_buffer("keyword_tokens", torch.zeros(config.keyword_bank, config.d_llm))
        self.keyword_words: list[str] = []

    @property
    def input_encoder(self):
        """The fine-tuned input encoder (a SentenceTransformer) when ``config.input_encoder``, else None."""
        return self.__dict__.get("_input_encoder")

    def attach_input_encoder(self, encoder) -> None:
        # Not a submodule: its weights are saved in their own folder and the plug's stay small.
        object.__setattr__(self, "_input_encoder", encoder)
        self.config.input_encoder = encoder is not None

    def _apply(self, fn, *args, **kwargs):  # .to(device) / .half() move the input encoder too
        if self.input_encoder is not None:
            self.input_encoder._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    @torch.no_grad()
    def set_item_statistics(self, items: torch.Tensor) -> None:
        """Mean and std per dimension of item embeddings [n, d_enc] (needs ``config.standardize``)."""
        self.item_mean.copy_(items.float().mean(0))
        self.item_std.copy_(items.float().std(0).clamp_min(1e-4))

    @torch.no_grad()
    def set_keyword_bank(self, words: list[str], items: torch.Tensor, tokens: torch.Tensor, k: int) -> None:
        """The keyword bank: V words, their encoder embeddings [V, d_enc] and LLM embeddings [V, d_llm]."""
        if not 1 <= k <= len(words) or not len(words) == len(items) == len(tokens):
            raise ValueError(f"A keyword bank needs 1 <= k <= its words, one row per word ({len(words)} words, "
                             f"{len(items)} and {len(tokens)} rows, k = {k}).")
        self.config.keyword_bank, self.config.keywords = len(words), k
        # Rounded to float16 here, so that the plug in memory is the plug saved and loaded.
        self.register_buffer("keyword_items", F.normalize(items.float(), dim=-1).half().float())
        self.register_buffer("keyword_tokens", F.normalize(tokens.float(), dim=-1).half().float())
        self.keyword_words = list(words)

    # --- the aggregator and projectors ----------------------------------------------------

    def encode_inputs(self, texts: list[str]) -> torch.Tensor:
        """x for requests with the plug's input encoder (differentiable): [B] texts -> [B, d_enc], L2-normalized."""
        encoder = self.input_encoder
        features = {k: v.to(encoder.device) if torch.is_tensor(v) else v
                    for k, v in encoder.preprocess(texts).items()}
        return F.normalize(encoder(features)["sentence_embedding"], dim=-1)

    def weights(self, x: torch.Tensor, items: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Aggregator weights. x [B, d_enc], items [B, n, d_enc], mask [B, n] (True = real) -> [B, n]."""
        logits = torch.einsum("bd,bnd->bn", x, items) / self.config.tau
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        return torch.softmax(logits, dim=-1)

    def project_items(self, items: torch.Tensor) -> torch.Tensor:
        """Proj(h_i) for every item: [..., n, d_enc] -> [..., n, d_llm]."""
        if self.config.standardize:
            items = (items - self.item_mean) / self.item_std
        return self.projector(items)

    def instruction_embedding(self) -> torch.Tensor:
        """I before rescaling: [d_llm]."""
        # As a one-row batch: a 1-D input took a slow path (16 ms instead of 0.06 ms on CPU).
        return self.instruction_projector(self.instruction[None])[0]

    def rescale(self, v: torch.Tensor) -> torch.Tensor:
        """Put vectors [..., d_llm] at the norm of the LLM's token embeddings (times the gate)."""
        return F.normalize(v, dim=-1) * (self.config.token_norm * self.log_gate.exp())

    def history_shift(self, items: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The shift head's shift of P: items [B, n, d_enc], mask [B, n] -> [B, d_llm]."""
        if mask is None:
            mean = items.mean(1)
        else:
            m = mask[..., None].to(items.dtype)
            mean = (items * m).sum(1) / m.sum(1).clamp_min(1)
        return self.shift_head((mean - self.history_mean) / self.history_std)

    def nearest_keywords(self, w: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Indices [B, k] of the bank words nearest to the input-aware history mean, nearest first.

        w [B, n] aggregator weights, items [B, n, d_enc]."""
        bank = self.keyword_items
        mean = torch.einsum("bn,bnd->bd", w.to(bank.dtype), items.to(bank.dtype))
        if self.config.keyword_center:
            # Both sides less the bank's mean word (what every word shares); the history also less a
            # typical train user's mean (what every history shares), where the plug knows it: the shift
            # head's, so distilling a new head can move K's words a little.
            centre = bank.mean(0)
            bank = F.normalize(bank - centre, dim=-1)
            mean = mean - centre - (self.history_mean.to(bank.dtype) if self.config.shift_head else 0)
        return (F.normalize(mean, dim=-1) @ bank.T).topk(self.config.keywords, dim=-1).indices

    def keywords_of(self, w: torch.Tensor, items: torch.Tensor) -> list[list[str]]:
        """The keyword token's words for each of the B rows, nearest first (none without a bank)."""
        if not self.config.keywords:
            return [[] for _ in range(w.shape[0])]
        return [[self.keyword_words[i] for i in row] for row in self.nearest_keywords(w, items).tolist()]

    def keyword_token(self, w: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """K before rescaling: the LLM embeddings of the nearest words [B, k, d_llm] with
        ``separate_keywords``, else their mean [B, 1, d_llm]."""
        words = self.keyword_tokens[self.nearest_keywords(w, items)]
        return words if self.config.separate_keywords else words.mean(1, keepdim=True)

    @property
    def n_soft(self) -> int:
        """Soft tokens per row: [I; P], [I; P; K] with a keyword token, [I; P; K_1..K_k] with separate ones."""
        if not self.config.keywords:
            return 2
        return 2 + (self.config.keywords if self.config.separate_keywords else 1)

    def soft_tokens(
        self,
        x: torch.Tensor,
        items: torch.Tensor,
        mask: torch.Tensor | None = None,
        projected: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The soft tokens [I; P] (or [I; P; K], [I; P; K_1..K_k]) and the aggregator weights.

        x [B, d_enc], items [B, n, d_enc], mask [B, n] or None, projected [B, n, d_llm]
        (Proj(items), when cached) -> (soft [B, n_soft, d_llm], weights [B, n]).
        """
        w = self.weights(x, items, mask)
        if projected is None:
            projected = self.project_items(items)
        personal = torch.einsum("bn,bnd->bd", w, projected.to(w.dtype))
        instruction = self.instruction_embedding().expand(x.shape[0], -1)
        soft = self.rescale(torch.stack([instruction, personal], dim=1))
        if self.config.shift_head:
            soft = add_shift(soft, self.history_shift(items, mask))
        if self.config.keywords:
            keyword = self.rescale(self.keyword_token(w, items)).to(soft.dtype)  # [B, 1 or k, d_llm]
            soft = torch.cat([soft, keyword], dim=1)
        return soft, w

    # --- identity, save and load ------------------------------------------------------------

    def rebuilt(self, **changes) -> "PPlug":
        """This plug with config fields changed (e.g. ``shift_head=False``): the weights both configs
        have are copied; the keyword bank's words and the input encoder come along."""
        plug = PPlug(PlugConfig.from_dict({**asdict(self.config), **changes}))
        plug.load_state_dict(self.state_dict(), strict=False)
        plug.keyword_words = list(self.keyword_words)
        if self.input_encoder is not None:
            plug.attach_input_encoder(self.input_encoder)
        return plug

    @property
    def plug_id(self) -> str:
        """Stable id of what the plug computes: origin plus a hash of its parameters and of the config
        fields that change its soft tokens (tau, k, ...), but not of ``made``, its description."""
        digest = hashlib.sha256()
        behaviour = {k: v for k, v in asdict(self.config).items() if k not in ("made", "seed")}
        for added_later in ("keyword_center", "separate_keywords"):  # plugs without them keep the ids they had
            if not behaviour[added_later]:
                del behaviour[added_later]
        digest.update(json.dumps(behaviour, sort_keys=True).encode())
        state = dict(self.state_dict())
        if self.input_encoder is not None:
            state.update({f"{INPUT_ENCODER_DIR}.{k}": v for k, v in self.input_encoder.state_dict().items()})
        for name, tensor in sorted(state.items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        return f"{self.config.origin}-{digest.hexdigest()[:12]}"

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        state = {k: (v.half() if k.startswith("keyword_") else v.float()).detach().cpu().contiguous()
                 for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        if self.config.keyword_bank:
            (folder / KEYWORDS_NAME).write_text(json.dumps(self.keyword_words) + "\n")
        if self.input_encoder is not None:
            self.input_encoder.save(str(folder / INPUT_ENCODER_DIR))

    @classmethod
    def load(
        cls,
        folder: str | Path,
        *,
        encoder_id: str | None = None,
        llm_id: str | None = None,
        d_enc: int | None = None,
        d_llm: int | None = None,
    ) -> "PPlug":
        """Load a checkpoint; fail clearly if it was made for other models than the given ones."""
        folder = Path(folder)
        if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"{folder} is not a plug checkpoint (needs {CONFIG_NAME} and {WEIGHTS_NAME}).")
        config = PlugConfig.from_dict(json.loads((folder / CONFIG_NAME).read_text()))
        expected = {"encoder_id": encoder_id, "llm_id": llm_id, "d_enc": d_enc, "d_llm": d_llm}
        wrong = [
            f"{key} is {getattr(config, key)!r} in the plug but {value!r} is loaded"
            for key, value in expected.items()
            if value is not None and getattr(config, key) != value
        ]
        if wrong:
            raise PlugMismatchError(
                f"The plug in {folder} was made for other models: {'; '.join(wrong)}. "
                "Use a plug made for these models, or load the models it was made for."
            )
        plug = cls(config)
        plug.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
        if config.keyword_bank:
            plug.keyword_words = json.loads((folder / KEYWORDS_NAME).read_text())
            if len(plug.keyword_words) != config.keyword_bank:
                raise ValueError(f"{folder / KEYWORDS_NAME} holds {len(plug.keyword_words)} words, "
                                 f"the plug's bank {config.keyword_bank}.")
        if config.input_encoder:
            plug.attach_input_encoder(SentenceTransformer(str(folder / INPUT_ENCODER_DIR), device="cpu").eval())
        return plug

    @classmethod
    def untrained(cls, encoder_id: str, llm_id: str, d_enc: int, token_embeddings: torch.Tensor,
                  tau: float = 0.05, seed: int = 0, standardize: bool = False) -> "PPlug":
        """A randomly initialized plug for the given models. token_embeddings: [vocab, d_llm]."""
        norm = token_embeddings.detach().float().norm(dim=-1).mean().item()
        config = PlugConfig(encoder_id=encoder_id, llm_id=llm_id, d_enc=d_enc, d_llm=token_embeddings.shape[1],
                            tau=tau, token_norm=norm, seed=seed, standardize=standardize)
        return cls(config)


def weight_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each row of aggregator weights [B, n] -> [B]; 0 = one item takes all, log n = flat."""
    w = weights.clamp_min(1e-12)
    return -(w * w.log()).sum(-1)


def cosine_spread(vectors: torch.Tensor) -> float:
    """Mean pairwise cosine similarity of vectors [m, d] (1.0 = all the same direction)."""
    v = F.normalize(vectors.detach().float(), dim=-1)  # a measure, never part of a loss
    sims = v @ v.T
    m = v.shape[0]
    return float((sims.sum() - sims.diagonal().sum()) / max(m * (m - 1), 1)) if m > 1 else math.nan
