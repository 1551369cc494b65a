"""Field-level mapping of validated FHIR referral resources → :class:`ReferralEvent` (internal).

The contract (which elements mean what) is documented once, in :mod:`stafet.inbound.fhir_referral`, whose
:func:`~stafet.inbound.fhir_referral.parse_fhir_referral` is the only caller. Every mapper gets a resource
that ``fhir.resources`` has already accepted, so element types are right and only stafet's rules
remain; each broken rule is recorded on the :class:`Ctx` (never raised) so a sender learns of every
problem at once. Reasons are CPR-masked on the way in.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from stafet.cpr import is_valid_cpr, mask_cpr
from stafet.ids import patient_key, stable_uuid
from stafet.model import (
    Assessment,
    Contact,
    Decision,
    Party,
    PartyKind,
    PatientInfo,
    ReferralEvent,
    ReferralKind,
)
from stafet.schemas.municipalities import municipality
from stafet.systems import CPR_SYSTEM, SOR_SYSTEM, UNIT_SYSTEM, YDER_SYSTEM

MUNICIPALITY_EXT = "http://hl7.dk/fhir/core/StructureDefinition/dk-core-municipalityCodes"
ROLE_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
UNIT_TYPE_SYSTEM = "https://stafet.dk/fhir/CodeSystem/municipal-unit-type"
REASON_SYSTEM = "https://stafet.dk/fhir/CodeSystem/referral-rejection-reason"
OUTPUT_TYPE_SYSTEM = "https://stafet.dk/fhir/CodeSystem/triage-output"
PAYLOAD_PART_EXT = "https://stafet.dk/fhir/StructureDefinition/payload-part"
FHIR_ENDPOINT_EXT = "https://stafet.dk/fhir/StructureDefinition/has-fhir-endpoint"

GUARDIAN_ROLES = ("MTH", "FTH", "GUARD")
UNIT_TYPES = ("ppr", "family-department")
REASON_CODES = ("missing-ppv", "missing-information", "outside-target-group", "other")
OUTPUT_TYPES = ("alternative", "responsible", "contact-name", "contact-phone", "contact-email")
#: Task.businessStatus of a contact person change (status in-progress or accepted): the new
#: contact in the outputs contact-name / contact-phone; every party of the referral is told
CONTACT_CHANGED = "contact-changed"
PAYLOAD_PARTS = ("summary", "treatment-plan", "contact-name", "contact-phone", "contact-email")
LOCAL_TZ = ZoneInfo("Europe/Copenhagen")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem: where (FHIRPath-like), why (no CPR), and the OperationOutcome issue code."""

    path: str
    reason: str
    code: str


@dataclass(frozen=True, slots=True)
class Res:
    """A resource and its FHIRPath-like location in the body (the prefix of its issue paths)."""

    data: dict[str, Any]
    path: str


class Ctx:
    """The issues found in one body, and the Bundle entries references may point at."""

    def __init__(self) -> None:
        self.issues: list[Issue] = []
        self.entries: dict[str, Res] = {}  # fullUrl and Type/id → entry resource

    def add(self, path: str, code: str, reason: str) -> None:
        self.issues.append(Issue(path, mask_cpr(reason), code))

    def resolve(self, ref: Any, owner: Res, path: str, *, required: bool) -> Res | None:
        """What a Reference points at: a contained ``#id`` or a Bundle entry, else None.

        A dangling ``#id`` is always an error (invalid FHIR); another unresolvable reference is
        one only when ``required`` (nothing else, such as ``identifier``, names the target)."""
        target = ref.get("reference") if isinstance(ref, dict) else None
        if not isinstance(target, str) or not target:
            return None
        if target.startswith("#"):
            found = next(
                (
                    Res(c, f"{owner.path}.contained[{n}]")
                    for n, c in enumerate(owner.data.get("contained") or [])
                    if c.get("id") == target[1:]
                ),
                None,
            )
            required = True
        else:
            found = self.entries.get(target) or self.entries.get("/".join(target.split("/")[-2:]))
        if found is None and required:
            self.add(
                f"{path}.reference",
                "structure",
                f"reference '{target}' does not resolve "
                "to a contained resource or an entry of the Bundle",
            )
        return found


# --- small helpers -----------------------------------------------------------------------------


