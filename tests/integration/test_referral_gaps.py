"""The gaps a new user found, each over the real parts (MLLP socket, HTTP, broker, worker):
MedCom addressing from the party directory, a decision after the ingest records are gone, a
forward, a modification and a cancellation, a reused MSH-10, a contact person change, and the
unit's own reason wording."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from demo import fhir_samples
from demo.hl7_builder import Hospital, Provider, adt, referral_message
from stafet.connectors.sources.fhir.listener import FhirListener
from stafet.kafka.client import resolve_config
from stafet.kafka.reader import end_offsets
from stafet.kafka.topics import (
    ALERTS_OPERATOR,
    DLQ_NOTIFY,
    DLQ_REFERRAL,
    H_REASON,
    INGEST_FHIR,
    INGEST_HL7V2,
    OUT_LETTER,
    OUT_REFERRER,
    municipality_topic,
)
from stafet.medcom.addressing import organization_problems
from stafet.medcom.carecommunication import validate_care_communication
from stafet.medcom.hospitalnotification import validate_bundle
from stafet.stack import as_admin

from .test_fhir_api import Running, http
from .test_referral_flow import (
    BUC,
    CHILD,
    GP,
    GUARDIANS,
    REASON,
    decision,
    mine,
    now,
    post_fhir,
    referral,
    text_of,
)

ODENSE = Provider("RT", "BUA Odense (demo)", "600000000000002")
NO_EAN_GP = Provider("RP", "Lægehuset Uden Lokationsnummer", "100009", "YDER")


def new_id() -> str:
    return f"HEN-{uuid.uuid4().hex[:8]}"


def marks(stack) -> dict:
    """'Now' on every out.* and dlq.* topic and on alerts.operator."""
    return {**stack.marks(), **end_offsets(as_admin(stack.settings), [ALERTS_OPERATOR])}


def submitted(stack, ref_id: str, raw: bytes | None = None) -> None:
    """Send the referral and wait for its receipt, so what follows reads only its own."""
    since = stack.marks()
    assert stack.send(raw or referral(ref_id))["code"] == "AA"
    assert mine(stack.read(since, until=1), ref_id, "receipt")


def message(ref_id: str, trigger: str, n: int, **kw) -> bytes:
    return referral_message(
        trigger,
        CHILD,
        referral_id=ref_id,
        control_id=f"{ref_id}-{n}",
        event_time=now(),
        **{"providers": [GP, BUC], **kw},
    )


def addressed(record) -> dict:
    """The Bundle, after checking that a MedCom receiver would route it."""
    bundle = record.json()
    assert organization_problems(bundle) == []
    return bundle


def test_every_bundle_names_both_ends_with_sor_and_ean(stack):
    """A notification and a rejection fan-out: every Organization is a MedCom messaging
    organization from the directory, and the destination is the receiver's SOR endpoint."""
    since = stack.marks()
    hospital = Hospital("BUC Test", "600000000000099")
    assert (
        stack.send(
            adt(
                "A01",
                CHILD,
                hospital=hospital,
                control_id=f"G-{uuid.uuid4().hex[:8]}",
                visit=f"V-{uuid.uuid4().hex[:6]}",
                event_time="202611231000",
                admit_time="202611230800",
            )
        )["code"]
        == "AA"
    )
    [notification] = stack.read(since, until=1)
    bundle = addressed(notification)
    validate_bundle(bundle)
    assert notification.headers["stafet.recipient"].decode().endswith("|0751")
    ref_id = new_id()
    submitted(stack, ref_id)
    since = stack.marks()
    assert stack.send(decision(ref_id, "R"))["code"] == "AA"
    alerts = mine(stack.read(since, until=6), ref_id, "rejection")
    medcom = [r for r in alerts if r.topic != OUT_LETTER]
    assert len(medcom) == 4  # GP, municipality, PPR, family department; guardians by letter
    for record in medcom:
        bundle = addressed(record)
        validate_care_communication(bundle)
        receiver_ref = bundle["entry"][0]["resource"]["destination"][0]["receiver"]["reference"]
        [receiver] = [
            e["resource"]
            for e in bundle["entry"]
            if f"Organization/{e['resource']['id']}" == receiver_ref
        ]
        ean = next(i["value"] for i in receiver["identifier"] if "gs1" in i["system"])
        assert record.headers["stafet.recipient_ean"].decode() == ean


