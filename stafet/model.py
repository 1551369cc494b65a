"""The canonical encounter event: what every source is normalised into.

A source (HL7 v2 ADT over MLLP today, FHIR later) is turned into an :class:`EncounterEvent`
once; everything downstream (routing, MedCom notifications) reads only this shape. The Avro
schema ``schemas/encounter_event.avsc`` is the wire form of the same fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

NotificationCode = Literal[
    "STIN",
    "STAA",
    "STOR",
    "SLOR",
    "SLHJ",
    "MORS",
    "RE_STIN",
    "RE_STAA",
    "RE_STOR",
    "RE_SLOR",
    "RE_SLHJ",
    "RE_MORS",
    "AN_STIN",
    "AN_STAA",
    "AN_STOR",
    "AN_SLOR",
    "AN_SLHJ",
    "AN_MORS",
]
EncounterClass = Literal["IMP", "EMER"]
EncounterStatus = Literal["in-progress", "onleave", "finished", "entered-in-error"]


@dataclass(frozen=True, slots=True)
class Organization:
    """A sending or receiving organisation, identified by its SOR code."""

    sor: str
    name: str | None = None
    gln: str | None = None


@dataclass(frozen=True, slots=True)
class PatientInfo:
    """The child (or any patient): CPR plus the minimum the notification may carry."""

    cpr: str
    family: str | None = None
    given: tuple[str, ...] = ()
    birth_date: str | None = None  # YYYY-MM-DD
    gender: str | None = None  # male | female | other | unknown
    deceased: bool = False
    municipality_code: str = ""  # 4 digits, municipality of residence
    region_code: str | None = None  # DK-81 … DK-85


@dataclass(frozen=True, slots=True)
class EncounterInfo:
    """The hospital stay: class, status and the times MedCom asks for."""

    visit_number: str  # PV1-19, unique per sender
    episode_of_care_id: str  # UUID, deterministic from sender + visit number
    class_code: EncounterClass
    status: EncounterStatus
    start: str  # ISO 8601 with offset
    end: str | None = None
    leave_start: str | None = None
    leave_end: str | None = None


@dataclass(frozen=True, slots=True)
class EncounterEvent:
    """One admission/discharge/leave/death/correction/cancellation event."""

    event_id: str  # UUIDv5 of the source message identity: stable under replay
    source_message_id: str  # MSH-10
    source_system: str  # MSH-3^MSH-4 as received
    hl7_trigger: str  # A01, A03, …
    notification_code: NotificationCode
    event_time: str  # ISO 8601 with offset (EVN-2, else MSH-7)
    patient_key: str  # pseudonymous, stable per CPR: the Kafka key
    sender: Organization
    patient: PatientInfo
    encounter: EncounterInfo

    def to_record(self) -> dict[str, Any]:
        """A plain dict in the shape of the Avro schema."""
        record = asdict(self)
        record["patient"]["given"] = list(self.patient.given)
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> EncounterEvent:
        patient = dict(record["patient"])
        patient["given"] = tuple(patient.get("given") or ())
        return cls(
            event_id=record["event_id"],
            source_message_id=record["source_message_id"],
            source_system=record["source_system"],
            hl7_trigger=record["hl7_trigger"],
            notification_code=record["notification_code"],
            event_time=record["event_time"],
            patient_key=record["patient_key"],
            sender=Organization(**record["sender"]),
            patient=PatientInfo(**patient),
            encounter=EncounterInfo(**record["encounter"]),
        )


# --- referrals (child and adolescent psychiatry) ---------------------------------------------

ReferralKind = Literal[
    "submitted", "modified", "cancelled", "decision", "assessment", "tick", "contact"
]
# "tick" is internal: the deadline timer asks the owner of a referral to check its deadlines.
DecisionStatus = Literal["accepted", "rejected", "forwarded", "expired"]
PartyKind = Literal[
    "gp", "hospital-unit", "municipality", "ppr", "family-department", "guardian", "other"
]


@dataclass(frozen=True, slots=True)
class Party:
    """Someone who sends or must receive something about a referral.

    ``identifier_system`` is the FHIR system of ``identifier``: SOR ``urn:oid:1.2.208.176.1.1``,
    GP ydernummer ``urn:oid:1.2.208.176.1.4``, CPR ``urn:oid:1.2.208.176.1.2`` (guardians), or the
    DK-core municipality code system.
    """

    kind: PartyKind
    identifier_system: str
    identifier: str
    name: str | None = None
    relationship: str | None = None  # guardians: MTH, FTH, GUARD (HL7 v3 RoleCode)
    has_fhir_endpoint: bool = True  # False: the party reads letters (PDF), not FHIR messages


@dataclass(frozen=True, slots=True)
class Contact:
    """Who to call: the person now holding the ball, or the unit's contact."""

    name: str
    phone: str | None = None
    email: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """A triage decision on a referral (FHIR Task / HL7 RF1-1)."""

    status: DecisionStatus
    reason_code: str | None = None  # e.g. missing-ppv, outside-target-group, missing-information
    reason_text: str | None = None  # the coded reason's display, Danish
    note: str | None = None  # free text from the assessing clinician
    alternative: str | None = None  # suggested alternative / next step
    responsible: str | None = None  # who now holds responsibility ("who picks up the ball")
    contact: Contact | None = None
    forwarded_to: Party | None = None


