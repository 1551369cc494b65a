"""Agent safety: Faust acknowledges a record whose agent raised and never retries it. So every
agent sends a record it cannot process to a dead-letter topic with the reason (bad data), and
stops the worker for a replay when the failure is not the record's fault (:func:`stop_on_failure`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone

from faust.types import EventT

from stafet.cpr import mask_cpr
from stafet.logging import get_logger
from stafet.streams.app import app
from stafet.streams.replay_exit import exit_for_replay
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
    sent = await topic(dlq).send(key=message.key, value=message.value, headers=headers)
    await sent  # the DLQ copy is on the broker before the original's offset moves on


async def dead_letter_value(dlq: str, stage: str, *, key: bytes | None, value: bytes,
                            reason: str) -> None:
    """Like :func:`dead_letter` for a record that is not the current event (a parked one)."""
    sent = await topic(dlq).send(key=key, value=value, headers={
        H_REASON: mask_cpr(reason).encode(),
        H_STAGE: stage.encode(),
        H_RECEIVED_AT: datetime.now(timezone.utc).isoformat().encode(),
    })
    await sent


log = get_logger(__name__)


async def reject(dlq: str, stage: str, event: EventT, exc: Exception, *, bad_input: bool,
                 reason: str | None = None) -> None:
    """Dead-letter a record that cannot be processed and say why: bad input (a warning) or a bug
    of ours (logged with its traceback). Either way the record is kept and the pipeline goes on."""
    if bad_input:
        await dead_letter(dlq, stage, event, reason or str(exc))
        log.warning(f"{stage}.rejected", error=str(exc))
    else:
        await dead_letter(dlq, stage, event, f"internal error: {type(exc).__name__}: {exc}")
        log.error(f"{stage}.failed", exc_info=exc)


@asynccontextmanager
async def stop_on_failure(stage: str) -> AsyncIterator[None]:
    """Around one record's processing: if anything escapes (a send the broker never confirmed, a
    table write that failed), stop the process at once instead of letting Faust acknowledge the
    record and move on. The offset is then not committed, and the supervisor's restart replays
    the record; deterministic ids and the tables' sent-lists make the replay harmless."""
    try:
        yield
    except Exception:
        exit_for_replay("worker.stopping_for_replay", stage=stage, exc_info=True)
