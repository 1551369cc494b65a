"""CareCommunication builder: every party gets its own valid message, MedCom's shape, determinism.

The child (Rikke Test Berggren) and her guardians (Ruddi, GUARD; Kirsten, MTH) are MedCom test
patients with CPR numbers reserved for testing. The SOR numbers are the ones in MedCom's own
examples, so our bundles can be compared with those; the unit names are only labels.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from stafet.directory import Addressee, Directory
from stafet.ids import stable_uuid
from stafet.medcom.carecommunication import (
    CATEGORY_SYSTEM,
    PROFILES,
    REJECTION_REASONS,
    CareCommunicationError,
    LetterKind,
    build_care_communication,
    delivery_channel,
    letter_text,
    message_ids,
    validate_care_communication,
)
from stafet.medcom.hospitalnotification import NotificationBuildError
from stafet.model import Assessment, Contact, Decision, Party, PatientInfo, ReferralEvent

DOMAIN = Path(__file__).resolve().parents[2] / "shared" / "domain"
EXAMPLES = DOMAIN / "medcom-examples" / "carecommunication"
ALL_CONTENT_EXAMPLE = EXAMPLES / "Bundle-gfd00bc2-9c26-4174-934e-f6e4360845de.json"
ATTACHMENT_EXAMPLE = EXAMPLES / "Bundle-b56549f7-ed10-422d-8088-f7222b686e46.json"

SOR = "urn:oid:1.2.208.176.1.1"
CPR = "urn:oid:1.2.208.176.1.2"
YDERNUMMER = "urn:oid:1.2.208.176.1.4"
MUNICIPALITY = "http://hl7.dk/fhir/core/CodeSystem/dk-core-municipality-codes"

UNIT = Party(
    kind="hospital-unit",
    identifier_system=SOR,
    identifier="265161000016000",
    name="Børne- og Ungdomspsykiatrisk Center Aarhus",
)
GP = Party(kind="gp", identifier_system=YDERNUMMER, identifier="099999", name="Lægehuset Testvej")
KOMMUNE = Party(
    kind="municipality", identifier_system=MUNICIPALITY, identifier="0751", name="Aarhus Kommune"
)
PPR = Party(kind="ppr", identifier_system=SOR, identifier="953741000016009", name="PPR Aarhus")
FAMILY = Party(
    kind="family-department",
    identifier_system=SOR,
    identifier="1042981000016003",
    name="Familieafdelingen Aarhus",
)
PROFESSIONALS = {"gp": GP, "municipality": KOMMUNE, "ppr": PPR, "family-department": FAMILY}
#: the party directory's entries for them: SOR + EAN (MedCom's example numbers where it has them)
DIRECTORY = Directory(
    [
        Addressee(
            "hospital/265161000016000",
            "hospital",
            UNIT.name or "",
            UNIT.identifier,
            "5790000209354",
        ),
        Addressee(
            "gp/099999",
            "gp",
            "Lægehuset Testvej",
            "6000000002099999",
            "5799930999991",
            ydernummer="099999",
        ),
        Addressee(
            "municipality/0751/central",
            "central",
            "Aarhus Kommune",
            "6000000007510010",
            "5799910075103",
            municipality="0751",
        ),
        Addressee(
            "municipality/0751/ppr",
            "ppr",
            "PPR Aarhus",
            PPR.identifier,
            "5790001348120",
            municipality="0751",
        ),
        Addressee(
            "municipality/0751/family-department",
            "family-department",
            "Familieafdelingen Aarhus",
            FAMILY.identifier,
            "5790001348120",
            municipality="0751",
        ),
    ]
)
FROM = DIRECTORY.by_sor(UNIT.identifier)


def cc(ev: ReferralEvent, recipient: Party, kind: str, **kwargs: Any) -> dict[str, Any]:
    """build_care_communication addressed through the test directory."""
    kwargs.setdefault("sender", FROM)
    to = FROM if recipient.kind == "guardian" else DIRECTORY.resolve(recipient)  # refused anyway
    return build_care_communication(ev, recipient, kind, to=to, **kwargs)  # type: ignore[arg-type]


CONTACT = Contact(name="Mette Test Hansen", phone="12345678", email="mette@example.org")
DECIDED = "2024-03-12T10:15:00+01:00"
REFERRAL = "HEN-2024-0042"


@cache
def medcom_test_patients() -> dict[str, dict[str, Any]]:
    data = json.loads((DOMAIN / "test-patients.json").read_text("utf-8"))
    return {p["id"]: p for p in data["patients"]}


def child() -> PatientInfo:
    p = medcom_test_patients()["RikkeBerggren"]
    return PatientInfo(
        cpr=p["cpr"],
        family=p["family"],
        given=tuple(p["given"]),
        birth_date=p["birthDate"],
        gender=p["gender"],
        municipality_code=p["municipality_code"],
        region_code=p["region_code"],
    )


def guardian(patient_id: str, relationship: str) -> Party:
    p = medcom_test_patients()[patient_id]
    return Party(
        kind="guardian",
        identifier_system=CPR,
        identifier=p["cpr"],
        name=" ".join([*p["given"], p["family"]]),
        relationship=relationship,
        has_fhir_endpoint=False,
    )


GUARDIANS = (guardian("RuddiBerggren", "GUARD"), guardian("KirstenBerggren", "MTH"))
REJECTED = Decision(
    status="rejected",
    reason_code="missing-ppv",
    note="Der er ikke beskrevet skoletrivsel eller tiltag i dagtilbud.",
    alternative="PPR udarbejder en PPV, og egen læge henviser igen",
    responsible="PPR Aarhus sammen med egen læge",
    contact=CONTACT,
)
DECISIONS: dict[str, tuple[str, Decision | None, Assessment | None]] = {
    "receipt": ("submitted", None, None),
    "status": ("decision", Decision(status="accepted", contact=CONTACT), None),
    "rejection": ("decision", REJECTED, None),
    "assessment": (
        "assessment",
        None,
        Assessment(
            summary="Udredningen viser angst; ingen tegn på autisme.",
            treatment_plan="Ambulant forløb med 8 samtaler og forældreinddragelse.",
            contact=CONTACT,
        ),
    ),
    "deadline": ("decision", Decision(status="expired", contact=CONTACT), None),
    "forward": (
        "decision",
        Decision(
            status="forwarded",
            contact=CONTACT,
            forwarded_to=Party(
                kind="hospital-unit",
                identifier_system=SOR,
                identifier="600000000000002",
                name="BUA Odense",
            ),
        ),
        None,
    ),
    "modified": ("modified", None, None),
    "cancelled": ("cancelled", None, None),
    "contact": ("contact", None, None),
}
NEW_CONTACT = Contact(name="Jonas Test Kjær", phone="87654321")


def event(kind: str, **changes: Any) -> ReferralEvent:
    """A hand-made canonical referral event, as the FHIR/HL7 normaliser would emit it."""
    ref_kind, decision, assessment = DECISIONS[kind]
    ev = ReferralEvent(
        event_id=stable_uuid("test-referral", kind),
        source="fhir",
        source_message_id=f"M-{kind}",
        kind=ref_kind,
        referral_id=REFERRAL,
        event_time=DECIDED,
        patient_key="k" * 32,
        child=child(),
        referrer=GP,
        receiver=UNIT,
        guardians=GUARDIANS,
        municipal_units=(PPR, FAMILY),
        decision=decision,
        assessment=assessment,
        reason_for_referral="Mistrivsel i skolen",
        contact=NEW_CONTACT if ref_kind == "contact" else None,
    )
    return replace(ev, **changes)


def build(kind: str, recipient: Party = GP, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("contact", CONTACT)  # receipts name no contact of their own
    return cc(event(kind), recipient, kind, **kwargs)


def resources(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type
    ]


def one(bundle: dict[str, Any], resource_type: str) -> dict[str, Any]:
    (resource,) = resources(bundle, resource_type)
    return resource


def by_ref(bundle: dict[str, Any], reference: str) -> dict[str, Any]:
    return next(
        e["resource"]
        for e in bundle["entry"]
        if f"{e['resource']['resourceType']}/{e['resource']['id']}" == reference
    )


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text("utf-8"))


@pytest.mark.parametrize("recipient", PROFESSIONALS)
@pytest.mark.parametrize("kind", DECISIONS)
def test_each_kind_for_each_professional_is_a_valid_message_of_its_own(
    kind: str, recipient: str
) -> None:
    party = PROFESSIONALS[recipient]
    bundle = build(kind, party)
    validate_care_communication(bundle)

    header = bundle["entry"][0]["resource"]
    (destination,) = header["destination"]
    receiver = by_ref(bundle, destination["receiver"]["reference"])
    entry = DIRECTORY.resolve(party)
    assert receiver["identifier"] == [
        {"system": "https://www.gs1.org/gln", "value": entry.ean},
        {"system": SOR, "value": entry.sor},
    ]
    assert receiver["name"] == entry.name
    assert by_ref(bundle, header["sender"]["reference"])["identifier"] == [
        {"system": "https://www.gs1.org/gln", "value": "5790000209354"},
        {"system": SOR, "value": UNIT.identifier},
    ]
    assert header["source"]["endpoint"] == f"https://sor2.sum.dsdn.dk/#id={UNIT.identifier}"
    assert destination["endpoint"] == f"https://sor2.sum.dsdn.dk/#id={entry.sor}"

    comm = one(bundle, "Communication")
    assert comm["category"] == [
        {"coding": [{"system": CATEGORY_SYSTEM, "code": "regarding-referral"}]}
    ]
    assert comm["priority"] == (
        "asap" if kind in ("rejection", "deadline", "forward") else "routine"
    )
    assert REFERRAL in comm["topic"]["text"]
    assert comm["basedOn"] == [
        {
            "type": "ServiceRequest",
            "identifier": {"value": REFERRAL},
            "display": f"Henvisning {REFERRAL}",
        }
    ]
    assert one(bundle, "Patient")["identifier"] == [{"system": CPR, "value": "0505209996"}]
    text = letter_text(event(kind), party, kind, contact=CONTACT)  # type: ignore[arg-type]
    assert comm["payload"][0]["contentString"] == text.plain_text()
    assert text.audience == "professional" and "Rikke Test Berggren" in text.plain_text()


@pytest.mark.parametrize("kind", DECISIONS)
def test_guardians_are_not_medcom_destinations_and_get_the_letter_text(kind: str) -> None:
    for parent in GUARDIANS:
        assert delivery_channel(parent) == "letter"
        with pytest.raises(CareCommunicationError, match="guardian cannot be a MedCom destination"):
            build(kind, parent)
        text = letter_text(event(kind), parent, kind, contact=CONTACT)  # type: ignore[arg-type]
        assert text.audience == "guardian" and text.recipient_name == parent.name
        assert parent.identifier not in text.plain_text()
    assert delivery_channel(GP) == "medcom"
    assert delivery_channel(replace(GP, has_fhir_endpoint=False)) == "letter"


@pytest.mark.parametrize(
    ("kind", "line", "responsible"),
    [
        ("forward", "Afgørelse: Henvisningen er videresendt til BUA Odense", "BUA Odense"),
        ("modified", "Afgørelse: Henvisningen er ændret af henviser", None),
        ("cancelled", "Afgørelse: Henvisningen er trukket tilbage", "henviser, Lægehuset Testvej"),
        ("contact", "Afgørelse: Kontaktpersonen er skiftet til Jonas Test Kjær", None),
    ],
)
def test_forward_modification_cancellation_and_contact_change_letters(
    kind: str, line: str, responsible: str | None
) -> None:
    payload = one(build(kind), "Communication")["payload"][0]["contentString"]
    assert line in payload
    if responsible:
        assert f"Hvem har bolden nu: {responsible}" in payload
    if kind == "contact":
        assert "Kontakt: Jonas Test Kjær, tlf. 87654321" in payload
        parent = letter_text(event(kind), GUARDIANS[0], "contact")
        assert "I behøver ikke selv give de andre parter besked" in " ".join(parent.paragraphs)


def test_a_contact_change_needs_the_new_contact() -> None:
    with pytest.raises(CareCommunicationError, match="event.contact"):
        build_care_communication(
            event("contact", contact=None), GP, "contact", sender=FROM, to=DIRECTORY.resolve(GP)
        )
    with pytest.raises(CareCommunicationError, match="forwarded decision"):
        cc(event("status"), GP, "forward")


def test_the_units_own_reason_wording_is_kept_beside_the_standard_text() -> None:
    """RF1-10.2 / statusReason.text: what the unit wrote is not replaced by the code's text."""
    own = "PPV mangler – skolen har ikke beskrevet trivslen i klassen"
    worded = replace(REJECTED, reason_text=own)
    payload = one(cc(event("rejection", decision=worded), GP, "rejection"), "Communication")[
        "payload"
    ][0]["contentString"]
    assert f"Begrundelse: {REJECTION_REASONS['missing-ppv']} (kode missing-ppv)" in payload
    assert f"Afdelingens begrundelse: {own}" in payload
    same = replace(REJECTED, reason_text=REJECTION_REASONS["missing-ppv"])
    payload = one(cc(event("rejection", decision=same), GP, "rejection"), "Communication")[
        "payload"
    ][0]["contentString"]
    assert "Afdelingens begrundelse" not in payload  # nothing to add when it is the same


