"""``POST /fhir/$process-message`` against a real broker: MedCom Acknowledgements are stored once
for the delivery tracker, referral messages are answered with an Acknowledgement, and MedCom's
reliable-messaging rule holds — a duplicate (Bundle.id, MessageHeader.id) gets the original answer
and is not stored again, also by a listener started later (the memory is rebuilt from Kafka)."""

from __future__ import annotations

import json
import uuid

from demo import fhir_samples as s
from stafet.connectors.sources.fhir.listener import FhirListener
from stafet.kafka.client import as_admin
from stafet.kafka.reader import end_offsets, read_topics
from stafet.kafka.topics import ACKS_INBOUND, DLQ_FHIR, H_REASON, H_STAGE, INGEST_FHIR
from stafet.medcom.acknowledgement import MessageIds, build_ack, parse_ack

from .test_fhir_api import Running, api, http  # noqa: F401  (the module's listener fixture)


def _ack(acknowledged: str, code: str = "ok", bundle_id: str | None = None) -> dict:
    ack = build_ack(
        MessageIds(f"b-{acknowledged}", acknowledged, "care-communication-message"),
        code,
        sender_endpoint="https://kommune.example/fhir",
        receiver_endpoint="https://stafet.dk/fhir",
    )
    if bundle_id:
        ack["id"] = bundle_id
    return ack


def _stored(stack, since, topic: str, header_id: str) -> list:
    records = read_topics(as_admin(stack.settings), since, idle_s=1.5, timeout_s=20)
    return [
        r
        for r in records
        if r.topic == topic and r.headers.get("stafet.in_message_id", b"").decode() == header_id
    ]


def _marks(stack):
    return end_offsets(as_admin(stack.settings), [ACKS_INBOUND, INGEST_FHIR, DLQ_FHIR])


def _dead_letters(stack, since) -> list:
    records = read_topics(as_admin(stack.settings), since, idle_s=1.5, timeout_s=20)
    return [r for r in records if r.topic == DLQ_FHIR]


def test_an_acknowledgement_is_stored_once_and_a_duplicate_gets_the_same_answer(api, stack):
    acknowledged = str(uuid.uuid4())
    ack = _ack(acknowledged)
    body = json.dumps(ack).encode()
    since = _marks(stack)
    first = http("POST", f"{api.url}/fhir/$process-message", body)
    assert first.status == 200, first.text
    again = http("POST", f"{api.url}/fhir/$process-message", body)
    assert (again.status, again.text) == (200, first.text)
    assert again.headers.get("X-Stafet-Duplicate") == "true"
    resent = dict(ack, id=str(uuid.uuid4()))  # MedCom MR7: a resend has a new Bundle.id
    assert (
        http("POST", f"{api.url}/fhir/$process-message", json.dumps(resent).encode()).text
        == first.text
    )
    [record] = _stored(stack, since, ACKS_INBOUND, ack["entry"][0]["resource"]["id"])
    assert record.key == acknowledged.encode()
    assert parse_ack(record.value).acknowledged_id == acknowledged

    reused = _ack(str(uuid.uuid4()), bundle_id=ack["id"])  # same Bundle.id, new header: an error
    answer = http("POST", f"{api.url}/fhir/$process-message", json.dumps(reused).encode())
    assert answer.status == 400 and "never be reused" in answer.text


def test_a_bad_acknowledgement_is_refused_with_the_reason(api):
    ack = _ack(str(uuid.uuid4()))
    ack["entry"][0]["resource"]["response"]["code"] = "fine"
    answer = http("POST", f"{api.url}/fhir/$process-message", json.dumps(ack).encode())
    assert answer.status == 422
    assert "MessageHeader.response.code" in answer.text
    not_a_message = json.dumps({"resourceType": "Bundle", "type": "collection", "id": "x"})
    answer = http("POST", f"{api.url}/fhir/$process-message", not_a_message.encode())
    assert answer.status == 400 and "Bundle.type" in answer.text


def test_a_reused_bundle_id_and_a_bad_acknowledgement_are_dead_lettered(api, stack):
    first = _ack(str(uuid.uuid4()))
    assert (
        http("POST", f"{api.url}/fhir/$process-message", json.dumps(first).encode()).status == 200
    )
    since = _marks(stack)
    reused = json.dumps(_ack(str(uuid.uuid4()), bundle_id=first["id"])).encode()
    answer = http("POST", f"{api.url}/fhir/$process-message", reused)
    assert answer.status == 400 and "never be reused" in answer.text
    bad = _ack(str(uuid.uuid4()))
    bad["entry"][0]["resource"]["response"]["code"] = "fine"
    bad_body = json.dumps(bad).encode()
    answer = http("POST", f"{api.url}/fhir/$process-message", bad_body)
    assert answer.status == 422, answer.text

    dead = _dead_letters(stack, since)  # partitions by key: in no set order
    assert sorted(r.value for r in dead) == sorted([reused, bad_body]), (
        "each on dlq.fhir once, as posted"
    )
    reason_of = {r.value: r.headers[H_REASON].decode() for r in dead}
    reasons = [reason_of[reused], reason_of[bad_body]]
    assert reasons[0].startswith("HTTP 400: Bundle.id: ") and "never be reused" in reasons[0]
    assert first["id"] in reasons[0]
    assert reasons[1].startswith("HTTP 422: MessageHeader.response.code: bad acknowledgement")
    assert all(r.headers[H_STAGE] == b"fhir" for r in dead)
    stored = [
        r
        for r in read_topics(as_admin(stack.settings), since, idle_s=0.5, timeout_s=10)
        if r.topic == ACKS_INBOUND
    ]
    assert stored == [], "neither was stored for the delivery tracker"

    good = _ack(str(uuid.uuid4()))  # the listener keeps working
    since = _marks(stack)
    assert http("POST", f"{api.url}/fhir/$process-message", json.dumps(good).encode()).status == 200
    assert len(_stored(stack, since, ACKS_INBOUND, good["entry"][0]["resource"]["id"])) == 1


def _referral_message(referral_id: str) -> dict:
    header = {
        "resourceType": "MessageHeader",
        "id": str(uuid.uuid4()),
        "eventCoding": {
            "system": "http://medcomfhir.dk/ig/terminology/CodeSystem/medcom-messaging-eventCodes",
            "code": "referral-message",
        },
        "source": {"endpoint": "https://ehr.example/fhir"},
    }
    message = s.bundle(header, s.referral(referral_id), type_="message")
    message["id"] = str(uuid.uuid4())
    return message


def test_a_referral_message_is_acknowledged_and_a_later_listener_knows_it(api, stack):
    message = _referral_message(f"HEN-{uuid.uuid4().hex[:10]}")
    header_id = message["entry"][0]["resource"]["id"]
    body = json.dumps(message).encode()
    since = _marks(stack)
    first = http("POST", f"{api.url}/fhir/$process-message", body)
    assert first.status == 200, first.text
    ack = json.loads(first.text)
    assert ack["entry"][0]["resource"]["response"] == {"identifier": header_id, "code": "ok"}
    assert len(_stored(stack, since, INGEST_FHIR, header_id)) == 1

    settings = stack.settings.model_copy(update={"fhir_port": 0})
    later = Running(FhirListener(settings))  # a restart: memory rebuilt from the topics
    try:
        since = _marks(stack)
        again = http("POST", f"{later.url}/fhir/$process-message", body)
        assert again.status == 200 and json.loads(again.text) == ack, "the original answer"
        assert _stored(stack, since, INGEST_FHIR, header_id) == [], "not stored twice"
    finally:
        later.close()
