"""The identifier and code systems stafet reads and writes, each named once.

A FHIR ``identifier.system`` or ``coding.system`` is a contract with every receiver: a typo in
one copy would route a message nowhere. Inbound parsing, the directory and the MedCom builders
all import them from here.
"""

from __future__ import annotations

from typing import Final

#: CPR number (Det Centrale Personregister)
CPR_SYSTEM: Final = "urn:oid:1.2.208.176.1.2"
#: SOR (Sundhedsvæsenets Organisationsregister): hospital units, GPs, municipal units
SOR_SYSTEM: Final = "urn:oid:1.2.208.176.1.1"
#: ydernummer: a GP practice's provider number
YDER_SYSTEM: Final = "urn:oid:1.2.208.176.1.4"
#: the 98 municipalities' codes (DK Core)
MUNICIPALITY_SYSTEM: Final = "http://hl7.dk/fhir/core/CodeSystem/dk-core-municipality-codes"
#: a municipal unit without SOR in a FHIR referral: "<municipality code>/<ppr|family-department>"
UNIT_SYSTEM: Final = "https://stafet.dk/fhir/NamingSystem/municipal-unit"
#: MedCom's terminology base and its messaging event codes (MessageHeader.eventCoding)
MEDCOM_TERMINOLOGY: Final = "http://medcomfhir.dk/ig/terminology/CodeSystem/"
EVENT_SYSTEM: Final = MEDCOM_TERMINOLOGY + "medcom-messaging-eventCodes"

__all__ = [
    "CPR_SYSTEM",
    "EVENT_SYSTEM",
    "MEDCOM_TERMINOLOGY",
    "MUNICIPALITY_SYSTEM",
    "SOR_SYSTEM",
    "UNIT_SYSTEM",
    "YDER_SYSTEM",
]
