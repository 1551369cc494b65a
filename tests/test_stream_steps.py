"""The stream steps as pure functions: what one record produces, what the state keeps, when a
record is dead-lettered instead (an output too large for its topic), and the referral timers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from demo.hl7_builder import Hospital, Provider, adt, medcom_test_patients, referral_message
from stafet.config import Settings
from stafet.kafka.topics import (
    ALERTS_OPERATOR,
    DLQ_NOTIFY,
    DLQ_REFERRAL,
    EVENTS_ENCOUNTER,
    EVENTS_REFERRAL,
    H_REASON,
    INDEX_REFERRAL,
    TIMERS_REFERRAL,
)
from stafet.model import ReferralEvent
from stafet.schemas.codec import decode
from stafet.streams.app import Stage, sampled
from stafet.streams.normalize import normalize_hl7
from stafet.streams.notify import notify, prune
from stafet.streams.records import Inbound, Output
from stafet.streams.referrals import ReferralStep
from stafet.streams.staged_state import StagedState
from stafet.streams.timers import TimerBook

from .test_referral_state import BUC, FAM, GP, PPR

SETTINGS = Settings(patient_key_secret="unit-test", validate_every=1)
CHILD = medcom_test_patients()["RikkeBerggren"]
HOSPITAL = Hospital("BUC Test", "600000000000099")


class DictState:
    """quixstreams' State, as a dict (a unit test may fake the collaborator)."""

    def __init__(self) -> None:
        self.data: dict = {}

    def get(self, key, default=None):
        return self.data.get(key, default)

    def set(self, key, value):
        self.data[key] = json.loads(json.dumps(value))  # what the store keeps is JSON

    def delete(self, key):
        self.data.pop(key, None)

    def exists(self, key):
        return key in self.data


class Limits:
    def __init__(self, **limits: int) -> None:
        self.limits = limits

    def limit(self, topic: str) -> int:
        return self.limits.get(topic, 1_048_588)


def inbound(topic: str, value: bytes, key: bytes = b"k", offset: int = 7) -> Inbound:
    return Inbound(topic, 0, offset, key, value, {})


def encounter(trigger: str = "A01", control: str = "C1") -> Inbound:
    raw = adt(
        trigger,
        CHILD,
        hospital=HOSPITAL,
        control_id=control,
        visit="V1",
        event_time="202611231000",
        admit_time="202611230800",
    )
    [out] = normalize_hl7(inbound("ingest.hl7v2", raw), SETTINGS)
    assert out.topic == EVENTS_ENCOUNTER
    return inbound(EVENTS_ENCOUNTER, out.value, out.key)


def test_staged_state_reads_through_and_writes_only_on_commit():
    real = DictState()
    real.set("a", 1)
    staged = StagedState(real)
    staged.set("b", 2)
    staged.delete("a")
    assert (staged.get("a"), staged.get("b"), staged.get("c", 3)) == (None, 2, 3)
    assert real.data == {"a": 1}
    staged.commit()
    assert real.data == {"b": 2}


def test_a_notification_and_its_state_are_one_step_and_a_replay_sends_nothing():
    state, record = DictState(), encounter()
    stage = Stage("notify", DLQ_NOTIFY, lambda r, s: notify(r, s, SETTINGS), Limits())
    [out] = stage.process(record, state)
    assert out.topic == "out.municipality.0751"
    assert state.data["visits"]["V1"]["sent"] == [
        json.loads(out.value)["entry"][0]["resource"]["id"]
    ]
    assert stage.process(record, state) == []  # the same event again: already sent


def test_an_output_too_large_for_its_topic_dead_letters_the_input_and_alerts_without_state():
    state, record = DictState(), encounter()
    stage = Stage(
        "notify",
        DLQ_NOTIFY,
        lambda r, s: notify(r, s, SETTINGS),
        Limits(**{"out.municipality.0751": 2000}),
    )
    dlq, alert = stage.process(record, state)
    assert dlq.topic == DLQ_NOTIFY and dlq.value == record.value
    reason = dlq.headers[H_REASON].decode()
    assert "out.municipality.0751" in reason and "max.message.bytes 2000" in reason
    assert alert.topic == ALERTS_OPERATOR
    assert "events.encounter/0/7" in json.loads(alert.value)["reason"]
    assert state.data == {}  # a replay of the dead letter (after the limit is raised) is sent


def test_a_bad_record_is_a_dead_letter_not_an_exception():
    [out] = notify(inbound(EVENTS_ENCOUNTER, b"\x00garbage"), DictState(), SETTINGS)
    assert out.topic == DLQ_NOTIFY and out.headers[H_REASON]


