"""FHIR R4 referral resources as a GP system and a child psychiatry unit send them to stafet.

Shared by the demo, the tests and the OpenAPI examples, so every example in the API description
is one the parser accepts. Only MedCom's published test patients (CPR numbers reserved for
testing) and made-up SOR codes / ydernumre appear here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from demo.hl7_builder import SyntheticPatient, medcom_test_patients
from stafet.ids import stable_uuid
from stafet.inbound.fhir_referral import (
    FHIR_ENDPOINT_EXT,
    MUNICIPALITY_EXT,
    PAYLOAD_PART_EXT,
    REASON_SYSTEM,
    ROLE_CODE_SYSTEM,
    UNIT_TYPE_SYSTEM,
)
from stafet.systems import CPR_SYSTEM, MUNICIPALITY_SYSTEM, SOR_SYSTEM, YDER_SYSTEM

Resource = dict[str, Any]
REFERRAL_ID_SYSTEM = "https://stafet.dk/fhir/NamingSystem/demo-referral-id"
TASK_CODE_SYSTEM = "http://hl7.org/fhir/CodeSystem/task-code"


@dataclass(frozen=True, slots=True)
class Org:
    """A sender or receiver: SOR code (or ydernummer for a GP) and name."""

    identifier: str
    name: str
    system: str = SOR_SYSTEM

    def ref(self, **extra: Any) -> Resource:
        return {
            "identifier": {"system": self.system, "value": self.identifier},
            "display": self.name,
            **extra,
        }


GP = Org("099999", "Lægehuset Testvej (demo)", YDER_SYSTEM)
BUC_AARHUS = Org("600000000000001", "BUC Aarhus (demo)")
BUC_ODENSE = Org("600000000000002", "BUA Odense (demo)")
PPR_AARHUS = Org("6000000007510011", "PPR Aarhus Kommune (demo)")
FAMILY_AARHUS_NAME = "Familieafdelingen, Aarhus Kommune (demo)"  # no SOR: named by municipality

REJECTION_ALTERNATIVE = "Kontakt PPR i Aarhus Kommune for en PPV"
REJECTION_RESPONSIBLE = "Aarhus Kommune, PPR"
REJECTION_CONTACT = ("Sekretær Hanne Holm", "7845 0000")
MISSING_PPV_TEXT = "Der mangler en pædagogisk-psykologisk vurdering (PPV) fra PPR"


def child(name: str = "RikkeBerggren") -> SyntheticPatient:
    """One of MedCom's test patients (default: Rikke Berggren, 2020, Aarhus 0751)."""
    return medcom_test_patients()[name]


@lru_cache(maxsize=1)
def _related() -> list[dict[str, Any]]:
    text = resources.files("demo").joinpath("test-patients.json").read_text("utf-8")
    return list(json.loads(text)["related_persons"])


def guardians_of(name: str) -> list[tuple[str, SyntheticPatient | None, str]]:
    """(relationship, person if a test patient, CPR) for a child's MTH / FTH / GUARD relations."""
    by_cpr = {p.cpr: p for p in medcom_test_patients().values()}
    return [
        (r["relationship"], by_cpr.get(r["related_cpr"]), r["related_cpr"])
        for r in _related()
        if r["patient"] == name and r["relationship"] in ("MTH", "FTH", "GUARD")
    ]


def _patient(p: SyntheticPatient, *, municipality_as: str) -> Resource:
    address: Resource = {
        "use": "home",
        "line": [p.address_line],
        "postalCode": p.postal_code,
        "country": "DK",
    }
    code = p.municipality_code or ""
    if municipality_as == "extension":
        address["extension"] = [
            {
                "url": MUNICIPALITY_EXT,
                "valueCodeableConcept": {"coding": [{"system": MUNICIPALITY_SYSTEM, "code": code}]},
            }
        ]
    elif municipality_as == "district":
        address["district"] = code
    return {
        "resourceType": "Patient",
        "id": "child",
        "identifier": [{"system": CPR_SYSTEM, "value": p.cpr}],
        "name": [{"use": "official", "family": p.family, "given": list(p.given)}],
        "gender": p.gender,
        "birthDate": p.birth_date,
        "address": [address],
    }


