"""The referral state machine: transitions, fan-out recipients, parking, refusals, deadlines."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from demo.hl7_builder import Provider, medcom_test_patients, referral_message
from stafet.inbound.hl7v2_referral import parse_hl7v2
from stafet.model import Party
from stafet.streams.referral_state import Park, Refuse, apply, due, rejection_recipients, seen

CHILD = medcom_test_patients()["RikkeBerggren"]
GP = Provider("RP", "Lægerne i Vestergade", "123456", "YDER")
BUC = Provider("RT", "BUC Aarhus", "600000000000001")
PPR = Provider("PPR", "PPR Aarhus", "6000000007510011")
FAM = Provider("FAM", "Familieafdelingen Aarhus", "6000000007510012")
ODENSE = Provider("RT", "BUA Odense", "600000000000002")
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
DEADLINE = timedelta(days=30)


def event(trigger: str, n: int = 0, status: str = "", **kw):
    guardians = [("GUARD", None, "1502779995"), ("MTH", None, "2911829996")]
    providers = kw.pop("providers", [GP, BUC, PPR, FAM] if trigger == "REF^I12" else [BUC])
    raw = referral_message(
        trigger,
        CHILD,
        referral_id="HEN-1",
        control_id=f"C{trigger}{n}",
        event_time=kw.pop("at", "202611231000"),
        providers=providers,
        guardians=guardians if trigger == "REF^I12" else [],
        status=status,
        reason=("missing-ppv", "Mangler PPV") if status == "R" else None,
        contact=("Holm", "Hanne", "00000001"),
        **kw,
    )
    return parse_hl7v2(raw, secret="test")


def submitted():
    return apply(None, event("REF^I12"), now=NOW, deadline=DEADLINE)


def test_submission_creates_state_and_a_receipt_to_the_referrer():
    outcome = submitted()
    assert outcome.state["status"] == "submitted"
    assert [(d.recipient.kind, d.kind) for d in outcome.deliveries] == [("gp", "receipt")]
    assert seen(outcome.state, outcome.event.event_id)


def test_rejection_tells_referrer_municipality_units_and_each_guardian_once():
    state = submitted().state
    outcome = apply(state, event("RRI^I12", status="R"), now=NOW, deadline=DEADLINE)
    assert outcome.state["status"] == "rejected"
    got = sorted((d.recipient.kind, d.recipient.identifier) for d in outcome.deliveries)
    assert got == sorted(
        [
            ("gp", "123456"),
            ("municipality", "0751"),
            ("ppr", "6000000007510011"),
            ("family-department", "6000000007510012"),
            ("guardian", "1502779995"),
            ("guardian", "2911829996"),
        ]
    )
    assert {d.kind for d in outcome.deliveries} == {"rejection"}
    # the decision names only the referral: the state supplied the child's municipality
    assert outcome.event.child.municipality_code == "0751"


def test_a_party_named_twice_gets_one_message():
    outcome = apply(submitted().state, event("RRI^I12", status="R"), now=NOW, deadline=DEADLINE)
    twice = replace(outcome.event, guardians=outcome.event.guardians + outcome.event.guardians[:1])
    assert len(rejection_recipients(twice)) == 6


@pytest.mark.parametrize(("status", "state_after"), [("A", "accepted"), ("E", "expired")])
def test_other_decisions_send_only_a_status_letter_to_the_referrer(status, state_after):
    outcome = apply(submitted().state, event("RRI^I12", status=status), now=NOW, deadline=DEADLINE)
    assert outcome.state["status"] == state_after
    assert [(d.recipient.kind, d.kind) for d in outcome.deliveries] == [("gp", "status")]


def forward_event():
    """RF1-1 = P with the new unit as PRD RT."""
    return event("RRI^I12", status="P", providers=[ODENSE])


def test_a_forward_tells_the_referrer_and_the_new_unit():
    outcome = apply(submitted().state, forward_event(), now=NOW, deadline=DEADLINE)
    assert outcome.state["status"] == "forwarded"
    assert [(d.recipient.identifier, d.kind) for d in outcome.deliveries] == [
        ("123456", "status"),
        ("600000000000002", "forward"),
    ]
    assert outcome.event.receiver.identifier == "600000000000001"  # the forwarding unit writes
    assert outcome.state["receiver"]["identifier"] == "600000000000002"


def test_a_modification_or_cancellation_tells_everyone_already_told():
    forwarded = apply(submitted().state, forward_event(), now=NOW, deadline=DEADLINE).state
    modified = apply(forwarded, event("REF^I13", 1), now=NOW, deadline=DEADLINE)
    # the referrer got the receipt and the forward's status letter; the new unit holds the
    # referral now, so it is the sender, not a recipient
    assert [(d.recipient.identifier, d.kind) for d in modified.deliveries] == [
        ("123456", "modified")
    ]
    cancelled = apply(modified.state, event("REF^I14", 2), now=NOW, deadline=DEADLINE)
    assert cancelled.state["status"] == "cancelled"
    assert [(d.recipient.identifier, d.kind) for d in cancelled.deliveries] == [
        ("123456", "cancelled")
    ]
    fresh = apply(submitted().state, event("REF^I14", 3), now=NOW, deadline=DEADLINE)
    assert [(d.recipient.kind, d.kind) for d in fresh.deliveries] == [("gp", "cancelled")]


def test_a_contact_person_change_reaches_every_party():
    state = apply(submitted().state, event("RRI^I12", status="A"), now=NOW, deadline=DEADLINE).state
    outcome = apply(state, event("RRI^I12", 4, status="C"), now=NOW, deadline=DEADLINE)
    got = sorted((d.recipient.kind, d.recipient.identifier) for d in outcome.deliveries)
    assert got == sorted(
        [
            ("gp", "123456"),
            ("municipality", "0751"),
            ("ppr", "6000000007510011"),
            ("family-department", "6000000007510012"),
            ("guardian", "1502779995"),
            ("guardian", "2911829996"),
        ]
    )
    assert {d.kind for d in outcome.deliveries} == {"contact"}
    assert outcome.state["status"] == "accepted"
    assert outcome.state["contact"] == {"name": "Hanne Holm", "phone": "00000001", "email": None}
    rejected = apply(
        submitted().state, event("RRI^I12", 5, status="R"), now=NOW, deadline=DEADLINE
    ).state
    with pytest.raises(Refuse, match="which is rejected"):
        apply(rejected, event("RRI^I12", 6, status="C"), now=NOW, deadline=DEADLINE)


def test_directory_units_join_a_rejection_when_the_referral_names_none():
    """The party directory knows the municipality's PPR and family department."""
    no_units = replace(submitted().event, municipal_units=())
    state = apply(None, no_units, now=NOW, deadline=DEADLINE).state
    directory_ppr = Party(
        kind="ppr",
        identifier_system="urn:oid:1.2.208.176.1.1",
        identifier="6000000007510011",
        name="PPR Aarhus Kommune",
    )
    outcome = apply(
        state,
        event("RRI^I12", status="R"),
        now=NOW,
        deadline=DEADLINE,
        units_of=lambda code: (directory_ppr,) if code == "0751" else (),
    )
    assert ("ppr", "6000000007510011") in {
        (d.recipient.kind, d.recipient.identifier) for d in outcome.deliveries
    }
    named = apply(
        submitted().state,
        event("RRI^I12", status="R"),
        now=NOW,
        deadline=DEADLINE,
        units_of=lambda code: (replace(directory_ppr, identifier="6000000007519999"),),
    )
    assert "6000000007519999" not in {d.recipient.identifier for d in named.deliveries}


