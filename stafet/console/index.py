"""The console's index of what Kafka holds, by patient key — kept up to date record by record.

Built once from the beginning of the topics the pages show (the event topics, every ``out.*``
topic, the dead-letter topics, ``audit.delivery``, ``alerts.operator``) and then followed, so a
page never reads a whole topic: a child's trail is a dictionary lookup, a subscriber's delivery
state a set of running counters. What it keeps is small and already masked: a trail line per
record (no message body), the audit lines (recipients and details masked at write time), and
the dead letters whole (a day's few, with their masked text).

:meth:`ConsoleIndex.apply` is called from one thread (the follower); every query takes the lock
and returns copies, so a page may run in another.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from stafet.audit import ACK_ACTIONS, AuditRecord
from stafet.console.records import (
    DeadLetter,
    Record,
    TrailRow,
    dead_letter_of,
    headers_of,
    iso_of_ms,
    masked,
    notification_label,
    text_of,
    timestamp_ms,
)
from stafet.kafka.topics import (
    ALERTS_OPERATOR,
    AUDIT_DELIVERY,
    DLQ_TOPICS,
    EVENTS_ENCOUNTER,
    EVENTS_REFERRAL,
    H_EVENT_CODE,
    H_KIND,
    H_MESSAGE_ID,
    OUT_LETTER,
    OUT_MUNICIPALITY_PREFIX,
    OUT_REFERRER,
)

#: the alerts a page may show (the newest)
ALERTS_KEPT = 500
#: within one millisecond (an output carries its input's timestamp): the cause first
KIND_ORDER = {"event": 0, "message": 1, "dead letter": 2, "delivery": 3, "operator": 4}


def followed(topic: str) -> bool:
    """The topics the index follows."""
    return (
        topic in (EVENTS_ENCOUNTER, EVENTS_REFERRAL, OUT_REFERRER, OUT_LETTER)
        or topic in DLQ_TOPICS
        or topic in (AUDIT_DELIVERY, ALERTS_OPERATOR)
        or topic.startswith(OUT_MUNICIPALITY_PREFIX)
    )


@dataclass(frozen=True, slots=True)
class AuditLine:
    record: AuditRecord
    key: str


@dataclass
class SubscriberState:
    """One subscriber's delivery counters, from its audit lines as they come."""

    topics: set[str] = field(default_factory=set)
    kinds: set[str] = field(default_factory=set)
    sent: int = 0
    published: int = 0
    retries: int = 0
    resent: int = 0
    replayed: int = 0
    dead_lettered: int = 0
    acked: int = 0
    pending: set[str] = field(default_factory=set)  # delivered, not acknowledged
    last_success: str = ""
    last_failure: str = ""
    failure_detail: str = ""

    def copy(self) -> SubscriberState:
        return SubscriberState(
            **{
                **self.__dict__,
                "topics": set(self.topics),
                "kinds": set(self.kinds),
                "pending": set(self.pending),
            }
        )


@dataclass
class Trail:
    """What the index keeps of one patient: texts as read (masked when a page asks)."""

    rows: list[TrailRow] = field(default_factory=list)  # events, messages, dead letters
    audit: list[AuditRecord] = field(default_factory=list)
    about: dict[str, Any] = field(default_factory=dict)  # birth date, municipality: no CPR


_intern = sys.intern


