"""MedCom HospitalNotification (sygehusadvis, IG 3.0.2) built from one canonical encounter event.

The builder is pure and deterministic: every id is a UUIDv5 of the event id, the recipient and the
resource kind, and every time comes from the event, so replaying an event rebuilds a byte-identical
message (MedCom receivers deduplicate on Bundle.id + MessageHeader.id). Bundles are built as plain
dicts because constructing fhir.resources models is too slow for the hot path; ``validate_bundle``
parses them with fhir.resources (R4B) once and adds the MedCom rules that parsing cannot see.

Shape, profiles and extension URLs follow MedCom's published examples (shared/domain/
medcom-examples) and the FSH in github.com/medcomdk/dk-medcom-hospitalnotification; activity codes,
the entity role ``removal`` for cancellations and the MORS activity follow MedCom's test scripts
(medcomdk/dk-medcom-hospitalnotification-testscripts, input/fsh/SendHospitalNotification/*.fsh).
"""

from __future__ import annotations

import html
from typing import Any, Final

from stafet.cpr import is_cpr_shape, shown_cpr
from stafet.directory import Addressee, Unaddressable
from stafet.errors import StafetError
from stafet.ids import stable_uuid
from stafet.medcom.addressing import (
    GLN_SYSTEM,
    MESSAGING_ORGANIZATION,
    SOR_ENDPOINT,
    endpoint,
    organization,
    organization_problems,
)
from stafet.medcom.messaging import (
    ACTIVITY_SYSTEM,
    check_message,
    header_routing,
    message_bundle,
    resource,
    validate_fhir,
)
from stafet.model import EncounterEvent
from stafet.systems import CPR_SYSTEM, SOR_SYSTEM

__all__ = [
    "GLN_SYSTEM",
    "SOR_ENDPOINT",
    "SOR_SYSTEM",
    "NotificationBuildError",
    "build_hospital_notification",
    "message_header_id",
    "validate_bundle",
]
ACTCODE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
EVENT_CODE: Final = "hospital-notification-message"

_HN: Final = "http://medcomfhir.dk/ig/hospitalnotification/StructureDefinition/"
_MESSAGING: Final = "http://medcomfhir.dk/ig/messaging/StructureDefinition/"
PROFILES: Final[dict[str, str]] = {
    "Bundle": _HN + "medcom-hospitalNotification-message",
    "MessageHeader": _HN + "medcom-hospitalNotification-messageHeader",
    "Patient": "http://medcomfhir.dk/ig/core/StructureDefinition/medcom-core-patient",
    "Encounter": _HN + "medcom-hospitalNotification-encounter",
    "Organization": MESSAGING_ORGANIZATION,
    "Provenance": _MESSAGING + "medcom-messaging-provenance",
}
EXT_REPORT_OF_ADMISSION: Final = _HN + "medcom-messaging-reportOfAdmissionExtension"
EXT_REPORT_OF_ADMISSION_RECIPIENT: Final = (
    _HN + "medcom-messaging-reportOfAdmissionRecipientExtension"
)
EXT_LEAVE_PERIOD: Final = _HN + "medcom-hospitalnotifiation-leave-period-extension"  # sic

#: ValueSet medcom-hospitalNotification-messageActivities (MedCom terminology, verified in
#: medcomdk/dk-medcom-terminology input/fsh/MedComMessagingActivityCodes.fsh, CodeSystem 1.8.1).
#: There is no leave code for acute ambulant stays and no "deceased" code at all.
HOSPITAL_NOTIFICATION_ACTIVITIES: Final = frozenset(
    prefix + base
    for base in (
        "admit-inpatient",
        "admit-emergency",
        "start-leave-inpatient",
        "end-leave-inpatient",
        "discharge-inpatient-home",
        "discharge-emergency-home",
    )
    for prefix in ("", "revise-", "cancel-")
)  # all 18 are listed there; nothing else is allowed (invariant medcom-hospitalNotification-3)