def test_an_unaddressable_party_is_a_dead_letter_and_an_alert_and_the_rest_flows(stack):
    ref_id = new_id()
    since = marks(stack)
    assert (
        stack.send(message(ref_id, "REF^I12", 1, providers=[NO_EAN_GP, BUC], guardians=GUARDIANS))[
            "code"
        ]
        == "AA"
    )
    records = stack.read(since, until=2)
    dead = [r for r in records if r.topic == DLQ_REFERRAL]
    alerts = [r.json() for r in records if r.topic == ALERTS_OPERATOR]
    assert dead and "gp/100009" in dead[0].headers[H_REASON].decode()
    assert alerts and "no EAN location number" in alerts[0]["reason"]
    since = stack.marks()
    assert (
        stack.send(
            message(
                ref_id,
                "RRI^I12",
                2,
                providers=[BUC],
                status="R",
                reason=REASON,
                contact=("Holm", "Hanne", "78450000"),
            )
        )["code"]
        == "AA"
    )
    records = stack.read(since, idle_s=2.0, timeout_s=30)
    sent = sorted(
        (r.topic, r.headers["stafet.recipient_kind"].decode())
        for r in mine(records, ref_id, "rejection")
    )
    assert sent == sorted(
        [
            (municipality_topic("0751"), "municipality"),
            (municipality_topic("0751"), "ppr"),  # from the directory
            (municipality_topic("0751"), "family-department"),
            (OUT_LETTER, "guardian"),
            (OUT_LETTER, "guardian"),
        ]
    )
    assert any(r.topic == DLQ_REFERRAL and ref_id in r.headers[H_REASON].decode() for r in records)


def test_a_hospital_unknown_to_the_directory_is_a_dead_letter_not_a_bundle(stack):
    since = marks(stack)
    stranger = Hospital("Ukendt Sygehus", "600000000000999")
    assert (
        stack.send(
            adt(
                "A01",
                CHILD,
                hospital=stranger,
                control_id=f"X-{uuid.uuid4().hex[:8]}",
                visit="V-X",
                event_time="202611231000",
                admit_time="202611230800",
            )
        )["code"]
        == "AA"
    )
    records = stack.read(since, until=2)
    assert sorted(r.topic for r in records) == [ALERTS_OPERATOR, DLQ_NOTIFY]
    dead = next(r for r in records if r.topic == DLQ_NOTIFY)
    assert "SOR 600000000000999 is not in" in dead.headers[H_REASON].decode()


def _forget_ingest(stack) -> None:
    """What retention does to the ingest topics: every record so far is gone (log start moved
    to the end). A short retention.ms would do the same, minutes later."""
    admin = AdminClient(resolve_config(as_admin(stack.settings), log_level=2))
    topics = admin.list_topics(timeout=10).topics
    request = {
        TopicPartition(t, p): OffsetSpec.latest()
        for t in (INGEST_FHIR, INGEST_HL7V2)
        for p in topics[t].partitions
    }
    ends = {tp: f.result().offset for tp, f in admin.list_offsets(request).items()}
    futures = admin.delete_records(
        [TopicPartition(tp.topic, tp.partition, end) for tp, end in ends.items() if end > 0]
    )
    for future in futures.values():
        future.result()


