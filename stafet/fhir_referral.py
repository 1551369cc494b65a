"""FHIR R4 referral resources (JSON) → canonical :class:`ReferralEvent` s: the API contract.

:func:`parse_fhir_referral` is called twice, like :func:`stafet.hl7v2.parse_adt`: by the FHIR HTTP
connector to decide 2xx/4xx before it answers, and by the stream to build the events from the raw
body kept on ``ingest.fhir``. It is a pure function of the bytes (plus the secret and, in the
connector only, ``known_referral``), so a body the connector accepted always maps the same way.
It checks structure with ``fhir.resources`` (R4B) first and then stafet's rules, and reports
**every** problem as an :class:`Issue` (FHIR OperationOutcome issue code + FHIRPath-like path +
reason); a reason never contains a CPR number.

Accepted input (one resource, or a Bundle of them):

``ServiceRequest`` — a referral. ``status``: ``active`` → kind ``submitted`` (``meta.versionId``
absent or ``1``) or ``modified`` (versionId ≥ 2); ``on-hold`` → ``modified``; ``revoked`` /
``entered-in-error`` → ``cancelled``. ``identifier[0].value`` = the referral id (echoed in every
later message; must be unique, e.g. a UUID; ``system`` is recommended but not compared).
``subject`` → a Patient (contained ``#child`` or a Bundle entry) with the CPR identifier
(``urn:oid:1.2.208.176.1.2``), ``name``, ``gender``, ``birthDate`` and the municipality of
residence in its home (else first) address: the DK-core extension
``http://hl7.dk/fhir/core/StructureDefinition/dk-core-municipalityCodes`` (valueCodeableConcept,
code from ``dk-core-municipality-codes``) or ``address.district`` = the 4-digit code (required
for ``submitted``; one of the 98). ``requester`` → the referrer: ``identifier`` (GP ydernummer
``urn:oid:1.2.208.176.1.4`` → party ``gp``, or SOR ``urn:oid:1.2.208.176.1.1`` → ``hospital-unit``)
+ ``display``, or a reference to a contained/entry Organization or Practitioner carrying one.
``performer[0]`` → the receiving psychiatry unit (SOR). ``supportingInfo`` → contained (or entry)
``RelatedPerson`` s = guardians (``relationship`` coding ``MTH`` | ``FTH`` | ``GUARD`` from
``http://terminology.hl7.org/CodeSystem/v3-RoleCode``, CPR identifier, ``name``) and
``Organization`` s = municipal units (``type`` coding ``ppr`` | ``family-department`` from
``https://stafet.dk/fhir/CodeSystem/municipal-unit-type``, SOR identifier when known — without
one the unit is identified by the child's municipality code and is written to by letter);
other supportingInfo is ignored. ``reasonCode[0].text`` (else its coding display) = the reason for
referral. Event time: ``authoredOn``.

``Task`` — a triage decision (kind ``decision``). ``focus`` → the referral: ``focus.identifier.value``
or a reference to a ServiceRequest in the same Bundle. ``for`` → the child: ``for.identifier``
(CPR) or a reference to a Patient. ``owner`` → the deciding unit (SOR), on a forward the new unit.
``requester`` (optional) → the referrer. ``status``: ``accepted`` → accepted; ``rejected`` →
rejected (**requires** ``statusReason``); ``code.coding.code = forward`` or
``businessStatus`` ``forwarded`` (status ready | in-progress | accepted | completed) → forwarded to
the owner; ``failed`` or ``cancelled`` with businessStatus ``expired`` → expired.
``statusReason.coding[0].code`` ∈ missing-ppv | missing-information | outside-target-group | other
(any system; ``https://stafet.dk/fhir/CodeSystem/referral-rejection-reason`` recommended),
``statusReason.text`` = its Danish wording; ``note[*].text`` = free text; ``output[*]``: ``type.text``
(or type coding code) ∈ alternative | responsible | contact-name | contact-phone | contact-email
with ``valueString``. Event time: ``lastModified``, else ``authoredOn``.

``Communication`` (status ``completed``) — assessment done / status letter (kind ``assessment``).
``basedOn[0]`` → the referral (identifier or reference, as ``focus`` above); ``subject`` → the
child (as ``for``); ``sender`` (optional) → the unit (SOR), ``recipient[0]`` (optional) → the
referrer. ``payload[*].contentString``, each part tagged with extension
``https://stafet.dk/fhir/StructureDefinition/payload-part`` (valueCode ``summary`` |
``treatment-plan`` | ``contact-name`` | ``contact-phone`` | ``contact-email``); untagged strings are
taken in order as summary, then treatment plan. A summary is required. Event time: ``sent``.

``Bundle`` of ``type`` message | collection | transaction | batch: its ServiceRequest / Task /
Communication entries become events in entry order; other entries (MessageHeader, Patient,
Organization, …) may be referenced by ``fullUrl`` or ``Type/id``. All events of one Bundle must be
about the same child (one Kafka key keeps them in order).

Who reads FHIR: extension ``https://stafet.dk/fhir/StructureDefinition/has-fhir-endpoint``
(valueBoolean) on a party reference or resource; by default a GP (ydernummer) does (its EHR takes
MedCom messages) and a SOR unit does not — the same default as the HL7 v2 REF mapping.

Times: a dateTime with a time must have an offset (FHIR); a bare date means 00:00
Europe/Copenhagen. ``event_id`` = UUIDv5("fhir" | resourceType | id or identifier |
``meta.versionId`` or the SHA-256 of the resource's canonical JSON): identical input, identical id.
A Task or Communication whose referral is neither in the same body nor ``known_referral(id)``
gives ``not-found``. Issue codes: structure, required, value, invalid, not-supported, not-found,
code-invalid (a municipality code outside the 98), too-long.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from stafet.cpr import is_valid_cpr, mask_cpr
from stafet.ids import patient_key, stable_uuid
from stafet.model import (
    Assessment, Contact, Decision, Party, PatientInfo, ReferralEvent, ReferralKind,
)
from stafet.schemas.municipalities import municipality

CPR_SYSTEM = "urn:oid:1.2.208.176.1.2"
SOR_SYSTEM = "urn:oid:1.2.208.176.1.1"
YDER_SYSTEM = "urn:oid:1.2.208.176.1.4"
MUNICIPALITY_SYSTEM = "http://hl7.dk/fhir/core/CodeSystem/dk-core-municipality-codes"
MUNICIPALITY_EXT = "http://hl7.dk/fhir/core/StructureDefinition/dk-core-municipalityCodes"
ROLE_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
UNIT_TYPE_SYSTEM = "https://stafet.dk/fhir/CodeSystem/municipal-unit-type"
REASON_SYSTEM = "https://stafet.dk/fhir/CodeSystem/referral-rejection-reason"
PAYLOAD_PART_EXT = "https://stafet.dk/fhir/StructureDefinition/payload-part"
FHIR_ENDPOINT_EXT = "https://stafet.dk/fhir/StructureDefinition/has-fhir-endpoint"

EVENT_TYPES = ("ServiceRequest", "Task", "Communication")
BUNDLE_TYPES = ("message", "collection", "transaction", "batch")
GUARDIAN_ROLES = ("MTH", "FTH", "GUARD")
UNIT_TYPES = ("ppr", "family-department")
REASON_CODES = ("missing-ppv", "missing-information", "outside-target-group", "other")
OUTPUT_TYPES = ("alternative", "responsible", "contact-name", "contact-phone", "contact-email")
PAYLOAD_PARTS = ("summary", "treatment-plan", "contact-name", "contact-phone", "contact-email")
#: Issue codes for a well-formed body that breaks a rule about the world (HTTP 422, not 400).
BUSINESS_CODES = frozenset({"not-found", "code-invalid"})
LOCAL_TZ = ZoneInfo("Europe/Copenhagen")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_STRUCTURE_ERRORS = {"list_type", "dict_type", "model_type", "model_attributes_type",
                     "json_invalid", "extra_forbidden", "is_instance_of"}


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem: where (FHIRPath-like), why (no CPR), and the OperationOutcome issue code."""

    path: str
    reason: str
    code: str


