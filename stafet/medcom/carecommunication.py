"""MedCom CareCommunication (korrespondancemeddelelse, IG 5.0.2) for the referral lifecycle.

When child and adolescent psychiatry receives, decides on, assesses or fails to decide on a
referral, every party gets its own message (MedCom forbids cc). The Danish wording comes from
stafet.medcom.letters.letter_text (re-exported here), which the PDF letter shares, so a GP,
the municipality and a parent read the same facts.

As in the HospitalNotification builder the Bundle is plain dicts with UUIDv5 ids of (event id,
recipient system, recipient identifier, kind, resource) and every time is the event time, so a
replay rebuilds it byte for byte. Shape, profiles and extensions follow MedCom's 5.0.2 examples
(shared/domain/medcom-examples/carecommunication) and medcomdk/dk-medcom-carecommunication FSH.

Guardians are not MedCom destinations: MessageHeader.destination.receiver must be a
MedComMessagingOrganization (SOR + EAN) and Communication.recipient a PractitionerRole or CareTeam,
so neither a RelatedPerson nor a citizen can be addressed, and routing a parent's letter through
the municipality would hand the municipality a letter meant for the family. Guardians get the PDF
letter (Digital Post); :func:`build_care_communication` refuses them and :func:`delivery_channel`
chooses. The referral id is echoed in Communication.topic.text and the payload text (what a MedCom
receiver shows) and, for machines, in Communication.basedOn as a logical ServiceRequest reference
by identifier: Communication.identifier is 1..1 and is the message's own UUID, and an Encounter
would need an episode-of-care id that a referral does not have.
"""

from __future__ import annotations

import base64
import html
import re
from typing import Any, Final, Literal

from stafet.cpr import CPR_IN_TEXT, is_cpr_shape
from stafet.directory import Addressee, Unaddressable
from stafet.ids import stable_uuid
from stafet.medcom.addressing import (
    MESSAGING_ORGANIZATION,
    endpoint,
    organization,
    organization_problems,
)
from stafet.medcom.hospitalnotification import NotificationBuildError
from stafet.medcom.letters import (
    REJECTION_REASONS,
    LetterError,
    LetterKind,
    LetterText,
    letter_text,
)
from stafet.medcom.messaging import (
    ACTIVITY_SYSTEM,
    check_message,
    has_text,
    header_routing,
    message_bundle,
    resource,
    validate_fhir,
)
from stafet.model import Contact, Party, ReferralEvent
from stafet.systems import CPR_SYSTEM, SOR_SYSTEM

__all__ = [
    "REJECTION_REASONS",
    "CareCommunicationError",
    "LetterKind",
    "LetterText",
    "build_care_communication",
    "delivery_channel",
    "letter_text",
    "medcom_addressable",
    "message_ids",
    "validate_care_communication",
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
    "Organization": MESSAGING_ORGANIZATION,
}
EVENT_CODE: Final = "care-communication-message"
MESSAGE_DEFINITION: Final = (
    "http://medcomfhir.dk/ig/messagedefinitions/MessageDefinition/"
    "MedComCareCommunicationMessageDefinition|5.0"
)
CATEGORY_SYSTEM: Final = (
    "http://medcomfhir.dk/ig/terminology/CodeSystem/medcom-careCommunication-categoryCodes"
)
CATEGORY: Final = "regarding-referral"  # "Vedr. henvisning": the only category allowing priority
#: medcom-careCommunication-categoryCodes 1.0.1 (the CodeSystem CareCommunication 5.0.x binds).
CATEGORY_CODES: Final = frozenset(
    {
        "alcohol-and-drug-treatment",
        "assistive-devices",
        "carecoordination",
        "decease",
        "discharge",
        "examination-results",
        "healthcare",
        "home-care-assessment",
        "medicine",
        "nursing",
        "outpatient",
        "psychiatry-social-disability",
        "regarding-referral",
        "telemedicine",
        "training",
        "other",
    }
)
CC_ACTIVITIES: Final = frozenset(
    {"new-message", "reply-message", "forward-message", "retract-message", "modified-message"}
)
MIME_TYPES: Final = frozenset({"application/pdf", "image/gif", "image/jpeg", "image/png"})
#: A rejection or a broken 30-day guarantee needs someone to act soon; the rest is routine.
PRIORITY: Final[dict[str, str]] = {
    "receipt": "routine",
    "status": "routine",
    "rejection": "asap",
    "assessment": "routine",
    "deadline": "asap",
    "forward": "asap",
    "modified": "routine",
    "cancelled": "routine",
    "contact": "routine",
}
EXT_DATETIME: Final = _CORE + "medcom-core-datetime-extension"
EXT_IDENTIFIER: Final = _CORE + "medcom-core-identifier-extension"
EXT_AUTHOR: Final = _CORE + "medcom-core-practitioner-extension"
EXT_CONTACT: Final = _CORE + "medcom-core-contact-extension"