def test_rejection_message_carries_every_fact_a_party_needs() -> None:
    bundle = build("rejection", KOMMUNE)
    comm = one(bundle, "Communication")
    payload = comm["payload"][0]["contentString"]
    required = [
        REFERRAL,
        "Rikke Test Berggren",  # referral echoed, the child by name
        "Børne- og Ungdomspsykiatrisk Center Aarhus",
        "SOR 265161000016000",  # rejecting unit
        "Henvisningen er afvist",
        "12. marts 2024 kl. 10.15",  # decision and its time
        "missing-ppv",
        REJECTION_REASONS["missing-ppv"],
        REJECTED.note,  # coded reason + note
        "Forslag til næste skridt: PPR udarbejder en PPV, og egen læge henviser igen",
        "Hvem har bolden nu: PPR Aarhus sammen med egen læge",
        "Kontakt: Mette Test Hansen, tlf. 12345678",
        "Orienteret: henviser (Lægehuset Testvej), bopælskommunen (0751), PPR Aarhus, "
        "Familieafdelingen Aarhus, forældremyndighedsindehaverne",
    ]
    missing = [fact for fact in required if fact not in payload]
    assert not missing
    assert comm["priority"] == "asap"
    div = comm["text"]["div"]
    assert all(html_safe in div for html_safe in (REFERRAL, "Rikke Test Berggren", "missing-ppv"))
    contact = comm["payload"][0]["extension"][3]
    assert contact["valueContactPoint"] == {"system": "phone", "value": "12345678"}
    author = by_ref(bundle, comm["payload"][0]["extension"][2]["valueReference"]["reference"])
    practitioner = by_ref(bundle, author["practitioner"]["reference"])
    assert practitioner["name"] == [{"family": "Hansen", "given": ["Mette", "Test"]}]


