"""A short generation check on the device the app runs on (bf16 on CUDA), through the app's paths.

    python -m demo.app.gpu_check --out runs/gpu/check.json            # CUDA, bf16
    python -m demo.app.gpu_check --device cpu --max-new-tokens 8 ...  # the same steps on CPU (tests)

1. the shared decode loop: each request alone, then all at once through ``Studio.generate`` from
   as many threads; whether the answers are identical (on a GPU in bf16 a batch can change the
   last bits of a sum, so this is reported, not assumed) and the throughput of both;
2. the ZeroGPU path: the same requests through a ``spaces.GPU`` function with the studio set to
   decode inside the call (``Settings.zero_gpu``), as on a ZeroGPU Space;
3. the decoding policy: no answer repeats a word 3-gram or a character three times in a row.
"""
from __future__ import annotations

import argparse
import json
import re
import secrets
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import spaces
import torch

from ..core.generation import GenerationParams
from ..core.settings import REPO_ROOT, Settings
from ..core.studio import Studio
from .loadtest import REQUESTS


def degenerate(text: str) -> bool:
    words = text.split()
    trigrams = list(zip(words, words[1:], words[2:]))
    return bool(re.search(r"(\S)\1\1", text)) or len(set(trigrams)) < len(trigrams)


def check(studio: Studio, n_requests: int, max_new_tokens: int) -> dict:
    owner = secrets.token_urlsafe(24)
    history = (REPO_ROOT / "assets" / "personas" / "food_blogger.txt").read_text(encoding="utf-8").split("\n\n")
    profile = studio.compute_profile(owner, "gpu check", history).profile_id
    params = GenerationParams(max_new_tokens=max_new_tokens)
    requests = [REQUESTS[i % len(REQUESTS)] for i in range(n_requests)]

    def answer(target: Studio, request: str) -> tuple[str, str]:
        *_, last = target.generate(owner, profile, request, params, log=False)
        return last.personalized, last.generic

    t0 = time.perf_counter()
    alone = [answer(studio, r) for r in requests]
    alone_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(n_requests) as pool:
        together = list(pool.map(lambda r: answer(studio, r), requests))
    together_s = time.perf_counter() - t0

    # The same models and store; this studio decodes inside the call, as on ZeroGPU.
    inline = Studio(studio.settings.with_(zero_gpu=True), encoder=studio.encoder, generator=studio.generator,
                    store=studio.store, plug=studio.plug)

    @spaces.GPU(duration=60)
    def zero_gpu_answer(request: str) -> tuple[str, str]:
        return answer(inline, request)

    zero = [zero_gpu_answer(r) for r in requests[:2]]
    studio.delete_my_data(owner)
    texts = [t for pair in alone + together + zero for t in pair]
    return {
        "device": torch.cuda.get_device_name(0) if studio.settings.device.startswith("cuda") else "cpu",
        "dtype": str(studio.settings.dtype), "requests": n_requests, "max_new_tokens": max_new_tokens,
        "batched_equal_alone": sum(a == b for a, b in zip(alone, together)),
        "zero_gpu_path_equal_alone": sum(a == b for a, b in zip(alone, zero)),
        "empty_answers": sum(not t.strip() for t in texts),
        "degenerate_answers": sum(degenerate(t) for t in texts),
        "one_at_a_time_s": alone_s, "all_at_once_s": together_s, "speedup": alone_s / together_s,
        "sample": {"request": requests[0], "personalized": alone[0][0], "generic": alone[0][1]},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("No CUDA device here: run with --device cpu to try the steps on CPU.")
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env().with_(device=args.device, llm_dtype=args.dtype, db_path=Path(tmp) / "check.db")
        result = check(Studio(settings), args.requests, args.max_new_tokens)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