_KINDS: Final = {
    "bundle": "Bundle",
    "messageheader": "MessageHeader",
    "patient": "Patient",
    "communication": "Communication",
    "practitioner": "Practitioner",
    "practitionerrole": "PractitionerRole",
    "sender": "Organization",
    "recipient": "Organization",
    "provenance": "Provenance",
}
_URN_UUID: Final = re.compile(
    r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-"
    r"[0-9a-f]{12}$"
)
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
    return (
        _id(event_id, recipient, kind, "bundle"),
        _id(event_id, recipient, kind, "messageheader"),
    )


def _id(event_id: str, recipient: Party, kind: str, resource: str) -> str:
    return stable_uuid(event_id, recipient.identifier_system, recipient.identifier, kind, resource)


def build_care_communication(
    event: ReferralEvent,
    recipient: Party,
    kind: LetterKind,
    *,
    sender: Addressee,
    to: Addressee,
    previous_header_id: str | None = None,
    attachment_pdf: bytes | None = None,
    contact: Contact | None = None,
) -> dict[str, Any]:
    """The CareCommunication message Bundle telling ``recipient`` about ``event``.

    ``sender`` (the psychiatry unit) and ``to`` (``recipient``'s entry) come from the party
    directory: both Organizations carry SOR + EAN, and the destination is ``to``'s SOR endpoint;
    an entry without an EAN raises. ``previous_header_id`` makes the message a reply
    (activity reply-message, Provenance entity role revision). ``attachment_pdf`` is added as a
    payload attachment (the rendered letter). ``contact`` is the fallback for letter_text.
    """
    if not medcom_addressable(recipient):
        raise CareCommunicationError(
            "a guardian cannot be a MedCom destination (receiver must be an Organization): "
            "send the PDF letter from stafet.medcom.letters instead"
        )
    if not is_cpr_shape(event.child.cpr):
        raise CareCommunicationError("a CareCommunication needs the child's 10-digit CPR")
    try:
        text = letter_text(event, recipient, kind, contact=contact)
    except LetterError as exc:
        raise CareCommunicationError(str(exc)) from exc
    ids = {
        k: _id(event.event_id, recipient, kind, k)
        for k in (*_KINDS, "communication-identifier", "payload", "attachment")
    }
    ref = {k: f"{rtype}/{ids[k]}" for k, rtype in _KINDS.items()}
    try:
        organizations = [organization(to, ids["recipient"]), organization(sender, ids["sender"])]
    except Unaddressable as exc:
        raise CareCommunicationError(str(exc)) from exc
    when, sor_source, destination = event.event_time, endpoint(sender), endpoint(to)

    header = _resource("MessageHeader", ids["messageheader"]) | {
        "text": _div(
            [
                f"<b>CareCommunication ({html.escape(kind)})</b>, MessageHeader "
                f"{ids['messageheader']}, event {EVENT_CODE}",
                f"Sender: {_label(sender)}; acknowledgement to {sor_source}",
                f"Receiver: {_label(to)} at {destination}",
                f"Focus: Communication/{ids['communication']}",
            ]
        ),
        **header_routing(
            EVENT_CODE,
            destination=destination,
            receiver=ref["recipient"],
            sender=ref["sender"],
            source=sor_source,
            focus=[ref["communication"]],
        ),
        "definition": MESSAGE_DEFINITION,
    }
    patient = _resource("Patient", ids["patient"]) | {
        "identifier": [{"system": CPR_SYSTEM, "value": event.child.cpr}],
        "name": [
            {
                "use": "official",
                "family": event.child.family,
                **({"given": list(event.child.given)} if event.child.given else {}),
            }
        ],
    }

    def segment(key: str, **content: Any) -> dict[str, Any]:  # one payload, as MedCom's examples
        return {
            "extension": [
                {"url": EXT_DATETIME, "valueDateTime": when},
                {
                    "url": EXT_IDENTIFIER,
                    "valueIdentifier": {
                        "value": f"urn:uuid:{ids[key]}",
                        "assigner": {"reference": ref["sender"]},
                    },
                },
                {"url": EXT_AUTHOR, "valueReference": {"reference": ref["practitionerrole"]}},
                {
                    "url": EXT_CONTACT,
                    "valueContactPoint": {"system": "phone", "value": text.contact.phone},
                },
            ],
            **content,
        }

    payload = [segment("payload", contentString=text.plain_text())]
    if attachment_pdf is not None:
        if not attachment_pdf.startswith(b"%PDF-"):
            raise CareCommunicationError("attachment_pdf is not a PDF document")
        payload.append(
            segment(
                "attachment",
                contentAttachment={
                    "contentType": "application/pdf",
                    "title": f"Brev: {text.subject}",
                    "data": base64.b64encode(attachment_pdf).decode("ascii"),
                    "creation": when,
                },
            )
        )
    communication = _resource("Communication", ids["communication"]) | {
        "text": {},  # filled below, from the finished resource
        "identifier": [{"value": f"urn:uuid:{ids['communication-identifier']}"}],
        "basedOn": [
            {
                "type": "ServiceRequest",
                "identifier": {"value": text.referral_id},
                "display": f"Henvisning {text.referral_id}",
            }
        ],
        "status": "unknown",
        "category": [{"coding": [{"system": CATEGORY_SYSTEM, "code": CATEGORY}]}],
        "priority": PRIORITY[kind],
        "subject": {"reference": ref["patient"]},
        "topic": {"text": f"{text.subject} (henvisning {text.referral_id})"},
        "payload": payload,
    }
    communication["text"] = _communication_text(communication, text)
    given, family = _split_name(text.contact.name)
    practitioner = _resource("Practitioner", ids["practitioner"]) | {
        "name": [{"family": family, **({"given": given} if given else {})}]
    }
    role = _resource("PractitionerRole", ids["practitionerrole"]) | {
        "practitioner": {"reference": ref["practitioner"]},
        "organization": {"reference": ref["sender"]},
        "code": [{"text": "Kontaktperson"}],
    }
    entities = [
        {
            "role": "source",
            "what": {"identifier": {"value": p["extension"][1]["valueIdentifier"]["value"]}},
        }
        for p in payload
    ]
    if previous_header_id:
        entities.append(
            {"role": "revision", "what": {"reference": f"MessageHeader/{previous_header_id}"}}
        )
    provenance = _resource("Provenance", ids["provenance"]) | {
        "target": [{"reference": ref["messageheader"]}],
        "occurredDateTime": when,
        "recorded": when,
        "activity": {
            "coding": [
                {
                    "system": ACTIVITY_SYSTEM,
                    "code": "reply-message" if previous_header_id else "new-message",
                }
            ]
        },
        "agent": [{"who": {"reference": ref["sender"]}}],
        "entity": entities,
    }
    resources = [header, patient, communication, role, practitioner, *organizations, provenance]
    return message_bundle(_resource("Bundle", ids["bundle"]), when, resources)