def test_rejection_defaults_name_the_referrer_and_a_next_step() -> None:
    bare = replace(
        REJECTED, alternative=None, responsible=None, note=None, reason_code="outside-target-group"
    )
    text = letter_text(event("rejection", decision=bare), GP, "rejection")
    facts = dict(text.facts)
    assert facts["Hvem har bolden nu"] == "henviser, Lægehuset Testvej"
    assert "relevant tilbud" in facts["Forslag til næste skridt"]
    assert facts["Begrundelse"].startswith(REJECTION_REASONS["outside-target-group"])
    assert "Bemærkning" not in facts


@pytest.mark.parametrize(
    ("decision", "line", "responsible"),
    [
        (
            Decision(status="accepted", contact=CONTACT),
            "Henvisningen er visiteret til udredning",
            "Børne- og Ungdomspsykiatrisk Center Aarhus",
        ),
        (
            Decision(
                status="forwarded",
                contact=CONTACT,
                forwarded_to=Party(
                    kind="hospital-unit",
                    identifier_system=SOR,
                    identifier="953741000016009",
                    name="Børne- og Ungdomspsykiatrisk Afdeling Risskov",
                ),
                responsible="BUA Risskov",
            ),
            "Henvisningen er videresendt til Børne- og Ungdomspsykiatrisk Afdeling Risskov",
            "BUA Risskov",
        ),
        (
            Decision(status="expired", contact=CONTACT),
            "Henvisningen er udløbet og afsluttet",
            "henviser, Lægehuset Testvej",
        ),
    ],
)
def test_status_letter_follows_the_decision(
    decision: Decision, line: str, responsible: str
) -> None:
    bundle = cc(event("status", decision=decision), GP, "status")
    validate_care_communication(bundle)
    payload = one(bundle, "Communication")["payload"][0]["contentString"]
    assert f"Afgørelse: {line}" in payload
    assert f"Hvem har bolden nu: {responsible}" in payload


