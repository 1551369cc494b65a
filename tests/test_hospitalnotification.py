"""HospitalNotification builder: MedCom's shape and codes, determinism, and what validation rejects.

The child is a MedCom test patient (synthetic CPR). The sender and the receiver use the SOR/GLN
numbers from MedCom's own examples, so our bundles can be compared with those examples field by
field; "Hillerød Kommune" is only a label here, those are not Hillerød's real identifiers.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from stafet.directory import Addressee
from stafet.ids import stable_uuid
from stafet.medcom.hospitalnotification import (
    ACTIVITY_CODES,
    EXT_LEAVE_PERIOD,
    EXT_REPORT_OF_ADMISSION,
    EXT_REPORT_OF_ADMISSION_RECIPIENT,
    HOSPITAL_NOTIFICATION_ACTIVITIES,
    PROFILES,
    NotificationBuildError,
    build_hospital_notification,
    message_header_id,
    validate_bundle,
)
from stafet.model import (
    EncounterClass,
    EncounterEvent,
    EncounterInfo,
    EncounterStatus,
    NotificationCode,
    Organization,
    PatientInfo,
)
from stafet.systems import CPR_SYSTEM

DOMAIN = Path(__file__).resolve().parents[2] / "shared" / "domain"
EXAMPLES = DOMAIN / "medcom-examples" / "hospitalnotification"

SENDER = Organization(sor="265161000016000", name="Hjerteafdelingen på Herlev og Gentofte hospital")
FROM = Addressee(
    entry="hospital/265161000016000",
    role="hospital",
    sor="265161000016000",
    ean="5790000209354",
    name="Hjerteafdelingen på Herlev og Gentofte hospital",
)
RECIPIENT = Addressee(
    entry="municipality/0219/central",
    role="central",
    municipality="0219",
    name="Hillerød Kommune",
    sor="953741000016009",
    ean="5790001348120",
)
RECIPIENT_NO_EAN = replace(RECIPIENT, ean=None)

ADMITTED = "2024-03-04T10:00:00+01:00"
LEAVE_START = "2024-03-08T14:00:00+01:00"
LEAVE_END = "2024-03-10T18:00:00+01:00"
DISCHARGED = "2024-03-20T09:30:00+01:00"
EPISODE = "bd481c38-a921-11ed-afa1-0242ac120002"


@cache
def child() -> PatientInfo:
    """MedCom test patient Lars Test Berggren, born 2015, living in Hillerød (0219)."""
    patients = json.loads((DOMAIN / "test-patients.json").read_text("utf-8"))["patients"]
    p = next(p for p in patients if p["id"] == "LarsBerggren")
    return PatientInfo(
        cpr=p["cpr"],
        family=p["family"],
        given=tuple(p["given"]),
        birth_date=p["birthDate"],
        gender=p["gender"],
        municipality_code=p["municipality_code"],
        region_code=p["region_code"],
    )


def event(
    code: NotificationCode,
    *,
    cls: EncounterClass = "IMP",
    status: EncounterStatus = "in-progress",
    time: str = ADMITTED,
    end: str | None = None,
    leave_start: str | None = None,
    leave_end: str | None = None,
    deceased: bool = False,
    trigger: str = "A01",
) -> EncounterEvent:
    """A hand-made canonical event for the test child, as the HL7 v2 normaliser would emit it."""
    patient = replace(child(), deceased=True) if deceased else child()
    return EncounterEvent(
        event_id=stable_uuid("test", code, cls, status, time, leave_start or ""),
        source_message_id=f"MSG-{code}",
        source_system="EPJ^BUC",
        hl7_trigger=trigger,
        notification_code=code,
        event_time=time,
        patient_key="k" * 32,
        sender=SENDER,
        patient=patient,
        encounter=EncounterInfo(
            visit_number="V1",
            episode_of_care_id=EPISODE,
            class_code=cls,
            status=status,
            start=ADMITTED,
            end=end,
            leave_start=leave_start,
            leave_end=leave_end,
        ),
    )


PREVIOUS = message_header_id("previous-event", RECIPIENT.municipality)

#: name -> (event, previous header?, expected status, class, activity, entity role, deceased)
CASES: dict[str, tuple[EncounterEvent, bool, str, str, str, str | None, bool | None]] = {
    "STIN": (event("STIN"), False, "in-progress", "IMP", "admit-inpatient", None, None),
    "STAA": (
        event("STAA", cls="EMER", trigger="A04"),
        False,
        "in-progress",
        "EMER",
        "admit-emergency",
        None,
        None,
    ),
    "STOR": (
        event("STOR", status="onleave", time=LEAVE_START, leave_start=LEAVE_START, trigger="A21"),
        True,
        "onleave",
        "IMP",
        "start-leave-inpatient",
        "revision",
        None,
    ),
    "SLOR": (
        event("SLOR", time=LEAVE_END, leave_start=LEAVE_START, leave_end=LEAVE_END, trigger="A22"),
        True,
        "in-progress",
        "IMP",
        "end-leave-inpatient",
        "revision",
        None,
    ),
    "SLHJ": (
        event("SLHJ", status="finished", time=DISCHARGED, end=DISCHARGED, trigger="A03"),
        True,
        "finished",
        "IMP",
        "discharge-inpatient-home",
        "revision",
        None,
    ),
    "SLHJ-EMER": (
        event(
            "SLHJ", cls="EMER", status="finished", time=DISCHARGED, end=DISCHARGED, trigger="A03"
        ),
        True,
        "finished",
        "EMER",
        "discharge-emergency-home",
        "revision",
        None,
    ),
    "MORS": (
        event(
            "MORS", status="finished", time=DISCHARGED, end=DISCHARGED, deceased=True, trigger="A03"
        ),
        True,
        "finished",
        "IMP",
        "admit-inpatient",
        "revision",
        True,
    ),
    "MORS-EMER": (
        event(
            "MORS", cls="EMER", status="finished", time=DISCHARGED, end=DISCHARGED, trigger="A03"
        ),
        True,
        "finished",
        "EMER",
        "admit-emergency",
        "revision",
        True,
    ),
    "MORS-on-leave": (
        event(
            "MORS",
            status="finished",
            time=DISCHARGED,
            end=DISCHARGED,
            leave_start=LEAVE_START,
            deceased=True,
            trigger="A03",
        ),
        True,
        "finished",
        "IMP",
        "start-leave-inpatient",
        "revision",
        True,
    ),
    "RE_STIN": (
        event("RE_STIN", trigger="A08"),
        True,
        "in-progress",
        "IMP",
        "revise-admit-inpatient",
        "revision",
        None,
    ),
    "RE_MORS": (
        event(
            "RE_MORS",
            status="finished",
            time=DISCHARGED,
            end=DISCHARGED,
            deceased=True,
            trigger="A08",
        ),
        True,
        "finished",
        "IMP",
        "admit-inpatient",
        "revision",
        True,
    ),
    "AN_STIN": (
        event("AN_STIN", status="entered-in-error", trigger="A11"),
        True,
        "entered-in-error",
        "IMP",
        "cancel-admit-inpatient",
        "removal",
        None,
    ),
    "AN_SLHJ": (
        event("AN_SLHJ", time=DISCHARGED, trigger="A13"),
        True,
        "in-progress",
        "IMP",
        "cancel-discharge-inpatient-home",
        "removal",
        None,
    ),
    "AN_MORS": (
        event("AN_MORS", time=DISCHARGED, trigger="A13"),
        True,
        "in-progress",
        "IMP",
        "admit-inpatient",
        "removal",
        False,
    ),
}


def build(name: str, recipient: Addressee = RECIPIENT, **kwargs: Any) -> dict[str, Any]:
    ev, has_previous = CASES[name][:2]
    return build_hospital_notification(
        ev, recipient, sender=FROM, previous_header_id=PREVIOUS if has_previous else None, **kwargs
    )


def resources(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type
    ]


def one(bundle: dict[str, Any], resource_type: str) -> dict[str, Any]:
    (resource,) = resources(bundle, resource_type)
    return resource


def own_provenance(bundle: dict[str, Any]) -> dict[str, Any]:
    """The Provenance of this message (examples also carry those of earlier messages)."""
    target = f"MessageHeader/{bundle['entry'][0]['resource']['id']}"
    (prov,) = [p for p in resources(bundle, "Provenance") if p["target"][0]["reference"] == target]
    return prov


@pytest.mark.parametrize("name", CASES)
def test_each_code_builds_a_valid_notification_with_its_own_fields(name: str) -> None:
    _, has_previous, status, cls, activity, role, deceased = CASES[name]
    bundle = build(name)
    validate_bundle(bundle)

    encounter = one(bundle, "Encounter")
    assert (encounter["status"], encounter["class"]["code"]) == (status, cls)
    assert encounter["episodeOfCare"][0]["identifier"] == {
        "system": "https://sor2.sum.dsdn.dk/#id=265161000016000",
        "value": EPISODE,
    }
    prov = own_provenance(bundle)
    assert prov["activity"]["coding"][0]["code"] == activity
    if role is None:
        assert "entity" not in prov
    else:
        what = {"reference": f"MessageHeader/{PREVIOUS}"}
        assert prov["entity"] == [{"role": role, "what": what}]
    assert one(bundle, "Patient").get("deceasedBoolean") is deceased


def test_leave_period_extension_on_stor_and_slor_only() -> None:
    stor, slor, stin = (one(build(n), "Encounter") for n in ("STOR", "SLOR", "STIN"))
    assert stor["extension"] == [{"url": EXT_LEAVE_PERIOD, "valuePeriod": {"start": LEAVE_START}}]
    assert slor["extension"] == [
        {"url": EXT_LEAVE_PERIOD, "valuePeriod": {"start": LEAVE_START, "end": LEAVE_END}}
    ]
    assert "extension" not in stin


def test_report_of_admission_on_admissions_points_back_to_the_sender() -> None:
    bundle = build("STIN")
    header = bundle["entry"][0]["resource"]
    sender_ref = header["sender"]["reference"]
    assert header["extension"] == [
        {"url": EXT_REPORT_OF_ADMISSION, "valueBoolean": True},
        {"url": EXT_REPORT_OF_ADMISSION_RECIPIENT, "valueReference": {"reference": sender_ref}},
    ]
    assert header["text"]["status"] == "extensions"
    assert "extension" not in build("SLHJ")["entry"][0]["resource"]
    without = build("STIN", report_of_admission=False)["entry"][0]["resource"]
    assert "extension" not in without and without["text"]["status"] == "generated"


def test_build_is_deterministic_and_ids_are_stable_uuids() -> None:
    first, second = build("STOR"), build("STOR")
    assert first == second
    assert json.dumps(first, ensure_ascii=False) == json.dumps(second, ensure_ascii=False)
    ev = CASES["STOR"][0]
    assert first["id"] == stable_uuid(ev.event_id, RECIPIENT.municipality, "bundle")
    assert first["entry"][0]["resource"]["id"] == message_header_id(
        ev.event_id, RECIPIENT.municipality
    )
    assert first["timestamp"] == ev.event_time == own_provenance(first)["recorded"]
    ids = [e["resource"]["id"] for e in first["entry"]]
    assert len(set(ids)) == len(ids)
    assert all(
        e["fullUrl"].endswith(f"/{e['resource']['resourceType']}/{e['resource']['id']}")
        for e in first["entry"]
    )
    later = build("STOR", sent_at="2024-03-08T14:05:00+01:00")
    assert later["timestamp"] == "2024-03-08T14:05:00+01:00" and later["id"] == first["id"]
    other = build(
        "STOR", recipient=replace(RECIPIENT, municipality="0101", entry="municipality/0101/central")
    )
    assert other["entry"][0]["resource"]["id"] != first["entry"][0]["resource"]["id"]


# The four MedCom examples we compare with: STIN, STOR, SLHJ (inpatient), MORS (inpatient).
EXAMPLE_FILES = {
    "STIN": "Bundle-a5e5b880-c087-4055-b9ec-99108695f81d.json",
    "STOR": "Bundle-d3128d9b-cede-4c7f-8904-809eab322d7d.json",
    "SLHJ": "Bundle-f4aa42a4-86db-4e68-9b38-9dda0dfd5774.json",
    "MORS": "Bundle-g099bbf3-3fca-4722-a248-bfe1aa956410.json",
}


def load_example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / name).read_text("utf-8"))


@pytest.mark.parametrize("code", EXAMPLE_FILES)
def test_structure_matches_medcom_example(code: str) -> None:
    ours, theirs = build(code), load_example(EXAMPLE_FILES[code])
    assert ours["meta"] == theirs["meta"] and ours["type"] == theirs["type"] == "message"

    def by_type(bundle: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for entry in bundle["entry"]:
            out.setdefault(entry["resource"]["resourceType"], []).append(entry["resource"])
        return out

    ours_t, theirs_t = by_type(ours), by_type(theirs)
    assert set(ours_t) == set(theirs_t)
    assert len(ours_t["Organization"]) == len(theirs_t["Organization"]) == 2
    for rtype in ours_t:
        assert {json.dumps(r["meta"]) for r in ours_t[rtype]} == {
            json.dumps(r["meta"]) for r in theirs_t[rtype]
        }, rtype
        assert ours_t[rtype][0]["meta"]["profile"] == [PROFILES[rtype]]
        if rtype != "Provenance":  # same elements, narrative aside (MedCom's are IG-generated)
            assert {k for r in ours_t[rtype] for k in r} - {"text"} == {
                k for r in theirs_t[rtype] for k in r
            } - {"text"}, rtype

    our_mh, their_mh = ours["entry"][0]["resource"], theirs["entry"][0]["resource"]
    assert our_mh["eventCoding"] == their_mh["eventCoding"]
    assert [x["url"] for x in our_mh.get("extension", [])] == [
        x["url"] for x in their_mh.get("extension", [])
    ]
    assert our_mh["destination"][0]["extension"] == their_mh["destination"][0]["extension"]
    assert our_mh["destination"][0]["endpoint"] == their_mh["destination"][0]["endpoint"]
    assert our_mh["source"] == their_mh["source"]
    assert {x["url"] for x in one(ours, "Encounter").get("extension", [])} == {
        x["url"] for x in one(theirs, "Encounter").get("extension", [])
    }
    assert one(ours, "Patient").get("deceasedBoolean") == one(theirs, "Patient").get(
        "deceasedBoolean"
    )

    our_prov, their_prov = own_provenance(ours), own_provenance(theirs)
    assert our_prov["activity"] == their_prov["activity"]
    assert set(our_prov) == set(their_prov) - {"text"}
    assert [e["role"] for e in our_prov.get("entity", [])] == [
        e["role"] for e in their_prov.get("entity", [])
    ]
    for org in ours_t["Organization"]:  # GLN then SOR, like MedCom's
        assert [i["system"] for i in org["identifier"]] == [
            "https://www.gs1.org/gln",
            "urn:oid:1.2.208.176.1.1",
        ]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.name[7:15])
def test_every_medcom_example_passes_validate_bundle(path: Path) -> None:
    validate_bundle(json.loads(path.read_text("utf-8")))


def test_activity_codes_are_medcom_codes() -> None:
    assert len(HOSPITAL_NOTIFICATION_ACTIVITIES) == 18
    assert set(ACTIVITY_CODES.values()) <= HOSPITAL_NOTIFICATION_ACTIVITIES
    used_by_medcom = {
        own_provenance(json.loads(p.read_text("utf-8")))["activity"]["coding"][0]["code"]
        for p in EXAMPLES.glob("*.json")
    }
    assert used_by_medcom <= set(ACTIVITY_CODES.values())
    codes = ("STIN", "STAA", "STOR", "SLOR", "SLHJ", "MORS")
    every = [f"{p}{c}" for p in ("", "RE_", "AN_") for c in codes]
    assert all(any(k[0] == c for k in ACTIVITY_CODES) for c in every)


def test_a_recipient_without_ean_is_never_built() -> None:
    """MedCom routes on the receiver's EAN: without one there is no Bundle, only an error."""
    with pytest.raises(NotificationBuildError, match="no EAN"):
        build("STIN", recipient=RECIPIENT_NO_EAN)
    with pytest.raises(NotificationBuildError, match="no EAN"):
        build_hospital_notification(CASES["STIN"][0], RECIPIENT, sender=replace(FROM, ean=None))


