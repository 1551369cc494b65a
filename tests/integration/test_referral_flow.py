"""The referral lifecycle end to end over real MLLP and a real broker: a rejected referral reaches
every party once; an accepted one only the referrer; out-of-order and repeated decisions are
handled; the state survives a worker restart."""

from __future__ import annotations

import io
import json
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta

from pypdf import PdfReader

from demo import fhir_samples
from demo.hl7_builder import Provider, medcom_test_patients, referral_message
from stafet.kafka.topics import DLQ_REFERRAL, H_REASON, OUT_LETTER, OUT_REFERRER, municipality_topic

from .conftest import DEADLINE_S

CHILD = medcom_test_patients()["RikkeBerggren"]  # Aarhus (0751), two guardians
GUARDIANS = [("GUARD", None, "1502779995"), ("MTH", None, "2911829996")]
GP = Provider("RP", "Lægerne i Vestergade", "123456", "YDER")
BUC = Provider("RT", "BUC Aarhus (demo)", "600000000000001")
PPR = Provider("PPR", "PPR Aarhus Kommune", "6000000007510011")
FAM = Provider("FAM", "Familieafdelingen Aarhus Kommune", "6000000007510012")
REASON = ("missing-ppv", "Der mangler en pædagogisk-psykologisk vurdering (PPV) fra PPR")
ALTERNATIVE = "Kontakt PPR i Aarhus Kommune for en PPV"
RESPONSIBLE = "Aarhus Kommune, PPR"


def now() -> str:
    """Event times of now: a referral dated in the past would already be past its deadline."""
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")


def referral(ref_id: str, n: int = 0, at: str | None = None) -> bytes:
    return referral_message(
        "REF^I12",
        CHILD,
        referral_id=ref_id,
        control_id=f"{ref_id}-ref{n}",
        event_time=at or now(),
        providers=[GP, BUC, PPR, FAM],
        guardians=GUARDIANS,
        notes={"NOTE": "Angst og skolevægring"},
    )


def decision(ref_id: str, status: str, n: int = 0) -> bytes:
    return referral_message(
        "RRI^I12",
        CHILD,
        referral_id=ref_id,
        control_id=f"{ref_id}-rri{n}",
        event_time=now(),
        providers=[GP, BUC],
        status=status,
        reason=REASON if status == "R" else None,
        notes={"NOTE": "Barnet er ikke udredt i PPR", "ALT": ALTERNATIVE, "RESP": RESPONSIBLE}
        if status == "R"
        else {},
        contact=("Holm", "Hanne", "78450000"),
    )


def mine(records, ref_id: str, kind: str | None = None):
    return [
        r
        for r in records
        if r.headers.get("stafet.referral_id", b"").decode() == ref_id
        and (kind is None or r.headers.get("stafet.kind", b"").decode() == kind)
    ]


def text_of(record) -> str:
    if record.topic == OUT_LETTER:
        return "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(record.value)).pages)
    return record.value.decode("utf-8")


def test_rejection_reaches_every_party_exactly_once(stack):
    ref_id = f"HEN-{uuid.uuid4().hex[:8]}"
    since = stack.marks()
    assert stack.send(referral(ref_id))["code"] == "AA"
    first = stack.read(since, until=1)
    receipts = mine(first, ref_id, "receipt")
    assert [(r.topic, r.headers["stafet.recipient_kind"]) for r in receipts] == [
        (OUT_REFERRER, b"gp")
    ], [(r.topic, r.headers) for r in first]

    since = stack.marks()
    assert stack.send(decision(ref_id, "R"))["code"] == "AA"
    stack.read(since, until=6)
    alerts = mine(stack.read(since, idle_s=2.0), ref_id, "rejection")
    by_recipient = sorted((r.topic, r.headers["stafet.recipient_kind"].decode()) for r in alerts)
    assert by_recipient == sorted(
        [
            (OUT_REFERRER, "gp"),
            (municipality_topic("0751"), "municipality"),
            (municipality_topic("0751"), "ppr"),
            (municipality_topic("0751"), "family-department"),
            (OUT_LETTER, "guardian"),
            (OUT_LETTER, "guardian"),
        ]
    )
    # a guardian's CPR is sealed in the header (stafet/addressee.py); the letter service opens it
    from stafet.addressee import addressee_key, open_addressee

    sealed = [r.headers["stafet.recipient"].decode() for r in alerts if r.topic == OUT_LETTER]
    assert all(
        h.startswith("urn:stafet:addressee|") and "1502779995" not in h and "2911829996" not in h
        for h in sealed
    ), sealed
    guardians = sorted(open_addressee(h, addressee_key(stack.settings))[1] for h in sealed)
    assert guardians == ["1502779995", "2911829996"]
    assert len({r.headers["stafet.message_id"] for r in alerts}) == 6, "one message id each"
    for record in alerts:
        text = " ".join(text_of(record).split())
        for fact in ("PPV", "Kontakt PPR i Aarhus Kommune", RESPONSIBLE, "Hanne Holm", ref_id):
            assert fact in text, (record.headers["stafet.recipient_kind"], fact)
    for record in alerts:
        if record.topic == OUT_LETTER:  # a parent's letter names the child, never a CPR
            text = text_of(record)
            assert "Rikke" in text and CHILD.cpr not in text


def test_accepted_referral_gets_a_status_letter_and_no_alerts(stack):
    ref_id = f"HEN-{uuid.uuid4().hex[:8]}"
    since = stack.marks()
    assert stack.send(referral(ref_id))["code"] == "AA"
    assert stack.send(decision(ref_id, "A"))["code"] == "AA"
    stack.read(since, until=2)
    records = mine(stack.read(since, idle_s=2.0), ref_id)
    assert sorted(r.headers["stafet.kind"].decode() for r in records) == ["receipt", "status"]
    assert {r.topic for r in records} == {OUT_REFERRER}


