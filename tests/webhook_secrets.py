"""Deterministic Standard Webhooks secrets for tests: ``whsec_`` + base64 of 32 bytes."""

from __future__ import annotations

import base64
import hashlib


def whsec(name: str) -> str:
    """A valid webhook secret named ``name`` (different names, different keys)."""
    return "whsec_" + base64.b64encode(hashlib.sha256(name.encode()).digest()).decode()