def test_a_decision_after_the_ingest_records_are_gone_and_a_listener_restart(stack):
    """The referral index comes from index.referral (compacted), not from the ingest topics:
    a triage that takes longer than their retention still finds its referral."""
    hl7_ref, fhir_ref = new_id(), new_id()
    authored = datetime.now(UTC).isoformat(timespec="seconds")
    submitted(stack, hl7_ref)
    since = stack.marks()
    assert (
        post_fhir(stack, "ServiceRequest", fhir_samples.referral(fhir_ref, authored_on=authored))
        == 202
    )
    assert mine(stack.read(since, until=1), fhir_ref, "receipt")
    _forget_ingest(stack)
    settings = stack.settings.model_copy(
        update={"fhir_port": 0, "fhir_unknown_referral_wait_s": 1.0}
    )
    restarted = Running(FhirListener(settings))  # a new listener: nothing in memory
    try:
        for ref_id in (hl7_ref, fhir_ref):
            task = fhir_samples.to_bytes(fhir_samples.rejection_task(ref_id, decided_at=authored))
            answer = http("POST", f"{restarted.url}/fhir/Task", task)
            assert answer.status == 202, (ref_id, answer.text)
        unknown = fhir_samples.to_bytes(fhir_samples.rejection_task(new_id()))
        assert http("POST", f"{restarted.url}/fhir/Task", unknown).status == 422
    finally:
        restarted.close()


def test_a_forward_tells_the_referrer_and_the_new_unit(stack):
    ref_id = new_id()
    submitted(stack, ref_id)
    since = stack.marks()
    assert (
        stack.send(
            message(
                ref_id,
                "RRI^I12",
                2,
                providers=[ODENSE],
                status="P",
                contact=("Holm", "Hanne", "78450000"),
            )
        )["code"]
        == "AA"
    )
    records = mine(stack.read(since, until=2), ref_id)
    got = sorted(
        (r.headers["stafet.kind"].decode(), r.headers["stafet.recipient"].decode()) for r in records
    )
    assert got == [
        ("forward", "urn:oid:1.2.208.176.1.1|600000000000002"),
        ("status", "urn:oid:1.2.208.176.1.4|123456"),
    ]
    forward = next(r for r in records if r.headers["stafet.kind"] == b"forward")
    assert forward.topic == OUT_REFERRER
    assert "videresendt til jer" in text_of(forward)
    addressed(forward)


def test_a_modification_and_a_cancellation_reach_the_parties_already_told(stack):
    ref_id = new_id()
    since = stack.marks()
    assert stack.send(referral(ref_id))["code"] == "AA"
    assert stack.send(message(ref_id, "REF^I13", 2))["code"] == "AA"
    assert stack.send(message(ref_id, "REF^I14", 3))["code"] == "AA"
    records = mine(stack.read(since, until=3), ref_id)
    assert [
        (r.headers["stafet.kind"].decode(), r.headers["stafet.recipient_kind"].decode())
        for r in records
    ] == [("receipt", "gp"), ("modified", "gp"), ("cancelled", "gp")]
    assert "Henvisningen er trukket tilbage" in text_of(records[2])


def test_a_reused_msh10_is_a_new_message_not_a_dropped_duplicate(stack):
    """A sender's counter restarts after a fail-over: an A01 and then an A03 with the same
    MSH-10 are both notified (a retransmission of the A01 is not)."""
    control, visit = f"R-{uuid.uuid4().hex[:8]}", f"V-{uuid.uuid4().hex[:6]}"
    hospital = Hospital("BUC Test", "600000000000099")
    admitted = adt(
        "A01",
        CHILD,
        hospital=hospital,
        control_id=control,
        visit=visit,
        event_time="202611231000",
        admit_time="202611230800",
    )
    since = stack.marks()
    assert stack.send(admitted)["code"] == "AA"
    assert stack.send(admitted)["code"] == "AA"  # the retransmission
    assert (
        stack.send(
            adt(
                "A03",
                CHILD,
                hospital=hospital,
                control_id=control,
                visit=visit,
                event_time="202611240900",
                admit_time="202611230800",
                discharge_time="202611240900",
            )
        )["code"]
        == "AA"
    )
    records = stack.read(since, idle_s=2.0, timeout_s=30)
    codes = [
        r.headers["stafet.event_code"].decode()
        for r in records
        if r.headers.get("stafet.kind") == b"hospital-notification"
    ]
    assert codes == ["STIN", "SLHJ"]


