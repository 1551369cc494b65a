"""Delivery pieces without a broker: MedCom Acknowledgements, the resend copy, backoff, the
acknowledgement tracker's state machine (fake recorder and clock) and the audit summary
(webhook signing: tests/test_webhook_signing.py). The broker-backed behaviour is in
tests/integration/test_delivery.py."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest

from stafet.audit import AuditRecord, select, summarize
from stafet.connectors.sinks.acknowledgements import AckTracker
from stafet.connectors.sinks.channels import OutRecord
from stafet.connectors.sinks.delivery import backoff_s
from stafet.medcom.acknowledgement import (
    MessageError,
    MessageIds,
    build_ack,
    message_ids,
    parse_ack,
    resend_copy,
)
from stafet.webhooks import signed_headers

from .webhook_secrets import whsec

AARHUS, ODENSE, SHARED = whsec("s-aarhus"), whsec("s-odense"), whsec("shared")

EXAMPLES = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "domain"
    / "medcom-examples"
    / "acknowledgement"
)


def test_medcoms_own_acknowledgements_parse():
    codes = {}
    for path in sorted(EXAMPLES.glob("*.json")):
        ack = parse_ack(path.read_bytes())
        codes[ack.code] = ack
    assert set(codes) == {"ok", "transient-error", "fatal-error"}
    assert codes["ok"].acknowledged_id == "42cb9200-f421-4d08-8391-7d51a2503cb4"
    assert (
        "MSG_Mailbox_Out_Of_Operation"
        in codes["transient-error"].diagnostics + codes["fatal-error"].diagnostics
    )


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda b: b.update(type="collection"), "Bundle.type"),
        (lambda b: b.pop("id"), "Bundle.id"),
        (lambda b: b["entry"][0]["resource"].pop("response"), "MessageHeader.response.identifier"),
        (
            lambda b: b["entry"][0]["resource"]["response"].update(code="maybe"),
            "MessageHeader.response.code",
        ),
        (lambda b: b["entry"].reverse(), "Bundle.entry[0].resource"),
    ],
)
def test_bad_acknowledgements_name_the_problem(mutate, path):
    bundle = json.loads(next(EXAMPLES.glob("*.json")).read_bytes())
    mutate(bundle)
    with pytest.raises(MessageError) as exc:
        parse_ack(json.dumps(bundle).encode())
    assert exc.value.path == path


def test_built_ack_round_trips_and_is_deterministic():
    ids = MessageIds("b-1", "h-1", "care-communication-message")
    a = build_ack(
        ids,
        "fatal-error",
        sender_endpoint="x",
        receiver_endpoint="y",
        error_code="MSG_VALUESET_VALUE_UNKNOWN",
    )
    b = build_ack(ids, "fatal-error", sender_endpoint="x", receiver_endpoint="y")
    assert a["id"] == b["id"] and a["entry"][0]["resource"]["id"] == b["entry"][0]["resource"]["id"]
    parsed = parse_ack(json.dumps(a).encode())
    assert (parsed.acknowledged_id, parsed.code) == ("h-1", "fatal-error")
    assert "MSG_VALUESET_VALUE_UNKNOWN" in parsed.diagnostics


def test_resend_copy_keeps_every_id_but_the_bundles():
    original = {
        "resourceType": "Bundle",
        "id": "b-1",
        "type": "message",
        "timestamp": "t0",
        "entry": [
            {
                "resource": {
                    "resourceType": "MessageHeader",
                    "id": "h-1",
                    "eventCoding": {"code": "x"},
                }
            }
        ],
    }
    body = json.dumps(original).encode()
    first, second = json.loads(resend_copy(body, 1)), json.loads(resend_copy(body, 2))
    assert first["id"] != "b-1" and first["id"] != second["id"]
    assert first["id"] == json.loads(resend_copy(body, 1))["id"], "deterministic per resend"
    assert message_ids(first).header_id == "h-1"
    assert first["timestamp"] != "t0"


def test_backoff_grows_with_jitter_and_a_cap():
    rng = random.Random(1)
    waits = [backoff_s(n, 1.0, 30.0, rng) for n in range(1, 10)]
    assert 0.5 <= waits[0] <= 1.0 and 4.0 <= waits[3] <= 8.0
    assert max(waits) <= 30.0 and waits[-1] >= 15.0
    assert len({round(w, 6) for w in waits}) == len(waits)


# --- the acknowledgement tracker -------------------------------------------------------------


class FakeRecorder:
    def __init__(self) -> None:
        self.audits: list[AuditRecord] = []
        self.dead: list[tuple[str, str, str]] = []
        self.alerts: list[str] = []

    async def audit(self, record, key):
        self.audits.append(record)

    async def alert(self, reason, **fields):
        self.alerts.append(reason)

    async def dead_letter(self, record, subscriber, reason, attempt=0):
        self.dead.append((record.message_id, subscriber, reason))


def _record(mid: str) -> OutRecord:
    return OutRecord("out.municipality.0751", 0, 7, b"k", b"{}", {"stafet.message_id": mid}, 0)


def _tracker(clock: list[float], resent: list[tuple[str, int]]):
    recorder = FakeRecorder()

    async def resend(sid, record, n):
        resent.append((record.message_id, n))
        return "HTTP 200"

    async def fetch(pending):
        return _record(pending.message_id)

    tracker = AckTracker(
        recorder,
        {"aarhus": AARHUS, "odense": ODENSE},
        timeout_s=1800,
        max_resends=2,
        resend=resend,
        fetch=fetch,
        clock=lambda: clock[0],
    )
    return tracker, recorder


def _ack(mid: str, code: str):
    from stafet.medcom.acknowledgement import Ack

    return Ack(MessageIds("ab", "ah", "acknowledgement-message"), mid, code, "")  # type: ignore[arg-type]


def _signed(tracker, mid: str, code: str, secret: str = AARHUS, *, age_s: float = 0.0):
    """on_ack as the delivery process calls it: the body and the sender's signature headers
    (Standard Webhooks, webhook-id = the acknowledgement's own MessageHeader.id "ah"), signed
    ``age_s`` seconds before the tracker's clock."""
    body = f"ack of {mid}".encode()
    h = signed_headers(secret, "ah", body, now=tracker._clock() - age_s)
    return tracker.on_ack(_ack(mid, code), body, h["webhook-signature"], h["webhook-timestamp"])


def test_no_ack_means_two_resends_30_minutes_apart_then_dead_letter():
    clock, resent = [0.0], []
    tracker, recorder = _tracker(clock, resent)
    tracker.expect("aarhus", _record("m1"))
    tracker.expect("kafka-reader", _record("m2"))  # not tracked
    assert asyncio.run(tracker.check()) == 0
    for minute in (29, 30, 59, 60, 90):
        clock[0] = minute * 60.0
        asyncio.run(tracker.check())
    assert resent == [("m1", 1), ("m1", 2)]
    assert recorder.dead == [("m1", "aarhus", "no acknowledgement after 2 resends (1800 s apart)")]
    assert [a.action for a in recorder.audits] == ["resent", "resent"]
    clock[0] = 10_000.0
    asyncio.run(tracker.check())
    assert len(resent) == 2 and len(recorder.dead) == 1, "nothing after the dead letter"


def test_ok_ack_stops_the_clock_even_when_it_comes_before_the_delivered_line():
    clock, resent = [0.0], []
    tracker, recorder = _tracker(clock, resent)
    asyncio.run(_signed(tracker, "m1", "ok"))  # the receiver was faster than our audit
    tracker.expect("aarhus", _record("m1"))
    clock[0] = 4000.0
    asyncio.run(tracker.check())
    assert resent == [] and recorder.dead == []
    assert recorder.audits[0].action == "ack-ok"


def test_transient_error_resends_now_and_fatal_error_dead_letters():
    clock, resent = [0.0], []
    tracker, recorder = _tracker(clock, resent)
    tracker.expect("aarhus", _record("m1"))
    tracker.expect("aarhus", _record("m2"))
    asyncio.run(_signed(tracker, "m1", "transient-error"))
    asyncio.run(tracker.check())
    assert resent == [("m1", 1)]
    asyncio.run(_signed(tracker, "m2", "fatal-error"))
    assert [d[0] for d in recorder.dead] == ["m2"]
    assert "fatal-error" in recorder.dead[0][2]


def test_state_is_rebuilt_from_the_audit_trail():
    clock, resent = [10_000.0], []
    tracker, _ = _tracker(clock, resent)
    rec = _record("m1")
    trail = [
        rec.audit("delivered", "aarhus", at="1970-01-01T00:00:00+00:00"),
        rec.audit("resent", "aarhus", at="1970-01-01T02:00:00+00:00"),
        _record("m2").audit("delivered", "aarhus", at="1970-01-01T00:00:00+00:00"),
        AuditRecord(action="ack-ok", subscriber="", message_id="m2"),
    ]
    for line in trail:
        tracker.replay(line, b"k")
    assert set(tracker.pending) == {"m1"} and tracker.pending["m1"].resends == 1
    asyncio.run(tracker.check())  # overdue: the second and last resend
    assert resent == [("m1", 2)]


# --- the audit summary ------------------------------------------------------------------------


def test_summary_one_row_per_recipient_with_ack_and_masked_recipient():
    rec = OutRecord(
        "out.letter",
        0,
        1,
        b"k",
        b"",
        {
            "stafet.message_id": "m1",
            "stafet.kind": "rejection",
            "stafet.referral_id": "R1",
            "stafet.recipient": "urn:oid:1.2.208.176.1.2|1502779995",
            "stafet.recipient_kind": "guardian",
        },
        0,
    )
    lines = [
        rec.audit("attempt-failed", "letters", at="t1"),
        rec.audit("delivered", "letters", at="t2"),
        AuditRecord(action="ack-ok", subscriber="", message_id="m1", at="t3"),
    ]
    decoded = [AuditRecord.decode(line.encode()) for line in lines]
    assert "1502779995" not in decoded[0].recipient
    [row] = summarize(select([(b"k", r) for r in decoded], referral_id="R1"))
    assert (row["subscriber"], row["delivered_at"], row["ack"], row["ack_at"], row["status"]) == (
        "letters",
        "t2",
        "ok",
        "t3",
        "acknowledged",
    )
    assert select([(b"k", r) for r in decoded], referral_id="other") == []
    assert len(select([(b"k", r) for r in decoded], patient_key="k")) == 3


def test_an_acknowledgement_counts_only_when_the_subscriber_signed_it():
    clock, resent = [0.0], []
    tracker, recorder = _tracker(clock, resent)
    tracker.expect("aarhus", _record("m1"))
    asyncio.run(tracker.on_ack(_ack("m1", "ok"), b"forged", None, None))  # unsigned
    asyncio.run(_signed(tracker, "m1", "fatal-error", secret=ODENSE))  # another subscriber
    asyncio.run(_signed(tracker, "m1", "ok", secret=whsec("wrong")))
    assert "m1" in tracker.pending and recorder.dead == []
    assert [a.action for a in recorder.audits] == ["ack-unverified"] * 3
    assert len(recorder.alerts) == 3
    asyncio.run(_signed(tracker, "m1", "ok"))
    assert "m1" not in tracker.pending and recorder.audits[-1].action == "ack-ok"


def test_a_fatal_error_before_our_delivered_line_still_dead_letters():
    clock, resent = [0.0], []
    tracker, recorder = _tracker(clock, resent)
    asyncio.run(_signed(tracker, "m1", "fatal-error"))
    assert recorder.dead == []
    tracker.expect("aarhus", _record("m1"))
    asyncio.run(tracker.check())
    assert [d[0] for d in recorder.dead] == ["m1"] and resent == []
    assert "fatal-error" in recorder.dead[0][2]


def test_an_ack_that_arrives_during_a_resend_is_not_followed_by_a_dead_letter():
    clock, resent = [0.0], []
    tracker, recorder = _tracker(clock, resent)

    async def scenario():
        tracker.expect("aarhus", _record("m1"))
        clock[0] = 1800.0
        original = tracker._resend

        async def slow_resend(sid, record, n):
            await _signed(tracker, "m1", "ok")  # acknowledged while the resend is on the wire
            return await original(sid, record, n)

        tracker._resend = slow_resend
        await tracker.check()
        clock[0] = 10_000.0
        await tracker.check()

    asyncio.run(scenario())
    assert resent == [("m1", 1)] and recorder.dead == [] and "m1" in tracker.finished


def test_one_system_may_serve_two_subscribers_with_one_secret():
    recorder, resent = FakeRecorder(), []

    async def resend(sid, record, n):
        resent.append(n)
        return ""

    async def fetch(p):
        return _record(p.message_id)

    tracker = AckTracker(
        recorder,
        {"gp-1": SHARED, "gp-2": SHARED},
        timeout_s=1800,
        max_resends=2,
        resend=resend,
        fetch=fetch,
    )
    tracker.expect("gp-2", _record("m1"))
    asyncio.run(_signed(tracker, "m1", "ok", secret=SHARED))
    assert "m1" in tracker.finished and recorder.audits[-1].subscriber == "gp-2"