def _resource(resource_type: str, rid: str) -> dict[str, Any]:
    return resource(resource_type, rid, PROFILES)


def _label(addressee: Addressee) -> str:
    return html.escape(f"{addressee.name} (SOR {addressee.sor}, EAN {addressee.ean})")


def _split_name(name: str) -> tuple[list[str], str]:
    parts = name.split()
    return parts[:-1], parts[-1] if parts else name


def _div(lines: list[str], status: str = "generated") -> dict[str, str]:
    body = "".join(f"<p>{line}</p>" for line in lines)
    return {"status": status, "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{body}</div>'}


def _communication_text(comm: dict[str, Any], text: LetterText) -> dict[str, str]:
    """What MedCom obliges producers to put in the narrative; the child by name, never CPR."""
    e = html.escape
    lines = [
        f"<b>Communication {comm['id']}</b>, status {comm['status']}",
        f"Kategori: Vedr. henvisning ({CATEGORY}); prioritet: {comm['priority']}",
        f"Emne: {e(comm['topic']['text'])}",
        f"Henvisning: {e(text.referral_id)}",
        f"Barn: {e(text.child_name)} ({comm['subject']['reference']})",
    ]
    for p in comm["payload"]:
        lines.append(
            f"Segment {e(p['extension'][1]['valueIdentifier']['value'])}, "
            f"{e(p['extension'][0]['valueDateTime'])}, forfatter "
            f"{e(text.contact.name)}, tlf. {e(text.contact.phone or '')}"
        )
        if "contentString" in p:
            lines.append(e(p["contentString"]).replace("\n", "<br/>"))
        else:
            att = p["contentAttachment"]
            lines.append(
                f"Vedhæftet: {e(att['title'])} ({att['contentType']}, oprettet {att['creation']})"
            )
    return _div(lines, "extensions")


# --- validation --------------------------------------------------------------------------------

ECPR_SYSTEM: Final = "urn:oid:1.2.208.176.1.6.1.1"  # replacement CPR (MedCom example 0d5b3c18)
EXT_SENDER: Final = _CORE + "medcom-core-sender-extension"
_UUID_IN_TEXT: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
    r"[0-9a-fA-F]{12}"
)


