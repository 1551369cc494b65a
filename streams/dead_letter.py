"""Dead-letter helper for agents: Faust acknowledges a record whose agent raised and never
retries it, so every agent catches its own failures and sends the record here, with the
reason, before the offset moves on."""

from __future__ import annotations

from datetime import datetime, timezone

from faust.types import EventT

from stafet.cpr import mask_cpr
from stafet.streams.app import app
from stafet.topics import H_ORIGIN, H_REASON, H_RECEIVED_AT, H_STAGE

_topics: dict[str, object] = {}


def topic(name: str):  # type: ignore[no-untyped-def]
    """A raw-bytes Faust topic, created once per name."""
    if name not in _topics:
        _topics[name] = app.topic(name, key_type=bytes, value_type=bytes,
                                  key_serializer="raw", value_serializer="raw")
    return _topics[name]


async def dead_letter(dlq: str, stage: str, event: EventT, reason: str) -> None:
    """Send the original record and why it failed to ``dlq``; the reason is CPR-masked."""
    message = event.message
    headers = dict(event.headers or {})
    headers.update({
        H_REASON: mask_cpr(reason).encode(),
        H_STAGE: stage.encode(),
        H_ORIGIN: f"{message.topic}/{message.partition}/{message.offset}".encode(),
        H_RECEIVED_AT: datetime.now(timezone.utc).isoformat().encode(),
    })
    await topic(dlq).send(key=message.key, value=message.value, headers=headers)


async def dead_letter_value(dlq: str, stage: str, *, key: bytes | None, value: bytes,
                            reason: str) -> None:
    """Like :func:`dead_letter` for a record that is not the current event (a parked one)."""
    await topic(dlq).send(key=key, value=value, headers={
        H_REASON: mask_cpr(reason).encode(),
        H_STAGE: stage.encode(),
        H_RECEIVED_AT: datetime.now(timezone.utc).isoformat().encode(),
    })