class FhirInputError(Exception):
    """The body will never be accepted as it is; ``issues`` lists every problem found."""

    def __init__(self, issues: list[Issue]) -> None:
        super().__init__("; ".join(f"{i.path or '(body)'}: {i.reason}" for i in issues))
        self.issues = issues

    @property
    def business_rule(self) -> bool:
        """True if the body is well-formed and only breaks rules about the world (HTTP 422)."""
        return all(i.code in BUSINESS_CODES for i in self.issues)


class _Ctx:
    """Collects the issues of one body and resolves references within it."""

    def __init__(self) -> None:
        self.issues: list[Issue] = []
        self.entries: dict[str, dict[str, Any]] = {}  # fullUrl and Type/id → resource

    def add(self, path: str, code: str, reason: str) -> None:
        self.issues.append(Issue(path, mask_cpr(reason), code))

    def resolve(self, ref: Any, owner: dict[str, Any], path: str) -> dict[str, Any] | None:
        """The resource a Reference points at (contained ``#id`` or a Bundle entry), else None."""
        target = ref.get("reference") if isinstance(ref, dict) else None
        if not target:
            return None
        if target.startswith("#"):
            found = next((c for c in owner.get("contained") or []
                          if c.get("id") == target[1:]), None)
        else:
            found = self.entries.get(target) or self.entries.get("/".join(target.split("/")[-2:]))
        if found is None:
            self.add(f"{path}.reference", "structure", f"reference '{target}' does not resolve to "
                     "a contained resource or an entry of the Bundle")
        return found