def test_finished_stays_are_pruned_after_the_retention():
    now = datetime(2026, 12, 1, tzinfo=UTC)
    visits = {
        "open": {"sent": ["a"]},
        "recent": {"sent": ["b"], "ended_at": (now - timedelta(days=1)).isoformat()},
        "old": {"sent": ["c"], "ended_at": (now - timedelta(days=100)).isoformat()},
    }
    assert set(prune(visits, now=now, keep=timedelta(days=90))) == {"open", "recent"}


def test_validation_sampling_is_deterministic():
    pick = sampled(20)
    records = [inbound("t", b"", offset=i) for i in range(400)]
    chosen = [r.offset for r in records if pick(r)]
    assert chosen == [r.offset for r in records if pick(r)]
    assert 5 <= len(chosen) <= 40
    assert all(sampled(1)(r) for r in records[:5])


# --- referral timers ------------------------------------------------------------------------


def referral(trigger: str, n: int = 0, status: str = "", at: str = "202611231000") -> Inbound:
    providers = [GP, BUC, PPR, FAM] if trigger == "REF^I12" else [BUC]
    raw = referral_message(
        trigger,
        CHILD,
        referral_id="HEN-T",
        control_id=f"T{trigger}{n}",
        event_time=at,
        providers=providers,
        status=status,
        guardians=[("MTH", None, "2911829996")] if trigger == "REF^I12" else [],
        reason=("missing-ppv", "Mangler PPV") if status == "R" else None,
        contact=("Holm", "Hanne", "00000001"),
    )
    [out] = normalize_hl7(inbound("ingest.hl7v2", raw), SETTINGS)
    assert out.topic == EVENTS_REFERRAL
    return inbound(EVENTS_REFERRAL, out.value, out.key)


def timers(outputs: list[Output]) -> list[Output]:
    return [o for o in outputs if o.topic == TIMERS_REFERRAL]


def test_a_submitted_referral_sets_its_deadline_timer_and_a_decision_clears_it():
    step, state = ReferralStep(SETTINGS), DictState()
    submitted = step(referral("REF^I12"), state)
    [timer] = timers(submitted)
    due = json.loads(timer.value)
    assert timer.key.decode().endswith("|HEN-T")
    assert datetime.fromisoformat(due["due_at"]) - datetime.fromisoformat(
        due["since"]
    ) == timedelta(days=30)
    outputs = step(referral("RRI^I12", 1, status="R"), state)
    assert [t.value for t in timers(outputs)] == [None]  # tombstone: decided, no deadline
    messages = [o for o in outputs if o.topic not in (TIMERS_REFERRAL, INDEX_REFERRAL)]
    assert len(messages) == 5  # GP, kommune, PPR, FAM, mother
    # the durable referral index follows the status, in the same transaction
    assert [
        (o.key.split(b"|")[0], json.loads(o.value)["status"])
        for o in submitted + outputs
        if o.topic == INDEX_REFERRAL
    ] == [(b"HEN-T", "submitted"), (b"HEN-T", "rejected")]


def test_a_tick_after_the_deadline_alerts_once_and_clears_the_timer():
    step, state = ReferralStep(SETTINGS), DictState()
    [timer] = timers(step(referral("REF^I12", at="202601011000"), state))  # long overdue
    due = json.loads(timer.value)
    from stafet.streams.referrals import tick_output

    tick = tick_output(due["patient_key"], due["referral_id"], due["since"])
    outputs = step(inbound(EVENTS_REFERRAL, tick.value, tick.key), state)
    kinds = sorted(
        o.headers.get("stafet.kind", b"").decode() for o in outputs if o.topic != TIMERS_REFERRAL
    )
    assert kinds == ["deadline", "deadline"]  # the referrer and the municipality
    assert [t.value for t in timers(outputs)] == [None]
    assert step(inbound(EVENTS_REFERRAL, tick.value, tick.key), state) == []  # once


def test_a_parked_decision_has_an_expiry_timer():
    step, state = ReferralStep(SETTINGS), DictState()
    [timer] = timers(step(referral("RRI^I12", 1, status="A"), state))
    due = json.loads(timer.value)
    assert due["since"] == "parked"
    assert state.data["book"]["pending"]["HEN-T"]


def test_timer_book_ticks_what_is_due_once_per_retry_and_forgets_cleared_timers():
    book = TimerBook(retry_s=30)
    now = datetime(2026, 12, 1, tzinfo=UTC)
    book.update(b"a", json.dumps({"due_at": (now - timedelta(seconds=1)).isoformat()}).encode())
    book.update(b"b", json.dumps({"due_at": (now + timedelta(days=1)).isoformat()}).encode())
    assert len(book.due(now, clock=100.0)) == 1
    assert book.due(now, clock=110.0) == []  # ticked 10 s ago
    assert len(book.due(now, clock=131.0)) == 1  # still set: tick again
    book.update(b"a", None)
    assert book.due(now, clock=1000.0) == []