def referral(
    referral_id: str = "HEN-RIKKE-0001",
    *,
    child_name: str = "RikkeBerggren",
    status: str = "active",
    version: str | None = None,
    authored_on: str = "2026-11-23T09:30:00+01:00",
    municipality_as: str = "extension",
    requester: Org = GP,
    performer: Org = BUC_AARHUS,
    with_parties: bool = True,
    reason: str = "Mistanke om angst og ADHD; mistrivsel i børnehaven gennem et halvt år",
) -> Resource:
    """A GP's referral of a child to child psychiatry (ServiceRequest with contained parties).

    ``municipality_as``: ``extension`` (DK-core), ``district`` or ``none`` (to test the error).
    """
    p = child(child_name)
    contained: list[Resource] = [_patient(p, municipality_as=municipality_as)]
    supporting: list[Resource] = []
    if with_parties:
        for n, (role, person, cpr) in enumerate(guardians_of(child_name), start=1):
            name = {"family": person.family, "given": list(person.given)} if person else {}
            contained.append(
                {
                    "resourceType": "RelatedPerson",
                    "id": f"guardian{n}",
                    "patient": {"reference": "#child"},
                    "identifier": [{"system": CPR_SYSTEM, "value": cpr}],
                    "relationship": [{"coding": [{"system": ROLE_CODE_SYSTEM, "code": role}]}],
                    **({"name": [name]} if name else {}),
                }
            )
            supporting.append({"reference": f"#guardian{n}"})
        contained += [
            {
                "resourceType": "Organization",
                "id": "ppr",
                "name": PPR_AARHUS.name,
                "identifier": [{"system": SOR_SYSTEM, "value": PPR_AARHUS.identifier}],
                "type": [{"coding": [{"system": UNIT_TYPE_SYSTEM, "code": "ppr"}]}],
            },
            {
                "resourceType": "Organization",
                "id": "family",
                "name": FAMILY_AARHUS_NAME,
                "type": [{"coding": [{"system": UNIT_TYPE_SYSTEM, "code": "family-department"}]}],
            },
        ]
        supporting += [{"reference": "#ppr"}, {"reference": "#family"}]
    resource: Resource = {
        "resourceType": "ServiceRequest",
        "id": stable_uuid("demo-sr", referral_id),
        "contained": contained,
        "identifier": [{"system": REFERRAL_ID_SYSTEM, "value": referral_id}],
        "status": status,
        "intent": "order",
        "code": {"text": "Henvisning til børne- og ungdomspsykiatrisk udredning"},
        "subject": {"reference": "#child"},
        "authoredOn": authored_on,
        "requester": requester.ref(),
        "performer": [performer.ref()],
        "reasonCode": [{"text": reason}],
    }
    if supporting:
        resource["supportingInfo"] = supporting
    if version:
        resource["meta"] = {"versionId": version}
    return resource


def _task(
    referral_id: str, cpr: str, status: str, decided_at: str, owner: Org, **fields: Any
) -> Resource:
    return {
        "resourceType": "Task",
        "id": stable_uuid("demo-task", referral_id, status, decided_at),
        "status": status,
        "intent": "order",
        "focus": {"identifier": {"system": REFERRAL_ID_SYSTEM, "value": referral_id}},
        "for": {"identifier": {"system": CPR_SYSTEM, "value": cpr}},
        "authoredOn": decided_at,
        "lastModified": decided_at,
        "requester": GP.ref(),
        "owner": owner.ref(),
        **fields,
    }


def rejection_task(
    referral_id: str = "HEN-RIKKE-0001",
    *,
    cpr: str | None = None,
    decided_at: str = "2026-11-30T14:05:00+01:00",
    reason_code: str = "missing-ppv",
    reason_text: str = MISSING_PPV_TEXT,
    owner: Org = BUC_AARHUS,
    note: str = "Henvisningen beskriver ikke skoletrivsel, og PPR har ikke lavet en PPV.",
) -> Resource:
    """The psychiatry unit rejects the referral: reason, next step, who holds the ball, contact."""
    outputs = [("alternative", REJECTION_ALTERNATIVE), ("responsible", REJECTION_RESPONSIBLE)]
    return _task(
        referral_id,
        cpr or child().cpr,
        "rejected",
        decided_at,
        owner,
        statusReason={
            "coding": [{"system": REASON_SYSTEM, "code": reason_code}],
            "text": reason_text,
        },
        note=[{"text": note}],
        output=_outputs(*outputs, *_contact()),
    )


