"""Give a plug the keyword token: a bank of words that both the encoder and the LLM know as one token.

    python -m demo.research.keywords --plug assets/plug --words 6000 --k 8

The bank is made from the models alone (no data): the LLM's whole-word tokens (a space, then four or
more lowercase letters, not an English stop word) that the encoder's tokenizer also keeps as one
token, the first ``--words`` of them in the LLM's token order (byte-pair merges come roughly in order
of frequency, so these are the commoner words). Each word is embedded by the frozen encoder and
looked up in the LLM's embedding table; the plug then adds K, the mean LLM embedding of the ``--k``
bank words nearest to the input-aware history mean (``PPlug.keyword_token``), as a third soft token.

The plug is saved in place (or to ``--save``) with the bank in float16 and the words in ``keywords.json``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from ..core.models import canonical_id, load_encoder, load_llm
from ..core.plug import PPlug
from ..core.settings import REPO_ROOT, Settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo.research.keywords", description=__doc__.split("\n\n")[0])
    p.add_argument("--plug", default=str(REPO_ROOT / "assets" / "plug"))
    p.add_argument("--save", default=None, help="folder to save the plug to (default: --plug, in place)")
    p.add_argument("--words", type=int, default=6000, help="words in the bank")
    p.add_argument("--k", type=int, default=8, help="nearest words averaged into K (of 4, 8, 16 the best on dev)")
    return p.parse_args(argv)


def bank_words(llm_tokenizer, encoder_tokenizer, limit: int) -> list[tuple[int, str]]:
    """(LLM token id, word) for the first ``limit`` words that are one token for both tokenizers."""
    words = []
    for token_id in range(len(llm_tokenizer)):
        text = llm_tokenizer.decode([token_id])
        word = text[1:]
        if (text.startswith(" ") and len(word) >= 4 and word.isalpha() and word.islower()
                and word not in ENGLISH_STOP_WORDS and len(encoder_tokenizer.tokenize(word)) == 1):
            words.append((token_id, word))
            if len(words) == limit:
                break
    return words


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings.from_env()
    encoder = load_encoder(settings)
    model, tokenizer = load_llm(settings)
    plug = PPlug.load(args.plug, encoder_id=canonical_id(settings.encoder), llm_id=canonical_id(settings.llm))
    words = bank_words(tokenizer, encoder.tokenizer, args.words)
    ids = torch.tensor([i for i, _ in words])
    with torch.inference_mode():
        items = torch.from_numpy(encoder.encode([w for _, w in words], batch_size=256, normalize_embeddings=True))
        tokens = model.get_input_embeddings().weight[ids].float()
    plug.set_keyword_bank([w for _, w in words], items, tokens, args.k)
    plug.config.made["keywords"] = {"bank": len(words), "k": args.k}
    out = Path(args.save or args.plug)
    plug.save(out)
    print(f"{len(words)} words in the bank (first: {', '.join(w for _, w in words[:8])}); K from the {args.k} "
          f"nearest; plug {plug.plug_id} saved to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
