"""MedCom CareCommunication (korrespondancemeddelelse, IG 5.0.2) for the referral lifecycle.

When child and adolescent psychiatry receives, decides on, assesses or fails to decide on a
referral, every party gets its own message (MedCom forbids cc). :func:`letter_text` states the
facts once, in Danish, and both the FHIR payload and the PDF letter (stafet.connectors.letters) are
rendered from it, so a GP, the municipality and a parent read the same decision.

Like the HospitalNotification builder the Bundle is plain dicts with UUIDv5 ids of (event id,
recipient system, recipient identifier, kind, resource), so a replay rebuilds it byte for byte.
Shape, profiles and extensions follow MedCom's 5.0.2 examples (shared/domain/medcom-examples/
carecommunication) and the FSH in github.com/medcomdk/dk-medcom-carecommunication.

Guardians are not MedCom destinations: MessageHeader.destination.receiver must be a
MedComMessagingOrganization (SOR + EAN) and Communication.recipient a PractitionerRole or CareTeam,
so no RelatedPerson or citizen can be addressed, and routing a parent's letter through the
municipality would hand the municipality a letter meant for the family. Guardians therefore get
the PDF letter (Digital Post) and :func:`build_care_communication` refuses them; use
:func:`delivery_channel` to choose. The referral id is echoed in Communication.topic.text and in the
payload text (what a MedCom receiver shows) and, for machines, as Communication.basedOn, a logical
reference to the ServiceRequest by identifier: Communication.identifier is 1..1 and is the
message's own UUID, and an Encounter would need an episode-of-care id a referral does not have.
"""

from __future__ import annotations

import base64
import html
import re
from functools import cache
from typing import Any, Final, Literal

from stafet.connectors.letters import (
    REJECTION_REASONS, LetterError, LetterKind, LetterText, default_name, letter_text,
)
from stafet.cpr import CPR_IN_TEXT, is_cpr_shape
from stafet.ids import stable_uuid
from stafet.model import Contact, Party, ReferralEvent
from stafet.streams.hospitalnotification import (
    ACTIVITY_SYSTEM, CPR_SYSTEM, DESTINATION_USE_SYSTEM, EVENT_SYSTEM, EXT_DESTINATION_USE,
    FULL_URL_BASE, MUNICIPALITY_SYSTEM, SOR_ENDPOINT, SOR_SYSTEM, TOPIC_ENDPOINT,
    NotificationBuildError,
)

__all__ = [
    "REJECTION_REASONS", "CareCommunicationError", "LetterKind", "LetterText",
    "build_care_communication", "delivery_channel", "letter_text", "medcom_addressable",
    "message_ids", "validate_care_communication",
]
_CC: Final = "http://medcomfhir.dk/ig/carecommunication/StructureDefinition/"
_CORE: Final = "http://medcomfhir.dk/ig/core/StructureDefinition/"
PROFILES: Final[dict[str, str]] = {
    "Bundle": _CC + "medcom-careCommunication-message",
    "MessageHeader": _CC + "medcom-careCommunication-messageHeader",
    "Communication": _CC + "medcom-careCommunication-communication",
    "Provenance": _CC + "medcom-careCommunication-provenance",
    "Patient": _CORE + "medcom-core-patient",
    "Practitioner": _CORE + "medcom-core-practitioner",
    "PractitionerRole": _CORE + "medcom-core-practitionerrole",
    "CareTeam": _CORE + "medcom-core-careteam",
    "Encounter": _CORE + "medcom-core-encounter",
    "Organization": "http://medcomfhir.dk/ig/messaging/StructureDefinition/"
                    "medcom-messaging-organization",
}
EVENT_CODE: Final = "care-communication-message"
MESSAGE_DEFINITION: Final = ("http://medcomfhir.dk/ig/messagedefinitions/MessageDefinition/"
                             "MedComCareCommunicationMessageDefinition|5.0")
CATEGORY_SYSTEM: Final = ("http://medcomfhir.dk/ig/terminology/CodeSystem/"
                          "medcom-careCommunication-categoryCodes")
