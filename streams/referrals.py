"""referrals: canonical referral events → state (Faust table) → one message per recipient.

The table ``referrals`` (RocksDB, changelog in Kafka) holds, per patient key, each referral's
state (:mod:`stafet.streams.referral_state`) and the decisions parked because their referral has
not arrived yet. A timer asks each due referral (via a ``tick`` event on its own partition, so
only the owner changes the table) to raise the 30-day deadline alert and to dead-letter parked
decisions that waited too long; the state survives restarts, so the timers do too.

Outputs: CareCommunication JSON to ``out.municipality.<code>`` (municipality, PPR, family
department) and ``out.referrer``; PDF letters to ``out.letter`` (guardians, referrers without a
FHIR endpoint). Each message is awaited until the broker has it before the state records it.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from faust.types import EventT, StreamT

from stafet.connectors.letters import render_letter_pdf
from stafet.ids import stable_uuid
from stafet.logging import get_logger
from stafet.model import Contact, PatientInfo, ReferralEvent
from stafet.schemas.codec import decode, encode
from stafet.streams.app import app, settings
from stafet.streams.carecommunication import (
    build_care_communication, delivery_channel, letter_text, message_ids,
    validate_care_communication,
)
from stafet.streams.offset_guard import checked
from stafet.streams.dead_letter import dead_letter, dead_letter_value, stop_on_failure, topic
from stafet.streams.referral_state import Delivery, Outcome, Park, Refuse, apply, due, seen
from stafet.topics import (
    DLQ_REFERRAL, EVENTS_REFERRAL, H_BUNDLE_ID, H_EVENT_ID, H_MESSAGE_ID, H_RECEIVED_AT,
    OUT_LETTER, OUT_REFERRER, municipality_topic,
)

log = get_logger(__name__)
DEADLINE = timedelta(days=settings.referral_decision_deadline_days)
MUNICIPAL = ("municipality", "ppr", "family-department")
UNIT_CONTACT = Contact(name=settings.unit_contact_name, phone=settings.unit_contact_phone)

#: patient key → {"referrals": {referral id: state}, "pending": {referral id: [parked]}}
referral_book = app.Table("referrals", default=dict, partitions=settings.partitions, key_type=str)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def render(outcome: Outcome, delivery: Delivery) -> tuple[str, bytes, dict[str, bytes]]:
    """(topic, body, headers) of one delivery; raises if the message cannot be built."""
    event, recipient = outcome.event, delivery.recipient
    bundle_id, header_id = message_ids(event.event_id, recipient, delivery.kind)
    headers = {
        H_EVENT_ID: event.event_id.encode(), H_MESSAGE_ID: header_id.encode(),
        H_BUNDLE_ID: bundle_id.encode(), "stafet.kind": delivery.kind.encode(),
        "stafet.referral_id": event.referral_id.encode(),
        "stafet.recipient_kind": recipient.kind.encode(),
        # the letter service / subscriber routes on this; for a guardian it is their CPR
        "stafet.recipient": f"{recipient.identifier_system}|{recipient.identifier}".encode(),
    }
    contact = (event.decision.contact if event.decision else None) or (
        event.assessment.contact if event.assessment else None)
    if contact is None or not contact.phone:  # MedCom needs a phone: the unit's, then
        contact = Contact(name=contact.name, phone=UNIT_CONTACT.phone) if contact else UNIT_CONTACT
    if delivery_channel(recipient) == "letter":
        text = letter_text(event, recipient, delivery.kind, contact=contact)  # type: ignore[arg-type]
        headers["content-type"] = b"application/pdf"
        return OUT_LETTER, render_letter_pdf(text, recipient=recipient), headers
    sender = event.receiver
    assert sender is not None, "a referral without a receiving unit cannot send messages"
    bundle = build_care_communication(event, recipient, delivery.kind, sender=sender,  # type: ignore[arg-type]
                                      contact=contact)
    validate_care_communication(bundle)
    headers["content-type"] = b"application/fhir+json; fhirVersion=4.0"
    out = (municipality_topic(event.child.municipality_code) if recipient.kind in MUNICIPAL
           else OUT_REFERRER)
    return out, json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode(), headers


async def send_all(outcome: Outcome, messages: list[tuple[str, bytes, dict[str, bytes]]],
                   received_at: bytes | None) -> None:
    """Send each message and wait until the broker has it (a send error propagates: the input is
    then not committed and is replayed, with the same message ids)."""
    for out_topic, body, headers in messages:
        if received_at:
            headers[H_RECEIVED_AT] = received_at
        sent = await topic(out_topic).send(key=outcome.event.patient_key.encode(), value=body,
                                           headers=headers)
        await sent
    for d in outcome.deliveries:
        log.info("referral.sent", kind=d.kind, recipient_kind=d.recipient.kind,
                 referral_id=outcome.event.referral_id, event_id=outcome.event.event_id)


async def _refuse(event: ReferralEvent, reason: str) -> None:
    await dead_letter_value(DLQ_REFERRAL, "referrals", key=event.patient_key.encode(),
                            value=encode("referral_event", event.to_record()), reason=reason)
    log.warning("referral.refused", referral_id=event.referral_id, reason=reason)


async def handle(first: ReferralEvent, received_at: bytes | None) -> None:
    """Apply one event (and any decisions it releases) to the patient's referrals."""
    book: dict[str, Any] = dict(referral_book[first.patient_key]) or {}
    states: dict[str, Any] = dict(book.get("referrals", {}))
    pending: dict[str, list[dict[str, Any]]] = dict(book.get("pending", {}))
    queue = [first]
    while queue:
        event = queue.pop(0)
        state = states.get(event.referral_id)
        if seen(state, event.event_id):
            log.info("referral.duplicate_skipped", event_id=event.event_id)
            continue
        if event.kind == "tick":
            await _expire_parked(event.referral_id, pending)
        try:
            outcome = apply(state, event, now=_now(), deadline=DEADLINE)
            messages = [render(outcome, d) for d in outcome.deliveries]  # all or nothing
        except Park as park:
            parked = pending.setdefault(event.referral_id, [])
            if all(p["record"]["event_id"] != event.event_id for p in parked):
                parked.append({"record": event.to_record(), "parked_at": _now().isoformat()})
            log.info("referral.parked", referral_id=event.referral_id, reason=str(park))
            continue
        except Refuse as refuse:
            await _refuse(event, str(refuse))
            continue
        except Exception as exc:  # a message that cannot be built: DLQ, never a crash
            await _refuse(event, f"{type(exc).__name__}: {exc}")
            log.exception("referral.failed", referral_id=event.referral_id)
            continue
        await send_all(outcome, messages, received_at)
        if outcome.state:
            states[event.referral_id] = outcome.state
        if event.kind == "submitted":
            queue.extend(ReferralEvent.from_record(p["record"])
                         for p in pending.pop(event.referral_id, []))
    referral_book[first.patient_key] = {"referrals": states, "pending": pending}


