"""Build HL7 v2.5 ADT messages the way a Danish hospital EHR sends them (for the demo, the tests
and the benchmark). Only synthetic patients: MedCom's test patients or generated numbers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources


@dataclass(frozen=True, slots=True)
class SyntheticPatient:
    """One of MedCom's published test patients (CPR numbers reserved for testing)."""

    id: str
    cpr: str
    family: str
    given: tuple[str, ...]
    gender: str
    birth_date: str
    address_line: str
    postal_code: str
    municipality_code: str | None
    region_code: str | None


@lru_cache(maxsize=1)
def medcom_test_patients() -> dict[str, SyntheticPatient]:
    data = json.loads(
        resources.files(__package__).joinpath("test-patients.json").read_text("utf-8")
    )
    return {
        p["id"]: SyntheticPatient(
            id=p["id"],
            cpr=p["cpr"],
            family=p["family"],
            given=tuple(p["given"]),
            gender=p["gender"],
            birth_date=p["birthDate"],
            address_line=p["address_line"] or "",
            postal_code=p["postal_code"] or "",
            municipality_code=p["municipality_code"],
            region_code=p["region_code"],
        )
        for p in data["patients"]
    }


@dataclass(frozen=True, slots=True)
class Hospital:
    """A sending unit: name, SOR code and its EHR's application name (MSH-3)."""

    name: str
    sor: str
    application: str = "EPJ"


def adt(
    trigger: str,
    patient: SyntheticPatient,
    *,
    hospital: Hospital,
    control_id: str,
    visit: str,
    event_time: str,
    admit_time: str | None = None,
    discharge_time: str | None = None,
    patient_class: str = "I",
    deceased: bool = False,
    municipality_code: str | None = None,
    charset: str = "UNICODE UTF-8",
) -> bytes:
    """One ADT^<trigger> message, encoded as MSH-18 says (UTF-8 or ISO-8859-1)."""
    code = municipality_code if municipality_code is not None else (patient.municipality_code or "")
    gender = {"male": "M", "female": "F"}.get(patient.gender, "U")
    given = "^".join(patient.given[:2])
    segments = [
        f"MSH|^~\\&|{hospital.application}|{hospital.name}^{hospital.sor}^SOR|STAFET|STAFET|"
        f"{event_time}||ADT^{trigger}^ADT_{trigger}|{control_id}|P|2.5|||AL|NE|DK|{charset}",
        f"EVN|{trigger}|{event_time}",
        f"PID|1||{patient.cpr}^^^CPR^NNDNK||{patient.family}^{given}||"
        f"{patient.birth_date.replace('-', '')}|{gender}|||"
        f"{patient.address_line}^^^^{patient.postal_code}^DK^H^^{code}"
        + "|" * 19
        + ("Y" if deceased else ""),
        f"PV1|1|{patient_class}|{hospital.sor}^^^{hospital.name}||||||||||||||||{visit}"
        + "|" * 25
        + f"{admit_time or ''}|{discharge_time or ''}",
    ]
    text = "\r".join(segments) + "\r"
    encoding = "iso-8859-1" if charset == "8859/1" else "utf-8"
    return text.encode(encoding)


@dataclass(frozen=True, slots=True)
class Provider:
    """A PRD party: role RP (referrer), RT (receiving unit), PPR or FAM (municipal units)."""

    role: str
    name: str
    identifier: str
    kind: str = "SOR"  # or YDER (GP ydernummer)


def referral_message(
    trigger: str,
    child: SyntheticPatient,
    *,
    referral_id: str,
    control_id: str,
    event_time: str,
    providers: list[Provider],
    guardians: Sequence[
        tuple[str, SyntheticPatient | None, str]
    ] = (),  # (relationship, person, cpr)
    status: str = "",  # RF1-1 for RRI: A, R, P, E
    reason: tuple[str, str] | None = None,  # RF1-10: (code, text)
    notes: dict[str, str] | None = None,  # NTE-4 type → text: NOTE, ALT, RESP
    contact: tuple[str, str, str] | None = None,  # CTD: (family, given, phone)
) -> bytes:
    """REF^I12/I13/I14 or RRI^I12 (``trigger`` like "REF^I12"), UTF-8."""
    msg_type, event = trigger.split("^")
    structure = f"{msg_type}_{event}"
    sending = next((p for p in providers if p.role == "RT"), providers[0])
    segments = [
        f"MSH|^~\\&|EPJ|{sending.name}^{sending.identifier}^SOR|STAFET|STAFET|{event_time}||"
        f"{msg_type}^{event}^{structure}|{control_id}|P|2.5|||AL|NE|DK|UNICODE UTF-8",
    ]
    if msg_type == "RRI":
        segments.append(f"MSA|AA|{referral_id}")
    reason_field = f"{reason[0]}^{reason[1]}^STAFET" if reason else ""
    segments.append(f"RF1|{status}|||||{referral_id}|{event_time}|||{reason_field}")
    for p in providers:
        segments.append(f"PRD|{p.role}|{p.name}|||||{p.identifier}^{p.kind}")
    if contact:
        segments.append(f"CTD|CP|{contact[0]}^{contact[1]}||||{contact[2]}")
    code = child.municipality_code or ""
    segments.append(
        f"PID|1||{child.cpr}^^^CPR^NNDNK||{child.family}^{child.given[0]}||"
        f"{child.birth_date.replace('-', '')}|{'F' if child.gender == 'female' else 'M'}|||"
        f"{child.address_line}^^^^{child.postal_code}^DK^H^^{code}"
    )
    for i, (relationship, person, cpr) in enumerate(guardians, start=1):
        name = f"{person.family}^{person.given[0]}" if person else "Værge^Test"
        segments.append(f"NK1|{i}|{name}|{relationship}" + "|" * 30 + f"{cpr}^^^CPR")
    for n, (kind, text) in enumerate((notes or {}).items(), start=1):
        segments.append(f"NTE|{n}||{text}|{kind}")
    return ("\r".join(segments) + "\r").encode("utf-8")