def test_both_ends_carry_sor_and_ean_and_the_destination_is_the_receivers_sor() -> None:
    bundle = build("STIN")
    header = bundle["entry"][0]["resource"]
    orgs = {f"Organization/{o['id']}": o for o in resources(bundle, "Organization")}
    receiver = orgs[header["destination"][0]["receiver"]["reference"]]
    sender = orgs[header["sender"]["reference"]]
    assert receiver["identifier"] == [
        {"system": "https://www.gs1.org/gln", "value": "5790001348120"},
        {"system": "urn:oid:1.2.208.176.1.1", "value": "953741000016009"},
    ]
    assert [i["value"] for i in sender["identifier"]] == ["5790000209354", "265161000016000"]
    assert header["destination"][0]["endpoint"] == "https://sor2.sum.dsdn.dk/#id=953741000016009"
    assert header["source"]["endpoint"] == "https://sor2.sum.dsdn.dk/#id=265161000016000"


def test_validation_refuses_an_organization_without_ean_or_with_a_bad_check_digit() -> None:
    bundle = build("STIN")
    broken = copy.deepcopy(bundle)
    receiver_ref = broken["entry"][0]["resource"]["destination"][0]["receiver"]["reference"]
    receiver = next(
        o for o in resources(broken, "Organization") if f"Organization/{o['id']}" == receiver_ref
    )
    receiver["identifier"] = receiver["identifier"][1:]
    with pytest.raises(NotificationBuildError, match="EAN-ID"):
        validate_bundle(broken)
    receiver["identifier"].insert(
        0, {"system": "https://www.gs1.org/gln", "value": "5790001348121"}
    )
    with pytest.raises(NotificationBuildError, match="check digit"):
        validate_bundle(broken)


