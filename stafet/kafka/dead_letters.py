"""Dead letters: the headers every one carries (:func:`dead_letter_headers`), and sending one
back where it came from once its cause is fixed (``stafet dlq resend``).

A stream stage's dead letter is the record it could not handle (``stafet.origin`` names its
topic) or, from the referral step, the event as it was applied (it goes back to
``events.referral``; a per-recipient dead letter's ``stafet.redeliver`` then yields exactly that
message). The record is produced back unchanged — same key, same value, its headers without the
dead-letter ones, plus ``stafet.resent_from`` — so the ids of what it produces are the ones it
would have had. Rejected input (``dlq.mllp``, ``dlq.fhir``) is not resent: its sender must send a
corrected message; ``dlq.delivery`` has ``stafet replay``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaException, Producer

from stafet.config import Settings
from stafet.cpr import mask_cpr
from stafet.errors import StafetError
from stafet.kafka.client import PARTITIONER, client_config
from stafet.kafka.reader import fetch_record
from stafet.kafka.topics import (
    DLQ_NORMALIZE,
    DLQ_NOTIFY,
    DLQ_REFERRAL,
    EVENTS_REFERRAL,
    H_ORIGIN,
    H_REASON,
    H_RECEIVED_AT,
    H_STAGE,
    H_SUBSCRIBER,
)
from stafet.logging import get_logger

log = get_logger(__name__)
H_RESENT_FROM = "stafet.resent_from"  # <dlq topic>/<partition>/<offset> of the dead letter
RESENDABLE = (DLQ_NORMALIZE, DLQ_NOTIFY, DLQ_REFERRAL)
#: where a dead letter without stafet.origin goes (the referral step's applied events)
DEFAULT_TARGET = {DLQ_REFERRAL: EVENTS_REFERRAL}
DEAD_LETTER_HEADERS = (H_REASON, H_STAGE, H_ORIGIN, H_RECEIVED_AT, H_SUBSCRIBER)
#: the longest reason kept in a header (a traceback-sized reason would make the DLQ record poison)
MAX_REASON = 8192


def dead_letter_headers(
    stage: str,
    reason: str,
    *,
    received_at: str | None = None,
    origin: str | None = None,
    subscriber: str | None = None,
) -> dict[str, bytes]:
    """What every dead letter says of itself: why (CPR-masked, cut to :data:`MAX_REASON`), which
    stage put it there and when, and — where there is one — the ``topic/partition/offset`` it
    came from and the subscriber it was for."""
    headers = {
        H_REASON: mask_cpr(reason)[:MAX_REASON].encode(),
        H_STAGE: stage.encode(),
        H_RECEIVED_AT: (received_at or datetime.now(UTC).isoformat()).encode(),
    }
    if origin is not None:
        headers[H_ORIGIN] = origin.encode()
    if subscriber is not None:
        headers[H_SUBSCRIBER] = subscriber.encode()
    return headers


def resend(settings: Settings, dlq_topic: str, partition: int, offset: int) -> str:
    """Produce the dead letter at ``dlq_topic/partition/offset`` back to its origin; return the
    topic it went to."""
    if dlq_topic not in RESENDABLE:
        raise StafetError(
            f"{dlq_topic} is not resent: only {', '.join(RESENDABLE)} (rejected "
            "input is sent again by its sender; deliveries by stafet replay)"
        )
    msg = fetch_record(client_config(settings), dlq_topic, partition, offset)
    headers = {k: v for k, v in (msg.headers() or []) if v is not None}
    origin = headers.get(H_ORIGIN, b"").decode("utf-8", "replace")
    target = origin.rsplit("/", 2)[0] if origin.count("/") >= 2 else DEFAULT_TARGET.get(dlq_topic)
    if not target or not target.startswith(("ingest.", "events.")):
        raise StafetError(
            f"{dlq_topic}/{partition}/{offset} names no topic to go back to "
            f"(stafet.origin {origin or 'missing'})"
        )
    kept = [(k, v) for k, v in headers.items() if k not in DEAD_LETTER_HEADERS]
    kept.append((H_RESENT_FROM, f"{dlq_topic}/{partition}/{offset}".encode()))
    outcome: list[Any] = []
    producer = Producer(
        client_config(
            settings, **{"acks": "all", "enable.idempotence": True, "partitioner": PARTITIONER}
        )
    )
    try:
        producer.produce(
            target,
            value=msg.value(),
            key=msg.key(),
            headers=kept,
            on_delivery=lambda err, _: outcome.append(err),
        )
        producer.flush(30)
    except KafkaException as exc:
        raise StafetError(f"resending to {target}: {exc}") from exc
    if outcome != [None]:
        raise StafetError(f"{target} did not confirm the record: {outcome}")
    log.info("dlq.resent", dead_letter=f"{dlq_topic}/{partition}/{offset}", to=target)
    return target
