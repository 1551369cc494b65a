"""MedCom addressing, shared by every Bundle stafet builds: SOR + EAN Organizations, endpoints,
and the checks a MedCom receiver applies to them.

MedComMessagingOrganization (messaging 2.1.0 / 4.0.2) requires, on the MessageHeader's sender and
receiver, an ``identifier:SOR-ID`` (``urn:oid:1.2.208.176.1.1``, DK-core: at least 11 digits) and
an ``identifier:EAN-ID`` (a GS1 GLN, 13 digits with a valid check digit); MedCom's network routes
on the receiver's EAN. DK-core's ``dk-core-organization-mandatory-identifier`` asks every
Organization for a SOR (or KOMBIT / CVR) id. The destination endpoint is the receiver's SOR
endpoint, as in MedCom's examples (the source endpoint is the sending system's, which a forward
may change, so it is not checked against the sender).
"""

from __future__ import annotations

from typing import Any, Final

from stafet.directory import Addressee, gln_problem
from stafet.systems import SOR_SYSTEM

GLN_SYSTEM: Final = "https://www.gs1.org/gln"
#: EAN/GLN systems seen in MedCom material (DOMAIN.md: accept all on input)
GLN_SYSTEMS: Final = frozenset({GLN_SYSTEM, "http://www.gs1.org/gln", "urn:oid:1.3.88"})
CVR_SYSTEM: Final = "http://cvr.dk"
SOR_ENDPOINT: Final = "https://sor2.sum.dsdn.dk/#id={}"
MESSAGING_ORGANIZATION: Final = (
    "http://medcomfhir.dk/ig/messaging/StructureDefinition/medcom-messaging-organization"
)


def endpoint(addressee: Addressee) -> str:
    """The MedCom endpoint of a party: its SOR endpoint."""
    return SOR_ENDPOINT.format(addressee.sor)


def organization(addressee: Addressee, rid: str) -> dict[str, Any]:
    """A MedComMessagingOrganization (EAN before SOR, as in MedCom's examples)."""
    routable = addressee.routable()
    return {
        "resourceType": "Organization",
        "id": rid,
        "meta": {"profile": [MESSAGING_ORGANIZATION]},
        "identifier": [
            {"system": GLN_SYSTEM, "value": routable.ean},
            {"system": SOR_SYSTEM, "value": routable.sor},
        ],
        "name": routable.name,
    }


def organization_problems(bundle: dict[str, Any]) -> list[str]:
    """What a MedCom receiver would refuse in the Organizations and routing of ``bundle``."""
    problems: list[str] = []
    resources = [e.get("resource") or {} for e in bundle.get("entry") or []]
    by_ref = {f"{r.get('resourceType')}/{r.get('id')}": r for r in resources}
    header = resources[0] if resources else {}
    destinations = header.get("destination") or [{}]
    ends = {
        "MessageHeader.sender": (
            header.get("sender"),
            (header.get("source") or {}).get("endpoint"),
        ),
        "MessageHeader.destination.receiver": (
            destinations[0].get("receiver"),
            destinations[0].get("endpoint"),
        ),
    }
    messaging: set[str] = set()
    for what, (reference, end) in ends.items():
        ref = (reference or {}).get("reference", "")
        org = by_ref.get(ref)
        if org is None or org.get("resourceType") != "Organization":
            problems.append(f"{what} does not reference an Organization in the Bundle")
            continue
        messaging.add(ref)
        sors = _values(org, {SOR_SYSTEM})
        if what.endswith("receiver") and len(sors) == 1 and end != SOR_ENDPOINT.format(sors[0]):
            problems.append(f"{what}: endpoint {end} is not the SOR endpoint of {sors[0]}")
    for org in (r for r in resources if r.get("resourceType") == "Organization"):
        ref = f"Organization/{org.get('id')}"
        claims = MESSAGING_ORGANIZATION in ((org.get("meta") or {}).get("profile") or [])
        sors, eans = _values(org, {SOR_SYSTEM}), _values(org, GLN_SYSTEMS)
        if not (sors or _values(org, {CVR_SYSTEM})):
            problems.append(f"{ref}: dk-core-organization-mandatory-identifier: no SOR or CVR id")
        for sor in sors:
            if not (sor.isdigit() and len(sor) >= 11):
                problems.append(f"{ref}: SOR-ID {sor!r} is not 11 or more digits (min-digits-sor)")
        if ref in messaging or claims:
            role = "sender/receiver" if ref in messaging else "MedComMessagingOrganization"
            if len(sors) != 1:
                problems.append(
                    f"{ref} ({role}): needs exactly one identifier:SOR-ID, has {len(sors)}"
                )
            if len(eans) != 1:
                problems.append(
                    f"{ref} ({role}): needs exactly one identifier:EAN-ID (GLN), has {len(eans)}"
                )
            problems += [f"{ref}: EAN-ID {p}" for e in eans if (p := gln_problem(e))]
    return problems


def _values(org: dict[str, Any], systems: frozenset[str] | set[str]) -> list[str]:
    return [
        str(i.get("value") or "") for i in org.get("identifier") or [] if i.get("system") in systems
    ]
