"""The referral state machine and who must be told what — pure functions, no Kafka.

State per referral is a JSON-able dict (it lives in the worker's RocksDB state). :func:`apply` takes the
current state and one canonical event and returns the new state plus the deliveries to make;
a step that must wait (a decision before its referral) raises :class:`Park`; a step that can
never be right (a second decision) raises :class:`Refuse` with the reason for the DLQ.

Fan-out (DOMAIN.md §3): submitted → receipt to the referrer; accepted / expired → status letter
to the referrer; forwarded → status letter to the referrer and a message to the new unit;
**rejected → the referrer, the municipality of residence (its central mailbox), PPR and the
family department (named in the referral, else the party directory's), and each guardian**, one
message each; a contact person change → the same parties; modified / cancelled → everyone
already told (``told``); assessment → results letter to the referrer and the municipality; no
decision within the assessment guarantee → deadline alert to the referrer and the municipality.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from stafet.model import Party, PatientInfo, ReferralEvent
from stafet.schemas.municipalities import municipality
from stafet.systems import MUNICIPALITY_SYSTEM

OPEN = ("submitted", "forwarded")  # waiting for a decision
DECIDED = ("accepted", "rejected", "expired")
ENDED = ("rejected", "expired", "cancelled")  # no contact person at the unit any more


class Park(Exception):
    """The event must wait (its referral is not known yet)."""


class Refuse(Exception):
    """The event can never be applied; the reason goes to the DLQ."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message to one recipient: kind is receipt | status | rejection | assessment | deadline."""

    recipient: Party
    kind: str


@dataclass(frozen=True, slots=True)
class Applied:
    """An event applied to its referral: the new state, whom to tell, the enriched event."""

    state: dict[str, Any]
    deliveries: tuple[Delivery, ...]
    event: ReferralEvent  # the event enriched with what the state knows (child, parties)


def municipality_party(code: str) -> Party:
    """The municipality's central mailbox as a recipient."""
    found = municipality(code)
    name = f"{found.name} Kommune" if found else f"Kommune {code}"
    return Party(
        kind="municipality", identifier_system=MUNICIPALITY_SYSTEM, identifier=code, name=name
    )


def _party(data: dict[str, Any] | None) -> Party | None:
    return Party(**data) if data else None


def enrich(event: ReferralEvent, state: dict[str, Any]) -> ReferralEvent:
    """A decision names only the referral; the state supplies the child and the parties."""
    child = PatientInfo(**{**state["child"], "given": tuple(state["child"].get("given") or ())})
    if event.child.family or event.child.given:
        child = replace(
            child, family=event.child.family or child.family, given=event.child.given or child.given
        )
    return replace(
        event,
        child=child,
        referrer=event.referrer or _party(state.get("referrer")),
        receiver=event.receiver or _party(state.get("receiver")),
        guardians=event.guardians or tuple(Party(**g) for g in state.get("guardians", [])),
        municipal_units=event.municipal_units
        or tuple(Party(**u) for u in state.get("municipal_units", [])),
    )


def _new_state(event: ReferralEvent) -> dict[str, Any]:
    record = event.to_record()
    return {
        "referral_id": event.referral_id,
        "status": "submitted",
        "submitted_at": event.event_time,
        "child": record["child"],
        "referrer": record["referrer"],
        "receiver": record["receiver"],
        "guardians": record["guardians"],
        "municipal_units": record["municipal_units"],
        "history": [],
        "deadline_alerted": False,
    }


def _with_history(state: dict[str, Any], event: ReferralEvent, status: str) -> dict[str, Any]:
    entry = {
        "event_id": event.event_id,
        "kind": event.kind,
        "status": status,
        "at": event.event_time,
    }
    return {**state, "status": status, "history": [*state["history"], entry]}


def seen(state: dict[str, Any] | None, event_id: str) -> bool:
    """True if this event was applied before (a replay): it must not fan out again."""
    if not state:
        return False
    return any(h["event_id"] == event_id for h in state["history"])


def apply(
    state: dict[str, Any] | None,
    event: ReferralEvent,
    *,
    now: datetime,
    deadline: timedelta,
    units_of: Callable[[str], tuple[Party, ...]] = lambda code: (),
) -> Applied:
    """The next state and the deliveries for ``event``; raises :class:`Park` or :class:`Refuse`.

    The state remembers everyone who was sent something (``told``): a modification or a
    cancellation reaches exactly them."""
    outcome = _apply(state, event, now=now, deadline=deadline, units_of=units_of)
    if not outcome.deliveries:
        return outcome
    told = {(p["identifier_system"], p["identifier"]): p for p in outcome.state.get("told", [])}
    for delivery in outcome.deliveries:
        told.setdefault(
            (delivery.recipient.identifier_system, delivery.recipient.identifier),
            asdict(delivery.recipient),
        )
    return replace(outcome, state={**outcome.state, "told": list(told.values())})


