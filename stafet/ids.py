"""Deterministic identifiers: the same input always yields the same ids.

Every outbound message id is a UUIDv5 of the source message identity plus recipient and kind,
so a replay or a retry produces byte-identical ids and receivers can deduplicate as MedCom
prescribes. The patient key is an HMAC of the CPR, so Kafka keys never carry a CPR in clear.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid

#: Namespace for all stafet UUIDv5s (itself a UUIDv5 of the project URL, fixed forever).
STAFET_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://stafet.dk/ns/ids")


def stable_uuid(*parts: str) -> str:
    """UUIDv5 of the parts joined with '|' under the stafet namespace."""
    return str(uuid.uuid5(STAFET_NAMESPACE, "|".join(parts)))


def patient_key(cpr: str, secret: str) -> str:
    """Pseudonymous, stable Kafka key for a patient: HMAC-SHA256(secret, CPR), 32 hex chars."""
    return hmac.new(secret.encode(), cpr.encode(), hashlib.sha256).hexdigest()[:32]
