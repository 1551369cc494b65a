"""FHIR R4 referral resources (JSON) → canonical :class:`ReferralEvent` s: the API contract.

:func:`parse_fhir_referral` is called twice, like :func:`stafet.inbound.hl7v2.parse_adt`: by the FHIR HTTP
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
for ``submitted``; one of the 98; a 3-digit code is zero-padded; extension and district must
agree). ``requester`` → the referrer: ``identifier`` (GP ydernummer
``urn:oid:1.2.208.176.1.4`` → party ``gp``, or SOR ``urn:oid:1.2.208.176.1.1`` → ``hospital-unit``)
+ ``display``, or a reference to a contained/entry Organization or Practitioner carrying one.
``performer[0]`` → the receiving psychiatry unit (SOR). ``supportingInfo`` → contained (or entry)
``RelatedPerson`` s = guardians (``relationship`` coding ``MTH`` | ``FTH`` | ``GUARD`` from
``http://terminology.hl7.org/CodeSystem/v3-RoleCode``, CPR identifier, ``name``) and
``Organization`` s = municipal units (``type`` coding ``ppr`` | ``family-department`` from
``https://stafet.dk/fhir/CodeSystem/municipal-unit-type``, SOR identifier when known — without
one the unit is named ``<municipality code>/<kind>`` in ``https://stafet.dk/fhir/NamingSystem/municipal-unit``
and still receives its own message on the municipality's topic);
other supportingInfo is ignored. ``reasonCode[0].text`` (else its coding display) = the reason for
referral. Event time: ``authoredOn``.

``Task`` — a triage decision (kind ``decision``). ``focus`` → the referral: ``focus.identifier.value``
or a reference to a ServiceRequest in the same Bundle. ``for`` → the child: ``for.identifier``
(CPR) or a reference to a Patient (then its name too; the municipality stays "" unless given —
the stream takes it from the referral). ``owner`` → the deciding unit (SOR), on a forward the new unit.
``requester`` (optional) → the referrer. ``status``: ``accepted`` → accepted; ``rejected`` →
rejected (**requires** ``statusReason``); ``code.coding.code = forward`` or
``businessStatus`` ``forwarded`` (status ready | in-progress | accepted | completed) → forwarded to
the owner; ``failed`` or ``cancelled`` with businessStatus ``expired`` → expired.
``businessStatus`` ``contact-changed`` (status ready | in-progress | accepted | completed) →
kind ``contact``: the child's contact person at the unit changed (outputs contact-name and
contact-phone required); every party of the referral is told.
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
(valueBoolean) on a party reference or resource; by default every organisation does (GP by
ydernummer, units by SOR — MedCom reaches them) and a citizen (CPR) does not — the same default as
the HL7 v2 REF mapping, where PRD-5 ``LETTER`` marks a letter-only party.

Times: a dateTime with a time must have an offset (FHIR); a bare date means 00:00
Europe/Copenhagen. ``event_id`` = UUIDv5("fhir" | resourceType | id or identifier |
``meta.versionId`` or the SHA-256 of the resource's canonical JSON): identical input, identical id.
A Task or Communication whose referral is neither in the same body nor ``known_referral(id)``
gives ``not-found``. Issue codes: structure, required, value, invalid, not-supported, not-found,
code-invalid (a municipality code outside the 98), too-long (the connector's size limit).
:attr:`FhirInputError.business_rule` is True when every issue is not-found / code-invalid (the
connector answers 422; otherwise 400). Paths are FHIRPath-like (``Task.focus``,
``ServiceRequest.contained[0].identifier[0].value``, ``Bundle.entry[1].resource.statusReason``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from stafet.cpr import mask_cpr
from stafet.inbound.fhir_mapping import (
    FHIR_ENDPOINT_EXT,
    MAPPERS,
    MUNICIPALITY_EXT,
    OUTPUT_TYPES,
    PAYLOAD_PART_EXT,
    PAYLOAD_PARTS,
    REASON_CODES,
    REASON_SYSTEM,
    ROLE_CODE_SYSTEM,
    UNIT_TYPE_SYSTEM,
    UNIT_TYPES,
    Ctx,
    Issue,
    Res,
    referral_id,
)
from stafet.model import ReferralEvent
from stafet.systems import CPR_SYSTEM, MUNICIPALITY_SYSTEM, SOR_SYSTEM, YDER_SYSTEM

EVENT_TYPES = ("ServiceRequest", "Task", "Communication")
BUNDLE_TYPES = ("message", "collection", "transaction", "batch")
#: Issue codes of a well-formed body that breaks a rule about the world: HTTP 422, not 400.
BUSINESS_CODES = frozenset({"not-found", "code-invalid"})
#: nesting of JSON objects / arrays a body may have (a Bundle of referrals needs about 15)
MAX_DEPTH = 64
_STRUCTURE_ERRORS = {
    "list_type",
    "dict_type",
    "model_type",
    "model_attributes_type",
    "json_invalid",
    "extra_forbidden",
    "is_instance_of",
}


class FhirInputError(Exception):
    """The body will never be accepted as it is; ``issues`` lists every problem found."""

    def __init__(self, issues: list[Issue]) -> None:
        super().__init__("; ".join(f"{i.path or '(body)'}: {i.reason}" for i in issues))
        self.issues = issues

    @property
    def business_rule(self) -> bool:
        """True if the body is well-formed and only breaks rules about the world (HTTP 422)."""
        return all(i.code in BUSINESS_CODES for i in self.issues)


def parse_fhir_referral(
    body: bytes, *, secret: str, known_referral: Callable[[str], bool] | None = None
) -> list[ReferralEvent]:
    """Validate one FHIR JSON body and map it to events; :class:`FhirInputError` if unusable.

    ``secret`` keys the pseudonymous patient key. ``known_referral(referral_id)``, when given,
    says whether a referral exists outside this body (the connector's index); the stream, which
    parks decisions for referrals it has not seen yet, leaves it out.
    """
    ctx = Ctx()
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        reason = str(exc)[:200] if isinstance(exc, ValueError) else "nested too deeply"
        raise FhirInputError(
            [Issue("", mask_cpr(f"the body is not JSON: {reason}"), "structure")]
        ) from None
    if not isinstance(data, dict):
        raise FhirInputError(
            [Issue("", "the body must be a JSON object (a FHIR resource)", "structure")]
        )
    if (depth := _depth(data)) > MAX_DEPTH:  # validation recurses: its limit would depend on
        # the caller's stack, so the connector and the stream could decide differently
        raise FhirInputError(
            [
                Issue(
                    "",
                    f"the body is nested more than {MAX_DEPTH} levels deep "
                    f"({depth}); FHIR referrals need far fewer",
                    "structure",
                )
            ]
        )
    rtype = data.get("resourceType")
    if rtype == "Bundle":
        resources = _bundle(data, ctx)
    elif rtype in EVENT_TYPES:
        resources = [Res(data, rtype)] if _valid(data, rtype, ctx) else []
    else:
        known = isinstance(rtype, str)
        ctx.add(
            "resourceType",
            "not-supported" if known else "required",
            f"resourceType {repr(rtype)[:60] if known else 'missing'}: send a ServiceRequest, "
            "Task, Communication or a Bundle of them",
        )
        raise FhirInputError(ctx.issues)
    in_body = {referral_id(r.data) for r in resources if r.data["resourceType"] == "ServiceRequest"}
    events = []
    for res in resources:
        event = MAPPERS[res.data["resourceType"]](res, ctx, secret)
        if event is None:
            continue
        if (
            event.kind in ("decision", "assessment", "contact")
            and known_referral is not None
            and event.referral_id not in in_body
            and not known_referral(event.referral_id)
        ):
            where = "basedOn[0]" if event.kind == "assessment" else "focus"
            ctx.add(
                f"{res.path}.{where}",
                "not-found",
                f"unknown referral "
                f"'{event.referral_id}': no ServiceRequest with this identifier was received",
            )
        events.append(event)
    if len({e.patient_key for e in events}) > 1:
        ctx.add(
            "Bundle.entry",
            "invalid",
            "all resources of one Bundle must concern the same "
            "child (one CPR); send one Bundle per child",
        )
    if not events and not ctx.issues:
        ctx.add(
            "Bundle.entry", "required", "the Bundle holds no ServiceRequest, Task or Communication"
        )
    if ctx.issues:
        raise FhirInputError(ctx.issues)
    return events


def _depth(data: Any) -> int:
    """How deeply objects and arrays nest in ``data`` (iteratively: no recursion limit)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, level)
            stack.extend(
                (child, level + 1) for child in (node.values() if isinstance(node, dict) else node)
            )
    return deepest


