"""What the console shows, read from Kafka and from the processes' health and metrics endpoints.

Everything is read, never joined as a consumer group and never committed: the dead-letter
topics, ``audit.delivery`` and ``alerts.operator`` whole (``read_committed``), a municipality's
own topic for its residents, and for one child's trail the records keyed by its patient key on
the event, output and dead-letter topics. A snapshot is reused for a few seconds so that a page
full of links does not read the topics again; an action (resend, discard) drops it.

Every text a page shows from a record passes :func:`masked` first: each CPR number is replaced
by ``<cpr>``. This first step reads whole topics: fine for the dead letters and the audit trail
of a region's day, not for a year of ``events.*`` (an index by patient key is the next step).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
from confluent_kafka import KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from prometheus_client.parser import text_string_to_metric_families

from stafet.audit import AuditRecord, now_iso
from stafet.config import Settings
from stafet.cpr import MASK, find_cprs, mask_cpr
from stafet.errors import StafetError
from stafet.kafka.client import client_config
from stafet.kafka.reader import read_to_end
from stafet.kafka.topics import (
    ALERTS_OPERATOR,
    AUDIT_DELIVERY,
    DLQ_TOPICS,
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
    OUT_LETTER,
    OUT_MUNICIPALITY_PREFIX,
    OUT_REFERRER,
    all_topics,
    municipality_topic,
)
from stafet.logging import get_logger

log = get_logger(__name__)
T = TypeVar("T")

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


def _text(value: bytes | None) -> str:
    raw = value or b""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _headers(msg: Message) -> dict[str, str]:
    return {k: _text(v) for k, v in (msg.headers() or []) if v is not None}


def _ts(msg: Message) -> int:
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
        return Decoded(masked(_text(value)), what=f"undecodable ({type(exc).__name__})")
    text = _text(value)
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


# --- dead letters, audit lines, alerts -------------------------------------------------------


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


def dead_letter_of(msg: Message) -> DeadLetter:
    headers = _headers(msg)
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
        ts_ms=_ts(msg),
        key=_text(msg.key()),
        reason=masked(headers.get(H_REASON, "")),
        stage=headers.get(H_STAGE, ""),
        origin=origin,
        received_at=headers.get(H_RECEIVED_AT, ""),
        message_id=headers.get(H_MESSAGE_ID, ""),
        decoded=decode_record(origin_topic, msg.value(), headers),
    )


@dataclass(frozen=True, slots=True)
class AuditLine:
    record: AuditRecord
    key: str


@dataclass
class Snapshot:
    taken: float
    dead_letters: list[DeadLetter]
    audit: list[AuditLine]
    alerts: list[dict[str, Any]]


# --- a child's trail --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrailRow:
    at: str
    kind: str  # event | message | delivery | dead letter | operator
    what: str
    who: str = ""
    detail: str = ""
    message_id: str = ""
    topic: str = ""


def _learn(about: dict[str, Any], patient: dict[str, Any]) -> None:
    """What the events say about the child (the latest that says anything): no CPR, no name."""
    for field_name, source in (("birth_date", "birth_date"), ("municipality", "municipality_code")):
        if patient.get(source):
            about[field_name] = patient[source]


# --- the Flow page ----------------------------------------------------------------------------


@dataclass
class ProcessState:
    name: str
    url: str
    up: bool
    detail: str
    ready: bool | None = None
    series: list[tuple[str, str, float, float | None]] = field(default_factory=list)


class ConsoleData:
    """The console's window on Kafka and the processes (one per console process)."""

    SNAPSHOT_TTL_S = 3.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config = client_config(settings)
        self._snapshot: Snapshot | None = None
        self._lock = asyncio.Lock()
        self._residents: dict[str, tuple[float, frozenset[str]]] = {}
        self._rates: dict[tuple[str, str], tuple[float, float]] = {}

    # -- reading ---------------------------------------------------------------------------

    def _read(self, topic: str) -> list[Message]:
        try:
            return list(read_to_end(self.config, topic, timeout_s=20.0))
        except StafetError as exc:
            log.warning("console.read_failed", topic=topic, error=str(exc))
            return []

    async def _read_many(self, topics: Iterable[str]) -> dict[str, list[Message]]:
        topics = list(dict.fromkeys(topics))
        results = await asyncio.gather(*(asyncio.to_thread(self._read, t) for t in topics))
        return dict(zip(topics, results, strict=True))

    async def snapshot(self) -> Snapshot:
        async with self._lock:
            if self._snapshot and time.monotonic() - self._snapshot.taken < self.SNAPSHOT_TTL_S:
                return self._snapshot
            read = await self._read_many([*DLQ_TOPICS, AUDIT_DELIVERY, ALERTS_OPERATOR])
            audit = [
                AuditLine(AuditRecord.decode(m.value() or b"{}"), _text(m.key()))
                for m in read[AUDIT_DELIVERY]
            ]
            dead = [dead_letter_of(m) for t in DLQ_TOPICS for m in read[t]]
            closed = {
                line.record.message_id: line.record
                for line in audit
                if line.record.action in ("dlq-resent", "dlq-discarded")
            }
            for dl in dead:
                if (r := closed.get(dl.position)) is not None:
                    dl.status = "resent" if r.action == "dlq-resent" else "discarded"
                    dl.closed_by, dl.closed_at, dl.closed_detail = r.actor, r.at, r.detail
            dead.sort(key=lambda d: (d.ts_ms, d.offset), reverse=True)
            alerts = []
            for m in read[ALERTS_OPERATOR]:
                try:
                    body = json.loads(m.value() or b"{}")
                except ValueError:
                    body = {"reason": _text(m.value())}
                alerts.append({k: masked(str(v)) for k, v in body.items()})
            alerts.sort(key=lambda a: a.get("at", ""), reverse=True)
            self._snapshot = Snapshot(time.monotonic(), dead, audit, alerts)
            return self._snapshot

    def invalidate(self) -> None:
        self._snapshot = None

    async def residents(self, code: str) -> frozenset[str]:
        """The patient keys on ``out.municipality.<code>`` and of its dead letters."""
        cached = self._residents.get(code)
        if cached and time.monotonic() - cached[0] < self.SNAPSHOT_TTL_S:
            return cached[1]
        messages = (await self._read_many([municipality_topic(code)]))[municipality_topic(code)]
        snap = await self.snapshot()
        keys = {_text(m.key()) for m in messages} | {
            d.key for d in snap.dead_letters if d.municipality == code and d.key
        }
        result = frozenset(k for k in keys if k)
        self._residents[code] = (time.monotonic(), result)
        return result

    async def topic_counts(self, topics: list[str] | None = None) -> dict[str, int]:
        """Records per topic: the sum over its partitions of end − start offsets (transaction
        markers count as offsets too, so a transactional topic shows a little more)."""
        wanted = topics or all_topics()

        def count() -> dict[str, int]:
            admin = AdminClient({**self.config, "log_level": 2})
            metadata = admin.list_topics(timeout=10)
            tps = [
                TopicPartition(t, p)
                for t in wanted
                if t in metadata.topics
                for p in metadata.topics[t].partitions
            ]
            if not tps:
                return {}
            ends = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}, request_timeout=10)
            starts = admin.list_offsets(
                {tp: OffsetSpec.earliest() for tp in tps}, request_timeout=10
            )
            out: dict[str, int] = dict.fromkeys((t for t in wanted if t in metadata.topics), 0)
            for tp in tps:
                out[tp.topic] += ends[tp].result().offset - starts[tp].result().offset
            return out

        try:
            return await asyncio.to_thread(count)
        except KafkaException as exc:
            log.warning("console.offsets_failed", error=str(exc))
            return {}

    # -- one child -------------------------------------------------------------------------

    async def trail(self, patient_key: str) -> tuple[list[TrailRow], dict[str, Any]]:
        """Every event, message, delivery line and dead letter about one patient, in the order
        stafet processed them; and what the events say about the child (masked)."""
        events = await self._read_many([EVENTS_ENCOUNTER, EVENTS_REFERRAL])
        from stafet.schemas.codec import decode

        rows: list[TrailRow] = []
        about: dict[str, Any] = {}
        codes: set[str] = set()
        for m in events[EVENTS_ENCOUNTER]:
            if _text(m.key()) != patient_key:
                continue
            try:
                e = decode("encounter_event", m.value() or b"")
            except Exception:  # noqa: S112 - not ours to show
                continue
            p = e.get("patient") or {}
            codes.add(p.get("municipality_code") or "")
            _learn(about, p)
            rows.append(
                TrailRow(
                    iso_of_ms(_ts(m)),
                    "event",
                    f"{e['hl7_trigger']}: {notification_label(e['notification_code'])}",
                    (e.get("sender") or {}).get("name") or "",
                    masked(
                        f"event time {e.get('event_time')}; visit "
                        f"{(e.get('encounter') or {}).get('visit_number')}"
                    ),
                    topic=EVENTS_ENCOUNTER,
                )
            )
        for m in events[EVENTS_REFERRAL]:
            if _text(m.key()) != patient_key:
                continue
            try:
                e = decode("referral_event", m.value() or b"")
            except Exception:  # noqa: S112
                continue
            if e.get("kind") == "tick":
                continue
            c = e.get("child") or {}
            codes.add(c.get("municipality_code") or "")
            _learn(about, c)
            decision = e.get("decision") or {}
            what = f"referral {e['kind']}" + (
                f": {decision.get('status')}" if decision.get("status") else ""
            )
            rows.append(
                TrailRow(
                    iso_of_ms(_ts(m)),
                    "event",
                    what,
                    (e.get("referrer") or {}).get("name") or "",
                    masked(f"referral {e.get('referral_id')}; event time {e.get('event_time')}"),
                    topic=EVENTS_REFERRAL,
                )
            )
        out_topics = [municipality_topic(c) for c in sorted(codes) if c] + [
            OUT_REFERRER,
            OUT_LETTER,
        ]
        outs = await self._read_many(out_topics)
        for topic, messages in outs.items():
            for m in messages:
                if _text(m.key()) != patient_key:
                    continue
                h = _headers(m)
                kind = h.get(H_KIND, "")
                code = h.get(H_EVENT_CODE, "")
                rows.append(
                    TrailRow(
                        iso_of_ms(_ts(m)),
                        "message",
                        f"{kind or 'message'}" + (f" {code}" if code else ""),
                        masked(h.get("stafet.recipient_kind", "") or topic),
                        f"on {topic}",
                        h.get(H_MESSAGE_ID, ""),
                        topic,
                    )
                )
        snap = await self.snapshot()
        for line in snap.audit:
            if line.key != patient_key:
                continue
            r = line.record
            kind = "operator" if r.action.startswith("dlq-") else "delivery"
            rows.append(
                TrailRow(
                    r.at,
                    kind,
                    r.action,
                    r.actor if kind == "operator" else r.subscriber,
                    masked(r.detail),
                    r.message_id,
                    r.topic,
                )
            )
        for d in snap.dead_letters:
            if d.key == patient_key:
                rows.append(
                    TrailRow(d.at, "dead letter", f"dead letter on {d.topic}", d.stage, d.reason)
                )
        rows.sort(key=lambda r: r.at)
        return rows, about

    # -- the processes ---------------------------------------------------------------------

    def processes(self) -> list[tuple[str, str]]:
        spec = self.settings.console_processes.strip()
        if spec:
            pairs = [p.split("=", 1) for p in spec.split(",") if "=" in p]
            return [(n.strip(), u.strip().rstrip("/")) for n, u in pairs]
        from stafet.stack import health_ports

        host = self.settings.health_host
        return [
            (name, f"http://{host}:{port}")
            for name, port in health_ports(self.settings).items()
            if port > 0
        ]

    async def probe(self) -> list[ProcessState]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session:
            return list(
                await asyncio.gather(*(self._probe(session, n, u) for n, u in self.processes()))
            )

    async def _probe(self, session: aiohttp.ClientSession, name: str, url: str) -> ProcessState:
        try:
            async with session.get(f"{url}/healthz") as answer:
                up, detail = answer.status == 200, f"/healthz {answer.status}"
            async with session.get(f"{url}/readyz") as answer:
                ready = answer.status == 200
            async with session.get(f"{url}/metrics") as answer:
                metrics = await answer.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return ProcessState(name, url, False, f"unreachable ({type(exc).__name__})")
        state = ProcessState(name, url, up, detail, ready)
        now = time.monotonic()
        for family in text_string_to_metric_families(metrics):
            for sample in family.samples:
                if not sample.name.startswith("stafet_") or sample.name.endswith(
                    ("_bucket", "_created", "_sum", "_count")
                ):
                    continue
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                rate = None
                if sample.name.endswith("_total"):
                    previous = self._rates.get((name, sample.name + labels))
                    if previous and now > previous[0]:
                        rate = (sample.value - previous[1]) / (now - previous[0])
                    self._rates[(name, sample.name + labels)] = (now, sample.value)
                state.series.append((sample.name, labels, sample.value, rate))
        return state

    # -- actions ---------------------------------------------------------------------------

    async def resend(self, dead: DeadLetter, actor: str) -> str:
        from stafet.kafka.dead_letters import resend

        target = await asyncio.to_thread(
            resend, self.settings, dead.topic, dead.partition, dead.offset
        )
        await self._audit(dead, "dlq-resent", actor, f"sent back to {target}")
        return target

    async def discard(self, dead: DeadLetter, actor: str, reason: str) -> None:
        await self._audit(dead, "dlq-discarded", actor, masked(reason)[:1000])

    async def _audit(self, dead: DeadLetter, action: str, actor: str, detail: str) -> None:
        from stafet.kafka.producer import DurableProducer

        record = AuditRecord(
            action=action,  # type: ignore[arg-type]
            subscriber="",
            message_id=dead.position,
            at=now_iso(),
            kind=dead.stage,
            referral_id=dead.decoded.referral_id,
            topic=dead.topic,
            partition=dead.partition,
            offset=dead.offset,
            detail=detail,
            actor=actor,
        )
        producer = DurableProducer(self.settings, timeout_s=10.0)
        try:
            await producer.send(AUDIT_DELIVERY, record.encode(), key=dead.key.encode() or None)
        finally:
            await asyncio.to_thread(producer.close)
        self.invalidate()