def test_decision_before_its_referral_waits_then_fans_out(stack):
    ref_id = f"HEN-{uuid.uuid4().hex[:8]}"
    since = stack.marks()
    assert stack.send(decision(ref_id, "R"))["code"] == "AA"
    assert not mine(stack.read(since, idle_s=2.0), ref_id), "parked, not sent, not dead-lettered"
    assert stack.send(referral(ref_id))["code"] == "AA"
    stack.read(since, until=7)
    records = mine(stack.read(since, idle_s=2.0), ref_id)
    assert (
        sorted(r.headers["stafet.kind"].decode() for r in records)
        == ["receipt"] + ["rejection"] * 6
    )


def test_second_decision_goes_to_the_dlq_with_a_reason(stack):
    ref_id = f"HEN-{uuid.uuid4().hex[:8]}"
    since = stack.marks()
    assert stack.send(referral(ref_id))["code"] == "AA"
    assert stack.send(decision(ref_id, "A"))["code"] == "AA"
    assert stack.send(decision(ref_id, "R", n=1))["code"] == "AA"
    stack.read(since, until=3)
    records = stack.read(since, idle_s=2.0)
    dlq = [r for r in records if r.topic == DLQ_REFERRAL and ref_id in r.headers[H_REASON].decode()]
    assert len(dlq) == 1
    assert "already accepted" in dlq[0].headers[H_REASON].decode()
    assert not mine(records, ref_id, "rejection")


def test_worker_restart_between_referral_and_decision_fans_out_once(stack):
    ref_id = f"HEN-{uuid.uuid4().hex[:8]}"
    since = stack.marks()
    assert stack.send(referral(ref_id))["code"] == "AA"
    assert mine(stack.read(since, until=1), ref_id, "receipt")
    stack.restart_worker(kill=False)
    assert stack.send(decision(ref_id, "R"))["code"] == "AA"
    stack.read(since, until=7, timeout_s=120)
    records = mine(stack.read(since, idle_s=3.0), ref_id)
    kinds = sorted(r.headers["stafet.kind"].decode() for r in records)
    assert kinds == ["receipt"] + ["rejection"] * 6
    assert len({r.headers["stafet.message_id"] for r in records}) == 7


def test_no_decision_within_the_guarantee_alerts_referrer_and_municipality_once(stack):
    """The deadline (shrunk to DEADLINE_S for the test session) survives a worker restart."""
    ref_id = f"HEN-{uuid.uuid4().hex[:8]}"
    since = stack.marks()
    received = datetime.now(UTC)
    assert stack.send(referral(ref_id, at=received.strftime("%Y%m%d%H%M%S+0000")))["code"] == "AA"
    assert mine(stack.read(since, until=1), ref_id, "receipt")
    stack.restart_worker(kill=False)  # the timer's state must come back from the changelog
    assert not mine(stack.read(since, idle_s=1.0), ref_id, "deadline"), "not before the deadline"
    deadline = time.monotonic() + DEADLINE_S + 60
    alerts = []
    while time.monotonic() < deadline and len(alerts) < 2:
        alerts = mine(stack.read(since, idle_s=2.0, timeout_s=10), ref_id, "deadline")
    assert datetime.now(UTC) - received >= timedelta(seconds=DEADLINE_S)
    time.sleep(6)  # a few more timer rounds: a second alert would show now
    alerts = mine(stack.read(since, idle_s=2.0), ref_id, "deadline")
    assert sorted((r.topic, r.headers["stafet.recipient_kind"].decode()) for r in alerts) == [
        (municipality_topic("0751"), "municipality"),
        (OUT_REFERRER, "gp"),
    ]
    assert "30" in text_of(alerts[0]) or "frist" in text_of(alerts[0]).lower()


def post_fhir(stack, path: str, resource: dict) -> int:
    request = urllib.request.Request(
        f"http://{stack.settings.fhir_host}:{stack.settings.fhir_port}/fhir/{path}",
        data=json.dumps(resource).encode(),
        method="POST",
        headers={"Content-Type": "application/fhir+json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status


def test_the_same_rejection_over_fhir_reaches_the_same_parties(stack):
    """GP referral as a FHIR ServiceRequest, rejection as a Task: the HL7 fan-out, over HTTP."""
    ref_id = f"HEN-{uuid.uuid4().hex[:8]}"
    since = stack.marks()
    authored = datetime.now(UTC).isoformat(timespec="seconds")
    assert (
        post_fhir(stack, "ServiceRequest", fhir_samples.referral(ref_id, authored_on=authored))
        == 202
    )
    assert mine(stack.read(since, until=1), ref_id, "receipt")
    assert post_fhir(stack, "Task", fhir_samples.rejection_task(ref_id, decided_at=authored)) == 202
    stack.read(since, until=7)
    alerts = mine(stack.read(since, idle_s=2.0), ref_id, "rejection")
    assert sorted((r.topic, r.headers["stafet.recipient_kind"].decode()) for r in alerts) == sorted(
        [
            (OUT_REFERRER, "gp"),
            (municipality_topic("0751"), "municipality"),
            (municipality_topic("0751"), "ppr"),
            (municipality_topic("0751"), "family-department"),
            (OUT_LETTER, "guardian"),
            (OUT_LETTER, "guardian"),
        ]
    )
    for record in alerts:
        text = " ".join(text_of(record).split())
        for fact in (
            "PPV",
            fhir_samples.REJECTION_ALTERNATIVE,
            fhir_samples.REJECTION_RESPONSIBLE,
            "Hanne Holm",
        ):
            assert fact in text, (record.headers["stafet.recipient_kind"], fact)
