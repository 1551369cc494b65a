"""HL7 v2 referral messages (REF^I12/I13/I14, RRI^I12) → canonical :class:`ReferralEvent`, and
:func:`parse_hl7v2`, the one entry point for everything the MLLP listener accepts.

Mapping (documented in the README):

- RF1-6 originating referral identifier = the referral id; RF1-1 status (table 0283: A accepted,
  R rejected, P pending/forwarded, E expired; and stafet's local C: contact person changed); RF1-10 reason (CE: code^text, codes
  ``missing-ppv``, ``missing-information``, ``outside-target-group``, ``other``).
- PRD per party (PRD-5 = ``LETTER``: the party reads letters, not FHIR), PRD-1 role: ``RP`` referring provider (the referrer), ``RT`` referred-to provider
  (the psychiatry unit; on a forward the new unit), ``PPR`` / ``FAM`` the municipal units;
  PRD-2 name; PRD-7 identifier ``id^YDER`` (GP ydernummer) or ``id^SOR``.
- PID: the child (CPR, name, municipality of residence as for ADT).
- NK1 per guardian: NK1-2 name, NK1-3 relationship (MTH, FTH, GUARD), NK1-33 ``CPR^^^CPR``.
- NTE-3 text, NTE-4 type: ``NOTE`` (free text), ``ALT`` (suggested alternative), ``RESP`` (who
  now holds responsibility); CTD-2 contact name, CTD-6 contact phone.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

from stafet.cpr import is_valid_cpr
from stafet.ids import patient_key
from stafet.inbound.hl7v2 import (
    Hl7Error,
    Segments,
    _err,
    check_structure,
    message_event_id,
    normalise_segments,
    parse_adt,
    parse_segments,
    patient_cpr,
    read_header,
    residence,
    to_iso,
)
from stafet.model import Contact, Decision, EncounterEvent, Party, PatientInfo, ReferralEvent
from stafet.systems import CPR_SYSTEM, SOR_SYSTEM, YDER_SYSTEM

REFERRAL_TRIGGERS = {
    ("REF", "I12"): "submitted",
    ("REF", "I13"): "modified",
    ("REF", "I14"): "cancelled",
    ("RRI", "I12"): "decision",
}
DECISIONS = {"A": "accepted", "R": "rejected", "P": "forwarded", "E": "expired"}
#: RF1-1 = C on an RRI^I12: the child's contact person at the unit changed (a local code beside
#: table 0283's; the new contact in CTD as for decisions) — every party of the referral is told
CONTACT_CHANGED = "C"
PRD_ROLES = {"RP": "referrer", "RT": "receiver", "PPR": "ppr", "FAM": "family-department"}
REASON_CODES = ("missing-ppv", "missing-information", "outside-target-group", "other")


def parse_hl7v2(
    raw: bytes, *, secret: str, default_charset: str = "utf-8", timezone: str = "Europe/Copenhagen"
) -> EncounterEvent | ReferralEvent:
    """Any message the MLLP listener accepts: ADT → encounter event, REF/RRI → referral event."""
    msg_type = read_header(normalise_segments(raw), default_charset).message_type.split("^")[0]
    if msg_type in ("REF", "RRI"):
        return parse_referral(
            raw, secret=secret, default_charset=default_charset, timezone=timezone
        )
    return parse_adt(raw, secret=secret, default_charset=default_charset, timezone=timezone)


def _party(seg: Segments, index: int) -> tuple[str, Party] | None:
    """PRD number ``index`` (0-based) as (role, Party)."""
    prds = [s for s in seg.message if str(s[0]) == "PRD"]
    prd = prds[index]
    role_code = str(prd[1]).split("^")[0].strip().upper() if len(prd) > 1 else ""
    role = PRD_ROLES.get(role_code)
    if role is None:
        raise _err(
            103, f"PRD^{index + 1}^1", f"unknown provider role '{role_code}' (RP, RT, PPR or FAM)"
        )
    name = str(prd[2]).replace("^", " ").strip() if len(prd) > 2 else ""
    ident = str(prd[7]).split("^") if len(prd) > 7 else [""]
    value, kind = ident[0].strip(), (ident[1].strip().upper() if len(ident) > 1 else "")
    if not value:
        raise _err(101, f"PRD^{index + 1}^7", f"PRD-7 identifier missing for role {role_code}")
    system = YDER_SYSTEM if kind == "YDER" else SOR_SYSTEM
    party_kind = {
        "referrer": "gp" if kind == "YDER" else "hospital-unit",
        "receiver": "hospital-unit",
    }.get(role, role)
    # Organisations (GP practices by ydernummer, units by SOR) are reached through MedCom;
    # PRD-5 (communication information) = LETTER marks a referrer that reads paper letters.
    by_letter = len(prd) > 5 and str(prd[5]).split("^")[0].strip().upper() == "LETTER"
    return role, Party(
        kind=party_kind,  # type: ignore[arg-type]  # a role name that is a PartyKind
        identifier_system=system,
        identifier=value,
        name=name or None,
        has_fhir_endpoint=not by_letter,
    )


def _guardians(seg: Segments) -> tuple[Party, ...]:
    out = []
    for index, nk1 in enumerate(s for s in seg.message if str(s[0]) == "NK1"):
        relationship = str(nk1[3]).split("^")[0].strip().upper() if len(nk1) > 3 else ""
        ident = str(nk1[33]).split("^")[0].strip() if len(nk1) > 33 else ""
        if not ident or not is_valid_cpr(ident):
            raise _err(
                102, f"NK1^{index + 1}^33", "the guardian's CPR in NK1-33 is missing or invalid"
            )
        name_parts = str(nk1[2]).split("^") if len(nk1) > 2 else []
        name = " ".join(p for p in [*name_parts[1:3], name_parts[0] if name_parts else ""] if p)
        out.append(
            Party(
                kind="guardian",
                identifier_system=CPR_SYSTEM,
                identifier=ident,
                name=name or None,
                relationship=relationship or None,
                has_fhir_endpoint=False,
            )
        )
    return tuple(out)


def _notes(seg: Segments) -> dict[str, str]:
    notes: dict[str, list[str]] = {}
    for nte in (s for s in seg.message if str(s[0]) == "NTE"):
        text = str(nte[3]).strip() if len(nte) > 3 else ""
        kind = str(nte[4]).split("^")[0].strip().upper() if len(nte) > 4 else ""
        notes.setdefault(kind or "NOTE", []).append(text)
    return {k: "\n".join(v) for k, v in notes.items()}


def _contact(seg: Segments) -> Contact | None:
    if "CTD" not in seg.order:
        return None
    name = seg.get("CTD", 2, 1)
    given = seg.get("CTD", 2, 2)
    phone = seg.get("CTD", 6, 1)
    full = " ".join(p for p in (given, name) if p)
    return Contact(name=full, phone=phone or None) if full else None


def parse_referral(
    raw: bytes, *, secret: str, default_charset: str = "utf-8", timezone: str = "Europe/Copenhagen"
) -> ReferralEvent:
    """Validate and normalise REF^I12/I13/I14 or RRI^I12; :class:`Hl7Error` if unusable."""
    seg, header = parse_segments(raw, default_charset)
    check_structure(seg, ("MSH", "RF1", "PRD", "PID"))
    key = (seg.get("MSH", 9, 1), seg.get("MSH", 9, 2))
    kind = REFERRAL_TRIGGERS.get(key)
    if kind is None:
        raise _err(
            201,
            "MSH^1^9",
            f"'{key[0]}^{key[1]}' is not supported; supported: REF^I12, REF^I13, REF^I14, RRI^I12",
        )
    control_id = seg.get("MSH", 10)
    if not control_id:
        raise _err(101, "MSH^1^10", "MSH-10 message control id is empty")
    referral_id = seg.get("RF1", 6)
    if not referral_id:
        raise _err(101, "RF1^1^6", "RF1-6 originating referral identifier is empty")

    tz = ZoneInfo(timezone)
    when = seg.get("RF1", 7) or seg.get("MSH", 7)
    if not when:
        raise _err(101, "RF1^1^7", "neither RF1-7 nor MSH-7 gives the time")
    event_time = to_iso(when, tz, "RF1^1^7")
    cpr = patient_cpr(seg)
    municipality_code, region_code = residence(seg) if kind == "submitted" else ("", None)

    parties: dict[str, list[Party]] = {}
    for index in range(seg.order.count("PRD")):
        role, party = _party(seg, index)  # type: ignore[misc]
        parties.setdefault(role, []).append(party)
    referrer = next(iter(parties.get("referrer", [])), None)
    receiver = next(iter(parties.get("receiver", [])), None)
    if kind == "submitted" and (referrer is None or receiver is None):
        raise _err(
            101, "PRD", "a referral needs PRD with role RP (referrer) and RT (receiving unit)"
        )

    decision = contact = None
    notes = _notes(seg)
    if kind == "decision" and seg.get("RF1", 1).upper() == CONTACT_CHANGED:
        kind, contact = "contact", _contact(seg)
        if contact is None or not contact.phone:
            raise _err(
                101,
                "CTD^1^2",
                "a contact person change (RF1-1 = C) needs the new "
                "contact's name (CTD-2) and phone (CTD-6)",
            )
    elif kind == "decision":
        status = DECISIONS.get(seg.get("RF1", 1).upper())
        if status is None:
            raise _err(
                103,
                "RF1^1^1",
                f"RF1-1 referral status '{seg.get('RF1', 1)}' is not A, R, P, E or C",
            )
        reason_code = seg.get("RF1", 10, 1) or None
        if status == "rejected" and not reason_code:
            raise _err(101, "RF1^1^10", "a rejection (RF1-1 = R) needs a reason in RF1-10")
        if reason_code and reason_code not in REASON_CODES:
            raise _err(
                103, "RF1^1^10", f"reason '{reason_code}' is not one of " + ", ".join(REASON_CODES)
            )
        decision = Decision(
            status=status,  # type: ignore[arg-type]
            reason_code=reason_code,
            reason_text=seg.get("RF1", 10, 2) or None,
            note=notes.get("NOTE"),
            alternative=notes.get("ALT"),
            responsible=notes.get("RESP"),
            contact=_contact(seg),
            forwarded_to=receiver if status == "forwarded" else None,
        )

    family, given = seg.get("PID", 5, 1), seg.get("PID", 5, 2)
    if kind == "submitted" and not family:  # every letter and MedCom Patient names the child
        raise _err(101, "PID^1^5", "the child's family name (PID-5.1) is required")
    return ReferralEvent(
        event_id=message_event_id(raw, header),
        source="hl7v2",
        source_message_id=control_id,
        kind=kind,  # type: ignore[arg-type]
        referral_id=referral_id,
        event_time=event_time,
        patient_key=patient_key(cpr, secret),
        child=PatientInfo(
            cpr=cpr,
            family=family or None,
            given=tuple(g for g in [given] if g),
            municipality_code=municipality_code,
            region_code=region_code,
        ),
        referrer=referrer,
        receiver=receiver,
        guardians=_guardians(seg),
        municipal_units=tuple(parties.get("ppr", []) + parties.get("family-department", [])),
        decision=decision,
        reason_for_referral=notes.get("NOTE") if kind == "submitted" else None,
        contact=contact,
    )


__all__ = ["Hl7Error", "parse_hl7v2", "parse_referral"]