def acceptance_task(
    referral_id: str = "HEN-RIKKE-0001",
    *,
    cpr: str | None = None,
    decided_at: str = "2026-11-30T14:05:00+01:00",
) -> Resource:
    """The referral is accepted for assessment."""
    return _task(
        referral_id,
        cpr or child().cpr,
        "accepted",
        decided_at,
        BUC_AARHUS,
        output=_outputs(*_contact()),
    )


def _contact() -> list[tuple[str, str]]:
    name, phone = REJECTION_CONTACT
    return [("contact-name", name), ("contact-phone", phone)]


def _outputs(*pairs: tuple[str, str]) -> list[Resource]:
    """Task.output entries: (type text, valueString)."""
    return [{"type": {"text": kind}, "valueString": value} for kind, value in pairs]


def forward_task(
    referral_id: str = "HEN-RIKKE-0001",
    *,
    to: Org = BUC_ODENSE,
    cpr: str | None = None,
    decided_at: str = "2026-11-30T14:05:00+01:00",
) -> Resource:
    """The unit forwards the referral to another unit (the new owner)."""
    return _task(
        referral_id,
        cpr or child().cpr,
        "in-progress",
        decided_at,
        to,
        code={"coding": [{"system": TASK_CODE_SYSTEM, "code": "forward"}]},
        businessStatus={"text": "forwarded"},
        note=[{"text": "Barnet bor nu i Odense; henvisningen er sendt videre."}],
    )


def status_communication(
    referral_id: str = "HEN-RIKKE-0001",
    *,
    cpr: str | None = None,
    sent: str = "2027-01-15T11:00:00+01:00",
) -> Resource:
    """The status letter after the assessment: summary, treatment plan, contact person."""

    def part(tag: str, text: str) -> Resource:
        return {"extension": [{"url": PAYLOAD_PART_EXT, "valueCode": tag}], "contentString": text}

    return {
        "resourceType": "Communication",
        "id": stable_uuid("demo-comm", referral_id, sent),
        "status": "completed",
        "basedOn": [{"identifier": {"system": REFERRAL_ID_SYSTEM, "value": referral_id}}],
        "subject": {"identifier": {"system": CPR_SYSTEM, "value": cpr or child().cpr}},
        "sent": sent,
        "sender": BUC_AARHUS.ref(),
        "recipient": [GP.ref(extension=[{"url": FHIR_ENDPOINT_EXT, "valueBoolean": True}])],
        "payload": [
            part("summary", "Udredningen viser angst; ingen ADHD."),
            part("treatment-plan", "Forløb med kognitiv terapi, 12 sessioner."),
            part("contact-name", "Psykolog Jens Test Jensen"),
            part("contact-phone", "7845 1234"),
        ],
    }


def bundle(*entries: Resource, type_: str = "collection") -> Resource:
    """A Bundle of the resources; fullUrls are urn:uuid of the resource ids (deterministic)."""
    return {
        "resourceType": "Bundle",
        "type": type_,
        "entry": [
            {
                "fullUrl": f"urn:uuid:{stable_uuid('demo-entry', r.get('id') or str(n))}",
                "resource": r,
            }
            for n, r in enumerate(entries)
        ],
    }


def to_bytes(resource: Resource) -> bytes:
    """The UTF-8 JSON a sender would POST."""
    return json.dumps(resource, ensure_ascii=False, indent=1).encode("utf-8")


def openapi_examples() -> dict[str, dict[str, Resource]]:
    """The request examples of the FHIR listener's OpenAPI document, by resource type. They are
    committed as connectors/sources/fhir/openapi-examples.json (the installed package carries no
    demo code); a test keeps the file equal to this: ``python -m demo.fhir_samples``."""
    gp_referral = referral()
    return {
        "ServiceRequest": {"gp-referral": gp_referral},
        "Task": {
            "rejected-missing-ppv": rejection_task(),
            "accepted": acceptance_task(),
            "forwarded": forward_task(),
        },
        "Communication": {"status-letter": status_communication()},
        "any": {"bundle": bundle(gp_referral, rejection_task())},
    }


def openapi_examples_json() -> str:
    return json.dumps(openapi_examples(), ensure_ascii=False, indent=1) + "\n"


if __name__ == "__main__":
    print(openapi_examples_json(), end="")