def referral_id(service_request: dict[str, Any]) -> str:
    """The referral id: the first ServiceRequest.identifier with a value."""
    return next((i["value"] for i in service_request.get("identifier") or [] if i.get("value")), "")


def _ext(element: Any, url: str) -> dict[str, Any] | None:
    if not isinstance(element, dict):
        return None
    return next((x for x in element.get("extension") or [] if x.get("url") == url), None)


def _codes(concept: Any) -> list[str]:
    return [c["code"] for c in (concept or {}).get("coding") or [] if c.get("code")]


def _text(concept: Any) -> str | None:
    concept = concept or {}
    return concept.get("text") or next(
        (c["display"] for c in concept.get("coding") or [] if c.get("display")), None
    )


def _name(names: Any) -> tuple[str | None, tuple[str, ...]]:
    """(family, given) of the official (else first) HumanName."""
    names = names or []
    name = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    # FHIR JSON allows null in a primitive array (the value lives in the _given extension)
    return name.get("family"), tuple(g for g in name.get("given") or () if isinstance(g, str))


def _full_name(names: Any) -> str | None:
    family, given = _name(names)
    return " ".join([*given, family or ""]).strip() or None


def _time(value: str | None, path: str, ctx: Ctx) -> str:
    """A FHIR dateTime → ISO 8601 with offset; a bare date is 00:00 Copenhagen time."""
    if not value:
        ctx.add(path, "required", f"{path} (the event time) is required")
        return ""
    if not isinstance(value, str):  # fhir.resources (lax) lets a JSON number through
        ctx.add(path, "value", f"{path} must be a dateTime string, not a {type(value).__name__}")
        return ""
    try:
        if _DATE.match(value):
            return datetime.fromisoformat(value).replace(tzinfo=LOCAL_TZ).isoformat()
        moment = datetime.fromisoformat(value.replace("Z", "+00:00")) if "T" in value else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        ctx.add(
            path,
            "value",
            f"'{value}' needs at least a full date (YYYY-MM-DD), or a time with a UTC offset",
        )
        return ""
    return moment.isoformat()


def _cpr(identifiers: Any, path: str, ctx: Ctx, who: str) -> str:
    """The valid CPR among ``identifiers`` (issues name the element, never the number)."""
    ids = identifiers or []
    n, value = next(
        ((n, i.get("value") or "") for n, i in enumerate(ids) if i.get("system") == CPR_SYSTEM),
        (-1, ""),
    )
    if n < 0:
        ctx.add(
            f"{path}.identifier", "required", f"{who} needs a CPR identifier (system {CPR_SYSTEM})"
        )
        return ""
    value = value.replace("-", "").strip()
    if not is_valid_cpr(value):
        ctx.add(
            f"{path}.identifier[{n}].value",
            "value",
            f"the CPR number of {who} is not 10 digits starting with a valid date",
        )
        return ""
    return value


def _endpoint(system: str, *elements: Any) -> bool:
    """Whether a party reads FHIR: the stafet extension, else True for organisations (GP by
    ydernummer, units by SOR: MedCom reaches them) and False for citizens (CPR: letters)."""
    for element in elements:
        if (ext := _ext(element, FHIR_ENDPOINT_EXT)) and isinstance(ext.get("valueBoolean"), bool):
            return bool(ext["valueBoolean"])
    return system != CPR_SYSTEM


def _party(
    ref: Any,
    owner: Res,
    path: str,
    ctx: Ctx,
    what: str,
    systems: tuple[str, ...] = (SOR_SYSTEM,),
    required: bool = True,
) -> Party | None:
    """A party from a Reference: its logical identifier + display, or the resource it points at."""
    if not ref:
        if required:
            ctx.add(path, "required", f"{path} ({what}) is required")
        return None
    logical = ref.get("identifier") or {}
    found = ctx.resolve(ref, owner, path, required=not logical.get("value"))
    target = found.data if found else {}
    ident, where = logical, f"{path}.identifier"
    if not logical.get("value"):
        ident = next((i for i in target.get("identifier") or [] if i.get("system") in systems), {})
        where = f"{found.path}.identifier" if found else f"{path}.identifier"
    if not ident.get("value"):
        if found is not None or not ref.get("reference"):
            ctx.add(
                where, "required", f"{what} needs an identifier with system " + " or ".join(systems)
            )
        return None
    system, value = ident.get("system"), str(ident["value"]).strip()
    if system not in systems:
        ctx.add(
            f"{where}.system",
            "value",
            f"{what}: identifier system '{system}' is not " + " or ".join(systems),
        )
        return None
    if not value.isdigit():
        ctx.add(f"{where}.value", "value", f"{what}: '{value}' is not a SOR code or ydernummer")
        return None
    name = ref.get("display") or target.get("name")
    if isinstance(name, list):  # Practitioner.name
        name = _full_name(name)
    kind: PartyKind = "gp" if system == YDER_SYSTEM else "hospital-unit"
    return Party(
        kind=kind,
        identifier_system=system,
        identifier=value,
        name=name or None,
        has_fhir_endpoint=_endpoint(system, ref, target),
    )