@dataclass(frozen=True, slots=True)
class Assessment:
    """Assessment completed: the status letter's content (results, plan, contact)."""

    summary: str
    treatment_plan: str | None = None
    contact: Contact | None = None


@dataclass(frozen=True, slots=True)
class ReferralEvent:
    """One step in a referral's life, from FHIR (ServiceRequest/Task) or HL7 v2 (REF/RRI)."""

    event_id: str  # UUIDv5 of the source message identity
    source: Literal["fhir", "hl7v2"]
    source_message_id: str
    kind: ReferralKind
    referral_id: str  # the referral's business identifier, echoed back in every message
    event_time: str  # ISO 8601 with offset
    patient_key: str
    child: PatientInfo
    referrer: Party | None = None
    receiver: Party | None = None  # the psychiatry unit (SOR)
    guardians: tuple[Party, ...] = ()
    municipal_units: tuple[Party, ...] = ()  # PPR, family department, where known
    decision: Decision | None = None
    assessment: Assessment | None = None
    reason_for_referral: str | None = None
    contact: Contact | None = None  # kind "contact": the child's new contact person at the unit

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["child"]["given"] = list(self.child.given)
        record["guardians"] = [asdict(g) for g in self.guardians]
        record["municipal_units"] = [asdict(u) for u in self.municipal_units]
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ReferralEvent:
        child = dict(record["child"])
        child["given"] = tuple(child.get("given") or ())
        party = lambda r: Party(**r) if r else None  # noqa: E731
        contact = lambda r: Contact(**r) if r else None  # noqa: E731
        decision = record.get("decision")
        assessment = record.get("assessment")
        return cls(
            event_id=record["event_id"],
            source=record["source"],
            source_message_id=record["source_message_id"],
            kind=record["kind"],
            referral_id=record["referral_id"],
            event_time=record["event_time"],
            patient_key=record["patient_key"],
            child=PatientInfo(**child),
            referrer=party(record.get("referrer")),
            receiver=party(record.get("receiver")),
            guardians=tuple(Party(**g) for g in record.get("guardians") or ()),
            municipal_units=tuple(Party(**u) for u in record.get("municipal_units") or ()),
            decision=Decision(
                **{
                    **decision,
                    "contact": contact(decision.get("contact")),
                    "forwarded_to": party(decision.get("forwarded_to")),
                }
            )
            if decision
            else None,
            assessment=Assessment(**{**assessment, "contact": contact(assessment.get("contact"))})
            if assessment
            else None,
            reason_for_referral=record.get("reason_for_referral"),
            contact=contact(record.get("contact")),
        )
