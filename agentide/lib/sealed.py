"""Secrets stored at rest: sealed with keys derived from the site's secrets.

``seal`` and ``unseal`` wrap Fernet (AES-128-CBC + HMAC-SHA256). The sealing secret is
``settings.AGENTIDE_SEALING_KEY`` when set, otherwise ``SECRET_KEY``; the Fernet key is derived
from it with HKDF-SHA256 under a purpose label, so it is used for nothing else.

Rotation: new values are sealed with the current secret; values sealed under one of
``SECRET_KEY_FALLBACKS`` (or ``AGENTIDE_SEALING_KEY_FALLBACKS``) still open, and ``reseal``
moves a value to the current key. Values sealed by earlier versions (a plain SHA-256 of the
secret) open too. A value sealed under no known secret raises ``SealError``.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

PURPOSE = b"agentide sealed secrets v2"


class SealError(Exception):
    """A sealed value could not be opened (wrong key or corrupted data)."""


def _derived(secret: str) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=PURPOSE).derive(
        secret.encode()
    )
    return Fernet(base64.urlsafe_b64encode(key))


def _legacy(secret: str) -> Fernet:
    digest = hashlib.sha256(b"agentide-sealed-v1:" + secret.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def _secrets() -> list[str]:
    """The current sealing secret first, then the older ones that may still open values."""
    sealing = getattr(settings, "AGENTIDE_SEALING_KEY", "")
    if sealing:
        secrets = [sealing, *getattr(settings, "AGENTIDE_SEALING_KEY_FALLBACKS", [])]
    else:
        secrets = [settings.SECRET_KEY]
    secrets += getattr(settings, "SECRET_KEY_FALLBACKS", [])
    return list(dict.fromkeys(s for s in secrets if s))


def _fernet() -> MultiFernet:
    secrets = _secrets()
    return MultiFernet([_derived(s) for s in secrets] + [_legacy(s) for s in secrets])


def seal(plaintext: str) -> str:
    """Return an opaque, authenticated, encrypted token for ``plaintext`` (current key)."""
    return _fernet().encrypt(plaintext.encode()).decode("ascii")


def unseal(token: str) -> str:
    """Return the plaintext sealed in ``token``; raise SealError if it cannot be opened."""
    try:
        return _fernet().decrypt(token.encode("ascii")).decode()
    except (InvalidToken, ValueError) as exc:
        raise SealError("The stored secret cannot be decrypted with this site's keys.") from exc


def reseal(token: str) -> str:
    """``token`` sealed again under the current key. Raises SealError."""
    try:
        return _fernet().rotate(token.encode("ascii")).decode("ascii")
    except (InvalidToken, ValueError) as exc:
        raise SealError("The stored secret cannot be decrypted with this site's keys.") from exc
