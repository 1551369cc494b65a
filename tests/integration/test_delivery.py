"""Delivery end to end: real broker, real MLLP, a real ``stafet deliver`` process and real HTTP
subscriber endpoints that check the HMAC signature and send MedCom Acknowledgements back to
stafet's ``/fhir/$process-message``.

One delivery process serves the module (acknowledgement timeout shrunk to seconds):
- subscriber ``hilleroed`` (0219) REST, acknowledges;
- subscriber ``aarhus`` (0751) REST, acknowledges, starts **down**;
- subscriber ``naestved`` (0370) REST, never acknowledges;
- subscriber ``gp-123456`` REST for one GP on out.referrer, acknowledges;
- subscriber ``letters`` letter outbox.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime

import pytest

from demo.hl7_builder import Hospital, adt, medcom_test_patients
from stafet.inbound.hl7v2 import parse_adt
from stafet.kafka.topics import ALERTS_OPERATOR, DLQ_DELIVERY, H_MESSAGE_ID, H_REASON
from stafet.medcom.hospitalnotification import message_header_id

from .delivery_env import GP_RECIPIENT, Rest, running_delivery
from .test_referral_flow import decision, referral

HOSPITAL = Hospital("Hvidovre Hospital (test)", "600000000000098")
ACK_TIMEOUT_S = 8.0  # long enough for an acknowledgement's round trip on a busy 2-core CI box
SUBSCRIBERS = {
    "hilleroed": Rest(municipality="0219"),
    "aarhus": Rest(municipality="0751", starts_down=True),
    "naestved": Rest(municipality="0370", acknowledges=False),
    "gp-123456": Rest(recipient=GP_RECIPIENT),
}


@pytest.fixture(scope="module")
def delivery(stack, tmp_path_factory):
    with running_delivery(
        stack,
        tmp_path_factory.mktemp("delivery"),
        SUBSCRIBERS,
        ack_timeout_s=ACK_TIMEOUT_S,
        ack_max_resends=2,
    ) as env:
        yield env.settings, env.receivers, env.service, env.env, env.root


def _admission_then_discharge(patient, n: int) -> tuple[list[bytes], list[str]]:
    """A01 → A08 → A03 for one child; the messages and their expected notification ids."""
    visit = f"V-{uuid.uuid4().hex[:10]}"
    messages = [
        adt(
            t,
            patient,
            hospital=HOSPITAL,
            control_id=f"{visit}-{t}",
            visit=visit,
            event_time=f"2026120{n % 9 + 1}1{i}00",
            admit_time=f"2026120{n % 9 + 1}0800",
            **({"discharge_time": f"2026120{n % 9 + 1}1500"} if t == "A03" else {}),
        )
        for i, t in enumerate(("A01", "A08", "A03"))
    ]
    ids = [
        message_header_id(parse_adt(m, secret="any").event_id, patient.municipality_code)
        for m in messages
    ]
    return messages, ids


def test_a_dead_endpoint_delays_only_its_own_subscriber_then_catches_up_in_order(stack, delivery):
    settings, receivers, _, env, _ = delivery
    patients = medcom_test_patients()
    a_children = [patients[p] for p in ("Einer", "Lonni", "Magnus")]  # 0219
    b_children = [patients[p] for p in ("Aage", "RuddiBerggren", "RikkeBerggren")]  # 0751
    a_ids, b_ids, order = [], [], {}
    for n, child in enumerate(a_children + b_children):
        messages, ids = _admission_then_discharge(child, n)
        for m in messages:
            assert stack.send(m)["code"] == "AA"
        (a_ids if child.municipality_code == "0219" else b_ids).extend(ids)
        order[child.cpr] = ids

    got_a = receivers["hilleroed"].wait_for(set(a_ids), timeout_s=60)
    assert all(r.signed for r in got_a)
    # meanwhile aarhus's sink is retrying, audited, without holding hilleroed back
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        trail = _audit(env, "--subscriber", "aarhus", "--events")
        if any(r["action"] == "attempt-failed" for r in trail):
            break
        time.sleep(1.0)
    assert any(r["action"] == "attempt-failed" and "Connect" in r["detail"] for r in trail), trail
    receivers["aarhus"].start()
    got_b = receivers["aarhus"].wait_for(set(b_ids), timeout_s=60)
    assert len(got_b) == len(b_ids), "each message arrives once"
    by_child: dict[str, list[str]] = defaultdict(list)
    for r in got_b:
        by_child[r.patient_cpr()].append(r.header_id)
    for child in b_children:
        assert by_child[child.cpr] == order[child.cpr], "per-patient order kept"
    assert [r.activity() for r in got_b if r.patient_cpr() == b_children[0].cpr] == [
        "admit-inpatient",
        "revise-admit-inpatient",
        "discharge-inpatient-home",
    ]

    # both acknowledged every message: after more than the ack timeout, nothing was resent
    time.sleep(ACK_TIMEOUT_S * 2)
    for name, ids in (("hilleroed", a_ids), ("aarhus", b_ids)):
        counts = defaultdict(int)
        for r in receivers[name].received:
            counts[r.header_id] += 1
        assert {i: counts[i] for i in ids} == {i: 1 for i in ids}, name


def _read_all(settings, topic: str) -> list:
    from stafet.kafka.client import as_admin, client_config
    from stafet.kafka.reader import read_to_end

    return list(read_to_end(client_config(as_admin(settings)), topic))


def test_an_acknowledgement_that_never_comes_means_two_resends_then_dlq_and_alert(stack, delivery):
    settings, receivers, _, _, _ = delivery
    child = medcom_test_patients()["AndersJensen"]  # 0370: naestved never acknowledges
    messages, ids = _admission_then_discharge(child, 7)
    assert stack.send(messages[0])["code"] == "AA"
    header_id = ids[0]
    receivers["naestved"].wait_for({header_id}, timeout_s=30)

    deadline = time.monotonic() + ACK_TIMEOUT_S * 3 + 30
    dlq: list = []
    while time.monotonic() < deadline and not dlq:
        dlq = [
            m
            for m in _read_all(settings, DLQ_DELIVERY)
            if dict(m.headers())[H_MESSAGE_ID].decode() == header_id
        ]
        time.sleep(1.0)
    assert len(dlq) == 1, "dead-lettered once"
    assert "no acknowledgement after 2 resends" in dict(dlq[0].headers())[H_REASON].decode()
    alerts = [json.loads(m.value()) for m in _read_all(settings, ALERTS_OPERATOR)]
    assert any(a.get("message_id") == header_id and "dead-lettered" in a["reason"] for a in alerts)

    time.sleep(ACK_TIMEOUT_S + 2)  # and nothing more is sent after that
    sends = [r for r in receivers["naestved"].received if r.header_id == header_id]
    assert len(sends) == 3, "the first send and exactly two resends"
    assert len({r.bundle_id for r in sends}) == 3, "a resend has a new Bundle.id (MedCom MR7)"
    first = sends[0].bundle
    for resend in sends[1:]:  # … and nothing else changes: same resources, same ids
        assert resend.bundle["entry"] == first["entry"]
    gaps = [b.at - a.at for a, b in zip(sends, sends[1:], strict=False)]
    assert all(g >= ACK_TIMEOUT_S - 0.5 for g in gaps), gaps


def _audit(env: dict[str, str], *args: str, stdin: str | None = None) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "stafet.cli", "audit", *args, "--json"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_audit_lists_every_recipient_of_a_rejection_with_delivery_and_ack_times(stack, delivery):
    settings, receivers, _, env, root = delivery
    if receivers["aarhus"]._loop is None:
        receivers["aarhus"].start()
    ref_id = f"HEN-{uuid.uuid4().hex[:8]}"
    assert stack.send(referral(ref_id))["code"] == "AA"
    assert stack.send(decision(ref_id, "R"))["code"] == "AA"

    deadline = time.monotonic() + 60
    rows: list[dict] = []
    while time.monotonic() < deadline:
        rows = [r for r in _audit(env, "--referral", ref_id) if r["kind"] == "rejection"]
        pushed_done = (
            sum(r["status"] == "acknowledged" for r in rows) == 4
            and sum(r["subscriber"] == "letters" and r["status"] == "delivered" for r in rows) == 2
        )
        if pushed_done:
            break
        time.sleep(1.0)
    kinds = sorted((r["subscriber"], r["recipient_kind"]) for r in rows)
    assert kinds == [
        ("aarhus", "family-department"),
        ("aarhus", "municipality"),
        ("aarhus", "ppr"),
        ("gp-123456", "gp"),
        ("letters", "guardian"),
        ("letters", "guardian"),
    ], rows
    for r in rows:
        assert r["delivered_at"], r
        if r["subscriber"] != "letters":
            assert r["ack"] == "ok" and r["ack_at"] >= r["delivered_at"], r
    printed = json.dumps(rows)
    assert "1502779995" not in printed and "2911829996" not in printed, "guardian CPRs masked"
    letters = sorted(p.name for p in (root / "outbox").glob("*.pdf"))
    assert len(letters) >= 2
    # the envelopes name the guardian sealed; the letter service opens it with the key
    envelopes = sorted((root / "outbox").glob("*.json"))
    assert envelopes and not any(
        "1502779995" in e.read_text() or "2911829996" in e.read_text() for e in envelopes
    )
    opened = subprocess.run(
        [sys.executable, "-m", "stafet.cli", "letters", "addressee", str(envelopes[-1])],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout.strip().split("|")[1] in ("1502779995", "2911829996")
    # the same rows by patient: the CPR read from stdin, never an argument
    from .test_referral_flow import CHILD

    by_patient = _audit(env, "--patient", stdin=f"{CHILD.cpr}\n")
    assert {r["message_id"] for r in rows} <= {r["message_id"] for r in by_patient}
    assert CHILD.cpr not in json.dumps(by_patient)


def test_a_message_for_an_unregistered_recipient_raises_an_operator_alert(stack, delivery):
    settings, *_ = delivery
    from demo.hl7_builder import Provider, referral_message

    from .test_referral_flow import BUC, CHILD, GUARDIANS, now

    ref_id = f"HEN-{uuid.uuid4().hex[:8]}"
    # in the party directory (so it is addressed), but no subscriber takes its messages
    stranger = Provider("RP", "Lægehus 42 (bench)", "900042", "YDER")
    message = referral_message(
        "REF^I12",
        CHILD,
        referral_id=ref_id,
        control_id=f"{ref_id}-r",
        event_time=now(),
        providers=[stranger, BUC],
        guardians=GUARDIANS,
    )
    assert stack.send(message)["code"] == "AA"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        alerts = [json.loads(m.value()) for m in _read_all(settings, ALERTS_OPERATOR)]
        mine = [a for a in alerts if "900042" in a["reason"]]
        if mine:
            assert "no subscriber" in mine[0]["reason"]
            return
        time.sleep(1.0)
    raise AssertionError("no operator alert for the unregistered GP")


def _cli(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "stafet.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_replay_since_a_time_resends_the_same_messages_with_the_same_ids(stack, delivery):
    settings, receivers, _, env, _ = delivery
    t0 = datetime.now(UTC).isoformat()
    messages, ids = _admission_then_discharge(medcom_test_patients()["Rasmus"], 3)  # 0219
    for m in messages:
        assert stack.send(m)["code"] == "AA"
    receiver = receivers["hilleroed"]
    first = {r.header_id: (r.bundle_id, r.bundle) for r in receiver.wait_for(set(ids))}

    assert "3 messages replayed to hilleroed" in _cli(env, "replay", "hilleroed", "--since", t0)
    again = [r for r in receiver.received if r.header_id in ids]
    assert len(again) == 6
    for r in again:
        assert (r.bundle_id, r.bundle) == first[r.header_id], "byte for byte the same message"
    rows = [
        json.loads(line)
        for line in _cli(
            env, "audit", "--subscriber", "hilleroed", "--events", "--json"
        ).splitlines()
    ]
    replayed = {r["message_id"] for r in rows if r["action"] == "replayed"}
    assert set(ids) <= replayed


def test_a_kafka_subscriber_group_is_rewound_to_a_time(stack, delivery):
    from confluent_kafka import Consumer

    from stafet.kafka.client import as_admin, client_config

    settings, _, _, env, _ = delivery
    group = f"municipality-0461-{uuid.uuid4().hex[:6]}"  # PiaBerggren lives in Odense (0461)
    t0 = datetime.now(UTC).isoformat()
    messages, ids = _admission_then_discharge(medcom_test_patients()["PiaBerggren"], 4)
    for m in messages:
        assert stack.send(m)["code"] == "AA"

    def read_ids() -> list[str]:
        consumer = Consumer(
            client_config(
                as_admin(settings),
                **{"group.id": group, "auto.offset.reset": "latest", "enable.auto.commit": False},
            )
        )
        consumer.subscribe(["out.municipality.0461"])
        seen, deadline = [], time.monotonic() + 30
        try:
            while time.monotonic() < deadline and not set(ids) <= set(seen):
                msg = consumer.poll(0.5)
                if msg is not None and not msg.error():
                    seen.append(dict(msg.headers())[H_MESSAGE_ID].decode())
            consumer.commit(asynchronous=False)
        finally:
            consumer.close()
        return seen

    assert "rewound" in _cli(env, "replay", "municipality-0461", "--since", t0, "--group", group)
    assert set(ids) <= set(read_ids())  # from t0, although the group would start at 'latest'
    _cli(env, "replay", "municipality-0461", "--since", t0, "--group", group)
    assert set(ids) <= set(read_ids()), "rewound again: the same records once more"
