"""Opaque addressees: a person's CPR never rides in a Kafka header or an outbox envelope.

A message to an organisation (a GP's ydernummer, a unit's SOR code, a municipality) names it in
``stafet.recipient`` as ``<identifier system>|<identifier>`` — subscribers route on it, and it is
not personal data. A message to a *person* (a guardian's letter) is addressed by a CPR number; the
header then carries a sealed addressee instead, ``urn:stafet:addressee|<token>``: the system and
CPR encrypted and authenticated (Fernet: AES-128-CBC + HMAC-SHA256) under the addressee key. The
header, the ``dlq.delivery`` copy of it, the audit line and the letter outbox's envelope all hold
the token; only the letter service, which holds the key, opens it (:func:`open_addressee`, or
``stafet letters addressee ENVELOPE``) to address Digital Post or print.

The key is ``STAFET_ADDRESSEE_KEY`` (a Fernet key: ``stafet letters new-key``), or derived from
the patient-key secret when unset, so the local stack needs nothing; a deployment gives the
letter service the addressee key and not the patient-key secret.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from stafet.config import Settings
from stafet.errors import StafetError
from stafet.systems import CPR_SYSTEM

SEALED_SYSTEM = "urn:stafet:addressee"
#: identifier systems of persons (a CPR number), which are sealed
PERSON_SYSTEMS = frozenset({CPR_SYSTEM})


class AddresseeError(StafetError):
    """A sealed addressee that does not open under this key (or is not one)."""


def addressee_key(settings: Settings) -> Fernet:
    """The Fernet key: the configured one, else derived (HKDF-SHA256) from the patient-key
    secret."""
    if settings.addressee_key is not None:
        try:
            return Fernet(settings.addressee_key.get_secret_value().encode())
        except ValueError as exc:
            raise StafetError(
                "STAFET_ADDRESSEE_KEY is not a Fernet key (32 url-safe base64 "
                "bytes): make one with `stafet letters new-key`"
            ) from exc
    derived = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"stafet addressee key v1"
    ).derive(settings.patient_key_secret.get_secret_value().encode())
    return Fernet(base64.urlsafe_b64encode(derived))


def recipient_header(system: str, identifier: str, key: Fernet) -> str:
    """The ``stafet.recipient`` value for an addressee: organisations in clear, persons sealed."""
    if system not in PERSON_SYSTEMS:
        return f"{system}|{identifier}"
    token = key.encrypt(f"{system}|{identifier}".encode()).decode()
    return f"{SEALED_SYSTEM}|{token}"


def is_sealed(recipient: str) -> bool:
    return recipient.startswith(f"{SEALED_SYSTEM}|")


def open_addressee(recipient: str, key: Fernet) -> tuple[str, str]:
    """(system, identifier) of a sealed ``stafet.recipient`` value — for the letter service."""
    if not is_sealed(recipient):
        raise AddresseeError(f"not a sealed addressee (it does not start with {SEALED_SYSTEM}|)")
    try:
        plain = key.decrypt(recipient.split("|", 1)[1].encode()).decode()
    except InvalidToken as exc:
        raise AddresseeError(
            "the sealed addressee does not open with this key (another "
            "STAFET_ADDRESSEE_KEY, or altered)"
        ) from exc
    system, _, identifier = plain.partition("|")
    return system, identifier