#: (notification code, Encounter.class) -> Provenance.activity. Every value is in the set above.
#: MORS has no activity of its own: like MedCom's MORS examples and test scripts it keeps the
#: activity of the stay (the death shows as Patient.deceasedBoolean + Encounter status), and so do
#: RE_MORS and AN_MORS (MedCom's scripts use admit-*, not revise-/cancel-admit-*, for them). A death
#: during leave uses start-leave-inpatient instead (see MORS_ON_LEAVE_ACTIVITY).
ACTIVITY_CODES: Final[dict[tuple[str, str], str]] = {
    ("STIN", "IMP"): "admit-inpatient",
    ("STAA", "EMER"): "admit-emergency",
    ("STOR", "IMP"): "start-leave-inpatient",
    ("SLOR", "IMP"): "end-leave-inpatient",
    ("SLHJ", "IMP"): "discharge-inpatient-home",
    ("SLHJ", "EMER"): "discharge-emergency-home",
    ("MORS", "IMP"): "admit-inpatient",
    ("MORS", "EMER"): "admit-emergency",
    ("RE_STIN", "IMP"): "revise-admit-inpatient",
    ("RE_STAA", "EMER"): "revise-admit-emergency",
    ("RE_STOR", "IMP"): "revise-start-leave-inpatient",
    ("RE_SLOR", "IMP"): "revise-end-leave-inpatient",
    ("RE_SLHJ", "IMP"): "revise-discharge-inpatient-home",
    ("RE_SLHJ", "EMER"): "revise-discharge-emergency-home",
    ("RE_MORS", "IMP"): "admit-inpatient",
    ("RE_MORS", "EMER"): "admit-emergency",
    ("AN_STIN", "IMP"): "cancel-admit-inpatient",
    ("AN_STAA", "EMER"): "cancel-admit-emergency",
    ("AN_STOR", "IMP"): "cancel-start-leave-inpatient",
    ("AN_SLOR", "IMP"): "cancel-end-leave-inpatient",
    ("AN_SLHJ", "IMP"): "cancel-discharge-inpatient-home",
    ("AN_SLHJ", "EMER"): "cancel-discharge-emergency-home",
    ("AN_MORS", "IMP"): "admit-inpatient",
    ("AN_MORS", "EMER"): "admit-emergency",
}
MORS_ON_LEAVE_ACTIVITY: Final = "start-leave-inpatient"  # MedCom test script MORS-STOR

#: Encounter elements the profile fixes to 0..0 (data minimisation, Retssikkerhedsloven §12c).
FORBIDDEN_ENCOUNTER_ELEMENTS: Final = (
    "type",
    "serviceType",
    "priority",
    "reasonCode",
    "reasonReference",
    "diagnosis",
    "location",
    "hospitalization",
    "participant",
    "basedOn",
    "appointment",
    "length",
    "partOf",
)
_KINDS: Final = {
    "bundle": "Bundle",
    "messageheader": "MessageHeader",
    "patient": "Patient",
    "encounter": "Encounter",
    "sender": "Organization",
    "recipient": "Organization",
    "provenance": "Provenance",
}  # id kind -> resource type
ENCOUNTER_STATUSES: Final = frozenset({"in-progress", "onleave", "finished", "entered-in-error"})


class NotificationBuildError(StafetError, ValueError):
    """The event cannot become, or the dict is not, a valid MedCom HospitalNotification."""


def message_header_id(event_id: str, recipient_code: str) -> str:
    """The MessageHeader.id of a notification: the next one's ``previous_header_id``.

    Every resource id is stable_uuid(event id, recipient code, kind): the recipient is part of it
    (stafet.ids policy), so one event sent to two municipalities never repeats a message id.
    """
    return stable_uuid(event_id, recipient_code, "messageheader")