CATEGORY: Final = "regarding-referral"  # "Vedr. henvisning": the only category allowing priority
#: medcom-careCommunication-categoryCodes 1.0.1 (the CodeSystem CareCommunication 5.0.x binds).
CATEGORY_CODES: Final = frozenset({
    "alcohol-and-drug-treatment", "assistive-devices", "carecoordination", "decease", "discharge",
    "examination-results", "healthcare", "home-care-assessment", "medicine", "nursing",
    "outpatient", "psychiatry-social-disability", "regarding-referral", "telemedicine",
    "training", "other"})
CC_ACTIVITIES: Final = frozenset(
    {"new-message", "reply-message", "forward-message", "retract-message", "modified-message"})
MIME_TYPES: Final = frozenset({"application/pdf", "image/gif", "image/jpeg", "image/png"})
#: A rejection or a broken 30-day guarantee needs someone to act soon; the rest is routine.
PRIORITY: Final[dict[str, str]] = {"receipt": "routine", "status": "routine",
                                   "rejection": "asap", "assessment": "routine",
                                   "deadline": "asap"}
EXT_DATETIME: Final = _CORE + "medcom-core-datetime-extension"
EXT_IDENTIFIER: Final = _CORE + "medcom-core-identifier-extension"
EXT_AUTHOR: Final = _CORE + "medcom-core-practitioner-extension"
EXT_CONTACT: Final = _CORE + "medcom-core-contact-extension"
#: Endpoint of a party without SOR (GP by ydernummer, …): stafet delivers it, not VANS.
PARTY_ENDPOINT: Final = "urn:stafet:party:{}:{}"

_KINDS: Final = {"bundle": "Bundle", "messageheader": "MessageHeader", "patient": "Patient",
                 "communication": "Communication", "practitioner": "Practitioner",
                 "practitionerrole": "PractitionerRole", "sender": "Organization",
                 "recipient": "Organization", "provenance": "Provenance"}
_INSTANT: Final = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
_URN_UUID: Final = re.compile(r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-"
                              r"[0-9a-f]{12}$")
_PHONE: Final = re.compile(r"^\+?[-0-9 ]*[0-9][-0-9 ]*$")  # medcom-core-contact: + and 0-9


class CareCommunicationError(NotificationBuildError, LetterError):
    """The event cannot become, or the dict is not, a valid MedCom CareCommunication."""


def delivery_channel(party: Party) -> Literal["medcom", "letter"]:
    """'letter' for guardians (never MedCom destinations) and parties without a FHIR endpoint."""
    return "medcom" if medcom_addressable(party) and party.has_fhir_endpoint else "letter"


def medcom_addressable(party: Party) -> bool:
    """Only organisations can receive MedCom messages; a citizen (CPR) cannot."""
    return party.kind != "guardian" and party.identifier_system != CPR_SYSTEM


def message_ids(event_id: str, recipient: Party, kind: str) -> tuple[str, str]:
    """(Bundle.id, MessageHeader.id) of the message for ``recipient``: stable under replay."""
    return (_id(event_id, recipient, kind, "bundle"), _id(event_id, recipient, kind,
                                                           "messageheader"))


def _id(event_id: str, recipient: Party, kind: str, resource: str) -> str:
    return stable_uuid(event_id, recipient.identifier_system, recipient.identifier, kind, resource)


