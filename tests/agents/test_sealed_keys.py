"""Stored API keys: sealed under an HKDF-derived key, readable across a secret rotation, and
never under a public development secret."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet, InvalidToken

from agentide.lib.sealed import SealError, reseal, seal, unseal

ROOT = Path(__file__).resolve().parent.parent.parent
OLD = "old-secret-" + "o" * 50
NEW = "new-secret-" + "n" * 50


@pytest.fixture
def site(settings: Any) -> Any:
    settings.AGENTIDE_SEALING_KEY = ""
    settings.AGENTIDE_SEALING_KEY_FALLBACKS = []
    settings.SECRET_KEY = OLD
    settings.SECRET_KEY_FALLBACKS = []
    return settings


def test_a_value_sealed_under_an_old_key_opens_after_rotation(site: Any) -> None:
    token = seal("sk-team-key")
    site.SECRET_KEY = NEW
    with pytest.raises(SealError):
        unseal(token)
    site.SECRET_KEY_FALLBACKS = [OLD]
    assert unseal(token) == "sk-team-key"
    fresh = seal("sk-other")
    moved = reseal(token)
    site.SECRET_KEY_FALLBACKS = []  # the old secret retired: new and resealed values open
    assert unseal(fresh) == "sk-other" and unseal(moved) == "sk-team-key"
    with pytest.raises(SealError):
        unseal(token)


def test_a_separate_sealing_secret_rotates_with_its_own_fallbacks(site: Any) -> None:
    site.AGENTIDE_SEALING_KEY = OLD
    token = seal("sk-1")
    site.AGENTIDE_SEALING_KEY = NEW
    site.AGENTIDE_SEALING_KEY_FALLBACKS = [OLD]
    assert unseal(token) == "sk-1"


def test_the_key_is_derived_with_a_purpose_not_a_plain_hash_and_old_values_still_open(
    site: Any,
) -> None:
    legacy = Fernet(
        base64.urlsafe_b64encode(hashlib.sha256(b"agentide-sealed-v1:" + OLD.encode()).digest())
    )
    with pytest.raises(InvalidToken):
        legacy.decrypt(seal("sk-new").encode())
    assert unseal(legacy.encrypt(b"sk-before-the-upgrade").decode()) == "sk-before-the-upgrade"


def development_secret(var_dir: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "AGENTIDE_"))}
    env.pop("DATABASE_URL", None)
    env.update(AGENTIDE_PROFILE="development", AGENTIDE_VAR_DIR=str(var_dir))
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            "from django.conf import settings; print(settings.SECRET_KEY)",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout.strip().splitlines()[-1]


def test_the_development_profile_generates_a_private_secret_and_keeps_it(
    tmp_path: Path,
) -> None:
    first = development_secret(tmp_path)
    kept = tmp_path / "secret_key"
    assert len(first) >= 50 and "dev-only" not in first
    assert kept.read_text().strip() == first
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert development_secret(tmp_path) == first  # stable across restarts
    assert development_secret(tmp_path / "elsewhere") != first  # not a shared default
