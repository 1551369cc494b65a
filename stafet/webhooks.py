"""Standard Webhooks (https://www.standardwebhooks.com) signing, both ways: stafet signs every
POST to a subscriber, and checks the acknowledgements subscribers sign back the same way.

A signature covers the message id, the time and the exact body bytes, so a receiver can refuse a
replay (a timestamp outside the window) as well as a forgery. The key rule of a secret
(``whsec_<base64>``, at least 24 bytes) is :func:`stafet.subscribers.secret_key`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping

from stafet.subscribers import secret_key

# Standard Webhooks (https://www.standardwebhooks.com): each POST carries these three headers.
WEBHOOK_ID_HEADER = "webhook-id"
WEBHOOK_TIMESTAMP_HEADER = "webhook-timestamp"
WEBHOOK_SIGNATURE_HEADER = "webhook-signature"
#: how far a webhook-timestamp may lie in the past or the future (the spec's 5 minutes)
DEFAULT_TOLERANCE_S = 300.0


class SignatureError(ValueError):
    """A webhook signature that does not hold; ``reason`` is one of ``missing``, ``bad-id``,
    ``bad-timestamp``, ``too-old``, ``too-new``, ``bad-signature`` (no ``v1`` signature of the
    secret matches). The message never contains the body."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256(key, "<msg_id>.<timestamp>.<body>")>``: the ``webhook-signature``
    of a POST of ``body`` with ``webhook-id: msg_id`` and ``webhook-timestamp: timestamp`` (Unix
    seconds). Signing the id and the time lets a receiver refuse a replay."""
    mac = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def check_timestamp(
    timestamp: str, tolerance_s: float | None = DEFAULT_TOLERANCE_S, *, now: float | None = None
) -> int:
    """The ``webhook-timestamp`` as Unix seconds; :class:`SignatureError` if it is not an
    integer or lies more than ``tolerance_s`` before (``too-old``) or after (``too-new``)
    ``now`` (None: no window)."""
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
        raise SignatureError("bad-timestamp", "webhook-timestamp must be integer Unix seconds")
    ts = int(timestamp)
    if tolerance_s is not None:
        at = time.time() if now is None else now
        if at - ts > tolerance_s:
            raise SignatureError(
                "too-old",
                f"webhook-timestamp is {at - ts:.0f} s old, more "
                f"than the {tolerance_s:.0f} s allowed: a replay?",
            )
        if ts - at > tolerance_s:
            raise SignatureError(
                "too-new",
                f"webhook-timestamp is {ts - at:.0f} s in the "
                f"future, more than the {tolerance_s:.0f} s allowed",
            )
    return ts


def verify(
    secret: str,
    msg_id: str | None,
    timestamp: str | None,
    body: bytes,
    signature: str | None,
    *,
    tolerance_s: float | None = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> None:
    """Check the three Standard Webhooks headers of a request with ``body`` (for receivers of
    stafet's POSTs, and for the acknowledgements they sign the same way); returns None or
    raises :class:`SignatureError` with the reason. ``signature`` may list several
    space-separated signatures (key rotation): one ``v1`` match is enough; the comparison is
    constant-time. A timestamp more than ``tolerance_s`` seconds before or after ``now`` is
    refused (a replay, or a clock that is off); ``tolerance_s=None`` skips that check."""
    if not msg_id or not timestamp or not signature:
        raise SignatureError(
            "missing", "webhook-id, webhook-timestamp and webhook-signature are all required"
        )
    if len(msg_id) > 256 or any(c in msg_id for c in " \t\r\n"):
        raise SignatureError("bad-id", "webhook-id must be one token of at most 256 characters")
    ts = check_timestamp(timestamp, tolerance_s, now=now)
    expected = sign(secret, msg_id, ts, body).encode()
    matched = False
    for candidate in signature[:4096].split(" "):
        if candidate.startswith("v1,"):  # other versions (v1a: asymmetric) are not ours
            matched |= hmac.compare_digest(expected, candidate.encode())
    if not matched:
        raise SignatureError("bad-signature", "no v1 signature matches the secret")


def verify_headers(secret: str, headers: Mapping[str, str], body: bytes) -> None:
    """:func:`verify` for a received request's headers (``webhook-id``, ``webhook-timestamp``,
    ``webhook-signature``), with the default replay window — what a receiver calls."""
    verify(
        secret,
        headers.get(WEBHOOK_ID_HEADER),
        headers.get(WEBHOOK_TIMESTAMP_HEADER),
        body,
        headers.get(WEBHOOK_SIGNATURE_HEADER),
    )


def signed_headers(
    secret: str, msg_id: str, body: bytes, *, now: float | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers that sign ``body`` as message ``msg_id`` now."""
    ts = int(time.time() if now is None else now)
    return {
        WEBHOOK_ID_HEADER: msg_id,
        WEBHOOK_TIMESTAMP_HEADER: str(ts),
        WEBHOOK_SIGNATURE_HEADER: sign(secret, msg_id, ts, body),
    }