def build_care_communication(
    event: ReferralEvent,
    recipient: Party,
    kind: LetterKind,
    *,
    sender: Party,
    previous_header_id: str | None = None,
    attachment_pdf: bytes | None = None,
    contact: Contact | None = None,
) -> dict[str, Any]:
    """The CareCommunication message Bundle telling ``recipient`` about ``event``.

    ``sender`` is the psychiatry unit (SOR). ``previous_header_id`` makes the message a reply
    (activity reply-message, Provenance entity role revision). ``attachment_pdf`` is added as a
    payload attachment (the rendered letter). ``contact`` is the fallback for letter_text.
    """
    if not medcom_addressable(recipient):
        raise CareCommunicationError(
            "a guardian cannot be a MedCom destination (receiver must be an Organization): "
            "send the PDF letter from stafet.connectors.letters instead")
    if sender.identifier_system != SOR_SYSTEM:
        raise CareCommunicationError("the sender must be identified by SOR (MedCom Organization)")
    if not is_cpr_shape(event.child.cpr):
        raise CareCommunicationError("a CareCommunication needs the child's 10-digit CPR")
    try:
        text = letter_text(event, recipient, kind, contact=contact)
    except LetterError as exc:
        raise CareCommunicationError(str(exc)) from exc
    ids = {k: _id(event.event_id, recipient, kind, k)
           for k in (*_KINDS, "communication-identifier", "payload", "attachment")}
    ref = {k: f"{rtype}/{ids[k]}" for k, rtype in _KINDS.items()}
    when, sor_source = event.event_time, SOR_ENDPOINT.format(sender.identifier)
    endpoint = _endpoint(recipient)

    header = _resource("MessageHeader", ids["messageheader"]) | {
        "text": _div([f"<b>CareCommunication ({html.escape(kind)})</b>, MessageHeader "
                      f"{ids['messageheader']}, event {EVENT_CODE}",
                      f"Sender: {_org_label(sender)}; acknowledgement to {sor_source}",
                      f"Receiver: {_org_label(recipient)} at {endpoint}",
                      f"Focus: Communication/{ids['communication']}"]),
        "eventCoding": {"system": EVENT_SYSTEM, "code": EVENT_CODE},
        "destination": [{
            "extension": [{"url": EXT_DESTINATION_USE,
                           "valueCoding": {"system": DESTINATION_USE_SYSTEM, "code": "primary"}}],
            "endpoint": endpoint,
            "receiver": {"reference": ref["recipient"]},
        }],
        "sender": {"reference": ref["sender"]},
        "source": {"endpoint": sor_source},
        "focus": [{"reference": ref["communication"]}],
        "definition": MESSAGE_DEFINITION,
    }
    patient = _resource("Patient", ids["patient"]) | {
        "identifier": [{"system": CPR_SYSTEM, "value": event.child.cpr}],
        "name": [{"use": "official", "family": event.child.family,
                  **({"given": list(event.child.given)} if event.child.given else {})}]}

    author = [_ext(EXT_AUTHOR, "valueReference", {"reference": ref["practitionerrole"]}),
              _ext(EXT_CONTACT, "valueContactPoint",
                   {"system": "phone", "value": text.contact.phone})]
    payload: list[dict[str, Any]] = [{
        "extension": [_ext(EXT_DATETIME, "valueDateTime", when),
                      _ext(EXT_IDENTIFIER, "valueIdentifier",
                           {"value": f"urn:uuid:{ids['payload']}",
                            "assigner": {"reference": ref["sender"]}}), *author],
        "contentString": text.plain_text(),
    }]
    if attachment_pdf is not None:
        if not attachment_pdf.startswith(b"%PDF-"):
            raise CareCommunicationError("attachment_pdf is not a PDF document")
        payload.append({
            "extension": [_ext(EXT_DATETIME, "valueDateTime", when),
                          _ext(EXT_IDENTIFIER, "valueIdentifier",
                               {"value": f"urn:uuid:{ids['attachment']}",
                                "assigner": {"reference": ref["sender"]}}), *author],
            "contentAttachment": {"contentType": "application/pdf",
                                  "data": base64.b64encode(attachment_pdf).decode("ascii"),
                                  "title": f"Brev: {text.subject}", "creation": when},
        })
    communication = _resource("Communication", ids["communication"]) | {
        "identifier": [{"value": f"urn:uuid:{ids['communication-identifier']}"}],
        "basedOn": [{"type": "ServiceRequest", "identifier": {"value": text.referral_id},
                     "display": f"Henvisning {text.referral_id}"}],
        "status": "unknown",
        "category": [{"coding": [{"system": CATEGORY_SYSTEM, "code": CATEGORY}]}],
        "priority": PRIORITY[kind],
        "subject": {"reference": ref["patient"]},
        "topic": {"text": f"{text.subject} (henvisning {text.referral_id})"},
        "payload": payload,
    }
    communication = {**communication, "text": _communication_text(communication, text)}
    given, family = _split_name(text.contact.name)
    practitioner = _resource("Practitioner", ids["practitioner"]) | {
        "name": [{"family": family, **({"given": given} if given else {})}]}
    role = _resource("PractitionerRole", ids["practitionerrole"]) | {
        "practitioner": {"reference": ref["practitioner"]},
        "organization": {"reference": ref["sender"]},
        "code": [{"text": "Kontaktperson"}]}
    entities = [{"role": "source", "what": {"identifier": {"value": p["extension"][1][
        "valueIdentifier"]["value"]}}} for p in payload]
    if previous_header_id:
        entities.append({"role": "revision",
                         "what": {"reference": f"MessageHeader/{previous_header_id}"}})
    provenance = _resource("Provenance", ids["provenance"]) | {
        "target": [{"reference": ref["messageheader"]}],
        "occurredDateTime": when,
        "recorded": when,
        "activity": {"coding": [{"system": ACTIVITY_SYSTEM,
                                 "code": "reply-message" if previous_header_id
                                 else "new-message"}]},
        "agent": [{"who": {"reference": ref["sender"]}}],
        "entity": entities,
    }
    resources = [header, patient, communication, role, practitioner,
                 _organization(recipient, ids["recipient"]),
                 _organization(sender, ids["sender"]), provenance]
    return _resource("Bundle", ids["bundle"]) | {
        "type": "message",
        "timestamp": when,
        "entry": [{"fullUrl": f"{FULL_URL_BASE}/{r['resourceType']}/{r['id']}", "resource": r}
                  for r in resources],
    }