# --- the listener's canonical event ---------------------------------------------------------


def test_the_carried_event_is_used_as_is_and_equals_what_parsing_would_give():
    from stafet.inbound.canonical import carry
    from stafet.inbound.hl7v2_referral import parse_hl7v2
    from stafet.kafka.topics import H_EVENT_ID

    raw = adt(
        "A03",
        CHILD,
        hospital=HOSPITAL,
        control_id="C9",
        visit="V9",
        event_time="202611231000",
        admit_time="202611230800",
        discharge_time="202611231500",
    )
    event = parse_hl7v2(raw, secret="unit-test")
    headers = {H_EVENT_ID: event.event_id.encode(), **dict(carry(event))}
    key = event.patient_key.encode()
    [fast] = normalize_hl7(Inbound("ingest.hl7v2", 0, 1, key, raw, headers), SETTINGS)
    [parsed] = normalize_hl7(inbound("ingest.hl7v2", raw), SETTINGS)
    assert (fast.topic, fast.key, fast.value, fast.headers) == (
        parsed.topic,
        parsed.key,
        parsed.value,
        parsed.headers,
    )
    # not parsed again: a carried event wins even over bytes that would not parse
    [kept] = normalize_hl7(Inbound("ingest.hl7v2", 0, 1, key, b"garbage", headers), SETTINGS)
    assert kept.value == parsed.value


def test_an_event_carried_by_another_mapping_version_is_parsed_again():
    from stafet.inbound.canonical import H_CANONICAL_VERSION, carry
    from stafet.inbound.hl7v2_referral import parse_hl7v2
    from stafet.kafka.topics import H_EVENT_ID

    raw = adt(
        "A01",
        CHILD,
        hospital=HOSPITAL,
        control_id="C8",
        visit="V8",
        event_time="202611231000",
        admit_time="202611230800",
    )
    event = parse_hl7v2(raw, secret="unit-test")
    headers = {
        H_EVENT_ID: event.event_id.encode(),
        **dict(carry(event)),
        H_CANONICAL_VERSION: b"an-older-stafet",
    }
    [out] = normalize_hl7(
        Inbound("ingest.hl7v2", 0, 1, event.patient_key.encode(), b"garbage", headers), SETTINGS
    )
    assert out.topic == "dlq.normalize"  # it parsed the bytes (and they are not HL7)


# --- addressing: the party directory (deploy/directory.toml) ----------------------------------


def test_a_hospital_without_ean_is_a_dead_letter_and_an_alert_not_a_bundle():
    raw = adt(
        "A01",
        CHILD,
        hospital=Hospital("BUP Sydhavn", "600000000000095"),
        control_id="NOEAN1",
        visit="V9",
        event_time="202611231000",
        admit_time="202611230800",
    )
    [event] = normalize_hl7(inbound("ingest.hl7v2", raw), SETTINGS)
    dlq, alert = notify(inbound(EVENTS_ENCOUNTER, event.value, event.key), DictState(), SETTINGS)
    assert dlq.topic == DLQ_NOTIFY and alert.topic == ALERTS_OPERATOR
    assert "hospital/600000000000095" in dlq.headers[H_REASON].decode()
    assert "no EAN location number" in json.loads(alert.value)["reason"]


def test_every_notification_carries_sor_and_ean_from_the_directory():
    [out] = notify(encounter(), DictState(), SETTINGS)
    bundle = json.loads(out.value)
    orgs = [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Organization"
    ]
    assert sorted(i["value"] for o in orgs for i in o["identifier"]) == sorted(
        [
            "5799910075103",
            "6000000007510010",  # Aarhus Kommune's central unit
            "5799920000997",
            "600000000000099",
        ]
    )  # BUC Test
    assert bundle["entry"][0]["resource"]["destination"][0]["endpoint"].endswith(
        "#id=6000000007510010"
    )