def activity_code(event: EncounterEvent) -> str:
    """The MedCom Provenance.activity for this event (see ACTIVITY_CODES)."""
    code, enc = event.notification_code, event.encounter
    activity = ACTIVITY_CODES.get((code, enc.class_code))
    if activity is None:
        raise NotificationBuildError(
            f"{code} has no MedCom activity code for Encounter.class {enc.class_code}"
        )
    if code.endswith("MORS") and enc.class_code == "IMP" and enc.leave_start and not enc.leave_end:
        return MORS_ON_LEAVE_ACTIVITY
    return activity


def build_hospital_notification(
    event: EncounterEvent,
    recipient: Addressee,
    *,
    sender: Addressee,
    previous_header_id: str | None = None,
    sent_at: str | None = None,
    report_of_admission: bool = True,
) -> dict[str, Any]:
    """The HospitalNotification message Bundle for ``event``, addressed to ``recipient`` (the
    municipality's central unit in the party directory) from ``sender`` (the hospital unit's
    entry), both with SOR + EAN: MedCom routes on the receiver's EAN.

    ``previous_header_id`` is the MessageHeader.id of the latest notification already sent for this
    stay; it becomes Provenance.entity (role ``removal`` for AN_, else ``revision``). ``sent_at``
    (default: the event time) stamps Bundle.timestamp and Provenance.occurred/recorded.
    ``report_of_admission`` asks the municipality for a report of admission (XDIS16) on STIN/STAA.
    An entry without an EAN raises NotificationBuildError (:class:`Unaddressable`): a Bundle
    nobody can route is never built.
    """
    code, enc, patient = event.notification_code, event.encounter, event.patient
    if not is_cpr_shape(patient.cpr):
        raise NotificationBuildError("a HospitalNotification needs the patient's 10-digit CPR")
    if recipient.municipality is None:
        raise NotificationBuildError(f"{recipient.entry} is not a municipal unit")
    activity = activity_code(event)
    sent_at = sent_at or event.event_time
    ids = {kind: stable_uuid(event.event_id, recipient.municipality, kind) for kind in _KINDS}
    ref = {kind: f"{resource_type}/{ids[kind]}" for kind, resource_type in _KINDS.items()}
    try:
        organizations = [
            organization(recipient, ids["recipient"]),
            organization(sender, ids["sender"]),
        ]
    except Unaddressable as exc:
        raise NotificationBuildError(str(exc)) from exc
    destination, source = endpoint(recipient), endpoint(sender)

    wants_report = report_of_admission and code in ("STIN", "STAA")
    header = _resource("MessageHeader", ids["messageheader"])
    header["text"] = _header_text(
        event, activity, recipient, sender, destination, ids, wants_report
    )
    if wants_report:  # the report goes back to the sender, as in MedCom's STIN/STAA examples
        header["extension"] = [
            {"url": EXT_REPORT_OF_ADMISSION, "valueBoolean": True},
            {
                "url": EXT_REPORT_OF_ADMISSION_RECIPIENT,
                "valueReference": {"reference": ref["sender"]},
            },
        ]
    header |= header_routing(
        EVENT_CODE,
        destination=destination,
        receiver=ref["recipient"],
        sender=ref["sender"],
        source=source,
        focus=[ref["encounter"]],
    )

    name = {
        "use": "official",
        **({"family": patient.family} if patient.family else {}),
        **({"given": list(patient.given)} if patient.given else {}),
    }
    pat = _resource("Patient", ids["patient"]) | {
        "identifier": [{"system": CPR_SYSTEM, "value": patient.cpr}],
        "name": [name],
    }
    if code == "AN_MORS":
        pat["deceasedBoolean"] = False  # the death notice is withdrawn: say so explicitly
    elif patient.deceased or code.endswith("MORS"):
        pat["deceasedBoolean"] = True

    encounter = _resource("Encounter", ids["encounter"])
    leave = _leave_period(event)
    if leave:
        encounter["extension"] = [{"url": EXT_LEAVE_PERIOD, "valuePeriod": leave}]
    encounter |= {
        "status": enc.status,
        "class": {"system": ACTCODE_SYSTEM, "code": enc.class_code},
        "subject": {"reference": ref["patient"]},
        "episodeOfCare": [{"identifier": {"system": source, "value": enc.episode_of_care_id}}],
        "period": {"start": enc.start, **({"end": enc.end} if enc.end else {})},
        "serviceProvider": {"reference": ref["sender"]},
    }

    provenance = _resource("Provenance", ids["provenance"]) | {
        "target": [{"reference": ref["messageheader"]}],
        "occurredDateTime": sent_at,
        "recorded": sent_at,
        "activity": {"coding": [{"system": ACTIVITY_SYSTEM, "code": activity}]},
        "agent": [{"who": {"reference": ref["sender"]}}],
    }
    if previous_header_id:
        role = "removal" if code.startswith("AN_") else "revision"
        provenance["entity"] = [
            {"role": role, "what": {"reference": f"MessageHeader/{previous_header_id}"}}
        ]

    resources = [header, pat, encounter, *organizations, provenance]
    return message_bundle(_resource("Bundle", ids["bundle"]), sent_at, resources)