class ConsoleIndex:
    """Patient key → trail; municipality → residents; the dead letters; subscriber counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._trails: dict[str, Trail] = defaultdict(Trail)
        self._residents: dict[str, set[str]] = defaultdict(set)
        self._by_referral: dict[str, set[str]] = defaultdict(set)  # referral id → patient keys
        self._by_message: dict[str, str] = {}  # message id → patient key
        self._dead: dict[str, DeadLetter] = {}  # position → dead letter
        self._closed: dict[str, AuditRecord] = {}  # position → its resend / discard line
        self._alerts: deque[dict[str, str]] = deque(maxlen=ALERTS_KEPT)
        self._subscribers: dict[str, SubscriberState] = defaultdict(SubscriberState)
        self._pending_owner: dict[str, set[str]] = defaultdict(set)  # message id → subscribers
        self._acked: set[str] = set()
        self.records = 0
        self._lines = 0  # trail rows and audit lines held (counted, not summed per page)

    # -- taking records in (the follower's thread) ------------------------------------------

    def apply(self, msg: Record) -> None:
        topic = msg.topic() or ""
        with self._lock:
            self.records += 1
            if topic == AUDIT_DELIVERY:
                self._audit(_compact(msg.value()), _intern(text_of(msg.key())))
            elif topic in DLQ_TOPICS:
                self._dead_letter(dead_letter_of(msg))
            elif topic == ALERTS_OPERATOR:
                self._alert(msg.value())
            elif topic == EVENTS_ENCOUNTER:
                self._encounter(msg)
            elif topic == EVENTS_REFERRAL:
                self._referral(msg)
            elif topic.startswith("out."):
                self._output(topic, msg)

    def _line(self, lines: list[Any], line: Any) -> None:
        lines.append(line)
        self._lines += 1

    def _encounter(self, msg: Record) -> None:
        from stafet.schemas.codec import decode

        key = _intern(text_of(msg.key()))
        e = decode("encounter_event", msg.value() or b"")
        trail = self._trails[key]
        _learn(trail.about, e.get("patient") or {})
        self._line(
            trail.rows,
            TrailRow(
                iso_of_ms(timestamp_ms(msg)),
                "event",
                _intern(f"{e['hl7_trigger']}: {notification_label(e['notification_code'])}"),
                _intern((e.get("sender") or {}).get("name") or ""),
                f"event time {e.get('event_time')}; visit "
                f"{(e.get('encounter') or {}).get('visit_number')}",
                topic=EVENTS_ENCOUNTER,
            ),
        )

    def _referral(self, msg: Record) -> None:
        from stafet.schemas.codec import decode

        e = decode("referral_event", msg.value() or b"")
        if e.get("kind") == "tick":  # the deadline timer's own records
            return
        key = _intern(text_of(msg.key()))
        trail = self._trails[key]
        _learn(trail.about, e.get("child") or {})
        if e.get("referral_id"):
            self._by_referral[e["referral_id"]].add(key)
        decision = e.get("decision") or {}
        what = f"referral {e['kind']}" + (
            f": {decision.get('status')}" if decision.get("status") else ""
        )
        self._line(
            trail.rows,
            TrailRow(
                iso_of_ms(timestamp_ms(msg)),
                "event",
                _intern(what),
                _intern((e.get("referrer") or {}).get("name") or ""),
                f"referral {e.get('referral_id')}; event time {e.get('event_time')}",
                topic=EVENTS_REFERRAL,
            ),
        )

    def _output(self, topic: str, msg: Record) -> None:
        key = _intern(text_of(msg.key()))
        h = headers_of(msg)
        kind, code = h.get(H_KIND, ""), h.get(H_EVENT_CODE, "")
        message_id = _intern(h.get(H_MESSAGE_ID, ""))
        if topic.startswith(OUT_MUNICIPALITY_PREFIX):
            self._residents[topic.removeprefix(OUT_MUNICIPALITY_PREFIX)].add(key)
        if message_id:
            self._by_message[message_id] = key
        self._line(
            self._trails[key].rows,
            TrailRow(
                iso_of_ms(timestamp_ms(msg)),
                "message",
                _intern(f"{kind or 'message'}" + (f" {code}" if code else "")),
                _intern(h.get("stafet.recipient_kind", "") or topic),
                _intern(f"on {topic}"),
                message_id,
                _intern(topic),
            ),
        )

    def _audit(self, r: AuditRecord, key: str) -> None:
        if not _is_patient_key(key):  # an acknowledgement of a message we never saw pending
            key = self._by_message.get(r.message_id, "")
        if key:
            if r.message_id and not r.action.startswith("dlq-"):
                self._by_message.setdefault(r.message_id, key)
            if r.referral_id:
                self._by_referral[r.referral_id].add(key)
            self._line(self._trails[key].audit, r)
        if r.action in ("dlq-resent", "dlq-discarded"):
            self._closed[r.message_id] = r
            if (dead := self._dead.get(r.message_id)) is not None:
                _close(dead, r)
            return
        self._count(r)

    def _count(self, r: AuditRecord) -> None:
        """A subscriber's counters (what the Subscribers page shows)."""
        if r.action in ACK_ACTIONS:
            self._acked.add(r.message_id)
            for sid in self._pending_owner.pop(r.message_id, set()):
                s = self._subscribers[sid]
                if r.message_id in s.pending:
                    s.pending.discard(r.message_id)
                    s.acked += 1
            return
        if not r.subscriber:
            return
        s = self._subscribers[r.subscriber]
        s.topics.add(_intern(r.topic))
        if r.recipient_kind:
            s.kinds.add(_intern(r.recipient_kind))
        if r.action in ("delivered", "published", "resent", "replayed"):
            s.last_success = max(s.last_success, r.at)
        if r.action == "delivered":
            s.sent += 1
            if r.message_id not in self._acked:
                s.pending.add(r.message_id)
                self._pending_owner[r.message_id].add(r.subscriber)
        elif r.action == "published":
            s.published += 1
        elif r.action == "attempt-failed":
            s.retries += 1
            if r.at >= s.last_failure:
                s.last_failure, s.failure_detail = r.at, masked(r.detail)[:200]
        elif r.action in ("resent", "replayed", "dead-lettered"):
            setattr(s, r.action.replace("-", "_"), getattr(s, r.action.replace("-", "_")) + 1)
            if r.action == "dead-lettered":
                s.pending.discard(r.message_id)

    def _dead_letter(self, dead: DeadLetter) -> None:
        if (closed := self._closed.get(dead.position)) is not None:
            _close(dead, closed)
        self._dead[dead.position] = dead
        if dead.key:
            if dead.municipality:
                self._residents[dead.municipality].add(dead.key)
            if dead.decoded.referral_id:
                self._by_referral[dead.decoded.referral_id].add(dead.key)
            self._line(
                self._trails[dead.key].rows,
                TrailRow(
                    dead.at, "dead letter", f"dead letter on {dead.topic}", dead.stage, dead.reason
                ),
            )

    def _alert(self, value: bytes | None) -> None:
        try:
            body = json.loads(value or b"{}")
        except ValueError:
            body = {"reason": text_of(value)}
        if not isinstance(body, dict):
            body = {"reason": str(body)}
        self._alerts.append({k: masked(str(v)) for k, v in body.items()})

    # -- queries (any thread) ---------------------------------------------------------------

    def residents(self, code: str) -> frozenset[str]:
        """A municipality's residents: the patient keys on its own topic and of the dead
        letters naming it."""
        with self._lock:
            return frozenset(k for k in self._residents.get(code, ()) if k)

    def trail(self, key: str) -> tuple[list[TrailRow], dict[str, Any]]:
        """Every event, message, delivery line, dead letter and operator action about one
        patient, in time order; and what the events say about the child."""
        with self._lock:
            trail = self._trails.get(key)
            if trail is None:
                return [], {}
            rows, audit, about = list(trail.rows), list(trail.audit), dict(trail.about)
        shown = [replace(r, who=masked(r.who), detail=masked(r.detail)) for r in rows]
        for r in audit:
            operator = r.action.startswith("dlq-")
            shown.append(
                TrailRow(
                    r.at,
                    "operator" if operator else "delivery",
                    r.action,
                    r.actor if operator else r.subscriber,
                    masked(r.detail),
                    r.message_id,
                    r.topic,
                )
            )
        shown.sort(key=lambda r: (r.at, KIND_ORDER.get(r.kind, 9)))
        return shown, about

    def dead_letters(self) -> list[DeadLetter]:
        """Newest first."""
        with self._lock:
            dead = list(self._dead.values())
        dead.sort(key=lambda d: (d.ts_ms, d.offset), reverse=True)
        return dead

    def dead_letter(self, topic: str, partition: int, offset: int) -> DeadLetter | None:
        with self._lock:
            return self._dead.get(f"{topic}/{partition}/{offset}")

    def alerts(self, newest: int = 15) -> list[dict[str, str]]:
        with self._lock:
            alerts = list(self._alerts)
        alerts.sort(key=lambda a: a.get("at", ""), reverse=True)
        return alerts[:newest]

    def audit_lines(
        self,
        *,
        referral_id: str = "",
        message_id: str = "",
        key: str = "",
        since: str = "",
        until: str = "",
    ) -> list[AuditLine]:
        """The audit lines a search asks for, filtered by each field given. By an id or a
        patient the patients are looked up (no scan); by dates alone (``YYYY-MM-DD``, both
        ends included) every line is looked at — a bounded page of them is the caller's."""

        def wanted(r: AuditRecord) -> bool:
            return (
                (not referral_id or r.referral_id == referral_id)
                and (not message_id or r.message_id == message_id)
                and (not since or r.at[:10] >= since)
                and (not until or r.at[:10] <= until)
            )

        with self._lock:
            if key:
                keys: Iterable[str] = [key]
            elif referral_id:
                keys = list(self._by_referral.get(referral_id, ()))
            elif message_id:
                keys = [self._by_message[message_id]] if message_id in self._by_message else []
            elif since or until:
                keys = list(self._trails)
            else:
                keys = []
            return [
                AuditLine(r, k)
                for k in keys
                if k in self._trails
                for r in self._trails[k].audit
                if wanted(r)
            ]

    def subscribers(self) -> dict[str, SubscriberState]:
        with self._lock:
            return {sid: s.copy() for sid, s in self._subscribers.items()}

    def size(self) -> dict[str, int]:
        """What the index holds (for the Flow page and the benchmark)."""
        with self._lock:
            return {
                "records": self.records,
                "patients": len(self._trails),
                "trail_rows": self._lines,
                "dead_letters": len(self._dead),
                "subscribers": len(self._subscribers),
            }