def test_narrative_names_the_route_but_not_the_child() -> None:
    header = build("MORS")["entry"][0]["resource"]
    div = header["text"]["div"]
    assert div.startswith('<div xmlns="http://www.w3.org/1999/xhtml">')
    assert "MORS" in div and "Hillerød Kommune" in div and header["id"] in div
    assert child().cpr not in div and "Berggren" not in div


def test_patient_is_data_minimised() -> None:
    patient = one(build("STIN"), "Patient")
    assert patient["identifier"] == [{"system": CPR_SYSTEM, "value": "0505159995"}]
    assert patient["name"] == [{"use": "official", "family": "Berggren", "given": ["Lars", "Test"]}]
    assert not {"address", "telecom", "birthDate", "gender"} & set(patient)


@pytest.mark.parametrize(
    ("ev", "message"),
    [
        (event("STOR", status="onleave"), "leave_start"),
        (event("SLOR", leave_start=LEAVE_START), "leave_end"),
        (event("STOR", cls="EMER", status="onleave", leave_start=LEAVE_START), "EMER"),
        (event("STIN", cls="EMER"), "EMER"),
    ],
)
def test_builder_rejects_events_medcom_cannot_express(ev: EncounterEvent, message: str) -> None:
    with pytest.raises(NotificationBuildError, match=message):
        build_hospital_notification(ev, RECIPIENT, sender=FROM)


