"""What a stream step takes and gives: an :class:`Inbound` record and the :class:`Output` records
it produces — data, not sends.

Each step (normalize, notify, referrals) is a function from one input record (and its state) to a
list of outputs; the engine (:mod:`stafet.streams.app`) produces them, writes the state and
commits the input offset in one Kafka transaction. A record that cannot be processed becomes a
dead-letter :class:`Output` in that same transaction, so "handled" always means "its outputs,
or its dead letter, are on the broker" — never "skipped".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from stafet.cpr import mask_cpr
from stafet.kafka.dead_letters import dead_letter_headers
from stafet.kafka.topics import ALERTS_OPERATOR, H_ORIGIN


@dataclass(frozen=True, slots=True)
class Inbound:
    """One consumed record, as a step sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


class State(Protocol):
    """What a step needs of its state store (quixstreams' ``State``: scoped to the record key)."""

    def get(self, key: Any, default: Any = None) -> Any: ...

    def set(self, key: Any, value: Any) -> None: ...

    def delete(self, key: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class Output:
    """One record to produce. ``value`` None is a tombstone (a cleared timer)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes] = field(default_factory=dict)

    def size(self) -> int:
        """Bytes this record takes in a batch, near enough to compare with max.message.bytes."""
        return (
            len(self.key or b"")
            + len(self.value or b"")
            + sum(len(k) + len(v) for k, v in self.headers.items())
            + 128
        )


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def dead_letter(dlq: str, stage: str, record: Inbound, reason: str) -> Output:
    """The original record, with why it failed (CPR-masked) and where it came from."""
    return dead_letter_value(
        dlq,
        stage,
        key=record.key,
        value=record.value,
        reason=reason,
        headers={**record.headers, H_ORIGIN: record.origin.encode()},
    )


def dead_letter_value(
    dlq: str,
    stage: str,
    *,
    key: bytes | None,
    value: bytes | None,
    reason: str,
    headers: dict[str, bytes] | None = None,
) -> Output:
    """Like :func:`dead_letter` for a record that is not the one in hand (a parked decision)."""
    return Output(
        dlq,
        key,
        value,
        {**(headers or {}), **dead_letter_headers(stage, reason)},
    )


def operator_alert(stage: str, reason: str, **fields: Any) -> Output:
    """A record on ``alerts.operator``: something a person must look at (same shape as the
    delivery process's alerts)."""
    body = {
        "at": now_iso(),
        "severity": "error",
        "stage": stage,
        "reason": mask_cpr(reason),
        **{k: mask_cpr(str(v)) for k, v in fields.items()},
    }
    return Output(ALERTS_OPERATOR, stage.encode(), json.dumps(body, ensure_ascii=False).encode())


def headers_dict(headers: Any) -> dict[str, bytes]:
    """Kafka headers (a list of (name, value) tuples, or None) as a dict; the last value wins."""
    out: dict[str, bytes] = {}
    for name, value in headers or ():
        if value is not None:
            out[name] = value if isinstance(value, bytes) else str(value).encode()
    return out
