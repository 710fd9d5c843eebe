"""Who a visitor is: the key that encrypts the owner token kept in the browser, and the owner of a
visitor signed in with Hugging Face. Nothing derived here is sent to the browser."""
from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path


def browser_secret(db_path: Path) -> str:
    """The key that encrypts the owner token in the browser, kept beside the database so that
    a restart does not orphan everyone's profiles."""
    path = db_path.with_suffix(db_path.suffix + ".secret")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def signed_in_owner(secret: str, username: str) -> str:
    """The owner of a visitor signed in with Hugging Face: the same in every browser, keyed by the
    app's secret so that knowing a username does not give the owner."""
    return "hf-" + hmac.new(secret.encode(), username.encode(), hashlib.sha256).hexdigest()[:40]