def _bundle(bundle: dict[str, Any], ctx: Ctx) -> list[Res]:
    """Validate a Bundle and each entry on its own (precise paths); return the event resources."""
    entries = bundle.get("entry")
    if not (isinstance(entries, list) and all(isinstance(e, dict) for e in entries)):
        if _valid(bundle, "Bundle", ctx):
            ctx.add("Bundle.entry", "required", "the Bundle has no entries")
        raise FhirInputError(ctx.issues)
    skeleton = {
        **bundle,
        "entry": [{k: v for k, v in e.items() if k != "resource"} for e in entries],
    }
    _valid(skeleton, "Bundle", ctx)
    if bundle.get("type") not in BUNDLE_TYPES:
        ctx.add(
            "Bundle.type",
            "not-supported",
            f"Bundle.type {str(bundle.get('type'))[:40]!r} "
            "is not supported: use " + ", ".join(BUNDLE_TYPES),
        )
    out = []
    for n, entry in enumerate(entries):
        resource, path = entry.get("resource"), f"Bundle.entry[{n}].resource"
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            ctx.add(path, "required", "every entry needs a resource with a resourceType")
            continue
        if not _valid(resource, path, ctx):
            continue
        res = Res(resource, path)
        if isinstance(entry.get("fullUrl"), str):
            ctx.entries[entry["fullUrl"]] = res
        if isinstance(resource.get("id"), str):
            ctx.entries[f"{resource['resourceType']}/{resource['id']}"] = res
        if resource["resourceType"] in EVENT_TYPES:
            out.append(res)
    return out


