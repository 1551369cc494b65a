"""notify: canonical encounter events → MedCom HospitalNotification on the municipality's topic.

The table ``hospital_notifications`` (RocksDB, changelog in Kafka) remembers, per patient and
visit, the MessageHeader id of the last notification, so a correction (RE_) or cancellation
(AN_) points at the message it revises, as MedCom's Provenance ``entity`` requires.
"""

from __future__ import annotations

import json
from dataclasses import replace

from faust.types import EventT, StreamT

from stafet.fhir_mapping import MUNICIPALITY_SYSTEM
from stafet.logging import get_logger
from stafet.model import EncounterEvent
from stafet.schemas.codec import decode
from stafet.schemas.municipalities import municipality
from stafet.streams.app import app, settings
from stafet.streams.offset_guard import checked
from stafet.streams.dead_letter import reject, stop_on_failure, topic
from stafet.streams.hospitalnotification import (
    NotificationBuildError, build_hospital_notification, message_header_id, validate_bundle,
)
from stafet.topics import (
    DLQ_NOTIFY, EVENTS_ENCOUNTER, H_BUNDLE_ID, H_EVENT_CODE, H_EVENT_ID, H_MESSAGE_ID,
    H_KIND, H_RECEIVED_AT, H_RECIPIENT, municipality_topic,
)

log = get_logger(__name__)

#: patient key → {visit number: {"sent": [MessageHeader ids, in order], "leave_start": …}}
last_notification = app.Table(
    "hospital-notifications", default=dict, partitions=settings.partitions,
    key_type=str,
)


class RoutingError(ValueError):
    """The event cannot be routed to a municipality."""


def revision_of(history: list[str], header_id: str) -> tuple[str | None, bool]:
    """(MessageHeader id this message revises, whether it was sent before).

    A replayed event finds itself in the history and gets the same predecessor as the first
    time, so its Bundle is byte-identical.
    """
    if header_id in history:
        index = history.index(header_id)
        return (history[index - 1] if index else None), True
    return (history[-1] if history else None), False


def render(event: EncounterEvent, previous_header_id: str | None) -> tuple[str, dict, bytes]:
    """(topic, bundle, body) for one event; raises on anything that cannot be built."""
    recipient = municipality(event.patient.municipality_code)
    if recipient is None:
        raise RoutingError(f"unknown municipality '{event.patient.municipality_code}'")
    bundle = build_hospital_notification(event, recipient, previous_header_id=previous_header_id)
    if settings.validate_notifications:
        validate_bundle(bundle)
    body = json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode()
    return municipality_topic(recipient.code), bundle, body


def with_known_leave(event: EncounterEvent, leave_start: str | None) -> EncounterEvent:
    """A return from leave (SLOR) or its cancellation (AN_SLOR) carries no leave start in HL7;
    take it from the STOR we saw."""
    if (event.encounter.leave_start or not leave_start
            or event.notification_code not in ("SLOR", "AN_SLOR")):
        return event
    return replace(event, encounter=replace(event.encounter, leave_start=leave_start))


async def notify_one(event: EventT) -> None:
    try:
        encounter = EncounterEvent.from_record(decode("encounter_event", event.value))
        visits = dict(last_notification[encounter.patient_key])
        visit = dict(visits.get(encounter.encounter.visit_number) or {"sent": []})
        previous, seen = revision_of(
            visit["sent"],
            message_header_id(encounter.event_id, encounter.patient.municipality_code))
        if seen:  # already sent (a replay, or a duplicate upstream): same id, do not resend
            log.info("notify.duplicate_skipped", event_id=encounter.event_id)
            return
        encounter = with_known_leave(encounter, visit.get("leave_start"))
        out_topic, bundle, body = render(encounter, previous)
        header_id = bundle["entry"][0]["resource"]["id"]
    except (NotificationBuildError, RoutingError, ValueError, KeyError) as exc:
        return await reject(DLQ_NOTIFY, "notify", event, exc, bad_input=True,
                            reason=f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # a bug must not lose the record: DLQ it and go on
        return await reject(DLQ_NOTIFY, "notify", event, exc, bad_input=False)
    headers = {
        H_EVENT_ID: encounter.event_id.encode(),
        H_MESSAGE_ID: header_id.encode(),
        H_BUNDLE_ID: bundle["id"].encode(),
        H_EVENT_CODE: encounter.notification_code.encode(),
        H_KIND: b"hospital-notification",
        H_RECIPIENT: f"{MUNICIPALITY_SYSTEM}|{encounter.patient.municipality_code}".encode(),
        "content-type": b"application/fhir+json; fhirVersion=4.0",
    }
    if H_RECEIVED_AT in (event.headers or {}):
        headers[H_RECEIVED_AT] = event.headers[H_RECEIVED_AT]
    # Wait until the broker has the message before the table records it as sent: the table
    # is what suppresses replays, so it must never get ahead of the topic.
    delivery = await topic(out_topic).send(key=event.key, value=body, headers=headers)
    await delivery
    visit["sent"] = [*visit["sent"], header_id]
    if encounter.notification_code == "STOR":
        visit["leave_start"] = encounter.encounter.leave_start
    elif encounter.notification_code == "AN_STOR":  # the leave never happened
        visit.pop("leave_start", None)
    visits[encounter.encounter.visit_number] = visit
    last_notification[encounter.patient_key] = visits
    log.info("notify.sent", topic=out_topic, code=encounter.notification_code,
             message_id=header_id, event_id=encounter.event_id)


@app.agent(topic(EVENTS_ENCOUNTER))


async def notify(stream: StreamT) -> None:
    async for event in stream.events():
        async with stop_on_failure("notify"):
            await checked(event)
            await notify_one(event)