def _resource(resource_type: str, rid: str) -> dict[str, Any]:
    return resource(resource_type, rid, PROFILES)


def _leave_period(event: EncounterEvent) -> dict[str, str] | None:
    """The leave-period extension value: on STOR/SLOR (and variants) and whenever on leave."""
    code, enc = event.notification_code, event.encounter
    if code[-4:] not in ("STOR", "SLOR") and enc.status != "onleave":
        return None
    if not enc.leave_start:  # required by invariant medcom-hospitalNotification-6
        raise NotificationBuildError(f"{code} with status {enc.status} needs encounter.leave_start")
    if code in ("SLOR", "RE_SLOR") and not enc.leave_end:
        raise NotificationBuildError(f"{code} needs encounter.leave_end")
    return {"start": enc.leave_start, **({"end": enc.leave_end} if enc.leave_end else {})}


def _header_text(
    event: EncounterEvent,
    activity: str,
    recipient: Addressee,
    sender: Addressee,
    destination: str,
    ids: dict[str, str],
    report: bool,
) -> dict[str, str]:
    """The MessageHeader narrative (required); no CPR or clinical detail, only routing facts."""
    e = html.escape
    lines = [
        f"<b>Hospital notification {e(event.notification_code)}</b> ({e(activity)})",
        f"MessageHeader {ids['messageheader']}, event {EVENT_CODE}",
        f"Sender: {e(sender.name)} (SOR {e(sender.sor)}, EAN {e(sender.ean or '')}); "
        f"acknowledgement to {e(endpoint(sender))}",
        f"Receiver: {e(recipient.name)} (municipality {e(recipient.municipality or '')}, "
        f"EAN {e(recipient.ean or '')}) at {e(destination)}",
    ]
    if report:
        lines.append(f"Report of admission requested, to {e(sender.name)}")
    div = "".join(f"<p>{line}</p>" for line in lines)
    return {
        "status": "extensions" if report else "generated",
        "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{div}</div>',
    }


def validate_bundle(bundle: dict[str, Any]) -> None:
    """Raise NotificationBuildError unless ``bundle`` is a FHIR-valid MedCom HospitalNotification.

    fhir.resources checks FHIR structure and datatypes (not code bindings, not profiles); the
    MedCom rules checked here are the HospitalNotification/messaging invariants it cannot see.
    """
    validate_fhir(bundle, NotificationBuildError)
    _check_medcom(bundle)
    problems = organization_problems(bundle)
    _require(not problems, "; ".join(problems))


def _require(ok: object, message: str) -> None:
    if not ok:
        raise NotificationBuildError(message)


