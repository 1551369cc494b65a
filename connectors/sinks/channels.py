"""The parts a delivery is made of: the record being delivered, the channels (REST hook, letter
outbox), and the durable recorder of audit lines, alerts and dead letters.

A channel answers each attempt with an :class:`AttemptResult`: delivered, retry later (the endpoint is
down, slow or says 5xx/408/429), or refused (any other 4xx: the receiver will never take this
message, so retrying only delays the operator).
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from confluent_kafka import Message

from stafet.audit import Action, AuditRecord, headers_of, now_iso
from stafet.cpr import mask_cpr
from stafet.kafka.dead_letters import dead_letter_headers
from stafet.kafka.producer import DurableProducer
from stafet.kafka.topics import (
    ALERTS_OPERATOR,
    AUDIT_DELIVERY,
    DLQ_DELIVERY,
    H_BUNDLE_ID,
    H_EVENT_ID,
    H_KIND,
    H_MESSAGE_ID,
    H_RECIPIENT,
    H_REFERRAL_ID,
)
from stafet.logging import get_logger
from stafet.subscribers import Subscriber
from stafet.webhooks import (
    signed_headers,
)

log = get_logger(__name__)

MESSAGE_ID_HEADER = "X-Stafet-Message-Id"
ATTEMPT_HEADER = "X-Stafet-Attempt"
POSITION_HEADER = "X-Stafet-Position"  # <topic>/<partition>/<offset>: where to replay from
RETRYABLE_STATUS = (408, 425, 429)


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One record of an out.* topic and where it sits."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, str]
    timestamp_ms: int

    @classmethod
    def from_message(cls, msg: Message) -> OutRecord:
        return cls(
            msg.topic(),
            msg.partition(),
            msg.offset(),
            msg.key(),
            msg.value() or b"",
            headers_of(msg.headers()),
            msg.timestamp()[1],
        )

    @property
    def message_id(self) -> str:
        return self.headers.get(H_MESSAGE_ID, f"{self.topic}/{self.partition}/{self.offset}")

    @property
    def recipient(self) -> str | None:
        return self.headers.get(H_RECIPIENT)

    def audit(
        self,
        action: Action,
        subscriber: str,
        *,
        at: str | None = None,
        attempt: int = 0,
        detail: str = "",
    ) -> AuditRecord:
        """An audit line about this record (the recipient is masked when written)."""
        return AuditRecord(
            action=action,
            subscriber=subscriber,
            message_id=self.message_id,
            at=at or now_iso(),
            bundle_id=self.headers.get(H_BUNDLE_ID, ""),
            kind=self.headers.get(H_KIND, ""),
            recipient=self.recipient or "",
            recipient_kind=self.headers.get(
                "stafet.recipient_kind",
                "municipality" if self.topic.startswith("out.municipality.") else "",
            ),
            event_id=self.headers.get(H_EVENT_ID, ""),
            referral_id=self.headers.get(H_REFERRAL_ID, ""),
            topic=self.topic,
            partition=self.partition,
            offset=self.offset,
            attempt=attempt,
            detail=detail,
        )


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one attempt at a channel came to (delivered, or retry, or refused for good)."""

    delivered: bool
    retry: bool
    detail: str