def _apply(
    state: dict[str, Any] | None,
    event: ReferralEvent,
    *,
    now: datetime,
    deadline: timedelta,
    units_of: Callable[[str], tuple[Party, ...]],
) -> Applied:
    if event.kind == "submitted":
        if state is not None and state["status"] != "cancelled":
            raise Refuse(
                f"referral {event.referral_id} was already submitted "
                f"(status {state['status']}); send a modification (REF^I13) instead"
            )
        new = _with_history(_new_state(event), event, "submitted")
        return Applied(new, _to_referrer(new, "receipt"), event)
    if event.kind == "tick":
        return _tick(state, event, now=now, deadline=deadline)
    if state is None:
        if event.kind == "decision":
            raise Park(f"decision for unknown referral {event.referral_id}")
        raise Refuse(f"{event.kind} for unknown referral {event.referral_id}")
    enriched = enrich(event, state)
    status = state["status"]
    if event.kind == "modified":
        record = enriched.to_record()
        new = {**state, **{k: record[k] for k in ("referrer", "guardians", "municipal_units")}}
        return Applied(_with_history(new, event, status), _to_told(state, "modified"), enriched)
    if event.kind == "cancelled":
        if status in DECIDED:
            raise Refuse(
                f"referral {event.referral_id} is already {status}; it cannot be cancelled"
            )
        return Applied(
            _with_history(state, event, "cancelled"), _to_told(state, "cancelled"), enriched
        )
    if event.kind == "contact":
        if event.contact is None:
            raise Refuse(
                f"a contact person change for referral {event.referral_id} names no contact"
            )
        if status in ENDED:
            raise Refuse(
                f"a contact person change for referral {event.referral_id}, which is "
                f"{status}: nobody is told"
            )
        new = {**_with_history(state, event, status), "contact": asdict(event.contact)}
        return Applied(new, every_party(enriched, units_of, "contact"), enriched)
    if event.kind == "assessment":
        if status not in ("accepted", "assessed"):
            raise Refuse(
                f"assessment for referral {event.referral_id} which is {status}, not accepted"
            )
        new = _with_history(state, event, "assessed")
        recipients = (
            *_to_referrer(new, "assessment"),
            Delivery(municipality_party(state["child"]["municipality_code"]), "assessment"),
        )
        return Applied(new, recipients, enriched)
    # a triage decision
    assert event.decision is not None
    if status not in OPEN:
        raise Refuse(
            f"referral {event.referral_id} is already {status}: a second decision "
            f"({event.decision.status}) is not applied"
        )
    decided = event.decision.status
    new = _with_history(state, event, decided)
    if decided == "forwarded" and event.decision.forwarded_to is not None:
        new["receiver"] = asdict(event.decision.forwarded_to)
        # the forwarding unit writes the letters; the new unit is the receiver from now on and
        # is told itself (it must triage the referral)
        enriched = replace(enriched, receiver=_party(state.get("receiver")))
        return Applied(
            new,
            (*_to_referrer(new, "status"), Delivery(event.decision.forwarded_to, "forward")),
            enriched,
        )
    if decided != "rejected":
        return Applied(new, _to_referrer(new, "status"), enriched)
    return Applied(new, rejection_recipients(enriched, units_of), enriched)


def rejection_recipients(
    event: ReferralEvent, units_of: Callable[[str], tuple[Party, ...]] = (lambda code: ())
) -> tuple[Delivery, ...]:
    """Everyone who must pick up the ball when a referral is rejected."""
    return every_party(event, units_of, "rejection")


def every_party(
    event: ReferralEvent, units_of: Callable[[str], tuple[Party, ...]], kind: str
) -> tuple[Delivery, ...]:
    """The referrer, the municipality, PPR and the family department (from ``units_of``, the
    party directory, where the referral names none of its own) and each guardian, once each."""
    parties: list[Party] = []
    if event.referrer is not None:
        parties.append(event.referrer)
    parties.append(municipality_party(event.child.municipality_code))
    parties.extend(event.municipal_units)
    named = {u.kind for u in event.municipal_units}
    parties.extend(u for u in units_of(event.child.municipality_code) if u.kind not in named)
    parties.extend(event.guardians)
    unique: dict[tuple[str, str], Party] = {}
    for party in parties:
        unique.setdefault((party.identifier_system, party.identifier), party)
    return tuple(Delivery(p, kind) for p in unique.values())


def _to_told(state: dict[str, Any], kind: str) -> tuple[Delivery, ...]:
    """Everyone already sent something about the referral, but the unit now holding it."""
    receiver = state.get("receiver") or {}
    mine = (receiver.get("identifier_system"), receiver.get("identifier"))
    return tuple(
        Delivery(Party(**p), kind)
        for p in state.get("told", [])
        if (p["identifier_system"], p["identifier"]) != mine
    )


def _to_referrer(state: dict[str, Any], kind: str) -> tuple[Delivery, ...]:
    referrer = _party(state.get("referrer"))
    return (Delivery(referrer, kind),) if referrer else ()


def _tick(
    state: dict[str, Any] | None, event: ReferralEvent, *, now: datetime, deadline: timedelta
) -> Applied:
    """Deadline check: alert once when the assessment guarantee has passed without a decision."""
    if state is None or state["status"] not in OPEN or state.get("deadline_alerted"):
        return Applied(state or {}, (), event)
    if now - datetime.fromisoformat(state["submitted_at"]) < deadline:
        return Applied(state, (), event)
    enriched = enrich(event, state)
    new = {**state, "deadline_alerted": True}
    recipients = (
        *_to_referrer(state, "deadline"),
        Delivery(municipality_party(state["child"]["municipality_code"]), "deadline"),
    )
    return Applied(new, recipients, enriched)


def deadline_at(state: dict[str, Any], deadline: timedelta) -> datetime | None:
    """When the referral's deadline alert falls due; None once it is decided or alerted."""
    if state.get("status") not in OPEN or state.get("deadline_alerted"):
        return None
    return datetime.fromisoformat(state["submitted_at"]) + deadline


def due(state: dict[str, Any], *, now: datetime, deadline: timedelta) -> bool:
    """Whether the timer should send this referral a tick."""
    at = deadline_at(state, deadline)
    return at is not None and now >= at
