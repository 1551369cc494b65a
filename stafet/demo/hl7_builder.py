"""Build HL7 v2.5 ADT messages the way a Danish hospital EHR sends them (for the demo, the tests
and the benchmark). Only synthetic patients: MedCom's test patients or generated numbers.
"""

from __future__ import annotations

import json
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
    data = json.loads(resources.files(__package__).joinpath("test-patients.json").read_text("utf-8"))
    return {
        p["id"]: SyntheticPatient(
            id=p["id"], cpr=p["cpr"], family=p["family"], given=tuple(p["given"]),
            gender=p["gender"], birth_date=p["birthDate"], address_line=p["address_line"] or "",
            postal_code=p["postal_code"] or "", municipality_code=p["municipality_code"],
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
        + "|" * 19 + ("Y" if deceased else ""),
        f"PV1|1|{patient_class}|{hospital.sor}^^^{hospital.name}||||||||||||||||{visit}"
        + "|" * 25 + f"{admit_time or ''}|{discharge_time or ''}",
    ]
    text = "\r".join(segments) + "\r"
    encoding = "iso-8859-1" if charset == "8859/1" else "utf-8"
    return text.encode(encoding)