def parse_fhir_referral(
    body: bytes, *, secret: str, known_referral: Callable[[str], bool] | None = None
) -> list[ReferralEvent]:
    """Validate one FHIR JSON body and map it to events; raise :class:`FhirInputError` if unusable."""
    ctx = _Ctx()
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        reason = str(exc)[:200] if isinstance(exc, ValueError) else "nested too deeply"
        raise FhirInputError([Issue("", mask_cpr(f"the body is not JSON: {reason}"),
                                    "structure")]) from None
    if not isinstance(data, dict):
        raise FhirInputError([Issue("", "the body must be a JSON object (a FHIR resource)",
                                    "structure")])
    rtype = data.get("resourceType")
    if rtype == "Bundle":
        resources = _bundle(data, ctx)
    elif rtype in EVENT_TYPES:
        resources = [(data, rtype)] if _valid(data, rtype, ctx) else []
    else:
        what = f"'{rtype}'" if isinstance(rtype, str) else "missing"
        ctx.add("resourceType", "not-supported" if isinstance(rtype, str) else "required",
                f"resourceType {what}: send a ServiceRequest, Task, Communication or a Bundle "
                "of them")
        raise FhirInputError(ctx.issues)
    referrals = {_referral_id(r) for r, _ in resources if r["resourceType"] == "ServiceRequest"}
    events = []
    for resource, path in resources:
        event = _MAPPERS[resource["resourceType"]](resource, path, ctx, secret)
        if event is None:
            continue
        if (event.kind in ("decision", "assessment") and known_referral is not None
                and event.referral_id not in referrals and not known_referral(event.referral_id)):
            where = "focus" if event.kind == "decision" else "basedOn[0]"
            ctx.add(f"{path}.{where}", "not-found", f"unknown referral '{event.referral_id}': "
                    "no ServiceRequest with this identifier was received")
        events.append(event)
    if len({e.patient_key for e in events}) > 1:
        ctx.add("Bundle.entry", "invalid", "all resources of one Bundle must concern the same "
                "child (one CPR); send one Bundle per child")
    if ctx.issues:
        raise FhirInputError(ctx.issues)
    if not events:
        raise FhirInputError([Issue("Bundle.entry", "the Bundle holds no ServiceRequest, Task "
                                    "or Communication", "required")])
    return events


# --- structure ---------------------------------------------------------------------------------

def _bundle(bundle: dict[str, Any], ctx: _Ctx) -> list[tuple[dict[str, Any], str]]:
    """Validate a Bundle and each entry; return the valid event resources with their paths."""
    entries = bundle.get("entry")
    if not (isinstance(entries, list) and all(isinstance(e, dict) for e in entries)):
        _valid(bundle, "Bundle", ctx)
        if not ctx.issues:
            ctx.add("Bundle.entry", "required", "the Bundle has no entries")
        raise FhirInputError(ctx.issues)
    skeleton = {**bundle, "entry": [{k: v for k, v in e.items() if k != "resource"}
                                    for e in entries]}
    _valid(skeleton, "Bundle", ctx)
    if bundle.get("type") not in BUNDLE_TYPES:
        ctx.add("Bundle.type", "not-supported", f"Bundle.type '{bundle.get('type')}' is not "
                "supported: use " + ", ".join(BUNDLE_TYPES))
    out = []
    for n, entry in enumerate(entries):
        resource, path = entry.get("resource"), f"Bundle.entry[{n}].resource"
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            ctx.add(path, "required", "every entry needs a resource with a resourceType")
            continue
        if not _valid(resource, path, ctx):
            continue
        if isinstance(entry.get("fullUrl"), str):
            ctx.entries[entry["fullUrl"]] = resource
        if isinstance(resource.get("id"), str):
            ctx.entries[f"{resource['resourceType']}/{resource['id']}"] = resource
        if resource["resourceType"] in EVENT_TYPES:
            out.append((resource, path))
    return out