def _child(ref: Any, owner: Res, path: str, ctx: Ctx, *, residence: bool) -> PatientInfo | None:
    """The child: a Patient (contained or entry); for decisions a CPR identifier suffices."""
    if not ref:
        ctx.add(path, "required", f"{path} (the child) is required")
        return None
    logical = ref.get("identifier")
    found = ctx.resolve(ref, owner, path, required=residence or not logical)
    if found is None:
        if ref.get("reference") and (residence or not logical):
            return None  # the dangling reference is already an issue
        if residence:
            ctx.add(
                path,
                "required",
                "the child must be a Patient resource (contained #child) "
                "with CPR and municipality of residence",
            )
            return None
        cpr = _cpr([logical] if logical else [], path, ctx, "the child")
        return PatientInfo(cpr=cpr) if cpr else None
    patient = found.data
    if patient.get("resourceType") != "Patient":
        ctx.add(f"{path}.reference", "invalid", f"{path} must point at a Patient")
        return None
    cpr = _cpr(patient.get("identifier"), found.path, ctx, "the child")
    code, region = _residence(patient, found.path, ctx, residence)
    family, given = _name(patient.get("name"))
    birth = patient.get("birthDate")
    return (
        PatientInfo(
            cpr=cpr,
            family=family,
            given=given,
            gender=patient.get("gender"),
            birth_date=birth if isinstance(birth, str) and _DATE.match(birth) else None,
            municipality_code=code,
            region_code=region,
        )
        if cpr
        else None
    )


def _residence(
    patient: dict[str, Any], path: str, ctx: Ctx, required: bool
) -> tuple[str, str | None]:
    """Municipality of residence: DK-core extension, else ``district``, of the home address."""
    addresses = patient.get("address") or []
    n = next((n for n, a in enumerate(addresses) if a.get("use") == "home"), 0)
    address = addresses[n] if addresses else {}
    from_ext = next(
        iter(_codes((_ext(address, MUNICIPALITY_EXT) or {}).get("valueCodeableConcept"))), None
    )
    district = (address.get("district") or "").strip() or None
    code = from_ext or district
    if code and code.isdigit() and len(code) < 4:
        code = code.zfill(4)
    where = f"{path}.address[{n}]" + (".extension" if from_ext else ".district")
    if from_ext and district and district.zfill(4) != code:
        ctx.add(
            f"{path}.address[{n}]",
            "invalid",
            f"the municipality extension ({code}) and address.district ({district}) disagree",
        )
    if not code:
        if required:
            ctx.add(
                f"{path}.address",
                "required",
                "the child's municipality of residence is "
                f"required (address extension {MUNICIPALITY_EXT} or address.district)",
            )
        return "", None
    found = municipality(code)
    if found is None:
        ctx.add(where, "code-invalid", f"unknown municipality code '{code}' (not one of the 98)")
        return "", None
    return found.code, found.region_code


