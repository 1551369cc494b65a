"""What a record on a console-read topic is, whom it is about, and the text a page may show.

Every text a page shows from a record passes :func:`masked` first: each CPR number is replaced
by ``<cpr>``. The decoding is lenient: a record that does not decode is shown as (masked) bytes,
never an error page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from stafet.cpr import MASK, find_cprs, mask_cpr
from stafet.kafka.topics import (
    EVENTS_ENCOUNTER,
    EVENTS_REFERRAL,
    H_EVENT_CODE,
    H_KIND,
    H_MESSAGE_ID,
    H_ORIGIN,
    H_REASON,
    H_RECEIVED_AT,
    H_RECIPIENT,
    H_REFERRAL_ID,
    H_STAGE,
    OUT_MUNICIPALITY_PREFIX,
)


class Record(Protocol):
    """What the console reads of a Kafka record (confluent-kafka's ``Message`` is one)."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> list[tuple[str, bytes | None]] | None: ...
    def timestamp(self) -> tuple[int, int]: ...


NOTIFICATION_LABELS = {
    "STIN": "admission (inpatient)",
    "STAA": "admission (emergency)",
    "STOR": "start of leave",
    "SLOR": "end of leave",
    "SLHJ": "discharge",
    "MORS": "death",
}


def masked(text: str) -> str:
    """``text`` with every CPR number masked: the running-text pattern and every valid CPR
    standing as a token (what the suite's log scan looks for)."""
    for start, end, _ in reversed(find_cprs(text)):
        text = text[:start] + MASK + text[end:]
    return mask_cpr(text)


def notification_label(code: str) -> str:
    if code.startswith("RE_"):
        return f"correction of {NOTIFICATION_LABELS.get(code[3:], code[3:])}"
    if code.startswith("AN_"):
        return f"cancellation of {NOTIFICATION_LABELS.get(code[3:], code[3:])}"
    return NOTIFICATION_LABELS.get(code, code)


def iso_of_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def text_of(value: bytes | None) -> str:
    raw = value or b""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def headers_of(msg: Record) -> dict[str, str]:
    return {k: text_of(v) for k, v in (msg.headers() or []) if v is not None}


def timestamp_ms(msg: Record) -> int:
    kind, ms = msg.timestamp()
    return int(ms) if kind and ms > 0 else 0


def _municipality_of_recipient(recipient: str) -> str | None:
    system, _, code = recipient.rpartition("|")
    return code if system and len(code) == 4 and code.isdigit() else None


# --- decoding a record: what it is, whom it is about, the text to show -----------------------


@dataclass(frozen=True, slots=True)
class Decoded:
    body: str  # masked
    municipality: str | None = None
    sender: str = ""
    referral_id: str = ""
    what: str = ""


def decode_record(origin_topic: str, value: bytes | None, headers: dict[str, str]) -> Decoded:
    """A record as it came from ``origin_topic`` (the dead letter's origin, or its own topic)."""
    from stafet.schemas.codec import decode

    try:
        if origin_topic == EVENTS_ENCOUNTER:
            data = decode("encounter_event", value or b"")
            patient = data.get("patient") or {}
            sender = data.get("sender") or {}
            return Decoded(
                masked(json.dumps(data, ensure_ascii=False, indent=1)),
                patient.get("municipality_code") or None,
                sender.get("name") or sender.get("sor") or "",
                what=f"{data.get('hl7_trigger')} {notification_label(data['notification_code'])}",
            )
        if origin_topic == EVENTS_REFERRAL:
            data = decode("referral_event", value or b"")
            child = data.get("child") or {}
            referrer = data.get("referrer") or {}
            return Decoded(
                masked(json.dumps(data, ensure_ascii=False, indent=1)),
                child.get("municipality_code") or None,
                referrer.get("name") or "",
                data.get("referral_id") or "",
                f"referral {data.get('kind')}",
            )
    except Exception as exc:  # a record that does not decode is shown as bytes
        return Decoded(masked(text_of(value)), what=f"undecodable ({type(exc).__name__})")
    text = text_of(value)
    if text.startswith("MSH"):
        return _hl7(text)
    recipient = headers.get(H_RECIPIENT, "")
    code = (
        origin_topic.removeprefix(OUT_MUNICIPALITY_PREFIX)
        if origin_topic.startswith(OUT_MUNICIPALITY_PREFIX)
        else _municipality_of_recipient(recipient)
    )
    try:
        body = json.dumps(json.loads(text), ensure_ascii=False, indent=1)
    except ValueError:
        body = text
    return Decoded(
        masked(body),
        code,
        referral_id=headers.get(H_REFERRAL_ID, ""),
        what=headers.get(H_KIND, "") or headers.get(H_EVENT_CODE, ""),
    )


def _hl7(text: str) -> Decoded:
    segments = {
        s.split("|", 1)[0]: s.split("|")
        for s in reversed(text.replace("\n", "\r").split("\r"))
        if s
    }
    msh, pid = segments.get("MSH", []), segments.get("PID", [])
    sender = msh[3].split("^")[0] if len(msh) > 3 else ""
    code = None
    if len(pid) > 11:
        parts = pid[11].split("~")[0].split("^")
        code = parts[8] if len(parts) > 8 and parts[8].isdigit() else None
    trigger = msh[8].replace("^", " ") if len(msh) > 8 else ""
    rf1 = segments.get("RF1", [])
    return Decoded(
        masked(text.replace("\r", "\n")),
        code,
        sender,
        rf1[6].split("^")[0] if len(rf1) > 6 else "",
        trigger,
    )


# --- dead letters -------------------------------------------------------------------------


@dataclass
class DeadLetter:
    topic: str
    partition: int
    offset: int
    ts_ms: int
    key: str
    reason: str
    stage: str
    origin: str
    received_at: str
    message_id: str
    decoded: Decoded
    status: str = "open"  # open | resent | discarded
    closed_by: str = ""
    closed_at: str = ""
    closed_detail: str = ""

    @property
    def position(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"

    @property
    def at(self) -> str:
        return iso_of_ms(self.ts_ms) if self.ts_ms else self.received_at

    @property
    def municipality(self) -> str | None:
        return self.decoded.municipality

    @property
    def resendable(self) -> bool:
        from stafet.kafka.dead_letters import RESENDABLE

        return self.topic in RESENDABLE


def dead_letter_of(msg: Record) -> DeadLetter:
    headers = headers_of(msg)
    origin = headers.get(H_ORIGIN, "")
    origin_topic = origin.rsplit("/", 2)[0] if origin.count("/") >= 2 else ""
    if not origin_topic and msg.topic() == "dlq.referral":
        origin_topic = EVENTS_REFERRAL
    if not origin_topic and msg.topic() in ("dlq.mllp", "dlq.normalize"):
        origin_topic = "ingest.hl7v2"
    return DeadLetter(
        topic=msg.topic() or "",
        partition=msg.partition() or 0,
        offset=msg.offset() or 0,
        ts_ms=timestamp_ms(msg),
        key=text_of(msg.key()),
        reason=masked(headers.get(H_REASON, "")),
        stage=headers.get(H_STAGE, ""),
        origin=origin,
        received_at=headers.get(H_RECEIVED_AT, ""),
        message_id=headers.get(H_MESSAGE_ID, ""),
        decoded=decode_record(origin_topic, msg.value(), headers),
    )


# --- a child's trail ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrailRow:
    """One line of a child's trail."""

    at: str
    kind: str  # event | message | delivery | dead letter | operator
    what: str
    who: str = ""
    detail: str = ""
    message_id: str = ""
    topic: str = ""