def _learn(about: dict[str, Any], patient: dict[str, Any]) -> None:
    """What the events say about the child (the latest that says anything): no CPR, no name."""
    for field_name, source in (("birth_date", "birth_date"), ("municipality", "municipality_code")):
        if patient.get(source):
            about[field_name] = patient[source]


#: the audit fields a page shows; the rest (event and bundle ids, positions) is not kept
_KEPT = ("action", "subscriber", "message_id", "at", "kind", "recipient", "recipient_kind")
_KEPT_TOO = ("referral_id", "topic", "attempt", "detail", "actor")


def _compact(value: bytes | None) -> AuditRecord:
    """An audit line as the index keeps it: the repeated texts shared, the unshown dropped."""
    data = json.loads(value or b"{}")
    fields = {k: data[k] for k in (*_KEPT, *_KEPT_TOO) if k in data}
    for name in (
        "action",
        "subscriber",
        "message_id",
        "kind",
        "recipient",
        "recipient_kind",
        "topic",
        "detail",
    ):
        if isinstance(fields.get(name), str):
            fields[name] = _intern(fields[name])
    return AuditRecord(**fields)


def _close(dead: DeadLetter, r: AuditRecord) -> None:
    dead.status = "resent" if r.action == "dlq-resent" else "discarded"
    dead.closed_by, dead.closed_at, dead.closed_detail = r.actor, r.at, r.detail


def _is_patient_key(key: str) -> bool:
    return len(key) == 32 and all(c in "0123456789abcdef" for c in key)