def test_an_unaddressable_recipient_is_dead_lettered_and_the_others_are_sent():
    """The GP without an EAN gets no Bundle (dead letter + alert); everyone else gets theirs."""
    no_ean_gp = Provider("RP", "Lægehuset Uden Lokationsnummer", "100009", "YDER")
    step, state = ReferralStep(SETTINGS), DictState()

    def ref(trigger: str, n: int, status: str = "") -> Inbound:
        raw = referral_message(
            trigger,
            CHILD,
            referral_id="HEN-U",
            control_id=f"U{n}",
            event_time="202611231000",
            status=status,
            providers=[no_ean_gp, BUC] if trigger == "REF^I12" else [BUC],
            reason=("missing-ppv", "Mangler PPV") if status == "R" else None,
            contact=("Holm", "Hanne", "00000001"),
        )
        [out] = normalize_hl7(inbound("ingest.hl7v2", raw), SETTINGS)
        return inbound(EVENTS_REFERRAL, out.value, out.key)

    receipt = [
        o
        for o in step(ref("REF^I12", 1), state)
        if o.topic not in (TIMERS_REFERRAL, INDEX_REFERRAL)
    ]
    assert [o.topic for o in receipt] == [DLQ_REFERRAL, ALERTS_OPERATOR]
    assert "gp/100009" in receipt[0].headers[H_REASON].decode()
    outputs = [
        o
        for o in step(ref("RRI^I12", 2, "R"), state)
        if o.topic not in (TIMERS_REFERRAL, INDEX_REFERRAL)
    ]
    topics = sorted(o.topic for o in outputs)
    # the municipality, and PPR + family department from the directory (the referral names
    # none), get their rejection; the GP's is a dead letter with an alert
    assert topics == sorted(
        [
            DLQ_REFERRAL,
            ALERTS_OPERATOR,
            "out.municipality.0751",
            "out.municipality.0751",
            "out.municipality.0751",
        ]
    )
    eans = sorted(
        o.headers["stafet.recipient_ean"].decode() for o in outputs if o.topic.startswith("out.")
    )
    assert eans == ["5799910075103", "5799910075110", "5799910075127"]


def test_a_per_recipient_dead_letter_sent_back_after_the_fix_yields_that_message(tmp_path):
    """gp/100009 has no EAN: its receipt is a dead letter. Once the directory gives it one, the
    dead letter sent back to events.referral produces exactly the receipt, with the ids it would
    have had — not a duplicate skip, and nobody else is told again. A cancellation is applied
    even though its letter to that GP cannot be sent."""
    from stafet.kafka.topics import H_REDELIVER
    from stafet.medcom.carecommunication import message_ids

    directory = tmp_path / "directory.toml"
    shipped = (Path(__file__).resolve().parents[1] / "deploy" / "directory.toml").read_text("utf-8")
    directory.write_text(shipped, encoding="utf-8")
    settings = SETTINGS.model_copy(update={"directory_file": directory})
    step, state = ReferralStep(settings), DictState()
    no_ean_gp = Provider("RP", "Lægehuset Uden Lokationsnummer", "100009", "YDER")
    raw = referral_message(
        "REF^I12",
        CHILD,
        referral_id="HEN-R",
        control_id="R1",
        event_time="202611231000",
        providers=[no_ean_gp, BUC],
    )
    [event] = normalize_hl7(inbound("ingest.hl7v2", raw), settings)
    outputs = step(inbound(EVENTS_REFERRAL, event.value, event.key), state)
    [dead] = [o for o in outputs if o.topic == DLQ_REFERRAL]
    assert dead.headers[H_REDELIVER].startswith(b"receipt|")
    assert b"100009" not in dead.headers[H_REDELIVER]  # a digest, not the identifier
    again = step(Inbound(EVENTS_REFERRAL, 0, 9, dead.key, dead.value, dict(dead.headers)), state)
    assert [o.topic for o in again] == [DLQ_REFERRAL, ALERTS_OPERATOR]  # not fixed yet

    fixed = shipped.replace(
        'name = "Lægehuset Uden Lokationsnummer (fiktiv)"\nsor = "6000000002100009"',
        'name = "Lægehuset Uden Lokationsnummer (fiktiv)"\n'
        'sor = "6000000002100009"\nean = "5799931000092"',
    )
    assert fixed != shipped
    import os

    directory.write_text(fixed, encoding="utf-8")
    os.utime(directory, ns=(1, 1))  # a new modification time, however fast the test runs
    [receipt] = step(
        Inbound(EVENTS_REFERRAL, 0, 10, dead.key, dead.value, dict(dead.headers)), state
    )
    assert receipt.topic == "out.referrer" and receipt.headers["stafet.kind"] == b"receipt"
    applied = ReferralEvent.from_record(decode("referral_event", dead.value))
    assert (
        receipt.headers["stafet.message_id"].decode()
        == message_ids(applied.event_id, applied.referrer, "receipt")[1]
    )  # the ids it would have had
    assert receipt.headers["stafet.recipient_ean"] == b"5799931000092"

    cancel = referral_message(
        "REF^I14",
        CHILD,
        referral_id="HEN-R",
        control_id="R2",
        event_time="202611231100",
        providers=[BUC],
    )
    [event] = normalize_hl7(inbound("ingest.hl7v2", cancel), settings)
    step(inbound(EVENTS_REFERRAL, event.value, event.key, offset=11), state)
    assert state.get("book")["referrals"]["HEN-R"]["status"] == "cancelled"