def _valid(resource: dict[str, Any], path: str, ctx: _Ctx) -> bool:
    """fhir.resources (R4B) validation; each pydantic error becomes an Issue."""
    rtype = resource.get("resourceType")
    try:
        get_fhir_model_class(rtype).model_validate(resource)
        return True
    except ValidationError as exc:
        for err in exc.errors():
            kind = str(err["type"])
            code = ("required" if kind == "missing" or kind.endswith(".missing")
                    else "structure" if kind in _STRUCTURE_ERRORS else "value")
            message = " ".join(str(err["msg"]).split())
            ctx.add(path + _loc(err["loc"]), code, message[:240])
    except Exception:  # an unknown resourceType (here or in contained) raises KeyError/ValueError
        known = False
        for n, c in enumerate(resource.get("contained") or [] if rtype != "Bundle" else []):
            if not _known_type(c.get("resourceType") if isinstance(c, dict) else None):
                ctx.add(f"{path}.contained[{n}]", "not-supported",
                        f"'{c.get('resourceType') if isinstance(c, dict) else c}' is not a FHIR "
                        "R4 resource type")
                known = True
        if not known:
            ctx.add(path, "not-supported", f"'{rtype}' is not a FHIR R4 resource type")
    return False


def _known_type(rtype: object) -> bool:
    try:
        get_fhir_model_class(str(rtype))
        return True
    except Exception:
        return False


def _loc(loc: tuple[Any, ...]) -> str:
    """pydantic error location → FHIRPath-like suffix: ('output', 0, 'valueString') → .output[0]…"""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier():
            name = "resourceType" if part == "resource_type" else part.removesuffix("_fhir")
            out += f".{name}"
    return out


# --- field helpers -----------------------------------------------------------------------------

def _referral_id(service_request: dict[str, Any]) -> str:
    return next((i["value"] for i in service_request.get("identifier") or [] if i.get("value")), "")


def _ext(element: Any, url: str) -> dict[str, Any] | None:
    if not isinstance(element, dict):
        return None
    return next((x for x in element.get("extension") or [] if x.get("url") == url), None)


def _codes(concept: Any) -> list[str]:
    return [c["code"] for c in (concept or {}).get("coding") or [] if c.get("code")]


def _text(concept: Any) -> str | None:
    concept = concept or {}
    return concept.get("text") or next((c["display"] for c in concept.get("coding") or []
                                        if c.get("display")), None)


def _name(names: list[dict[str, Any]] | None) -> tuple[str | None, tuple[str, ...]]:
    """(family, given) of the official (else first) HumanName."""
    names = names or []
    name = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    return name.get("family"), tuple(name.get("given") or ())


def _time(value: str | None, path: str, ctx: _Ctx) -> str:
    """A FHIR dateTime → ISO 8601 with offset; a bare date is 00:00 Copenhagen time."""
    if not value:
        ctx.add(path, "required", f"{path} (the event time) is required")
        return ""
    if _DATE.match(value):
        return datetime.fromisoformat(value).replace(tzinfo=LOCAL_TZ).isoformat()
    moment = datetime.fromisoformat(value.replace("Z", "+00:00")) if "T" in value else None
    if moment is None or moment.tzinfo is None:
        ctx.add(path, "value", f"'{value}' needs at least a full date (YYYY-MM-DD)")
        return ""
    return moment.isoformat()


