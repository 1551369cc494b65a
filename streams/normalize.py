"""normalize: raw input → canonical Avro events. HL7 v2 (``ingest.hl7v2``): ADT to
``events.encounter``, REF/RRI to ``events.referral``; FHIR (``ingest.fhir``) to ``events.referral``.
The parse functions are the ones the connectors used before they answered, so what was accepted
can be normalised."""

from __future__ import annotations

from faust.types import EventT, StreamT

from stafet.fhir_referral import FhirInputError, parse_fhir_referral
from stafet.hl7v2 import Hl7Error
from stafet.hl7v2_referral import parse_hl7v2
from stafet.model import EncounterEvent
from stafet.logging import get_logger
from stafet.schemas.codec import encode
from stafet.streams.app import app, settings
from stafet.streams.offset_guard import checked
from stafet.streams.dead_letter import reject, stop_on_failure, topic
from stafet.topics import (
    DLQ_NORMALIZE, EVENTS_ENCOUNTER, EVENTS_REFERRAL, H_CHARSET, H_EVENT_ID, H_RECEIVED_AT,
    INGEST_FHIR, INGEST_HL7V2,
)

log = get_logger(__name__)
SECRET = settings.patient_key_secret.get_secret_value()


async def normalize_one(event: EventT) -> None:
    headers = event.headers or {}
    charset = (headers.get(H_CHARSET) or settings.mllp_default_charset.encode()).decode()
    try:
        parsed = parse_hl7v2(event.value, secret=SECRET, default_charset=charset,
                             timezone=settings.default_timezone)
        if isinstance(parsed, EncounterEvent):
            out_topic, value = EVENTS_ENCOUNTER, encode("encounter_event", parsed.to_record())
        else:
            out_topic, value = EVENTS_REFERRAL, encode("referral_event", parsed.to_record())
    except Hl7Error as exc:
        return await reject(DLQ_NORMALIZE, "normalize", event, exc, bad_input=True)
    except Exception as exc:  # a bug must not lose the record: DLQ it and go on
        return await reject(DLQ_NORMALIZE, "normalize", event, exc, bad_input=False)
    out_headers = {H_EVENT_ID: parsed.event_id.encode()}
    if H_RECEIVED_AT in headers:
        out_headers[H_RECEIVED_AT] = headers[H_RECEIVED_AT]
    sent = await topic(out_topic).send(key=parsed.patient_key.encode(), value=value,
                                       headers=out_headers)
    await sent  # on the broker before this record counts as done (else: exit for a replay)


@app.agent(topic(INGEST_HL7V2))


async def normalize(stream: StreamT) -> None:
    async for event in stream.events():
        async with stop_on_failure("normalize"):
            await checked(event)
            await normalize_one(event)


async def normalize_fhir_one(event: EventT) -> None:
    """FHIR referral resources (``ingest.fhir``) → canonical events on ``events.referral``."""
    try:
        parsed = parse_fhir_referral(event.value, secret=SECRET)
        records = [(p, encode("referral_event", p.to_record())) for p in parsed]
    except FhirInputError as exc:
        return await reject(DLQ_NORMALIZE, "normalize", event, exc, bad_input=True)
    except Exception as exc:  # a bug must not lose the record: DLQ it and go on
        return await reject(DLQ_NORMALIZE, "normalize", event, exc, bad_input=False)
    received = (event.headers or {}).get(H_RECEIVED_AT)
    for referral, value in records:
        headers = {H_EVENT_ID: referral.event_id.encode()}
        if received:
            headers[H_RECEIVED_AT] = received
        sent = await topic(EVENTS_REFERRAL).send(key=referral.patient_key.encode(), value=value,
                                                 headers=headers)
        await sent


@app.agent(topic(INGEST_FHIR))


async def normalize_fhir(stream: StreamT) -> None:
    async for event in stream.events():
        async with stop_on_failure("normalize"):
            await checked(event)
            await normalize_fhir_one(event)