def _valid(resource: dict[str, Any], path: str, ctx: Ctx) -> bool:
    """fhir.resources (R4B) validation; each pydantic error becomes an Issue at its path."""
    rtype = resource.get("resourceType")
    try:
        get_fhir_model_class(str(rtype)).model_validate(resource)
        rid = resource.get("id")  # fhir.resources checks the characters of an id, not its length
        if isinstance(rid, str) and len(rid) > 64:
            ctx.add(
                f"{path}.id",
                "value",
                f"the id is {len(rid)} characters long; a FHIR id has at most 64",
            )
            return False
        return True
    except ValidationError as exc:
        for err in exc.errors():
            kind = str(err["type"])
            code = (
                "required"
                if kind == "missing" or kind.endswith(".missing")
                else "structure"
                if kind in _STRUCTURE_ERRORS
                else "value"
            )
            message = " ".join(str(err["msg"]).split())[:200]
            given = err.get("input")
            if code == "value" and isinstance(given, str) and len(given) <= 60:
                message += f" (got {given!r})"  # masked by ctx.add should it hold a CPR
            ctx.add(path + _loc(err["loc"]), code, message)
    except Exception as exc:  # noqa: BLE001 - an unknown resourceType raises KeyError/ValueError
        contained = resource.get("contained") if rtype != "Bundle" else None
        unknown = [
            (n, c.get("resourceType") if isinstance(c, dict) else None)
            for n, c in enumerate(contained if isinstance(contained, list) else [])
        ]
        unknown = [(n, t) for n, t in unknown if not _known_type(t)]
        for n, t in unknown:
            ctx.add(
                f"{path}.contained[{n}]",
                "not-supported",
                f"{str(t)[:60]!r} is not a FHIR R4 resource type",
            )
        if not unknown and not _known_type(rtype):
            ctx.add(path, "not-supported", f"{str(rtype)[:60]!r} is not a FHIR R4 resource type")
        elif not unknown:
            ctx.add(path, "structure", f"not a valid {rtype}: {type(exc).__name__} {exc}"[:240])
    return False


def _known_type(rtype: object) -> bool:
    try:
        get_fhir_model_class(str(rtype))
        return True
    except Exception:  # noqa: BLE001
        return False


def _loc(loc: tuple[Any, ...]) -> str:
    """pydantic location → FHIRPath-like suffix: ('output', 0, 'valueString') → .output[0]…"""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier():
            out += "." + ("resourceType" if part == "resource_type" else part.removesuffix("_fhir"))
    return out


__all__ = [
    "BUNDLE_TYPES",
    "BUSINESS_CODES",
    "CPR_SYSTEM",
    "EVENT_TYPES",
    "FHIR_ENDPOINT_EXT",
    "FhirInputError",
    "Issue",
    "MUNICIPALITY_EXT",
    "MUNICIPALITY_SYSTEM",
    "OUTPUT_TYPES",
    "PAYLOAD_PARTS",
    "PAYLOAD_PART_EXT",
    "REASON_CODES",
    "REASON_SYSTEM",
    "ROLE_CODE_SYSTEM",
    "SOR_SYSTEM",
    "UNIT_TYPES",
    "UNIT_TYPE_SYSTEM",
    "YDER_SYSTEM",
    "parse_fhir_referral",
]
