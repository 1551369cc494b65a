"""The canonical encounter event: what every source is normalised into.

A source (HL7 v2 ADT over MLLP today, FHIR later) is turned into an :class:`EncounterEvent`
once; everything downstream (routing, MedCom notifications) reads only this shape. The Avro
schema ``schemas/encounter_event.avsc`` is the wire form of the same fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

NotificationCode = Literal[
    "STIN", "STAA", "STOR", "SLOR", "SLHJ", "MORS",
    "RE_STIN", "RE_STAA", "RE_STOR", "RE_SLOR", "RE_SLHJ", "RE_MORS",
    "AN_STIN", "AN_STAA", "AN_STOR", "AN_SLOR", "AN_SLHJ", "AN_MORS",
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