def _cpr(identifiers: list[dict[str, Any]] | None, path: str, ctx: _Ctx, who: str) -> str:
    ids = identifiers or []
    n, value = next(((n, i.get("value") or "") for n, i in enumerate(ids)
                     if i.get("system") == CPR_SYSTEM), (-1, ""))
    if n < 0:
        ctx.add(f"{path}.identifier", "required",
                f"{who} needs a CPR identifier (system {CPR_SYSTEM})")
        return ""
    value = value.replace("-", "").strip()
    if not is_valid_cpr(value):
        ctx.add(f"{path}.identifier[{n}].value", "value",
                f"the CPR number of {who} is not 10 digits starting with a valid date")
        return ""
    return value


def _endpoint(system: str, *elements: Any) -> bool:
    for element in elements:
        if (ext := _ext(element, FHIR_ENDPOINT_EXT)) and isinstance(ext.get("valueBoolean"), bool):
            return ext["valueBoolean"]
    return system == YDER_SYSTEM


def _party(ref: Any, owner: dict[str, Any], path: str, ctx: _Ctx, what: str,
           systems: tuple[str, ...] = (SOR_SYSTEM,), required: bool = True) -> Party | None:
    """A party from a Reference: its logical identifier + display, or the resource it points at."""
    if not ref:
        if required:
            ctx.add(path, "required", f"{path} ({what}) is required")
        return None
    target = ctx.resolve(ref, owner, path) or {}
    ident, where = ref.get("identifier"), f"{path}.identifier"
    if not (ident or {}).get("value"):
        ident = next((i for i in target.get("identifier") or [] if i.get("system") in systems),
                     None)
        where = f"{path}.reference"
    if not ident or not ident.get("value"):
        ctx.add(where, "required", f"{what} needs an identifier with system "
                + " or ".join(systems))
        return None
    system, value = ident.get("system"), str(ident["value"]).strip()
    if system not in systems:
        ctx.add(f"{where}.system", "value", f"{what}: identifier system '{system}' is not "
                + " or ".join(systems))
        return None
    if not value.isdigit():
        ctx.add(f"{where}.value", "value", f"{what}: '{value}' is not a SOR code or ydernummer")
        return None
    name = ref.get("display") or target.get("name")
    if isinstance(name, list):  # Practitioner.name
        family, given = _name(name)
        name = " ".join([*given, family or ""]).strip()
    kind = "gp" if system == YDER_SYSTEM else "hospital-unit"
    return Party(kind=kind, identifier_system=system, identifier=value, name=name or None,
                 has_fhir_endpoint=_endpoint(system, ref, target))


def _child(ref: Any, owner: dict[str, Any], path: str, ctx: _Ctx, *,
           need_residence: bool) -> PatientInfo | None:
    """The child: a Patient resource (contained or entry), or just a CPR identifier."""
    if not ref:
        ctx.add(path, "required", f"{path} (the child) is required")
        return None
    patient = ctx.resolve(ref, owner, path)
    if patient is None:
        if need_residence:
            ctx.add(path, "required", "the child must be a Patient resource (contained #child) "
                    "with CPR and municipality of residence")
            return None
        cpr = _cpr([ref["identifier"]] if ref.get("identifier") else [], path, ctx, "the child")
        return PatientInfo(cpr=cpr) if cpr else None
    if patient.get("resourceType") != "Patient":
        ctx.add(f"{path}.reference", "invalid", f"{path} must point at a Patient")
        return None
    cpr = _cpr(patient.get("identifier"), f"{path}.resolve()", ctx, "the child")
    code, region = _residence(patient, f"{path}.resolve()", ctx, need_residence)
    family, given = _name(patient.get("name"))
    birth = patient.get("birthDate")
    return PatientInfo(cpr=cpr, family=family, given=given, gender=patient.get("gender"),
                       birth_date=birth if birth and _DATE.match(birth) else None,
                       municipality_code=code, region_code=region) if cpr else None


def _residence(patient: dict[str, Any], path: str, ctx: _Ctx,
               required: bool) -> tuple[str, str | None]:
    """Municipality of residence from the DK-core extension or ``district`` of the home address."""
    addresses = patient.get("address") or []
    n = next((n for n, a in enumerate(addresses) if a.get("use") == "home"), 0)
    address = addresses[n] if addresses else {}
    ext = _ext(address, MUNICIPALITY_EXT)
    from_ext = next(iter(_codes((ext or {}).get("valueCodeableConcept"))), None)
    district = (address.get("district") or "").strip() or None
    where = f"{path}.address[{n}]" + (".extension" if from_ext else ".district")
    code = from_ext or district
    if code and code.isdigit() and len(code) < 4:
        code = code.zfill(4)
    if from_ext and district and district.zfill(4) != code:
        ctx.add(f"{path}.address[{n}]", "invalid", f"the municipality extension ({code}) and "
                f"address.district ({district}) disagree")
    if not code:
        if required:
            ctx.add(f"{path}.address", "required", "the child's municipality of residence is "
                    f"required (address extension {MUNICIPALITY_EXT} or address.district)")
        return "", None
    found = municipality(code)
    if found is None:
        ctx.add(where, "code-invalid", f"unknown municipality code '{code}' (not one of the 98)")
        return "", None
    return found.code, found.region_code