def validate_care_communication(bundle: dict[str, Any], *, privacy: bool = True) -> None:
    """Raise CareCommunicationError unless ``bundle`` is a FHIR-valid MedCom CareCommunication.

    fhir.resources (R4B) checks structure and datatypes; the CareCommunication and messaging rules
    it cannot see (invariants medcom-careCommunication-1…15, slices, cardinalities) are checked
    here, each failure naming the rule. ``privacy`` adds stafet's own rule: no CPR-shaped number
    anywhere but the Patient's identifier (MedCom's examples print it in generated narratives).
    """
    validate_fhir(bundle, CareCommunicationError)
    _check_medcom(bundle)
    problems = organization_problems(bundle)
    _require(not problems, "; ".join(problems))
    if privacy:
        _check_no_cpr(bundle)


def _require(ok: object, message: str) -> None:
    if not ok:
        raise CareCommunicationError(message)


def _check_medcom(bundle: dict[str, Any]) -> None:
    _require(
        PROFILES["Bundle"] in (bundle.get("meta") or {}).get("profile", []),
        "Bundle.meta.profile must claim medcom-careCommunication-message",
    )
    message = check_message(bundle, EVENT_CODE, _require)
    resources, header, resolve, of_type = (
        message.resources,
        message.header,
        message.resolve,
        message.of_type,
    )
    rules = {
        "MessageHeader": "medcom-careCommunication-1: ",
        "Provenance": "medcom-careCommunication-3: ",
    }  # the others: MedCom's examples
    for r in resources:
        rtype = str(r.get("resourceType"))
        _require(rtype in PROFILES, f"{rtype} is not part of a CareCommunication message")
        _require(
            any(p.startswith(PROFILES[rtype]) for p in (r.get("meta") or {}).get("profile") or []),
            f"{rules.get(rtype, '')}{rtype}/{r.get('id')} must claim "
            f"{PROFILES[rtype]} in meta.profile",
        )
    _require(
        any(
            i.get("system") == SOR_SYSTEM and i.get("value")
            for i in message.sender.get("identifier") or []
        ),
        "the sender Organization needs a SOR identifier (MedComCoreOrganization)",
    )
    focus = header.get("focus") or []
    _require(1 <= len(focus) <= 2, "MessageHeader.focus must be one or two Communications")
    comm = resolve(focus[0], "MessageHeader.focus", "Communication")

    patients = of_type("Patient")
    _require(
        len(patients) == 1,
        f"medcom-careCommunication-2: exactly one Patient, found {len(patients)}",
    )
    ids = patients[0].get("identifier") or []
    _require(
        any(
            i.get("system") == CPR_SYSTEM
            and is_cpr_shape(i.get("value") or "")
            or i.get("system") == ECPR_SYSTEM
            and i.get("value")
            for i in ids
        ),
        f"Patient needs a CPR identifier ({CPR_SYSTEM}, 10 digits) or a replacement CPR",
    )
    _require(
        any(n.get("use") == "official" and n.get("family") for n in patients[0].get("name") or []),
        "Patient needs an official name with a family name",
    )
    for org in of_type("Organization"):
        _require(
            any(i.get("value") for i in org.get("identifier") or []),
            f"Organization/{org.get('id')} needs an identifier",
        )
    for pr in of_type("Practitioner"):
        _require(
            pr.get("name"), f"medcom-careCommunication-4: Practitioner/{pr.get('id')} needs a name"
        )
    for role in of_type("PractitionerRole"):
        _require(
            (role.get("practitioner") or {}).get("reference"),
            f"medcom-careCommunication-13: PractitionerRole/{role.get('id')} needs a practitioner",
        )
    _check_communication(comm, header, patients[0], resolve, of_type)
    _check_provenance(header, of_type, resolve)


