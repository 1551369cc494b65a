"""FHIR referral resources → canonical events (no Kafka): each accepted shape, each error with
its path and issue code, deterministic ids, and no CPR in any reason."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from demo import fhir_samples as s
from stafet.connectors.sources.fhir.openapi import openapi
from stafet.ids import patient_key
from stafet.inbound.fhir_referral import FhirInputError, Issue, parse_fhir_referral
from stafet.model import Contact
from stafet.systems import SOR_SYSTEM, UNIT_SYSTEM, YDER_SYSTEM

SECRET = "test-secret"
RIKKE, RUDDI, KIRSTEN = "0505209996", "1502779995", "2911829996"
CPR_SHAPED = re.compile(r"(?<!\d)\d{6}-?\d{4}(?!\d)")


def parse(resource: Any, **kw: Any):
    body = resource if isinstance(resource, bytes) else s.to_bytes(resource)
    return parse_fhir_referral(body, secret=SECRET, **kw)


def issues(resource: Any, **kw: Any) -> list[Issue]:
    with pytest.raises(FhirInputError) as caught:
        parse(resource, **kw)
    return caught.value.issues


def only(resource: Any, **kw: Any) -> Issue:
    found = issues(resource, **kw)
    assert len(found) == 1, found
    return found[0]


# --- accepted shapes ---------------------------------------------------------------------------


def test_gp_referral_maps_child_parties_and_reason():
    [event] = parse(s.referral("HEN-1"))
    assert (event.kind, event.source, event.referral_id) == ("submitted", "fhir", "HEN-1")
    assert event.event_time == "2026-11-23T09:30:00+01:00"
    assert event.patient_key == patient_key(RIKKE, SECRET)
    child = event.child
    assert (child.cpr, child.family, child.given) == (RIKKE, "Berggren", ("Rikke", "Test"))
    assert (child.municipality_code, child.region_code) == ("0751", "DK-82")
    assert (child.birth_date, child.gender) == ("2020-05-05", "female")
    assert event.referrer is not None and event.receiver is not None
    assert (
        event.referrer.kind,
        event.referrer.identifier_system,
        event.referrer.identifier,
        event.referrer.has_fhir_endpoint,
    ) == ("gp", YDER_SYSTEM, "099999", True)
    assert (event.receiver.kind, event.receiver.identifier, event.receiver.name) == (
        "hospital-unit",
        "600000000000001",
        "BUC Aarhus (demo)",
    )
    assert [(g.relationship, g.identifier, g.name) for g in event.guardians] == [
        ("GUARD", RUDDI, "Ruddi Test Berggren"),
        ("MTH", KIRSTEN, "Kirsten Test Berggren"),
    ]
    assert all(not g.has_fhir_endpoint for g in event.guardians)
    ppr, family = event.municipal_units
    assert (ppr.kind, ppr.identifier_system, ppr.identifier) == (
        "ppr",
        SOR_SYSTEM,
        "6000000007510011",
    )
    # no SOR: named by municipality + kind, so it is not merged with the central mailbox
    assert (family.kind, family.identifier_system, family.identifier, family.has_fhir_endpoint) == (
        "family-department",
        UNIT_SYSTEM,
        "0751/family-department",
        True,
    )
    assert event.reason_for_referral and "ADHD" in event.reason_for_referral
    assert event.decision is None and event.assessment is None


@pytest.mark.parametrize("district", ["0751", "751"])
def test_municipality_from_address_district(district):
    resource = s.referral(municipality_as="district")
    resource["contained"][0]["address"][0]["district"] = district
    assert parse(resource)[0].child.municipality_code == "0751"


@pytest.mark.parametrize(
    ("status", "version", "kind"),
    [
        ("active", None, "submitted"),
        ("active", "1", "submitted"),
        ("active", "2", "modified"),
        ("on-hold", None, "modified"),
        ("revoked", "3", "cancelled"),
        ("entered-in-error", None, "cancelled"),
    ],
)
def test_service_request_status_gives_the_kind(status, version, kind):
    assert parse(s.referral(status=status, version=version))[0].kind == kind


def test_rejection_task_is_a_decision_with_reason_alternative_and_contact():
    [event] = parse(s.rejection_task("HEN-1"))
    assert (event.kind, event.referral_id, event.child.cpr) == ("decision", "HEN-1", RIKKE)
    assert event.child.municipality_code == ""  # the stream fills it from the referral
    assert event.event_time == "2026-11-30T14:05:00+01:00"
    assert event.receiver is not None and event.receiver.identifier == "600000000000001"
    d = event.decision
    assert d is not None
    assert (d.status, d.reason_code) == ("rejected", "missing-ppv")
    assert d.reason_text == s.MISSING_PPV_TEXT
    assert d.alternative == "Kontakt PPR i Aarhus Kommune for en PPV"
    assert d.responsible == "Aarhus Kommune, PPR"
    assert d.contact == Contact(name="Sekretær Hanne Holm", phone="7845 0000")
    assert d.note and "PPV" in d.note and d.forwarded_to is None


def test_accepted_forwarded_and_expired_tasks():
    assert parse(s.acceptance_task())[0].decision.status == "accepted"  # type: ignore[union-attr]
    [forward] = parse(s.forward_task(to=s.BUC_ODENSE))
    assert forward.decision is not None and forward.decision.status == "forwarded"
    assert forward.decision.forwarded_to is not None
    assert forward.decision.forwarded_to.identifier == s.BUC_ODENSE.identifier
    expired = s.acceptance_task() | {"status": "failed", "businessStatus": {"text": "expired"}}
    assert parse(expired)[0].decision.status == "expired"  # type: ignore[union-attr]


def test_contact_changed_task_names_the_new_contact():
    task = s.acceptance_task() | {
        "status": "in-progress",
        "businessStatus": {"coding": [{"code": "contact-changed"}]},
        "output": [
            {"type": {"text": "contact-name"}, "valueString": "Jonas Kjær"},
            {"type": {"text": "contact-phone"}, "valueString": "8765 4321"},
        ],
    }
    [event] = parse(task)
    assert event.kind == "contact" and event.decision is None
    assert event.contact == Contact(name="Jonas Kjær", phone="8765 4321")
    no_phone = task | {"output": task["output"][:1]}
    assert any("contact-phone" in i.reason for i in issues(no_phone))
    unknown = issues(task, known_referral=lambda rid: False)
    assert [i.code for i in unknown] == ["not-found"]  # like a decision: 422 for an unknown one
    assert issues(task | {"status": "entered-in-error"})  # not a contact change, not a decision


def test_task_for_may_reference_a_contained_patient():
    task = s.rejection_task()
    task["contained"] = [
        {
            "resourceType": "Patient",
            "id": "c",
            "identifier": [{"system": "urn:oid:1.2.208.176.1.2", "value": RIKKE}],
            "name": [{"family": "Berggren"}],
        }
    ]
    task["for"] = {"reference": "#c"}
    [event] = parse(task)
    assert (event.child.cpr, event.child.family) == (RIKKE, "Berggren")


def test_status_communication_is_an_assessment():
    [event] = parse(s.status_communication("HEN-1"))
    assert (event.kind, event.referral_id, event.event_time) == (
        "assessment",
        "HEN-1",
        "2027-01-15T11:00:00+01:00",
    )
    a = event.assessment
    assert a is not None and a.summary.startswith("Udredningen viser angst")
    assert a.treatment_plan and "kognitiv terapi" in a.treatment_plan
    assert a.contact == Contact(name="Psykolog Jens Test Jensen", phone="7845 1234")
    assert event.referrer is not None and event.referrer.has_fhir_endpoint


def test_untagged_payload_is_summary_then_plan():
    comm = s.status_communication()
    comm["payload"] = [{"contentString": "Resumé"}, {"contentString": "Plan"}]
    a = parse(comm)[0].assessment
    assert a is not None and (a.summary, a.treatment_plan, a.contact) == ("Resumé", "Plan", None)


def test_bundle_entries_reference_each_other_by_full_url():
    referral = s.referral("HEN-B")
    patient = referral.pop("contained")[0]
    referral.pop("supportingInfo")
    header = {
        "resourceType": "MessageHeader",
        "eventCoding": {"code": "referral"},
        "source": {"endpoint": "https://gp.example/fhir"},
    }
    task = s.rejection_task("HEN-B")
    bundle = {
        "resourceType": "Bundle",
        "type": "message",
        "entry": [
            {"fullUrl": "urn:uuid:1", "resource": header},
            {"fullUrl": "urn:uuid:2", "resource": patient},
            {
                "fullUrl": "urn:uuid:3",
                "resource": referral | {"subject": {"reference": "urn:uuid:2"}},
            },
            {
                "fullUrl": "urn:uuid:4",
                "resource": task
                | {"focus": {"reference": "urn:uuid:3"}, "for": {"reference": "urn:uuid:2"}},
            },
        ],
    }
    submitted, decision = parse(bundle, known_referral=lambda _: False)
    assert (submitted.kind, decision.kind) == ("submitted", "decision")
    assert submitted.referral_id == decision.referral_id == "HEN-B"
    assert decision.child.family == "Berggren" and submitted.child.municipality_code == "0751"


def test_bundle_of_samples_keeps_entry_order():
    events = parse(s.bundle(s.referral("HEN-2"), s.rejection_task("HEN-2"), type_="transaction"))
    assert [e.kind for e in events] == ["submitted", "decision"]


def test_known_referral_passes():
    assert parse(s.rejection_task("HEN-9"), known_referral={"HEN-9"}.__contains__)


# --- errors: path and code ---------------------------------------------------------------------


def _without(resource: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in keys}


def _child_cpr(value: str) -> dict[str, Any]:
    resource = s.referral()
    resource["contained"][0]["identifier"][0]["value"] = value
    return resource


def _municipality(code: str | None) -> dict[str, Any]:
    resource = s.referral(municipality_as="district" if code else "none")
    if code:
        resource["contained"][0]["address"][0]["district"] = code
    return resource


def _guardian_role(code: str) -> dict[str, Any]:
    resource = s.referral()
    resource["contained"][1]["relationship"][0]["coding"][0]["code"] = code
    return resource


ERRORS = [
    ("wrong resourceType", {"resourceType": "Patient", "id": "x"}, "resourceType", "not-supported"),
    ("no resourceType", {"status": "active"}, "resourceType", "required"),
    ("not a FHIR type", {"resourceType": "Henvisning"}, "resourceType", "not-supported"),
    ("malformed JSON", b'{"resourceType": "Task",', "", "structure"),
    ("JSON array", b"[]", "", "structure"),
    ("missing focus", _without(s.rejection_task(), "focus"), "Task.focus", "required"),
    (
        "focus without id",
        s.rejection_task() | {"focus": {"display": "x"}},
        "Task.focus.identifier.value",
        "required",
    ),
    (
        "invalid CPR",
        _child_cpr("3213209996"),
        "ServiceRequest.contained[0].identifier[0].value",
        "value",
    ),
    (
        "no CPR in Task.for",
        s.rejection_task() | {"for": {"display": "Rikke"}},
        "Task.for.identifier",
        "required",
    ),
    (
        "unknown municipality",
        _municipality("0999"),
        "ServiceRequest.contained[0].address[0].district",
        "code-invalid",
    ),
    ("no municipality", _municipality(None), "ServiceRequest.contained[0].address", "required"),
    (
        "rejection without reason",
        _without(s.rejection_task(), "statusReason"),
        "Task.statusReason",
        "required",
    ),
    (
        "unknown reason code",
        s.rejection_task(reason_code="no-beds"),
        "Task.statusReason.coding[0].code",
        "value",
    ),
    (
        "unsupported Task status",
        s.acceptance_task() | {"status": "requested"},
        "Task.status",
        "not-supported",
    ),
    ("draft referral", s.referral(status="draft"), "ServiceRequest.status", "not-supported"),
    ("no owner", _without(s.rejection_task(), "owner"), "Task.owner", "required"),
    (
        "owner not SOR",
        s.rejection_task() | {"owner": s.GP.ref()},
        "Task.owner.identifier.system",
        "value",
    ),
    (
        "unknown output",
        s.acceptance_task() | {"output": [{"type": {"text": "x"}, "valueString": "y"}]},
        "Task.output[0]",
        "value",
    ),
    (
        "no event time",
        _without(s.rejection_task(), "lastModified", "authoredOn"),
        "Task.lastModified",
        "required",
    ),
    (
        "time without offset",
        s.rejection_task() | {"lastModified": "2026-11-30T14:05:00"},
        "Task.lastModified",
        "value",
    ),
    (
        "status missing (pydantic)",
        _without(s.rejection_task(), "status"),
        "Task.status",
        "required",
    ),
    (
        "unknown element (pydantic)",
        s.rejection_task() | {"henvisning": 1},
        "Task.henvisning",
        "structure",
    ),
    (
        "list expected (pydantic)",
        s.rejection_task() | {"note": {"text": "x"}},
        "Task.note",
        "structure",
    ),
    (
        "unknown contained type",
        s.referral()
        | {"contained": [*s.referral()["contained"], {"resourceType": "Barn", "id": "b"}]},
        "ServiceRequest.contained[5]",
        "not-supported",
    ),
    (
        "dangling contained reference",
        s.referral() | {"subject": {"reference": "#nobody"}},
        "ServiceRequest.subject.reference",
        "structure",
    ),
    (
        "bad guardian role",
        _guardian_role("SPS"),
        "ServiceRequest.contained[1].relationship",
        "value",
    ),
    ("bundle type", s.bundle(s.referral(), type_="searchset"), "Bundle.type", "not-supported"),
    (
        "bundle of two children",
        s.bundle(s.referral(), s.rejection_task(cpr=RUDDI)),
        "Bundle.entry",
        "invalid",
    ),
    ("empty bundle", s.bundle(), "Bundle.entry", "required"),
    (
        "communication without summary",
        s.status_communication() | {"payload": [{"contentAttachment": {"title": "brev.pdf"}}]},
        "Communication.payload",
        "required",
    ),
    (
        "entry error path",
        s.bundle(s.referral(), _without(s.rejection_task(), "focus")),
        "Bundle.entry[1].resource.focus",
        "required",
    ),
]


@pytest.mark.parametrize(("name", "resource", "path", "code"), ERRORS, ids=[e[0] for e in ERRORS])
def test_error_names_path_and_code(name, resource, path, code):
    found = issues(resource)
    assert (path, code) in [(i.path, i.code) for i in found], found


@pytest.mark.parametrize(("name", "resource", "path", "code"), ERRORS, ids=[e[0] for e in ERRORS])
def test_no_cpr_in_any_reason(name, resource, path, code):
    for issue in issues(resource):
        assert not CPR_SHAPED.search(issue.reason), issue


def test_every_issue_is_listed_at_once():
    task = _without(s.rejection_task(), "focus", "owner", "statusReason")
    found = {(i.path, i.code) for i in issues(task)}
    assert found == {
        ("Task.focus", "required"),
        ("Task.owner", "required"),
        ("Task.statusReason", "required"),
    }


def test_unknown_referral_is_not_found_and_a_business_rule():
    with pytest.raises(FhirInputError) as caught:
        parse(s.rejection_task("HEN-404"), known_referral=lambda _: False)
    [issue] = caught.value.issues
    assert (issue.path, issue.code) == ("Task.focus", "not-found")
    assert "HEN-404" in issue.reason and caught.value.business_rule
    # the stream calls without the index: the same body maps (it parks unknown referrals)
    assert parse(s.rejection_task("HEN-404"))[0].referral_id == "HEN-404"


def test_municipality_error_is_a_business_rule_structure_is_not():
    with pytest.raises(FhirInputError) as caught:
        parse(_municipality("0999"))
    assert caught.value.business_rule
    with pytest.raises(FhirInputError) as caught:
        parse(_without(s.rejection_task(), "focus"))
    assert not caught.value.business_rule


def test_a_cpr_echoed_from_input_is_masked():
    """A sender that puts a CPR where a referral id belongs must not see it echoed back."""
    issue = only(s.rejection_task(RUDDI), known_referral=lambda _: False)
    assert RUDDI not in issue.reason and "<cpr>" in issue.reason


def test_wrong_municipality_reason_has_no_cpr_even_in_the_message():
    issue = only(_municipality("0999"))
    assert "0999" in issue.reason and RIKKE not in str(issue)


# --- determinism -------------------------------------------------------------------------------


def test_identical_input_gives_identical_events():
    body = s.to_bytes(s.bundle(s.referral(), s.rejection_task()))
    assert parse(body) == parse(body)


def test_event_id_ignores_formatting_but_not_content():
    resource = s.rejection_task()
    compact = json.dumps(resource, separators=(",", ":")).encode()
    assert parse(resource)[0].event_id == parse(compact)[0].event_id
    changed = copy.deepcopy(resource)
    changed["note"][0]["text"] = "Ny tekst"
    assert parse(changed)[0].event_id != parse(resource)[0].event_id


def test_event_id_uses_version_id_when_given():
    one = s.referral(version="4")
    other = s.referral(version="4", reason="anden tekst")
    assert parse(one)[0].event_id == parse(other)[0].event_id
    assert parse(one)[0].event_id != parse(s.referral(version="5"))[0].event_id
    assert parse(one)[0].source_message_id.endswith("/_history/4")


def test_different_resources_get_different_ids():
    events = parse(s.bundle(s.referral(), s.rejection_task()))
    assert len({e.event_id for e in events}) == 2


# --- OpenAPI -----------------------------------------------------------------------------------


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_the_committed_openapi_examples_are_the_demo_samples():
    from importlib import resources

    committed = (
        resources.files("stafet.connectors.sources.fhir")
        .joinpath("openapi-examples.json")
        .read_text("utf-8")
    )
    assert committed == s.openapi_examples_json(), (
        "connectors/sources/fhir/openapi-examples.json differs from demo/fhir_samples.py: run "
        "`python -m demo.fhir_samples > connectors/sources/fhir/openapi-examples.json`"
    )


def test_openapi_refs_resolve_and_examples_are_accepted():
    doc = openapi()
    assert doc["openapi"].startswith("3.1")
    for ref in _refs(doc):
        assert ref.split("/")[-1] in doc["components"]["schemas"], ref
    examples = [
        ex["value"]
        for path in doc["paths"].values()
        if "post" in path
        for ex in path["post"]["requestBody"]["content"]["application/fhir+json"][
            "examples"
        ].values()
    ]
    assert len(examples) >= 5
    for example in examples:
        assert parse(example)
    json.dumps(doc)  # serialisable