def test_decision_for_an_unknown_referral_is_parked():
    with pytest.raises(Park):
        apply(None, event("RRI^I12", status="R"), now=NOW, deadline=DEADLINE)


def test_a_second_decision_is_refused_with_the_reason():
    accepted = apply(
        submitted().state, event("RRI^I12", status="A"), now=NOW, deadline=DEADLINE
    ).state
    with pytest.raises(Refuse, match="already accepted"):
        apply(accepted, event("RRI^I12", 1, status="R"), now=NOW, deadline=DEADLINE)


def test_a_forwarded_referral_can_still_be_decided():
    forwarded = apply(
        submitted().state, event("RRI^I12", status="P"), now=NOW, deadline=DEADLINE
    ).state
    outcome = apply(forwarded, event("RRI^I12", 1, status="R"), now=NOW, deadline=DEADLINE)
    assert outcome.state["status"] == "rejected"


def test_resubmitting_an_open_referral_is_refused():
    with pytest.raises(Refuse, match="already submitted"):
        apply(submitted().state, event("REF^I12", 1), now=NOW, deadline=DEADLINE)


def test_deadline_is_due_only_after_the_guarantee_and_only_once():
    state = submitted().state  # submitted 2026-11-23 10:00 local
    assert not due(state, now=NOW, deadline=DEADLINE)
    later = NOW + timedelta(days=31)
    assert due(state, now=later, deadline=DEADLINE)
    decided = apply(state, event("RRI^I12", status="A"), now=NOW, deadline=DEADLINE).state
    assert not due(decided, now=later, deadline=DEADLINE)