def test_builder_rejects_a_missing_cpr() -> None:
    ev = CASES["STIN"][0]
    no_cpr = replace(ev, patient=replace(ev.patient, cpr=""))
    with pytest.raises(NotificationBuildError, match="CPR"):
        build_hospital_notification(no_cpr, RECIPIENT, sender=FROM)
    assert issubclass(NotificationBuildError, ValueError)


def _encounter(b: dict[str, Any]) -> dict[str, Any]:
    return one(b, "Encounter")


BREAKAGES = {
    "encounter location": (
        lambda b: _encounter(b).update(location=[{"location": {"display": "Afsnit B3"}}]),
        "Encounter must not carry location",
    ),
    "encounter reason": (
        lambda b: _encounter(b).update(reasonCode=[{"text": "spiseforstyrrelse"}]),
        "Encounter must not carry reasonCode",
    ),
    "missing CPR": (lambda b: one(b, "Patient").pop("identifier"), "CPR identifier"),
    "foreign identifier only": (
        lambda b: one(b, "Patient").update(identifier=[{"system": "urn:x", "value": "1"}]),
        "CPR identifier",
    ),
    "header not first": (lambda b: b["entry"].reverse(), r"entry\[0\] must be the MessageHeader"),
    "timestamp without offset": (lambda b: b.update(timestamp="2024-03-04T10:00:00"), "timestamp"),
    "cc destination": (
        lambda b: b["entry"][0]["resource"]["destination"].append(
            copy.deepcopy(b["entry"][0]["resource"]["destination"][0])
        ),
        "exactly one destination",
    ),
    "destination not primary": (
        lambda b: b["entry"][0]["resource"]["destination"][0]["extension"][0]["valueCoding"].update(
            code="cc"
        ),
        "use 'primary'",
    ),
    "no provenance for this header": (
        lambda b: one(b, "Provenance")["target"][0].update(reference="MessageHeader/other"),
        "no Provenance targets",
    ),
    "foreign activity": (
        lambda b: one(b, "Provenance")["activity"]["coding"][0].update(code="new-message"),
        "not a HospitalNotification code",
    ),
    "no narrative": (lambda b: b["entry"][0]["resource"].pop("text"), "narrative"),
    "dangling receiver": (
        lambda b: b["entry"][0]["resource"]["destination"][0]["receiver"].update(
            reference="Organization/nowhere"
        ),
        "destination.receiver",
    ),
    "onleave without leave period": (
        lambda b: _encounter(b).update(status="onleave"),
        "leave-period",
    ),
    "unknown element": (lambda b: _encounter(b).update(ward="B3"), "not a valid FHIR Bundle"),
    "unknown resource type": (
        lambda b: one(b, "Patient").update(resourceType="Person2"),
        "not a valid FHIR Bundle",
    ),
}


@pytest.mark.parametrize("name", BREAKAGES)
def test_validate_bundle_names_what_is_wrong(name: str) -> None:
    bundle = build("STIN")
    breaking, message = BREAKAGES[name]
    breaking(bundle)
    with pytest.raises(NotificationBuildError, match=message):
        validate_bundle(bundle)