async def _expire_parked(referral_id: str, pending: dict[str, list[dict[str, Any]]]) -> None:
    max_age = timedelta(seconds=settings.pending_decision_max_age_s)
    keep = []
    for parked in pending.get(referral_id, []):
        if _now() - datetime.fromisoformat(parked["parked_at"]) >= max_age:
            await _refuse(ReferralEvent.from_record(parked["record"]),
                          f"referral {referral_id} never arrived: its decision waited "
                          f"{max_age.total_seconds():.0f}s")
        else:
            keep.append(parked)
    if keep:
        pending[referral_id] = keep
    else:
        pending.pop(referral_id, None)


async def track_one(event: EventT) -> None:
    try:
        referral = ReferralEvent.from_record(decode("referral_event", event.value))
    except Exception as exc:
        await dead_letter(DLQ_REFERRAL, "referrals", event, f"undecodable: {exc}")
        return
    await handle(referral, (event.headers or {}).get(H_RECEIVED_AT))


@app.agent(topic(EVENTS_REFERRAL))


async def track_referrals(stream: StreamT) -> None:
    async for event in stream.events():
        async with stop_on_failure("referrals"):
            await checked(event)
            await track_one(event)


def tick(patient_key: str, referral_id: str, state: dict[str, Any] | None) -> ReferralEvent:
    """The timer's request to check one referral; deterministic id per referral deadline."""
    since = state["submitted_at"] if state else "parked"
    return ReferralEvent(
        event_id=stable_uuid("deadline", patient_key, referral_id, since),
        source="hl7v2", source_message_id="timer", kind="tick", referral_id=referral_id,
        event_time=_now().isoformat(), patient_key=patient_key,
        child=PatientInfo(cpr="", municipality_code=""),
    )


@app.timer(interval=settings.referral_timer_interval_s)


async def referral_timers() -> None:
    """Send a tick to every referral whose deadline passed or whose parked decision expired."""
    now, max_age = _now(), timedelta(seconds=settings.pending_decision_max_age_s)
    for patient_key, book in list(referral_book.items()):
        states = (book or {}).get("referrals", {})
        targets = {rid for rid, s in states.items() if due(s, now=now, deadline=DEADLINE)}
        targets |= {rid for rid, parked in (book or {}).get("pending", {}).items()
                    if any(now - datetime.fromisoformat(p["parked_at"]) >= max_age
                           for p in parked)}
        for rid in targets:
            event = tick(patient_key, rid, states.get(rid))
            await topic(EVENTS_REFERRAL).send(key=patient_key.encode(),
                                              value=encode("referral_event", event.to_record()))
