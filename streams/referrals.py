"""referrals: canonical referral events → state → one message per recipient.

The state (per patient key, RocksDB with a changelog topic, committed in the same transaction
as the messages) holds each referral's state (:mod:`stafet.streams.referral_state`) and the
decisions parked because their referral has not arrived yet.

Deadlines are records, not a scan: whenever a referral's next wake-up time changes (the 30-day
assessment guarantee, a parked decision's expiry), this step writes it to ``timers.referral``
(compacted, keyed ``<patient key>|<referral id>``; a tombstone clears it) in the same
transaction. The worker's scheduler (:mod:`stafet.streams.timers`) reads that topic and, when a
time has come, puts a ``tick`` event on ``events.referral`` under the patient's key — so only
the partition that owns the state changes it, and the timers survive restarts.

Outputs: CareCommunication JSON to ``out.municipality.<code>`` (municipality, PPR, family
department) and ``out.referrer``; PDF letters to ``out.letter`` (guardians, referrers without a
FHIR endpoint).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from stafet.addressee import addressee_key, recipient_header
from stafet.config import Settings
from stafet.directory import Unaddressable, directory_file
from stafet.ids import stable_uuid
from stafet.kafka.topics import (
    DLQ_REFERRAL,
    EVENTS_REFERRAL,
    H_BUNDLE_ID,
    H_EVENT_ID,
    H_MESSAGE_ID,
    H_RECEIVED_AT,
    H_RECIPIENT,
    H_RECIPIENT_EAN,
    H_REDELIVER,
    INDEX_REFERRAL,
    OUT_LETTER,
    OUT_REFERRER,
    TIMERS_REFERRAL,
    index_key,
    municipality_topic,
)
from stafet.logging import get_logger
from stafet.medcom.carecommunication import (
    build_care_communication,
    delivery_channel,
    letter_text,
    message_ids,
    validate_care_communication,
)
from stafet.medcom.letters import render_letter_pdf
from stafet.model import Contact, Party, PatientInfo, ReferralEvent
from stafet.schemas.codec import decode, encode
from stafet.streams.records import (
    Inbound,
    Output,
    State,
    dead_letter,
    dead_letter_value,
    operator_alert,
)
from stafet.streams.referral_state import (
    Applied,
    Delivery,
    Park,
    Refuse,
    apply,
    deadline_at,
    municipality_party,
    seen,
)
from stafet.systems import SOR_SYSTEM

log = get_logger(__name__)
MUNICIPAL = ("municipality", "ppr", "family-department")
#: kinds whose state change is applied even when a message cannot be built: a cancellation must
#: cancel (and stop the deadline timer) whatever happens to one letter about it
ALWAYS_APPLIED = ("modified", "cancelled", "contact")
CLOSED = ("rejected", "expired", "cancelled", "assessed")


def _now() -> datetime:
    return datetime.now(UTC)


class ReferralStep:
    """The referral step with its settings (deadline, parking time, the unit's contact)."""

    def __init__(self, settings: Settings) -> None:
        self.deadline = timedelta(days=settings.referral_decision_deadline_days)
        self.max_parked = timedelta(seconds=settings.pending_decision_max_age_s)
        self.keep_closed = timedelta(days=settings.state_retention_days)
        self.directory = directory_file(settings.directory_file)
        self.unit_contact = Contact(
            name=settings.unit_contact_name, phone=settings.unit_contact_phone
        )
        self.addressee_key = addressee_key(settings)

    # --- one record ---------------------------------------------------------------------

    def __call__(self, record: Inbound, state: State) -> list[Output]:
        try:
            first = ReferralEvent.from_record(decode("referral_event", record.value or b""))
        except Exception as exc:
            return [dead_letter(DLQ_REFERRAL, "referrals", record, f"undecodable: {exc}")]
        book: dict[str, Any] = dict(state.get("book") or {})
        before, known = self.wakeups(book), self.statuses(book)
        outputs, book = self.handle(
            first,
            book,
            record.headers.get(H_RECEIVED_AT),
            redeliver=record.headers.get(H_REDELIVER),
        )
        book = self.prune(book)
        outputs += self.timer_changes(first.patient_key, before, self.wakeups(book))
        outputs += self.index_changes(first.patient_key, known, self.statuses(book))
        if book.get("referrals") or book.get("pending"):
            state.set("book", book)
        else:
            state.delete("book")
        return outputs

    def handle(
        self,
        first: ReferralEvent,
        book: dict[str, Any],
        received_at: bytes | None,
        redeliver: bytes | None = None,
    ) -> tuple[list[Output], dict[str, Any]]:
        """Apply one event (and any decisions it releases) to the patient's referrals.

        ``redeliver`` (the header of a per-recipient dead letter sent back, once its cause is
        fixed) asks for that one message of an event already applied, built as it would have
        been then."""
        states: dict[str, Any] = dict(book.get("referrals", {}))
        pending: dict[str, list[dict[str, Any]]] = dict(book.get("pending", {}))
        outputs: list[Output] = []
        queue = [first]
        while queue:
            event = queue.pop(0)
            state = states.get(event.referral_id)
            if seen(state, event.event_id):
                if redeliver and event is first and state is not None:
                    outputs += self._redeliver(event, state, redeliver)
                else:
                    log.debug("referral.duplicate_skipped", event_id=event.event_id)
                continue
            if event.kind == "tick":
                outputs += self._expire_parked(event.referral_id, pending)
            try:
                outcome = apply(
                    state, event, now=_now(), deadline=self.deadline, units_of=self.directory_units
                )
                messages = []
                for delivery in outcome.deliveries:
                    try:
                        messages += self.render(outcome, delivery)
                    except Exception as exc:
                        if event.kind not in ALWAYS_APPLIED:
                            raise  # the event's own fault: refused whole, the sender can fix it
                        messages += self.undeliverable(
                            outcome, delivery, f"{type(exc).__name__}: {exc}"
                        )
            except Park as park:
                parked = pending.setdefault(event.referral_id, [])
                if all(p["record"]["event_id"] != event.event_id for p in parked):
                    parked.append({"record": event.to_record(), "parked_at": _now().isoformat()})
                log.info("referral.parked", referral_id=event.referral_id, reason=str(park))
                continue
            except Refuse as refuse:
                outputs.append(self._refuse(event, str(refuse)))
                continue
            except Exception as exc:  # a message that cannot be built: DLQ, never a crash
                log.exception("referral.failed", referral_id=event.referral_id)
                outputs.append(self._refuse(event, f"{type(exc).__name__}: {exc}"))
                continue
            for message in messages:
                if received_at:
                    message.headers[H_RECEIVED_AT] = received_at
            outputs += messages
            if outcome.state:
                states[event.referral_id] = outcome.state
            if event.kind == "submitted":
                queue.extend(
                    ReferralEvent.from_record(p["record"])
                    for p in pending.pop(event.referral_id, [])
                )
        return outputs, {"referrals": states, "pending": pending}

    def directory_units(self, code: str) -> tuple[Party, ...]:
        """The municipality's PPR and family department as the directory names them."""
        directory = self.directory.get()
        return tuple(
            Party(
                kind=u.role,  # type: ignore[arg-type]  # municipal roles: ppr, family-department
                identifier_system=SOR_SYSTEM,
                identifier=u.sor,  # type: ignore[arg-type]
                name=u.name,
            )
            for u in directory.municipal_units(code)
            if u.role != "central"
        )

    def render(self, outcome: Applied, delivery: Delivery) -> list[Output]:
        """The message of one delivery, or — when the directory cannot address its recipient —
        a dead letter naming it and an operator alert (the other recipients are still sent);
        raises if it cannot be built for any other reason."""
        try:
            return [self._message(outcome, delivery)]
        except Unaddressable as exc:
            log.warning(
                "referral.unaddressable", referral_id=outcome.event.referral_id, error=str(exc)
            )
            return self.undeliverable(outcome, delivery, f"Unaddressable: {exc}")

    def undeliverable(self, outcome: Applied, delivery: Delivery, why: str) -> list[Output]:
        """One recipient's message as a dead letter (the event as applied, and in
        ``stafet.redeliver`` which message it was) plus an operator alert. Sent back to
        ``events.referral`` after the cause is fixed, it yields exactly that message."""
        event, party = outcome.event, delivery.recipient
        reason = (
            f"{delivery.kind} for referral {event.referral_id} to {party.kind} "
            f"{party.identifier}: {why}"
        )
        dead = dead_letter_value(
            DLQ_REFERRAL,
            "referrals",
            key=event.patient_key.encode(),
            value=encode("referral_event", event.to_record()),
            reason=reason,
        )
        dead.headers[H_REDELIVER] = f"{delivery.kind}|{party_digest(party)}".encode()
        return [dead, operator_alert("referrals", reason, referral_id=event.referral_id)]

    def _redeliver(
        self, event: ReferralEvent, state: dict[str, Any], header: bytes
    ) -> list[Output]:
        kind, _, digest = header.decode("utf-8", "replace").partition("|")
        code = event.child.municipality_code or state.get("child", {}).get("municipality_code", "")
        candidates = [
            event.referrer,
            *event.municipal_units,
            *event.guardians,
            event.decision.forwarded_to if event.decision else None,
            municipality_party(code),
            *self.directory_units(code),
            *(Party(**p) for p in state.get("told", [])),
        ]
        party = next((p for p in candidates if p is not None and party_digest(p) == digest), None)
        if party is None:
            return [
                self._refuse(
                    event, f"redelivery {kind}: no such recipient of referral {event.referral_id}"
                )
            ]
        delivery = Delivery(party, kind)
        log.info("referral.redelivered", referral_id=event.referral_id, kind=kind)
        return self.render(Applied(state, (delivery,), event), delivery)

    def _message(self, outcome: Applied, delivery: Delivery) -> Output:
        event, recipient = outcome.event, delivery.recipient
        bundle_id, header_id = message_ids(event.event_id, recipient, delivery.kind)
        key = event.patient_key.encode()
        headers = {
            H_EVENT_ID: event.event_id.encode(),
            H_MESSAGE_ID: header_id.encode(),
            H_BUNDLE_ID: bundle_id.encode(),
            "stafet.kind": delivery.kind.encode(),
            "stafet.referral_id": event.referral_id.encode(),
            "stafet.recipient_kind": recipient.kind.encode(),
            # subscribers route on this; a guardian's CPR only sealed (stafet/addressee.py)
            H_RECIPIENT: recipient_header(
                recipient.identifier_system, recipient.identifier, self.addressee_key
            ).encode(),
        }
        contact = (
            event.contact
            or (event.decision.contact if event.decision else None)
            or (event.assessment.contact if event.assessment else None)
        )
        if contact is None or not contact.phone:  # MedCom needs a phone: the unit's, then
            contact = (
                Contact(name=contact.name, phone=self.unit_contact.phone)
                if contact
                else self.unit_contact
            )
        if delivery_channel(recipient) == "letter":
            text = letter_text(event, recipient, delivery.kind, contact=contact)  # type: ignore[arg-type]
            headers["content-type"] = b"application/pdf"
            return Output(OUT_LETTER, key, render_letter_pdf(text, recipient=recipient), headers)
        assert event.receiver is not None, "a referral without a receiving unit sends nothing"
        directory = self.directory.get()
        sender, to = directory.resolve(event.receiver), directory.resolve(recipient)
        bundle = build_care_communication(
            event,
            recipient,
            delivery.kind,
            sender=sender,
            to=to,  # type: ignore[arg-type]
            contact=contact,
        )
        validate_care_communication(bundle)
        headers["content-type"] = b"application/fhir+json; fhirVersion=4.0"
        headers[H_RECIPIENT] = to.recipient.encode()
        headers[H_RECIPIENT_EAN] = (to.ean or "").encode()
        topic = (
            municipality_topic(to.municipality or event.child.municipality_code)
            if recipient.kind in MUNICIPAL
            else OUT_REFERRER
        )
        body = json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode()
        return Output(topic, key, body, headers)

    def _refuse(self, event: ReferralEvent, reason: str) -> Output:
        log.warning("referral.refused", referral_id=event.referral_id, reason=reason)
        return dead_letter_value(
            DLQ_REFERRAL,
            "referrals",
            key=event.patient_key.encode(),
            value=encode("referral_event", event.to_record()),
            reason=reason,
        )

    def _expire_parked(
        self, referral_id: str, pending: dict[str, list[dict[str, Any]]]
    ) -> list[Output]:
        outputs, keep = [], []
        for parked in pending.get(referral_id, []):
            if _now() - datetime.fromisoformat(parked["parked_at"]) >= self.max_parked:
                outputs.append(
                    self._refuse(
                        ReferralEvent.from_record(parked["record"]),
                        f"referral {referral_id} never arrived: its decision waited "
                        f"{self.max_parked.total_seconds():.0f}s",
                    )
                )
            else:
                keep.append(parked)
        if keep:
            pending[referral_id] = keep
        else:
            pending.pop(referral_id, None)
        return outputs

    def prune(self, book: dict[str, Any]) -> dict[str, Any]:
        """Forget referrals closed longer than ``state_retention_days`` ago (their last history
        entry's time), so the state — and the time to restore it — does not grow forever."""
        now = _now()

        def closed_long_ago(state: dict[str, Any]) -> bool:
            if state.get("status") not in CLOSED or not state.get("history"):
                return False
            try:
                at = datetime.fromisoformat(state["history"][-1]["at"])
            except (TypeError, ValueError):
                return False
            return now - (at if at.tzinfo else at.replace(tzinfo=UTC)) >= self.keep_closed

        referrals = {
            rid: s for rid, s in book.get("referrals", {}).items() if not closed_long_ago(s)
        }
        return {"referrals": referrals, "pending": book.get("pending", {})}

    # --- timers ---------------------------------------------------------------------------

    def wakeups(self, book: dict[str, Any]) -> dict[str, tuple[str, str]]:
        """{referral id: (due at, since)} — when each referral next needs a tick."""
        out: dict[str, tuple[str, str]] = {}
        for rid, state in book.get("referrals", {}).items():
            if (at := deadline_at(state, self.deadline)) is not None:
                out[rid] = (at.isoformat(), state["submitted_at"])
        for rid, parked in book.get("pending", {}).items():
            if not parked:
                continue
            expiry = min(datetime.fromisoformat(p["parked_at"]) for p in parked) + self.max_parked
            if rid not in out or expiry < datetime.fromisoformat(out[rid][0]):
                out[rid] = (expiry.isoformat(), out.get(rid, ("", "parked"))[1])
        return out

    @staticmethod
    def statuses(book: dict[str, Any]) -> dict[str, str]:
        return {rid: s.get("status", "") for rid, s in book.get("referrals", {}).items()}

    @staticmethod
    def index_changes(
        patient_key: str, before: dict[str, str], after: dict[str, str]
    ) -> list[Output]:
        """``index.referral`` records for referrals that appeared, changed status or were pruned
        (a tombstone): the durable list the FHIR listener checks decisions against."""
        outputs = []
        for rid in sorted(set(before) | set(after)):
            if before.get(rid) == after.get(rid):
                continue
            value = (
                json.dumps({"referral_id": rid, "status": after[rid]}).encode()
                if rid in after
                else None
            )
            outputs.append(Output(INDEX_REFERRAL, index_key(rid, patient_key), value))
        return outputs

    @staticmethod
    def timer_changes(
        patient_key: str, before: dict[str, tuple[str, str]], after: dict[str, tuple[str, str]]
    ) -> list[Output]:
        """The ``timers.referral`` records that make the scheduler's view equal ``after``."""
        outputs = []
        for rid in sorted(set(before) | set(after)):
            if before.get(rid) == after.get(rid):
                continue
            key = f"{patient_key}|{rid}".encode()
            if rid not in after:
                outputs.append(Output(TIMERS_REFERRAL, key, None))
                continue
            due_at, since = after[rid]
            outputs.append(
                Output(
                    TIMERS_REFERRAL,
                    key,
                    json.dumps(
                        {
                            "patient_key": patient_key,
                            "referral_id": rid,
                            "due_at": due_at,
                            "since": since,
                        }
                    ).encode(),
                )
            )
        return outputs


def party_digest(party: Party) -> str:
    """Names a recipient in a header without its identifier (a guardian's is a CPR)."""
    return hashlib.sha256(f"{party.identifier_system}|{party.identifier}".encode()).hexdigest()[:24]


def tick(patient_key: str, referral_id: str, since: str) -> ReferralEvent:
    """The scheduler's request to check one referral; deterministic id per referral deadline."""
    return ReferralEvent(
        event_id=stable_uuid("deadline", patient_key, referral_id, since),
        source="hl7v2",
        source_message_id="timer",
        kind="tick",
        referral_id=referral_id,
        event_time=_now().isoformat(),
        patient_key=patient_key,
        child=PatientInfo(cpr="", municipality_code=""),
    )


def tick_output(patient_key: str, referral_id: str, since: str) -> Output:
    return Output(
        EVENTS_REFERRAL,
        patient_key.encode(),
        encode("referral_event", tick(patient_key, referral_id, since).to_record()),
    )