def test_a_contact_person_change_reaches_every_party(stack):
    ref_id = new_id()
    submitted(stack, ref_id)
    since = stack.marks()
    assert stack.send(decision(ref_id, "A"))["code"] == "AA"
    assert mine(stack.read(since, until=1), ref_id, "status")
    since = stack.marks()
    assert (
        stack.send(
            message(ref_id, "RRI^I12", 5, status="C", contact=("Kjær", "Jonas", "87654321"))
        )["code"]
        == "AA"
    )
    records = mine(stack.read(since, until=6), ref_id, "contact")
    assert sorted(
        (r.topic, r.headers["stafet.recipient_kind"].decode()) for r in records
    ) == sorted(
        [
            (OUT_REFERRER, "gp"),
            (municipality_topic("0751"), "municipality"),
            (municipality_topic("0751"), "ppr"),
            (municipality_topic("0751"), "family-department"),
            (OUT_LETTER, "guardian"),
            (OUT_LETTER, "guardian"),
        ]
    )
    for record in records:
        assert "Jonas Kjær" in " ".join(text_of(record).split())


def test_the_units_own_reason_wording_reaches_the_parties(stack):
    ref_id = new_id()
    submitted(stack, ref_id)
    own = "PPV mangler, og skolen har ikke beskrevet trivslen"
    since = stack.marks()
    assert (
        stack.send(
            message(
                ref_id,
                "RRI^I12",
                2,
                status="R",
                reason=("missing-ppv", own),
                notes={"ALT": "Kontakt PPR", "RESP": "PPR"},
                contact=("Holm", "Hanne", "78450000"),
            )
        )["code"]
        == "AA"
    )
    [to_gp] = [
        r for r in mine(stack.read(since, until=6), ref_id, "rejection") if r.topic == OUT_REFERRER
    ]
    payload = json.loads(to_gp.value)
    text = next(
        e["resource"] for e in payload["entry"] if e["resource"]["resourceType"] == "Communication"
    )["payload"][0]["contentString"]
    assert f"Afdelingens begrundelse: {own}" in text


def test_a_dead_letter_sent_back_goes_through_the_worker_again(stack):
    """`stafet dlq resend`: the notification of a hospital unknown to the directory is a dead
    letter; sent back, it is processed again (same key and value) — still unknown, so it is a
    dead letter again, carrying where it was resent from."""
    from stafet.kafka.dead_letters import H_RESENT_FROM, resend

    since = marks(stack)
    stranger = Hospital("Ukendt Sygehus", "600000000000999")
    assert (
        stack.send(
            adt(
                "A01",
                CHILD,
                hospital=stranger,
                control_id=f"Y-{uuid.uuid4().hex[:8]}",
                visit="V-Y",
                event_time="202611231000",
                admit_time="202611230800",
            )
        )["code"]
        == "AA"
    )
    [dead] = [r for r in stack.read(since, until=2) if r.topic == DLQ_NOTIFY]
    [(_, partition)] = [
        tp for tp, end in stack.marks().items() if tp[0] == DLQ_NOTIFY and end > since[tp]
    ]
    again_since = marks(stack)
    assert (
        resend(as_admin(stack.settings), DLQ_NOTIFY, partition, dead.offset) == "events.encounter"
    )
    [second] = [r for r in stack.read(again_since, until=2) if r.topic == DLQ_NOTIFY]
    assert second.headers[H_RESENT_FROM].decode() == f"{DLQ_NOTIFY}/{partition}/{dead.offset}"
    assert second.value == dead.value and second.key == dead.key
