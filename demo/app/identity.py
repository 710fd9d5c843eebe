"""Who a visitor is, and the two keys beside the database.

* The **browser secret** (``<db>.secret``) encrypts the token kept in ``gr.BrowserState``. Gradio
  sends it to every browser in ``GET /config``, so it is public and derives nothing.
* The **identity key** (``<db>.identity-key``) never leaves the server. It keys the owner of a
  visitor signed in with Hugging Face, so that knowing a username does not give the owner.

Owners live in three namespaces: a caller's own token (the browser's random token, or the token an
API caller brings), ``hf:`` + a keyed hash of a Hugging Face username, and ``study:`` + a hash of a
study participant's token. A caller's token may not look like either derived kind, so no caller can
act as a signed-in account or a participant by passing their owner id.

Before the identity key existed, signed-in owners were ``hf-`` + HMAC(browser secret, username):
computable by anyone. On start-up those rows move to ``hf-legacy:`` + HMAC(identity key, old id),
which only the server can compute, and a signed-in visitor's rows move on to their new owner the
first time they come back.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from pathlib import Path

from ..core.storage import Store
from ..core.studio import ServiceError

SIGNED_IN = "hf:"
LEGACY = "hf-legacy:"
# Owner ids the server derives; a token that looks like one is refused (LEGACY starts with "hf-").
_DERIVED = re.compile(r"^(hf:|hf-|study:)", re.IGNORECASE)
_OLD_SIGNED_IN = re.compile(r"^hf-[0-9a-f]{40}$")


def _key_file(db_path: Path, suffix: str, make) -> str:
    """The contents of ``<db><suffix>``, created (owner-only) on first use."""
    path = db_path.with_suffix(db_path.suffix + suffix)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(make())
    return path.read_text().strip()


def browser_secret(db_path: Path) -> str:
    """The key that encrypts the owner token in the browser: public (Gradio sends it to browsers).

    Kept beside the database so that a restart does not orphan everyone's profiles."""
    return _key_file(db_path, ".secret", lambda: secrets.token_urlsafe(32))


def caller_token(token: str) -> str:
    """A token brought by a caller (API or browser), refused when it looks like a derived owner id."""
    if isinstance(token, str) and _DERIVED.match(token):
        raise ServiceError("Invalid owner token: tokens starting with hf: hf- or study: are reserved.")
    return token


def _hmac(key: str, text: str) -> str:
    return hmac.new(key.encode(), text.encode(), hashlib.sha256).hexdigest()[:40]


class Identity:
    """The app's keys and the owners they derive."""

    def __init__(self, store: Store, db_path: Path):
        self.store = store
        self.browser_secret = browser_secret(db_path)
        self._key = _key_file(db_path, ".identity-key", lambda: secrets.token_urlsafe(32))
        self._rotate_old_signed_in_owners()

    def signed_in_owner(self, username: str) -> str:
        """The owner of a visitor signed in with Hugging Face: the same in every browser."""
        owner = SIGNED_IN + _hmac(self._key, "user:" + username)
        # Rows stored under the old, public derivation come back to their account.
        self.store.rename_owner(self._legacy(self._old_signed_in_owner(username)), owner)
        return owner

    def visitor(self, token: str | None, username: str | None) -> str:
        """Who a page visitor acts as: their account when signed in, else this browser's token."""
        return self.signed_in_owner(username) if username is not None else self.browser_token(token)

    @staticmethod
    def browser_token(token: str | None) -> str:
        """This browser's token, or a fresh random one (192 bits) when it has none or one that looks
        like a derived owner (anyone can write any value into their own browser's state)."""
        if not token or _DERIVED.match(token):
            return secrets.token_urlsafe(24)
        return token

    def _old_signed_in_owner(self, username: str) -> str:
        return "hf-" + _hmac(self.browser_secret, username)

    def _legacy(self, old_owner: str) -> str:
        return LEGACY + _hmac(self._key, "legacy:" + old_owner)

    def _rotate_old_signed_in_owners(self) -> None:
        for owner in self.store.owners_with_prefix("hf-"):
            if _OLD_SIGNED_IN.match(owner):
                self.store.rename_owner(owner, self._legacy(owner))