def _check_medcom(bundle: dict[str, Any]) -> None:
    """MedCom messaging + HospitalNotification rules, each failure naming the broken rule."""
    message = check_message(bundle, EVENT_CODE, _require)
    resources, header, resolve = message.resources, message.header, message.resolve
    focus = header.get("focus") or []
    _require(len(focus) == 1, "MessageHeader.focus must be exactly one Encounter")
    encounter = resolve(focus[0], "MessageHeader.focus", "Encounter")

    patients = [r for r in resources if r.get("resourceType") == "Patient"]
    _require(len(patients) == 1, f"exactly one Patient is allowed, found {len(patients)}")
    cprs = [
        i.get("value") or ""
        for i in patients[0].get("identifier") or []
        if i.get("system") == CPR_SYSTEM
    ]
    _require(
        cprs and is_cpr_shape(cprs[0]),
        f"Patient needs a CPR identifier ({CPR_SYSTEM}) with a 10-digit value",
    )

    present = [k for k in FORBIDDEN_ENCOUNTER_ELEMENTS if k in encounter]
    _require(not present, f"Encounter must not carry {', '.join(present)} (data minimisation)")
    status = encounter.get("status")
    _require(status in ENCOUNTER_STATUSES, f"Encounter.status {status!r} is not allowed")
    cls = encounter.get("class") or {}
    _require(
        cls.get("system") == ACTCODE_SYSTEM and cls.get("code") in ("IMP", "EMER"),
        f"Encounter.class must be {ACTCODE_SYSTEM} IMP or EMER",
    )
    _require((encounter.get("period") or {}).get("start"), "Encounter.period.start is required")
    episodes = encounter.get("episodeOfCare") or []
    _require(
        any((e.get("identifier") or {}).get("value") for e in episodes),
        "Encounter.episodeOfCare.identifier is required",
    )
    resolve(encounter.get("serviceProvider"), "Encounter.serviceProvider", "Organization")
    resolve(encounter.get("subject"), "Encounter.subject", "Patient")
    _require(
        status != "onleave"
        or any(
            x.get("url") == EXT_LEAVE_PERIOD and (x.get("valuePeriod") or {}).get("start")
            for x in encounter.get("extension") or []
        ),
        "Encounter with status onleave needs the leave-period extension with a start",
    )

    provenances = [r for r in resources if r.get("resourceType") == "Provenance"]
    own = f"MessageHeader/{header.get('id')}"
    _require(
        any(t.get("reference") == own for p in provenances for t in p.get("target") or []),
        f"no Provenance targets this message's MessageHeader ({own})",
    )
    for p in provenances:
        for agent in p.get("agent") or []:
            resolve(agent.get("who"), f"Provenance {p.get('id')} agent.who", "Organization")
        codes = [c.get("code") for c in (p.get("activity") or {}).get("coding") or []]
        _require(
            codes and codes[0] in HOSPITAL_NOTIFICATION_ACTIVITIES,
            f"Provenance {p.get('id')} activity {codes} is not a HospitalNotification code",
        )


def summarize(bundle: dict[str, Any], event_code: str = "") -> dict[str, Any]:
    """What a caseworker sees first of a HospitalNotification: the event code (the record's
    ``stafet.event_code`` header), message id, patient (CPR shown as its birth date only), the
    encounter's class/status, deceased."""
    resources = {e["resource"]["resourceType"]: e["resource"] for e in bundle["entry"]}
    patient = resources.get("Patient", {})
    cpr = next(
        (i["value"] for i in patient.get("identifier", []) if i.get("system") == CPR_SYSTEM),
        "",
    )
    name = patient.get("name", [{}])[0]
    encounter = resources.get("Encounter", {})
    return {
        "event": event_code,
        "message_id": resources.get("MessageHeader", {}).get("id"),
        "patient": " ".join([*name.get("given", []), name.get("family", "")]).strip(),
        "cpr": shown_cpr(cpr),
        "encounter": f"{encounter.get('class', {}).get('code')}/{encounter.get('status')}",
        "deceased": patient.get("deceasedBoolean", False),
    }