def test_receipts_and_deadlines_take_the_units_contact_from_the_caller() -> None:
    """A submitted referral or a timer tick names no contact; MedCom needs a phone number."""
    for kind in ("receipt", "deadline"):
        with pytest.raises(CareCommunicationError, match="phone number"):
            cc(event(kind, decision=None), GP, kind)
        bundle = cc(event(kind, decision=None), GP, kind, contact=CONTACT)
        validate_care_communication(bundle)


def test_the_three_reasons_of_seed_004_have_danish_texts() -> None:
    assert set(REJECTION_REASONS) >= {"missing-ppv", "missing-information", "outside-target-group"}
    assert "pædagogisk-psykologisk vurdering (PPV)" in REJECTION_REASONS["missing-ppv"]
    assert "kommunens hidtidige indsats" in REJECTION_REASONS["missing-information"]
    assert "målgruppe" in REJECTION_REASONS["outside-target-group"]


def test_build_is_deterministic_and_ids_follow_the_policy() -> None:
    first, second = build("rejection", PPR), build("rejection", PPR)
    assert json.dumps(first, ensure_ascii=False) == json.dumps(second, ensure_ascii=False)
    ev = event("rejection")
    bundle_id, header_id = message_ids(ev.event_id, PPR, "rejection")
    assert (first["id"], first["entry"][0]["resource"]["id"]) == (bundle_id, header_id)
    assert first["id"] == stable_uuid(ev.event_id, SOR, PPR.identifier, "rejection", "bundle")
    ids = [e["resource"]["id"] for e in first["entry"]]
    assert len(set(ids)) == len(ids)
    assert first["timestamp"] == DECIDED == one(first, "Provenance")["recorded"]
    others = {
        message_ids(ev.event_id, party, kind)
        for party in (*PROFESSIONALS.values(), *GUARDIANS)
        for kind in ("rejection", "status")
    }
    assert len(others) == 2 * (len(PROFESSIONALS) + len(GUARDIANS))  # each message its own ids


