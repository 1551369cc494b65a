"""normalize: raw input → canonical Avro events. HL7 v2 (``ingest.hl7v2``): ADT to
``events.encounter``, REF/RRI to ``events.referral``; FHIR (``ingest.fhir``) to ``events.referral``.
The parse functions are the ones the connectors used before they answered, so what was accepted
can be normalised. Pure: a record in, the records to produce out."""

from __future__ import annotations

from stafet.config import Settings
from stafet.inbound.canonical import carried, encoded
from stafet.inbound.fhir_referral import FhirInputError, parse_fhir_referral
from stafet.inbound.hl7v2 import Hl7Error
from stafet.inbound.hl7v2_referral import parse_hl7v2
from stafet.kafka.topics import (
    DLQ_NORMALIZE,
    H_CHARSET,
    H_EVENT_ID,
    H_RECEIVED_AT,
)
from stafet.logging import get_logger
from stafet.model import EncounterEvent, ReferralEvent
from stafet.streams.records import Inbound, Output, dead_letter

log = get_logger(__name__)


def reject(record: Inbound, exc: Exception, *, bad_input: bool) -> list[Output]:
    """Bad input (a warning) or a bug of ours (logged with its traceback): either way the
    record is dead-lettered with the reason and the pipeline goes on."""
    if bad_input:
        log.warning("normalize.rejected", error=str(exc), origin=record.origin)
        return [dead_letter(DLQ_NORMALIZE, "normalize", record, str(exc))]
    log.error("normalize.failed", origin=record.origin, exc_info=exc)
    return [
        dead_letter(
            DLQ_NORMALIZE, "normalize", record, f"internal error: {type(exc).__name__}: {exc}"
        )
    ]


def _event_headers(event_id: str, record: Inbound) -> dict[str, bytes]:
    headers = {H_EVENT_ID: event_id.encode()}
    if H_RECEIVED_AT in record.headers:
        headers[H_RECEIVED_AT] = record.headers[H_RECEIVED_AT]
    return headers


def _event_output(event: EncounterEvent | ReferralEvent, record: Inbound) -> Output:
    """The canonical event on its events topic, keyed by the patient."""
    topic, value = encoded(event)
    return Output(topic, event.patient_key.encode(), value, _event_headers(event.event_id, record))


def normalize_hl7(record: Inbound, settings: Settings) -> list[Output]:
    """One HL7 v2 message → one canonical event (or its dead letter). The event the listener
    already made (:mod:`stafet.inbound.canonical`) is used as it is: the message is parsed once."""
    ready = carried(record.headers)
    event_id = record.headers.get(H_EVENT_ID)
    if ready is not None and event_id and record.key:
        topic, value = ready
        return [Output(topic, record.key, value, _event_headers(event_id.decode(), record))]
    charset = (record.headers.get(H_CHARSET) or settings.mllp_default_charset.encode()).decode()
    try:
        parsed = parse_hl7v2(
            record.value or b"",
            secret=settings.patient_key_secret.get_secret_value(),
            default_charset=charset,
            timezone=settings.default_timezone,
        )
        return [_event_output(parsed, record)]
    except Hl7Error as exc:
        return reject(record, exc, bad_input=True)
    except Exception as exc:  # a bug must not lose the record: DLQ it and go on
        return reject(record, exc, bad_input=False)


def normalize_fhir(record: Inbound, settings: Settings) -> list[Output]:
    """FHIR referral resources (one resource or a Bundle) → canonical events."""
    try:
        parsed = parse_fhir_referral(
            record.value or b"", secret=settings.patient_key_secret.get_secret_value()
        )
        return [_event_output(p, record) for p in parsed]
    except FhirInputError as exc:
        return reject(record, exc, bad_input=True)
    except Exception as exc:  # a bug must not lose the record: DLQ it and go on
        return reject(record, exc, bad_input=False)