def _identity(resource: dict[str, Any], rtype: str) -> tuple[str, str]:
    """(event_id, source_message_id): deterministic for identical input."""
    rid = resource.get("id") or ""
    ident = next((i.get("value") for i in resource.get("identifier") or [] if i.get("value")), "")
    version = (resource.get("meta") or {}).get("versionId") or ""
    canonical = json.dumps(resource, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    event_id = stable_uuid("fhir", rtype, rid or ident, version or f"sha256:{digest}")
    source = f"{rtype}/{rid}" if rid else f"{rtype}?identifier={ident}" if ident else rtype
    return event_id, f"{source}/_history/{version}" if version else f"{source}#{digest[:16]}"


def _referral_ref(ref: Any, owner: dict[str, Any], path: str, ctx: _Ctx) -> str:
    if not ref:
        ctx.add(path, "required", f"{path} (the referral) is required")
        return ""
    target = ctx.resolve(ref, owner, path)
    if target is not None and target.get("resourceType") == "ServiceRequest":
        return _referral_id(target)
    value = (ref.get("identifier") or {}).get("value")
    if not value:
        ctx.add(f"{path}.identifier.value", "required",
                f"{path} needs identifier.value = the referral id (ServiceRequest.identifier)")
    return value or ""


# --- the three resources -----------------------------------------------------------------------

def _service_request(sr: dict[str, Any], path: str, ctx: _Ctx, secret: str) -> ReferralEvent | None:
    start = len(ctx.issues)
    status, version = sr.get("status"), (sr.get("meta") or {}).get("versionId") or "1"
    kind: ReferralKind | None = {"on-hold": "modified", "revoked": "cancelled",
                                 "entered-in-error": "cancelled"}.get(status)  # type: ignore[assignment]
    if status == "active":
        kind = "submitted" if version == "1" else "modified"
    if kind is None:
        ctx.add(f"{path}.status", "not-supported", f"ServiceRequest.status '{status}' is not a "
                "referral step: active, on-hold, revoked or entered-in-error")
    referral_id = _referral_id(sr)
    if not referral_id:
        ctx.add(f"{path}.identifier", "required", "ServiceRequest.identifier[0].value (the "
                "referral id) is required")
    child = _child(sr.get("subject"), sr, f"{path}.subject", ctx,
                   need_residence=kind == "submitted")
    referrer = _party(sr.get("requester"), sr, f"{path}.requester", ctx, "the referrer",
                      (YDER_SYSTEM, SOR_SYSTEM))
    performers = sr.get("performer") or []
    receiver = _party(performers[0] if performers else None, sr, f"{path}.performer[0]", ctx,
                      "the receiving unit")
    guardians, units = [], []
    for n, ref in enumerate(sr.get("supportingInfo") or []):
        where = f"{path}.supportingInfo[{n}]"
        target = ctx.resolve(ref, sr, where) or {}
        if target.get("resourceType") == "RelatedPerson":
            guardians.append(_guardian(target, f"{where}.resolve()", ctx))
        elif target.get("resourceType") == "Organization":
            units.append(_unit(target, f"{where}.resolve()", ctx, child))
    reasons = sr.get("reasonCode") or []
    when = _time(sr.get("authoredOn"), f"{path}.authoredOn", ctx)
    if len(ctx.issues) > start or child is None or kind is None:
        return None
    event_id, source_id = _identity(sr, "ServiceRequest")
    return ReferralEvent(
        event_id=event_id, source="fhir", source_message_id=source_id, kind=kind,
        referral_id=referral_id, event_time=when, patient_key=patient_key(child.cpr, secret),
        child=child, referrer=referrer, receiver=receiver,
        guardians=tuple(g for g in guardians if g), municipal_units=tuple(u for u in units if u),
        reason_for_referral=_text(reasons[0]) if reasons else None)


def _guardian(person: dict[str, Any], path: str, ctx: _Ctx) -> Party | None:
    roles = [c.get("code") for concept in person.get("relationship") or []
             for c in concept.get("coding") or [] if c.get("system") == ROLE_CODE_SYSTEM]
    role = next((r for r in roles if r in GUARDIAN_ROLES), None)
    if role is None:
        ctx.add(f"{path}.relationship", "value", "a guardian's relationship must be MTH, FTH or "
                f"GUARD from {ROLE_CODE_SYSTEM}")
    cpr = _cpr(person.get("identifier"), path, ctx, "the guardian")
    family, given = _name(person.get("name"))
    name = " ".join([*given, family or ""]).strip() or None
    if role is None or not cpr:
        return None
    return Party(kind="guardian", identifier_system=CPR_SYSTEM, identifier=cpr, name=name,
                 relationship=role, has_fhir_endpoint=_endpoint(CPR_SYSTEM, person))


def _unit(org: dict[str, Any], path: str, ctx: _Ctx, child: PatientInfo | None) -> Party | None:
    kind = next((c.get("code") for concept in org.get("type") or []
                 for c in concept.get("coding") or []
                 if c.get("system") == UNIT_TYPE_SYSTEM and c.get("code") in UNIT_TYPES), None)
    if kind is None:
        ctx.add(f"{path}.type", "value", "a municipal unit needs a type coding ppr or "
                f"family-department from {UNIT_TYPE_SYSTEM}")
        return None
    sor = next((i.get("value") for i in org.get("identifier") or []
                if i.get("system") == SOR_SYSTEM and i.get("value")), None)
    if sor is not None:
        return Party(kind=kind, identifier_system=SOR_SYSTEM, identifier=sor,
                     name=org.get("name"), has_fhir_endpoint=_endpoint(SOR_SYSTEM, org) or True)
    code = child.municipality_code if child else ""
    return Party(kind=kind, identifier_system=MUNICIPALITY_SYSTEM, identifier=code,
                 name=org.get("name"), has_fhir_endpoint=False) if code else None


def _task(task: dict[str, Any], path: str, ctx: _Ctx, secret: str) -> ReferralEvent | None:
    start = len(ctx.issues)
    status = task.get("status")
    business = [*_codes(task.get("businessStatus")), _text(task.get("businessStatus")) or ""]
    forward = "forward" in _codes(task.get("code")) or "forwarded" in business
    decided = ("rejected" if status == "rejected"
               else "forwarded" if forward and status in ("ready", "in-progress", "accepted",
                                                          "completed")
               else "accepted" if status == "accepted"
               else "expired" if status in ("failed", "cancelled") and "expired" in business
               else None)
    if decided is None:
        ctx.add(f"{path}.status", "not-supported", f"Task.status '{status}' is not a triage "
                "decision: accepted, rejected, forward (code 'forward') or expired (failed + "
                "businessStatus 'expired'); withdraw a referral by revoking its ServiceRequest")
    referral_id = _referral_ref(task.get("focus"), task, f"{path}.focus", ctx)
    child = _child(task.get("for"), task, f"{path}.for", ctx, need_residence=False)
    owner = _party(task.get("owner"), task, f"{path}.owner", ctx, "the deciding unit")
    referrer = _party(task.get("requester"), task, f"{path}.requester", ctx, "the referrer",
                      (YDER_SYSTEM, SOR_SYSTEM), required=False)
    reason = task.get("statusReason")
    reason_code = next(iter(_codes(reason)), None)
    if decided == "rejected" and not reason_code:
        ctx.add(f"{path}.statusReason", "required", "a rejection needs a coded statusReason ("
                + ", ".join(REASON_CODES) + ")")
    elif reason_code and reason_code not in REASON_CODES:
        ctx.add(f"{path}.statusReason.coding[0].code", "value", f"reason '{reason_code}' is not "
                "one of " + ", ".join(REASON_CODES))
    outputs: dict[str, str] = {}
    for n, output in enumerate(task.get("output") or []):
        kind = (output.get("type") or {}).get("text") or next(iter(_codes(output.get("type"))), "")
        if kind not in OUTPUT_TYPES or not isinstance(output.get("valueString"), str):
            ctx.add(f"{path}.output[{n}]", "value", f"output type '{kind}' with valueString: "
                    "type must be one of " + ", ".join(OUTPUT_TYPES))
            continue
        outputs[kind] = output["valueString"]
    contact = _contact(outputs, f"{path}.output", ctx)
    notes = "\n".join(n["text"] for n in task.get("note") or [] if n.get("text")) or None
    when = _time(task.get("lastModified") or task.get("authoredOn"), f"{path}.lastModified", ctx)
    if len(ctx.issues) > start or child is None or decided is None:
        return None
    event_id, source_id = _identity(task, "Task")
    decision = Decision(
        status=decided,  # type: ignore[arg-type]
        reason_code=reason_code, reason_text=_text(reason), note=notes,
        alternative=outputs.get("alternative"), responsible=outputs.get("responsible"),
        contact=contact, forwarded_to=owner if decided == "forwarded" else None)
    return ReferralEvent(
        event_id=event_id, source="fhir", source_message_id=source_id, kind="decision",
        referral_id=referral_id, event_time=when, patient_key=patient_key(child.cpr, secret),
        child=child, referrer=referrer, receiver=owner, decision=decision)


def _contact(parts: dict[str, str], path: str, ctx: _Ctx) -> Contact | None:
    name = parts.get("contact-name")
    if not name:
        if parts.get("contact-phone") or parts.get("contact-email"):
            ctx.add(path, "required", "a contact phone or email needs a contact-name")
        return None
    return Contact(name=name, phone=parts.get("contact-phone"), email=parts.get("contact-email"))


def _communication(comm: dict[str, Any], path: str, ctx: _Ctx,
                   secret: str) -> ReferralEvent | None:
    start = len(ctx.issues)
    if comm.get("status") != "completed":
        ctx.add(f"{path}.status", "not-supported", f"Communication.status '{comm.get('status')}'"
                ": send the status letter when it is completed")
    based_on = comm.get("basedOn") or []
    referral_id = _referral_ref(based_on[0] if based_on else None, comm, f"{path}.basedOn[0]", ctx)
    child = _child(comm.get("subject"), comm, f"{path}.subject", ctx, need_residence=False)
    receiver = _party(comm.get("sender"), comm, f"{path}.sender", ctx, "the unit",
                      required=False)
    recipients = comm.get("recipient") or []
    referrer = _party(recipients[0] if recipients else None, comm, f"{path}.recipient[0]", ctx,
                      "the referrer", (YDER_SYSTEM, SOR_SYSTEM), required=False)
    parts: dict[str, str] = {}
    untagged = iter(("summary", "treatment-plan"))
    for n, payload in enumerate(comm.get("payload") or []):
        if not isinstance(payload.get("contentString"), str):
            continue  # attachments ride along on ingest.fhir; the letter carries the text
        tag = (_ext(payload, PAYLOAD_PART_EXT) or {}).get("valueCode") or next(untagged, None)
        if tag not in PAYLOAD_PARTS or tag in parts:
            ctx.add(f"{path}.payload[{n}]", "value", f"payload part '{tag}': each of "
                    + ", ".join(PAYLOAD_PARTS) + " at most once")
            continue
        parts[tag] = payload["contentString"]
    if not parts.get("summary"):
        ctx.add(f"{path}.payload", "required", "the assessment needs a summary (payload "
                "contentString tagged 'summary', or the first untagged one)")
    contact = _contact(parts, f"{path}.payload", ctx)
    when = _time(comm.get("sent"), f"{path}.sent", ctx)
    if len(ctx.issues) > start or child is None:
        return None
    event_id, source_id = _identity(comm, "Communication")
    return ReferralEvent(
        event_id=event_id, source="fhir", source_message_id=source_id, kind="assessment",
        referral_id=referral_id, event_time=when, patient_key=patient_key(child.cpr, secret),
        child=child, referrer=referrer, receiver=receiver,
        assessment=Assessment(summary=parts["summary"], treatment_plan=parts.get("treatment-plan"),
                              contact=contact))


_MAPPERS: dict[str, Callable[[dict[str, Any], str, _Ctx, str], ReferralEvent | None]] = {
    "ServiceRequest": _service_request, "Task": _task, "Communication": _communication,
}

__all__ = ["FhirInputError", "Issue", "parse_fhir_referral", "EVENT_TYPES", "BUSINESS_CODES"]
