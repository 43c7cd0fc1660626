"""Secrets stored at rest: sealed with a key derived from the site's secret.

``seal`` and ``unseal`` wrap Fernet (AES-128-CBC + HMAC-SHA256). The key comes from
``settings.AGENTIDE_SEALING_KEY`` when set, otherwise from ``SECRET_KEY``; rotating that
secret makes existing sealed values unreadable (``unseal`` then raises ``SealError``).
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


class SealError(Exception):
    """A sealed value could not be opened (wrong key or corrupted data)."""


def _fernet() -> Fernet:
    secret = getattr(settings, "AGENTIDE_SEALING_KEY", "") or settings.SECRET_KEY
    digest = hashlib.sha256(b"agentide-sealed-v1:" + secret.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def seal(plaintext: str) -> str:
    """Return an opaque, authenticated, encrypted token for ``plaintext``."""
    return _fernet().encrypt(plaintext.encode()).decode("ascii")


def unseal(token: str) -> str:
    """Return the plaintext sealed in ``token``; raise SealError if it cannot be opened."""
    try:
        return _fernet().decrypt(token.encode("ascii")).decode()
    except (InvalidToken, ValueError) as exc:
        raise SealError("The stored secret cannot be decrypted with this site's key.") from exc