def test_structure_matches_medcom_regarding_referral_example() -> None:
    ours, theirs = build("rejection", PPR), load(ALL_CONTENT_EXAMPLE)
    assert ours["meta"] == theirs["meta"] and ours["type"] == theirs["type"] == "message"

    def profiles(bundle: dict[str, Any]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for entry in bundle["entry"]:
            r = entry["resource"]
            out.setdefault(r["resourceType"], set()).update(r["meta"]["profile"])
        return out

    ours_p, theirs_p = profiles(ours), profiles(theirs)
    assert set(ours_p) == set(theirs_p) - {"Encounter", "CareTeam"}  # both optional in MedCom
    assert all(ours_p[t] == theirs_p[t] == {PROFILES[t]} for t in ours_p)
    assert [
        r["resourceType"] for r in (ours["entry"][0]["resource"], theirs["entry"][0]["resource"])
    ] == ["MessageHeader"] * 2

    our_mh, their_mh = ours["entry"][0]["resource"], theirs["entry"][0]["resource"]
    for key in ("eventCoding", "definition"):
        assert our_mh[key] == their_mh[key]
    assert our_mh["destination"][0]["extension"] == their_mh["destination"][0]["extension"]
    assert our_mh["destination"][0]["endpoint"] == their_mh["destination"][0]["endpoint"]
    assert our_mh["source"] == their_mh["source"]

    our_c, their_c = one(ours, "Communication"), one(theirs, "Communication")
    for key in ("category", "priority", "status"):
        assert our_c[key] == their_c[key], key
    assert [x["url"] for x in our_c["payload"][0]["extension"]] == [
        x["url"] for x in their_c["payload"][0]["extension"]
    ]
    assert set(our_c) - {"basedOn"} <= set(their_c)
    our_prov, their_prov = one(ours, "Provenance"), one(theirs, "Provenance")
    assert our_prov["activity"] == their_prov["activity"]
    assert set(our_prov) == set(their_prov) - {"text"}
    assert {e["role"] for e in our_prov["entity"]} == {e["role"] for e in their_prov["entity"]}
    for org in resources(ours, "Organization"):
        assert set(org) == set(resources(theirs, "Organization")[0]) - {"text"}


def test_pdf_attachment_is_added_like_medcoms_example() -> None:
    pdf = b"%PDF-1.4\n% stafet test letter\n%%EOF\n"
    bundle = build("rejection", GP, attachment_pdf=pdf)
    validate_care_communication(bundle)
    text_part, attachment = one(bundle, "Communication")["payload"]
    theirs = next(
        p
        for p in one(load(ATTACHMENT_EXAMPLE), "Communication")["payload"]
        if "contentAttachment" in p
    )
    assert (
        attachment["contentAttachment"]["contentType"]
        == theirs["contentAttachment"]["contentType"]
        == "application/pdf"
    )
    assert set(theirs["contentAttachment"]) <= set(attachment["contentAttachment"])
    assert base64.b64decode(attachment["contentAttachment"]["data"]) == pdf
    assert not attachment["contentAttachment"]["title"].endswith(".pdf")
    ident = [
        x["valueIdentifier"]["value"]
        for p in (text_part, attachment)
        for x in p["extension"]
        if "valueIdentifier" in x
    ]
    assert len(set(ident)) == 2
    assert [e["what"]["identifier"]["value"] for e in one(bundle, "Provenance")["entity"]] == ident
    with pytest.raises(CareCommunicationError, match="not a PDF"):
        build("rejection", GP, attachment_pdf=b"<html>")


def test_reply_points_at_the_previous_message() -> None:
    previous = message_ids(event("receipt").event_id, GP, "receipt")[1]
    bundle = build("rejection", GP, previous_header_id=previous)
    validate_care_communication(bundle)
    prov = one(bundle, "Provenance")
    assert prov["activity"]["coding"][0]["code"] == "reply-message"
    assert prov["entity"][-1] == {
        "role": "revision",
        "what": {"reference": f"MessageHeader/{previous}"},
    }
    assert one(build("rejection", GP), "Provenance")["activity"]["coding"][0]["code"] == (
        "new-message"
    )


CPR_SHAPED = re.compile(r"(?<!\d)[0-3]\d[01]\d{3}-?\d{4}(?!\d)")


@pytest.mark.parametrize("kind", DECISIONS)
def test_the_childs_cpr_is_only_in_the_patient_identifier(kind: str) -> None:
    bundle = build(kind, KOMMUNE)
    serialized = json.dumps(bundle, ensure_ascii=False)
    assert serialized.count("0505209996") == 1
    assert all(g.identifier not in serialized for g in GUARDIANS)
    one(bundle, "Patient")["identifier"] = []
    assert not CPR_SHAPED.search(re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "", json.dumps(bundle)))


