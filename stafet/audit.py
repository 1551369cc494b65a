"""The delivery audit trail: one JSON record per delivery attempt, acknowledgement and failure.

Records go to ``audit.delivery`` keyed by the patient key (one patient's trail stays in order)
and are kept forever (``retention.ms=-1``). They carry ids, times and masked recipients, never a
CPR number: a guardian's recipient identifier is masked before it is written. The same topic is
the delivery tracker's memory: on start it replays the trail to know which messages still wait
for an acknowledgement.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from stafet.cpr import mask_cpr

Action = Literal[
    "published",  # on a Kafka subscriber's own topic (it reads it itself)
    "attempt-failed",  # one POST / write failed; will be retried
    "delivered",  # the subscriber's endpoint accepted it (2xx) / the letter is in the outbox
    "resent",  # no acknowledgement in time (or transient-error): sent again
    "replayed",  # sent again on request (stafet replay)
    "ack-ok",
    "ack-transient-error",
    "ack-fatal-error",  # MedCom Acknowledgement received
    "dead-lettered",  # given up: on dlq.delivery, operator alerted
    "unrouted",  # no subscriber takes it: operator alerted
    "ack-unverified",  # an acknowledgement not signed by the subscriber: recorded, ignored
    "dlq-resent",  # the operator console sent a dead letter back to its origin (actor: who)
    "dlq-discarded",  # the operator console closed a dead letter without resending (detail: why)
]
ACK_ACTIONS = ("ack-ok", "ack-transient-error", "ack-fatal-error")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One line of the trail. ``topic/partition/offset`` locate the delivered record."""

    action: Action
    subscriber: str
    message_id: str
    at: str = field(default_factory=now_iso)
    bundle_id: str = ""
    kind: str = ""
    recipient: str = ""
    recipient_kind: str = ""
    event_id: str = ""
    referral_id: str = ""
    topic: str = ""
    partition: int = -1
    offset: int = -1
    attempt: int = 0
    detail: str = ""
    actor: str = ""  # the person who acted (operator console), for dlq-resent / dlq-discarded

    def encode(self) -> bytes:
        data = asdict(self)
        data["recipient"] = mask_cpr(self.recipient)
        data["detail"] = mask_cpr(self.detail)
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, value: bytes) -> AuditRecord:
        data = json.loads(value)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def headers_of(headers: Iterable[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """Kafka record headers as text."""
    return {k: (v or b"").decode(errors="replace") for k, v in (headers or [])}


def summarize(records: Iterable[AuditRecord]) -> list[dict[str, Any]]:
    """One row per (subscriber, message): when it was first delivered, how often it was sent,
    and the acknowledgement (code and time) — the answer to "who received what, and when".
    Acknowledgement lines name only the message id; they apply to its rows."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    acks: dict[str, AuditRecord] = {}
    ended: dict[tuple[str, str], str] = {}
    for r in records:
        if r.action in ACK_ACTIONS:
            acks[r.message_id] = r
            continue
        if r.action == "ack-unverified" or r.action.startswith("dlq-"):
            continue  # not a delivery: an operator's action on a dead letter
        row = rows.setdefault(
            (r.subscriber, r.message_id),
            {
                "subscriber": r.subscriber,
                "recipient_kind": r.recipient_kind,
                "recipient": r.recipient,
                "kind": r.kind,
                "message_id": r.message_id,
                "referral_id": r.referral_id,
                "delivered_at": None,
                "sends": 0,
                "ack": None,
                "ack_at": None,
                "status": "pending",
            },
        )
        if r.action in ("delivered", "resent", "replayed") or (
            r.action == "published" and row["sends"] == 0
        ):
            row["sends"] += 1
            row["delivered_at"] = row["delivered_at"] or r.at
            row["status"] = "published" if r.action == "published" else "delivered"
        elif r.action in ("dead-lettered", "unrouted"):
            ended[(r.subscriber, r.message_id)] = r.action
    for (subscriber, mid), row in rows.items():
        ack = acks.get(mid)
        if ack is not None:
            row["ack"], row["ack_at"] = ack.action.removeprefix("ack-"), ack.at
            row["status"] = "acknowledged" if ack.action == "ack-ok" else ack.action
        if (subscriber, mid) in ended:
            row["status"] = ended[(subscriber, mid)]
    return list(rows.values())


def select(
    trail: Iterable[tuple[bytes | None, AuditRecord]],
    *,
    referral_id: str | None = None,
    patient_key: str | None = None,
    message_id: str | None = None,
    subscriber: str | None = None,
) -> list[AuditRecord]:
    """The lines about the messages that match every given criterion, with all their
    acknowledgement lines (which carry only the message id)."""
    lines = list(trail)
    wanted = {
        r.message_id
        for key, r in lines
        if (not referral_id or r.referral_id == referral_id)
        and (not patient_key or (key or b"").decode() == patient_key)
        and (not message_id or r.message_id == message_id)
        and (not subscriber or r.subscriber == subscriber)
    }
    return [
        r
        for _, r in lines
        if r.message_id in wanted and (not subscriber or r.subscriber in (subscriber, ""))
    ]


def query(
    settings: Any,
    *,
    referral_id: str | None = None,
    cpr: str | None = None,
    message_id: str | None = None,
    subscriber: str | None = None,
) -> list[AuditRecord]:
    """Read ``audit.delivery`` and select (a CPR is turned into its patient key first)."""
    from stafet.ids import patient_key
    from stafet.kafka.client import client_config
    from stafet.kafka.reader import read_to_end
    from stafet.kafka.topics import AUDIT_DELIVERY

    key = patient_key(cpr, settings.patient_key_secret.get_secret_value()) if cpr else None
    trail = (
        (m.key(), AuditRecord.decode(m.value()))
        for m in read_to_end(client_config(settings), AUDIT_DELIVERY)
    )
    return select(
        trail,
        referral_id=referral_id,
        patient_key=key,
        message_id=message_id,
        subscriber=subscriber,
    )


def access_lines(
    settings: Any, *, cpr: str | None = None, user: str | None = None
) -> list[dict[str, Any]]:
    """Read ``audit.access`` (who viewed which console page about whom) and select: a patient's
    lines (its CPR turned into the patient key first) or one user's, oldest first."""
    from stafet.ids import patient_key
    from stafet.kafka.client import client_config
    from stafet.kafka.reader import read_to_end
    from stafet.kafka.topics import AUDIT_ACCESS

    key = patient_key(cpr, settings.patient_key_secret.get_secret_value()) if cpr else None
    lines = []
    for m in read_to_end(client_config(settings), AUDIT_ACCESS):
        try:
            line = json.loads(m.value() or b"{}")
        except ValueError:
            continue
        if key and line.get("patient_key") != key or user and line.get("user") != user:
            continue
        lines.append(line)
    return sorted(lines, key=lambda line: str(line.get("at", "")))
