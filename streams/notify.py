"""notify: canonical encounter events → MedCom HospitalNotification on the municipality's topic.

The state (per patient key, RocksDB with a changelog topic, written in the same transaction as
the notification) remembers, per visit, the MessageHeader ids sent, so a correction (RE_) or
cancellation (AN_) points at the message it revises, as MedCom's Provenance ``entity`` requires,
and a replayed event is recognised and not sent again.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from stafet.config import Settings
from stafet.directory import Directory, Unaddressable, directory_file
from stafet.kafka.topics import (
    DLQ_NOTIFY,
    H_BUNDLE_ID,
    H_EVENT_CODE,
    H_EVENT_ID,
    H_KIND,
    H_MESSAGE_ID,
    H_RECEIVED_AT,
    H_RECIPIENT,
    H_RECIPIENT_EAN,
    municipality_topic,
)
from stafet.logging import get_logger
from stafet.medcom.addressing import GLN_SYSTEM, organization_problems
from stafet.medcom.hospitalnotification import (
    NotificationBuildError,
    build_hospital_notification,
    message_header_id,
    validate_bundle,
)
from stafet.model import EncounterEvent
from stafet.schemas.codec import decode
from stafet.schemas.municipalities import municipality
from stafet.streams.records import Inbound, Output, State, dead_letter, operator_alert
from stafet.systems import MUNICIPALITY_SYSTEM

log = get_logger(__name__)

#: notifications after which a stay is over; its history is kept for late corrections
#: (``STAFET_STATE_RETENTION_DAYS``) and then pruned
FINAL_CODES = ("SLHJ", "MORS", "AN_STIN", "AN_STAA", "RE_SLHJ", "RE_MORS")


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


def render(
    event: EncounterEvent, previous_header_id: str | None, directory: Directory, *, validate: bool
) -> tuple[str, dict, bytes]:
    """(topic, bundle, body) for one event; raises on anything that cannot be built —
    :class:`Unaddressable` when the directory cannot name both ends with SOR + EAN."""
    code = event.patient.municipality_code
    if municipality(code) is None:
        raise RoutingError(f"unknown municipality '{code}'")
    recipient = directory.municipal_unit(code, "central").routable()
    sender = directory.by_sor(event.sender.sor).routable()
    bundle = build_hospital_notification(
        event, recipient, sender=sender, previous_header_id=previous_header_id
    )
    if validate:
        validate_bundle(bundle)  # fhir.resources + MedCom rules + addressing (a sample)
    elif problems := organization_problems(bundle):  # addressing: always (it is cheap)
        raise NotificationBuildError("; ".join(problems))
    body = json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode()
    return municipality_topic(code), bundle, body


def _receiver_ean(bundle: dict[str, Any]) -> str:
    header = bundle["entry"][0]["resource"]
    receiver = header["destination"][0]["receiver"]["reference"]
    org = next(
        e["resource"] for e in bundle["entry"] if f"Organization/{e['resource']['id']}" == receiver
    )
    return next(i["value"] for i in org["identifier"] if i["system"] == GLN_SYSTEM)


def with_known_leave(event: EncounterEvent, leave_start: str | None) -> EncounterEvent:
    """A return from leave (SLOR) or its cancellation (AN_SLOR) carries no leave start in HL7;
    take it from the STOR we saw."""
    if (
        event.encounter.leave_start
        or not leave_start
        or event.notification_code not in ("SLOR", "AN_SLOR")
    ):
        return event
    return replace(event, encounter=replace(event.encounter, leave_start=leave_start))


def prune(visits: dict[str, Any], *, now: datetime, keep: timedelta) -> dict[str, Any]:
    """Drop the history of stays that ended longer than ``keep`` ago."""
    return {
        number: visit
        for number, visit in visits.items()
        if not visit.get("ended_at") or now - datetime.fromisoformat(visit["ended_at"]) < keep
    }


def notify(
    record: Inbound, state: State, settings: Settings, *, validate: bool = True
) -> list[Output]:
    """One encounter event → its HospitalNotification (or a dead letter, or nothing for a
    replay); updates the visit history in ``state``."""
    try:
        encounter = EncounterEvent.from_record(decode("encounter_event", record.value or b""))
        visits = dict(state.get("visits") or {})
        visit = dict(visits.get(encounter.encounter.visit_number) or {"sent": []})
        previous, seen = revision_of(
            visit["sent"],
            message_header_id(encounter.event_id, encounter.patient.municipality_code),
        )
        if seen:  # already sent (a replay, or a duplicate upstream): same id, do not resend
            log.debug("notify.duplicate_skipped", event_id=encounter.event_id)
            return []
        encounter = with_known_leave(encounter, visit.get("leave_start"))
        topic, bundle, body = render(
            encounter, previous, directory_file(settings.directory_file).get(), validate=validate
        )
        header_id = bundle["entry"][0]["resource"]["id"]
    except Unaddressable as exc:  # the directory must be fixed; then resend the dead letter
        log.warning("notify.unaddressable", error=str(exc), origin=record.origin)
        return [
            dead_letter(DLQ_NOTIFY, "notify", record, f"Unaddressable: {exc}"),
            operator_alert(
                "notify", f"cannot address a hospital notification: {exc}", origin=record.origin
            ),
        ]
    except (NotificationBuildError, RoutingError, ValueError, KeyError) as exc:
        log.warning("notify.rejected", error=str(exc), origin=record.origin)
        return [dead_letter(DLQ_NOTIFY, "notify", record, f"{type(exc).__name__}: {exc}")]
    except Exception as exc:  # a bug must not lose the record: DLQ it and go on
        log.error("notify.failed", origin=record.origin, exc_info=exc)
        return [
            dead_letter(
                DLQ_NOTIFY, "notify", record, f"internal error: {type(exc).__name__}: {exc}"
            )
        ]
    headers = {
        H_EVENT_ID: encounter.event_id.encode(),
        H_MESSAGE_ID: header_id.encode(),
        H_BUNDLE_ID: bundle["id"].encode(),
        H_EVENT_CODE: encounter.notification_code.encode(),
        H_KIND: b"hospital-notification",
        H_RECIPIENT: f"{MUNICIPALITY_SYSTEM}|{encounter.patient.municipality_code}".encode(),
        H_RECIPIENT_EAN: _receiver_ean(bundle).encode(),
        "content-type": b"application/fhir+json; fhirVersion=4.0",
    }
    if H_RECEIVED_AT in record.headers:
        headers[H_RECEIVED_AT] = record.headers[H_RECEIVED_AT]
    now = datetime.now(UTC)
    visit["sent"] = [*visit["sent"], header_id]
    code = encounter.notification_code
    if code == "STOR":
        visit["leave_start"] = encounter.encounter.leave_start
    elif code == "AN_STOR":  # the leave never happened
        visit.pop("leave_start", None)
    if code in FINAL_CODES:
        visit["ended_at"] = now.isoformat()
    elif code.startswith("AN_") and code[3:] in ("SLHJ", "MORS"):  # the stay goes on
        visit.pop("ended_at", None)
    visits[encounter.encounter.visit_number] = visit
    state.set("visits", prune(visits, now=now, keep=timedelta(days=settings.state_retention_days)))
    return [Output(topic, record.key, body, headers)]