def test_a_cpr_typed_into_a_note_is_masked() -> None:
    careless = replace(REJECTED, note="Se også søster, cpr 0505109990.")
    bundle = cc(event("rejection", decision=careless), GP, "rejection")
    validate_care_communication(bundle)
    payload = one(bundle, "Communication")["payload"][0]["contentString"]
    assert "0505109990" not in json.dumps(bundle) and "cpr <cpr>" in payload


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.name[7:15])
def test_every_medcom_example_passes_the_medcom_rules(path: Path) -> None:
    validate_care_communication(load(path), privacy=False)


def test_privacy_rule_catches_medcoms_generated_narratives() -> None:
    with pytest.raises(CareCommunicationError, match=r"CPR-shaped number in .*text\.div"):
        validate_care_communication(load(ATTACHMENT_EXAMPLE))


@pytest.mark.parametrize(
    ("changes", "kind", "message"),
    [
        ({"decision": replace(REJECTED, reason_code=None)}, "rejection", "needs a reason"),
        (
            {"decision": Decision(status="accepted", contact=CONTACT)},
            "rejection",
            "needs a rejected decision",
        ),
        (
            {"decision": replace(REJECTED, contact=Contact(name="Uden Telefon"))},
            "rejection",
            "phone number",
        ),
        (
            {"decision": replace(REJECTED, status="rejected")},
            "status",
            "accepted, forwarded or expired",
        ),
        ({"decision": None}, "deadline", "needs a contact with a phone number"),
        ({"assessment": None}, "assessment", "needs event.assessment"),
        ({"child": replace(child(), cpr="")}, "rejection", "10-digit CPR"),
        ({"receiver": None}, "rejection", "no receiving psychiatry unit"),
    ],
)
def test_builder_refuses_events_a_letter_cannot_be_written_from(
    changes: dict[str, Any], kind: LetterKind, message: str
) -> None:
    with pytest.raises(CareCommunicationError, match=message):
        cc(event(kind, **changes), GP, kind)
    assert issubclass(CareCommunicationError, NotificationBuildError)
    assert issubclass(CareCommunicationError, ValueError)