def _check_communication(
    comm: dict[str, Any],
    header: dict[str, Any],
    patient: dict[str, Any],
    resolve: Any,
    of_type: Any,
) -> None:
    _require(has_text(comm), "Communication.text (narrative) is required")
    _require(comm.get("status") == "unknown", "Communication.status must be 'unknown'")
    identifiers = comm.get("identifier") or []
    _require(
        len(identifiers) == 1 and _URN_UUID.match(identifiers[0].get("value") or ""),
        "Communication.identifier must be exactly one urn:uuid value",
    )
    categories = comm.get("category") or []
    codes = [
        (c.get("system"), c.get("code")) for cat in categories for c in cat.get("coding") or []
    ]
    _require(
        len(categories) == 1
        and len(codes) == 1
        and codes[0][0] == CATEGORY_SYSTEM
        and codes[0][1] in CATEGORY_CODES,
        f"Communication.category must be one code from {CATEGORY_SYSTEM}, has {codes}",
    )
    category = codes[0][1]
    _require(
        "priority" not in comm or category == "regarding-referral",
        "medcom-careCommunication-5: priority is only allowed with category 'regarding-referral'",
    )
    _require(
        comm.get("priority") in (None, "routine", "asap"),
        f"Communication.priority {comm.get('priority')!r} is not routine or asap",
    )
    _require(
        category != "other" or comm.get("topic"),
        "medcom-careCommunication-6: category 'other' needs a topic",
    )
    _require(
        "topic" not in comm or (comm["topic"] or {}).get("text"), "Communication.topic needs a text"
    )
    _require(
        resolve(comm.get("subject"), "Communication.subject", "Patient") is patient,
        "Communication.subject must be the Patient",
    )
    recipients = comm.get("recipient") or []
    _require(len(recipients) <= 1, "Communication.recipient allows at most one")
    specific = [(r, "recipient", header["destination"][0]["receiver"], "12") for r in recipients]
    specific += [
        (x.get("valueReference"), "sender extension", header["sender"], "11")
        for x in comm.get("extension") or []
        if x.get("url") == EXT_SENDER
    ]
    for reference, what, org, rule in specific:  # a named team/person belongs to the party
        target = resolve(reference, f"Communication {what}", "PractitionerRole", "CareTeam")
        orgs = [(target.get("organization") or {}).get("reference")] + [
            o.get("reference") for o in target.get("managingOrganization") or []
        ]
        _require(
            org.get("reference") in orgs,
            f"medcom-careCommunication-{rule}: the {what} "
            "must belong to the MessageHeader's organisation",
        )
    encounters = of_type("Encounter")
    if encounters or comm.get("encounter"):
        enc = resolve(
            comm.get("encounter"),
            "medcom-careCommunication-15: Communication.encounter",
            "Encounter",
        )
        _require(len(encounters) == 1, "medcom-careCommunication-15: one Encounter at most")
        _require(
            any((e.get("identifier") or {}).get("value") for e in enc.get("episodeOfCare") or []),
            "medcom-careCommunication-9: the Encounter needs an episodeOfCare identifier",
        )
    payloads = comm.get("payload") or []
    _require(
        any("contentString" in p for p in payloads),
        "Communication needs at least one payload with a message text",
    )
    for n, p in enumerate(payloads):
        where = f"Communication.payload[{n}]"
        ext = {x.get("url"): x for x in p.get("extension") or []}
        _require(
            (ext.get(EXT_DATETIME) or {}).get("valueDateTime"), f"{where} needs the date extension"
        )
        ident = (ext.get(EXT_IDENTIFIER) or {}).get("valueIdentifier") or {}
        _require(
            _URN_UUID.match(ident.get("value") or ""),
            f"{where} needs the identifier extension with a urn:uuid value",
        )
        resolve(ident.get("assigner"), f"{where} identifier assigner", "Organization")
        if EXT_AUTHOR in ext or "contentString" in p:
            role = resolve(
                (ext.get(EXT_AUTHOR) or {}).get("valueReference"),
                f"{where} author",
                "PractitionerRole",
            )
            code = (role.get("code") or [{}])[0]
            _require(
                bool([c for c in code.get("coding") or [] if c.get("code")])
                != bool(code.get("text")),
                f"medcom-careCommunication-7: {where} author "
                "needs a role code or a role text (not both)",
            )
            practitioner = resolve(
                role.get("practitioner"), f"{where} author practitioner", "Practitioner"
            )
            _require(
                practitioner.get("name"), f"medcom-careCommunication-8: {where} author needs a name"
            )
        if "contentString" in p:
            phone = (ext.get(EXT_CONTACT) or {}).get("valueContactPoint") or {}
            _require(
                phone.get("system") == "phone" and _PHONE.match(phone.get("value") or ""),
                f"{where} needs the author contact extension with a phone number",
            )
        else:
            att = p.get("contentAttachment") or {}
            _require(att.get("title"), f"{where} attachment needs a title")
            _require(
                not att.get("data") or att.get("contentType") in MIME_TYPES,
                f"{where} attachment contentType {att.get('contentType')!r} is not allowed",
            )