class Recorder:
    """Durable writes of audit lines, operator alerts and dead letters (awaited: a delivery is
    committed only after its audit line is stored)."""

    def __init__(self, producer: DurableProducer) -> None:
        self.producer = producer

    async def audit(self, record: AuditRecord, key: bytes | None) -> None:
        await self.producer.send(
            AUDIT_DELIVERY, record.encode(), key=key or record.message_id.encode()
        )

    async def alert(self, reason: str, **fields: Any) -> None:
        """Something a person must look at; also logged at error level."""
        body = {
            "at": now_iso(),
            "severity": "error",
            "reason": mask_cpr(reason),
            **{k: mask_cpr(str(v)) for k, v in fields.items()},
        }
        log.error("delivery.alert", **body)
        await self.producer.send(
            ALERTS_OPERATOR,
            json.dumps(body, ensure_ascii=False).encode(),
            key=str(fields.get("subscriber", "")).encode(),
        )

    async def dead_letter(
        self, record: OutRecord, subscriber: str, reason: str, attempt: int = 0
    ) -> None:
        """dlq.delivery (the original record, its headers, the reason), audit, alert."""
        origin = f"{record.topic}/{record.partition}/{record.offset}"
        headers = [(k, v.encode()) for k, v in record.headers.items()] + list(
            dead_letter_headers("delivery", reason, origin=origin, subscriber=subscriber).items()
        )
        await self.producer.send(DLQ_DELIVERY, record.value, key=record.key, headers=headers)
        await self.audit(
            record.audit("dead-lettered", subscriber, attempt=attempt, detail=reason), record.key
        )
        await self.alert(
            f"message {record.message_id} to {subscriber} dead-lettered: {reason}",
            subscriber=subscriber,
            message_id=record.message_id,
            topic=DLQ_DELIVERY,
        )


class RestHook:
    """POSTs FHIR message Bundles to one subscriber's endpoint, signed with its secret the
    Standard Webhooks way (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``)."""

    def __init__(
        self, subscriber: Subscriber, session: aiohttp.ClientSession, timeout_s: float
    ) -> None:
        assert subscriber.url is not None
        self.subscriber, self.session = subscriber, session
        self.url = subscriber.url
        self._secret = subscriber.secret().get_secret_value()
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def send(self, body: bytes, record: OutRecord, attempt: int) -> AttemptResult:
        headers = {
            "Content-Type": "application/fhir+json; fhirVersion=4.0",
            # webhook-id: the MessageHeader.id, the same on retries, resends, replays
            **signed_headers(self._secret, record.message_id, body),
            MESSAGE_ID_HEADER: record.message_id,
            ATTEMPT_HEADER: str(attempt),
            POSITION_HEADER: f"{record.topic}/{record.partition}/{record.offset}",
        }
        try:
            async with self.session.post(
                self.url, data=body, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as response:  # no 3xx hop
                await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return AttemptResult(False, True, f"{type(exc).__name__}: {exc}"[:300])
        if 200 <= status < 300:
            return AttemptResult(True, False, f"HTTP {status}")
        if 300 <= status < 400:  # a signed body is never forwarded to another address
            return AttemptResult(
                False, False, f"HTTP {status}: redirects are not followed; register the final URL"
            )
        retry = status >= 500 or status in RETRYABLE_STATUS
        return AttemptResult(False, retry, f"HTTP {status}")


class LetterOutbox:
    """Writes each letter (PDF) and a small JSON envelope into the outbox directory; the letter
    service picks them up. The write is atomic (temp file + rename) and idempotent by message id."""

    def __init__(self, subscriber: Subscriber, root: Path) -> None:
        self.subscriber = subscriber
        self.directory = subscriber.outbox or root / subscriber.id

    async def send(self, body: bytes, record: OutRecord, attempt: int) -> AttemptResult:
        try:
            await asyncio.to_thread(self._write, body, record)
        except OSError as exc:
            return AttemptResult(False, True, f"outbox {self.directory}: {exc}")
        return AttemptResult(True, False, f"written to {self.directory}")

    def _write(self, body: bytes, record: OutRecord) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        envelope = {
            "message_id": record.message_id,
            "kind": record.headers.get(H_KIND, ""),
            "referral_id": record.headers.get(H_REFERRAL_ID, ""),
            # the letter service needs the addressee (a guardian's CPR): file is 0600
            "recipient": record.recipient or "",
            "recipient_kind": record.headers.get("stafet.recipient_kind", ""),
        }
        for name, data in (
            (f"{record.message_id}.json", json.dumps(envelope).encode()),
            (f"{record.message_id}.pdf", body),
        ):  # the PDF last: it marks done
            tmp = self.directory / f".{name}.{uuid.uuid4().hex}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.directory / name)
        dir_fd = os.open(self.directory, os.O_RDONLY)  # the renames survive a power loss
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