def test_no_message_to_or_from_a_party_without_ean() -> None:
    """MedCom routes on the receiver's EAN: a Bundle without one is never built."""
    with pytest.raises(CareCommunicationError, match="no EAN"):
        cc(event("rejection"), GP, "rejection", sender=replace(FROM, ean=None))
    with pytest.raises(CareCommunicationError, match="no EAN"):
        build_care_communication(
            event("rejection"),
            GP,
            "rejection",
            sender=FROM,
            to=replace(DIRECTORY.resolve(GP), ean=None),
        )


def _comm(b: dict[str, Any]) -> dict[str, Any]:
    return one(b, "Communication")


def _header(b: dict[str, Any]) -> dict[str, Any]:
    return b["entry"][0]["resource"]


def _author(b: dict[str, Any]) -> dict[str, Any]:
    return one(b, "PractitionerRole")


BREAKAGES = {
    "header profile": (
        lambda b: _header(b)["meta"].update(profile=["http://x/mh"]),
        "medcom-careCommunication-1",
    ),
    "two patients": (
        lambda b: b["entry"].append(copy.deepcopy(b["entry"][1])),
        "medcom-careCommunication-2",
    ),
    "provenance profile": (
        lambda b: one(b, "Provenance")["meta"].update(profile=[]),
        "medcom-careCommunication-3",
    ),
    "priority with other category": (
        lambda b: _comm(b)["category"][0]["coding"][0].update(code="carecoordination"),
        "medcom-careCommunication-5",
    ),
    "other without topic": (
        lambda b: (
            _comm(b)["category"][0]["coding"][0].update(code="other"),
            _comm(b).pop("priority"),
            _comm(b).pop("topic"),
        ),
        "medcom-careCommunication-6",
    ),
    "role code and text": (
        lambda b: _author(b)["code"][0].update(coding=[{"code": "sygeplejerske"}]),
        "medcom-careCommunication-7",
    ),
    "author without name": (
        lambda b: one(b, "Practitioner").pop("name"),
        "medcom-careCommunication-4",
    ),
    "encounter not referenced": (
        lambda b: b["entry"].append(
            {
                "resource": {
                    "resourceType": "Encounter",
                    "id": "e1",
                    "meta": {"profile": [PROFILES["Encounter"]]},
                    "status": "finished",
                    "class": {"code": "IMP"},
                }
            }
        ),
        "medcom-careCommunication-15",
    ),
    "cc destination": (
        lambda b: _header(b)["destination"].append(copy.deepcopy(_header(b)["destination"][0])),
        "exactly one destination",
    ),
    "destination not primary": (
        lambda b: _header(b)["destination"][0]["extension"][0]["valueCoding"].update(code="cc"),
        "use 'primary'",
    ),
    "wrong event": (
        lambda b: _header(b)["eventCoding"].update(code="hospital-notification-message"),
        "eventCoding",
    ),
    "identifier not urn:uuid": (
        lambda b: _comm(b)["identifier"][0].update(value="HEN-2024-0042"),
        "urn:uuid",
    ),
    "unknown category": (
        lambda b: _comm(b)["category"][0]["coding"][0].update(code="referral-rejected"),
        "Communication.category",
    ),
    "no contact phone": (lambda b: _comm(b)["payload"][0]["extension"].pop(3), "author contact"),
    "no payload date": (lambda b: _comm(b)["payload"][0]["extension"].pop(0), "date extension"),
    "attachment type": (
        lambda b: _comm(b)["payload"].append(
            {
                "extension": copy.deepcopy(_comm(b)["payload"][0]["extension"][:2]),
                "contentAttachment": {"contentType": "text/html", "data": "PGI+", "title": "x"},
            }
        ),
        "contentType 'text/html' is not allowed",
    ),
    "hospital activity": (
        lambda b: one(b, "Provenance")["activity"]["coding"][0].update(code="admit-inpatient"),
        "not a CareCommunication activity",
    ),
    "reply without revision": (
        lambda b: one(b, "Provenance")["activity"]["coding"][0].update(code="reply-message"),
        "role revision",
    ),
    "no provenance for this message": (
        lambda b: one(b, "Provenance")["target"][0].update(reference="MessageHeader/x"),
        "exactly one Provenance must target",
    ),
    "cpr in the letter": (
        lambda b: _comm(b)["payload"][0].update(contentString="Barnet, 0505209996, er afvist"),
        r"CPR-shaped number in .*contentString",
    ),
    "no narrative": (lambda b: _comm(b).pop("text"), "Communication.text"),
    "status": (lambda b: _comm(b).update(status="completed"), "'unknown'"),
    "unknown element": (lambda b: _comm(b).update(referral="HEN"), "not a valid FHIR Bundle"),
    "guardian as resource": (
        lambda b: b["entry"].append(
            {
                "resource": {
                    "resourceType": "RelatedPerson",
                    "id": "mor",
                    "patient": {"reference": f"Patient/{one(b, 'Patient')['id']}"},
                }
            }
        ),
        "RelatedPerson is not part of a CareCommunication",
    ),
}


@pytest.mark.parametrize("name", BREAKAGES)
def test_validate_names_what_is_wrong(name: str) -> None:
    bundle = build("rejection", PPR)
    breaking, message = BREAKAGES[name]
    breaking(bundle)
    with pytest.raises(CareCommunicationError, match=message):
        validate_care_communication(bundle)