def _check_provenance(header: dict[str, Any], of_type: Any, resolve: Any) -> None:
    provenances = of_type("Provenance")
    own_ref = f"MessageHeader/{header.get('id')}"
    own = [
        p for p in provenances if any(t.get("reference") == own_ref for t in p.get("target") or [])
    ]
    _require(len(own) == 1, f"exactly one Provenance must target this message ({own_ref})")
    for p in provenances:
        codes = [
            (c.get("system"), c.get("code")) for c in (p.get("activity") or {}).get("coding") or []
        ]
        _require(
            codes and codes[0][0] == ACTIVITY_SYSTEM and codes[0][1] in CC_ACTIVITIES,
            f"Provenance {p.get('id')} activity {codes} is not a CareCommunication activity",
        )
        _require(p.get("occurredDateTime"), f"Provenance {p.get('id')} needs occurredDateTime")
        for agent in p.get("agent") or [{}]:
            resolve(agent.get("who"), f"Provenance {p.get('id')} agent.who", "Organization")
    entities = own[0].get("entity") or []
    _require(
        any(
            e.get("role") == "source" and (e.get("what") or {}).get("identifier") for e in entities
        ),
        "the message's Provenance needs an entity for the payload "
        "it adds (role source, what.identifier)",
    )
    activity = own[0]["activity"]["coding"][0]["code"]
    _require(
        activity not in ("reply-message", "forward-message")
        or any(e.get("role") == "revision" for e in entities),
        f"a {activity} needs a Provenance entity with role revision (the previous message)",
    )


def _check_no_cpr(node: Any, path: str = "Bundle") -> None:
    """stafet's rule: the child's CPR lives in Patient.identifier and nowhere else."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "data" or (key == "identifier" and node.get("resourceType") == "Patient"):
                continue
            _check_no_cpr(value, f"{path}.{key}")
    elif isinstance(node, list):
        for n, value in enumerate(node):
            _check_no_cpr(value, f"{path}[{n}]")
    elif isinstance(node, str) and CPR_IN_TEXT.search(_UUID_IN_TEXT.sub("", node)):
        raise CareCommunicationError(
            f"CPR-shaped number in {path} (only Patient.identifier may carry a CPR)"
        )