def _identity(resource: dict[str, Any], rtype: str) -> tuple[str, str]:
    """(event_id, source_message_id), deterministic: id or identifier + versionId or content hash."""
    rid = resource.get("id") or ""
    ident = next((i.get("value") for i in resource.get("identifier") or [] if i.get("value")), "")
    version = (resource.get("meta") or {}).get("versionId") or ""
    canonical = json.dumps(resource, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    event_id = stable_uuid("fhir", rtype, rid or ident, version or f"sha256:{digest}")
    source = f"{rtype}/{rid}" if rid else f"{rtype}?identifier={ident}" if ident else rtype
    return event_id, f"{source}/_history/{version}" if version else f"{source}#{digest[:16]}"


class About(NamedTuple):
    """What every referral event says: which referral, when, the child, referrer and unit."""

    referral_id: str
    when: str
    child: PatientInfo
    referrer: Party | None
    receiver: Party | None


def _event(
    resource: dict[str, Any],
    rtype: str,
    kind: ReferralKind,
    secret: str,
    about: About,
    **details: Any,
) -> ReferralEvent:
    """The canonical event of one FHIR resource: its identity, the child's patient key and the
    parties set alike for every kind; ``details`` are the kind's own fields."""
    rid, when, child, referrer, receiver = about
    event_id, source_id = _identity(resource, rtype)
    return ReferralEvent(
        event_id=event_id,
        source="fhir",
        source_message_id=source_id,
        kind=kind,
        referral_id=rid,
        event_time=when,
        patient_key=patient_key(child.cpr, secret),
        child=child,
        referrer=referrer,
        receiver=receiver,
        **details,
    )


def _referral_ref(ref: Any, owner: Res, path: str, ctx: Ctx) -> str:
    """The referral id a Task.focus / Communication.basedOn names (identifier or reference)."""
    if not ref:
        ctx.add(path, "required", f"{path} (the referral) is required")
        return ""
    value = (ref.get("identifier") or {}).get("value")
    found = ctx.resolve(ref, owner, path, required=not value)
    if found is not None and found.data.get("resourceType") == "ServiceRequest":
        return referral_id(found.data)
    if not value and not ref.get("reference"):
        ctx.add(
            f"{path}.identifier.value",
            "required",
            f"{path} needs identifier.value = the referral id (ServiceRequest.identifier)",
        )
    return value or ""


# --- the three resources -----------------------------------------------------------------------


def map_service_request(res: Res, ctx: Ctx, secret: str) -> ReferralEvent | None:
    sr, path, start = res.data, res.path, len(ctx.issues)
    status, version = sr.get("status"), (sr.get("meta") or {}).get("versionId") or "1"
    kinds: dict[str, ReferralKind] = {
        "on-hold": "modified",
        "revoked": "cancelled",
        "entered-in-error": "cancelled",
        "active": "submitted" if version == "1" else "modified",
    }
    kind = kinds.get(status or "")
    if kind is None:
        ctx.add(
            f"{path}.status",
            "not-supported",
            f"ServiceRequest.status '{status}' is not a "
            "referral step: active, on-hold, revoked or entered-in-error",
        )
    rid = referral_id(sr)
    if not rid:
        ctx.add(
            f"{path}.identifier",
            "required",
            "ServiceRequest.identifier[0].value (the referral id) is required",
        )
    child = _child(sr.get("subject"), res, f"{path}.subject", ctx, residence=kind == "submitted")
    referrer = _party(
        sr.get("requester"),
        res,
        f"{path}.requester",
        ctx,
        "the referrer",
        (YDER_SYSTEM, SOR_SYSTEM),
    )
    performers = sr.get("performer") or []
    receiver = _party(
        performers[0] if performers else None,
        res,
        f"{path}.performer[0]",
        ctx,
        "the receiving unit",
    )
    guardians, units = [], []
    for n, ref in enumerate(sr.get("supportingInfo") or []):
        found = ctx.resolve(ref, res, f"{path}.supportingInfo[{n}]", required=False)
        rtype = found.data.get("resourceType") if found else None
        if found and rtype == "RelatedPerson":
            guardians.append(_guardian(found, ctx))
        elif found and rtype == "Organization":
            units.append(_unit(found, ctx, child))
    reasons = sr.get("reasonCode") or []
    when = _time(sr.get("authoredOn"), f"{path}.authoredOn", ctx)
    if len(ctx.issues) > start or child is None or kind is None:
        return None
    return _event(
        sr,
        "ServiceRequest",
        kind,
        secret,
        About(rid, when, child, referrer, receiver),
        guardians=tuple(g for g in guardians if g),
        municipal_units=tuple(u for u in units if u),
        reason_for_referral=_text(reasons[0]) if reasons else None,
    )


def _guardian(person: Res, ctx: Ctx) -> Party | None:
    roles = [
        c.get("code")
        for concept in person.data.get("relationship") or []
        for c in concept.get("coding") or []
        if c.get("system") == ROLE_CODE_SYSTEM
    ]
    role = next((r for r in roles if r in GUARDIAN_ROLES), None)
    if role is None:
        ctx.add(
            f"{person.path}.relationship",
            "value",
            f"a guardian's relationship must be MTH, FTH or GUARD from {ROLE_CODE_SYSTEM}",
        )
    cpr = _cpr(person.data.get("identifier"), person.path, ctx, "the guardian")
    if role is None or not cpr:
        return None
    return Party(
        kind="guardian",
        identifier_system=CPR_SYSTEM,
        identifier=cpr,
        name=_full_name(person.data.get("name")),
        relationship=role,
        has_fhir_endpoint=_endpoint(CPR_SYSTEM, person.data),
    )


def _unit(org: Res, ctx: Ctx, child: PatientInfo | None) -> Party | None:
    """PPR / family department: by SOR when known, else by the child's municipality code."""
    kind = next(
        (
            c.get("code")
            for concept in org.data.get("type") or []
            for c in concept.get("coding") or []
            if c.get("system") == UNIT_TYPE_SYSTEM and c.get("code") in UNIT_TYPES
        ),
        None,
    )
    if kind is None:
        ctx.add(
            f"{org.path}.type",
            "value",
            "a municipal unit needs a type coding ppr or "
            f"family-department from {UNIT_TYPE_SYSTEM}",
        )
        return None
    name = org.data.get("name")
    sor = next(
        (
            i.get("value")
            for i in org.data.get("identifier") or []
            if i.get("system") == SOR_SYSTEM and i.get("value")
        ),
        None,
    )
    if sor is not None:
        return Party(
            kind=kind,
            identifier_system=SOR_SYSTEM,
            identifier=sor,
            name=name,
            has_fhir_endpoint=_endpoint(SOR_SYSTEM, org.data),
        )
    # Without SOR the unit is named by municipality + kind, so it stays a recipient of its own
    # (the municipality's central mailbox is the municipality code itself).
    code = child.municipality_code if child else ""
    return (
        Party(kind=kind, identifier_system=UNIT_SYSTEM, identifier=f"{code}/{kind}", name=name)
        if code
        else None
    )


def map_task(res: Res, ctx: Ctx, secret: str) -> ReferralEvent | None:
    task, path, start = res.data, res.path, len(ctx.issues)
    status = task.get("status")
    business = [*_codes(task.get("businessStatus")), _text(task.get("businessStatus")) or ""]
    forward = "forward" in _codes(task.get("code")) or "forwarded" in business
    contact_change = CONTACT_CHANGED in business and status in (
        "ready",
        "in-progress",
        "accepted",
        "completed",
    )
    decided = (
        None
        if contact_change
        else "rejected"
        if status == "rejected"
        else "forwarded"
        if forward and status in ("ready", "in-progress", "accepted", "completed")
        else "accepted"
        if status == "accepted"
        else "expired"
        if status in ("failed", "cancelled") and "expired" in business
        else None
    )
    if decided is None and not contact_change:
        ctx.add(
            f"{path}.status",
            "not-supported",
            f"Task.status '{status}' is not a triage "
            "decision: accepted, rejected, forward (code 'forward') or expired (failed + "
            "businessStatus 'expired'), nor a contact person change (businessStatus "
            f"'{CONTACT_CHANGED}'); withdraw a referral by revoking its ServiceRequest",
        )
    rid = _referral_ref(task.get("focus"), res, f"{path}.focus", ctx)
    child = _child(task.get("for"), res, f"{path}.for", ctx, residence=False)
    owner = _party(task.get("owner"), res, f"{path}.owner", ctx, "the deciding unit")
    referrer = _party(
        task.get("requester"),
        res,
        f"{path}.requester",
        ctx,
        "the referrer",
        (YDER_SYSTEM, SOR_SYSTEM),
        required=False,
    )
    reason = task.get("statusReason")
    reason_code = next(iter(_codes(reason)), None)
    if decided == "rejected" and not reason_code:
        ctx.add(
            f"{path}.statusReason",
            "required",
            "a rejection needs a coded statusReason (" + ", ".join(REASON_CODES) + ")",
        )
    elif reason_code and reason_code not in REASON_CODES:
        ctx.add(
            f"{path}.statusReason.coding[0].code",
            "value",
            f"reason '{reason_code}' is not one of " + ", ".join(REASON_CODES),
        )
    outputs: dict[str, str] = {}
    for n, output in enumerate(task.get("output") or []):
        kind = (output.get("type") or {}).get("text") or next(iter(_codes(output.get("type"))), "")
        if kind not in OUTPUT_TYPES or not isinstance(output.get("valueString"), str):
            ctx.add(
                f"{path}.output[{n}]",
                "value",
                f"output '{kind}': type must be one of "
                + ", ".join(OUTPUT_TYPES)
                + " with a valueString",
            )
            continue
        outputs[kind] = output["valueString"]
    contact = _contact(outputs, f"{path}.output", ctx)
    if contact_change and not (contact and contact.phone):
        ctx.add(
            f"{path}.output",
            "required",
            "a contact person change needs outputs contact-name and contact-phone",
        )
    notes = "\n".join(n["text"] for n in task.get("note") or [] if n.get("text")) or None
    when = _time(task.get("lastModified") or task.get("authoredOn"), f"{path}.lastModified", ctx)
    if len(ctx.issues) > start or child is None or (decided is None and not contact_change):
        return None
    about = About(rid, when, child, referrer, owner)
    if contact_change:
        return _event(task, "Task", "contact", secret, about, contact=contact)
    assert decided is not None
    decision = Decision(
        status=decided,  # type: ignore[arg-type]
        reason_code=reason_code,
        reason_text=_text(reason),
        note=notes,
        alternative=outputs.get("alternative"),
        responsible=outputs.get("responsible"),
        contact=contact,
        forwarded_to=owner if decided == "forwarded" else None,
    )
    return _event(task, "Task", "decision", secret, about, decision=decision)


def _contact(parts: dict[str, str], path: str, ctx: Ctx) -> Contact | None:
    name = parts.get("contact-name")
    if not name:
        if parts.get("contact-phone") or parts.get("contact-email"):
            ctx.add(path, "required", "a contact phone or email needs a contact-name")
        return None
    return Contact(name=name, phone=parts.get("contact-phone"), email=parts.get("contact-email"))


def map_communication(res: Res, ctx: Ctx, secret: str) -> ReferralEvent | None:
    comm, path, start = res.data, res.path, len(ctx.issues)
    if comm.get("status") != "completed":
        ctx.add(
            f"{path}.status",
            "not-supported",
            f"Communication.status '{comm.get('status')}'"
            ": send the status letter when it is completed",
        )
    based_on = comm.get("basedOn") or []
    rid = _referral_ref(based_on[0] if based_on else None, res, f"{path}.basedOn[0]", ctx)
    child = _child(comm.get("subject"), res, f"{path}.subject", ctx, residence=False)
    receiver = _party(comm.get("sender"), res, f"{path}.sender", ctx, "the unit", required=False)
    recipients = comm.get("recipient") or []
    referrer = _party(
        recipients[0] if recipients else None,
        res,
        f"{path}.recipient[0]",
        ctx,
        "the referrer",
        (YDER_SYSTEM, SOR_SYSTEM),
        required=False,
    )
    parts: dict[str, str] = {}
    untagged = iter(("summary", "treatment-plan"))
    for n, payload in enumerate(comm.get("payload") or []):
        if not isinstance(payload.get("contentString"), str):
            continue  # attachments stay on ingest.fhir; the letters carry the text parts
        tag = (_ext(payload, PAYLOAD_PART_EXT) or {}).get("valueCode") or next(untagged, None)
        if tag not in PAYLOAD_PARTS or tag in parts:
            ctx.add(
                f"{path}.payload[{n}]",
                "value",
                f"payload part '{tag}': each of " + ", ".join(PAYLOAD_PARTS) + " at most once",
            )
            continue
        parts[str(tag)] = payload["contentString"]
    if not parts.get("summary"):
        ctx.add(
            f"{path}.payload",
            "required",
            "the assessment needs a summary (payload "
            "contentString tagged 'summary', or the first untagged one)",
        )
    contact = _contact(parts, f"{path}.payload", ctx)
    when = _time(comm.get("sent"), f"{path}.sent", ctx)
    if len(ctx.issues) > start or child is None:
        return None
    return _event(
        comm,
        "Communication",
        "assessment",
        secret,
        About(rid, when, child, referrer, receiver),
        assessment=Assessment(
            summary=parts["summary"], treatment_plan=parts.get("treatment-plan"), contact=contact
        ),
    )


MAPPERS: dict[str, Callable[[Res, Ctx, str], ReferralEvent | None]] = {
    "ServiceRequest": map_service_request,
    "Task": map_task,
    "Communication": map_communication,
}