def _resource(resource_type: str, rid: str) -> dict[str, Any]:
    return {"resourceType": resource_type, "id": rid,
            "meta": {"profile": [PROFILES[resource_type]]}}


def _ext(url: str, key: str, value: Any) -> dict[str, Any]:
    return {"url": url, key: value}


def _endpoint(party: Party) -> str:
    if party.identifier_system == SOR_SYSTEM:
        return SOR_ENDPOINT.format(party.identifier)
    if party.identifier_system == MUNICIPALITY_SYSTEM:
        return TOPIC_ENDPOINT.format(party.identifier)
    return PARTY_ENDPOINT.format(party.kind, party.identifier)


def _organization(party: Party, rid: str) -> dict[str, Any]:
    org = _resource("Organization", rid) | {
        "identifier": [{"system": party.identifier_system, "value": party.identifier}]}
    return org | ({"name": party.name} if party.name else {})


def _org_label(party: Party) -> str:
    return html.escape(f"{party.name or default_name(party)} ({party.identifier})")


def _split_name(name: str) -> tuple[list[str], str]:
    parts = name.split()
    return parts[:-1], parts[-1] if parts else name


def _div(lines: list[str], status: str = "generated") -> dict[str, str]:
    body = "".join(f"<p>{line}</p>" for line in lines)
    return {"status": status, "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{body}</div>'}


def _communication_text(comm: dict[str, Any], text: LetterText) -> dict[str, str]:
    """What MedCom obliges producers to put in the narrative; the child by name, never CPR."""
    e = html.escape
    lines = [f"<b>Communication {comm['id']}</b>, status {comm['status']}",
             f"Kategori: Vedr. henvisning ({CATEGORY}); prioritet: {comm['priority']}",
             f"Emne: {e(comm['topic']['text'])}",
             f"Henvisning: {e(text.referral_id)}",
             f"Barn: {e(text.child_name)} ({comm['subject']['reference']})"]
    for p in comm["payload"]:
        lines.append(f"Segment {e(p['extension'][1]['valueIdentifier']['value'])}, "
                     f"{e(p['extension'][0]['valueDateTime'])}, forfatter "
                     f"{e(text.contact.name)}, tlf. {e(text.contact.phone or '')}")
        if "contentString" in p:
            lines.append(e(p["contentString"]).replace("\n", "<br/>"))
        else:
            att = p["contentAttachment"]
            lines.append(f"Vedhæftet: {e(att['title'])} ({att['contentType']}, "
                         f"oprettet {att['creation']})")
    return _div(lines, "extensions")
