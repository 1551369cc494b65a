"""Sealed addressees (stafet/addressee.py): a guardian's CPR never in clear in a header or an
outbox envelope; organisations stay in clear for routing; only the key opens a seal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet

from stafet.addressee import (
    AddresseeError,
    addressee_key,
    is_sealed,
    open_addressee,
    recipient_header,
)
from stafet.config import Settings
from stafet.errors import StafetError

CPR_SYSTEM = "urn:oid:1.2.208.176.1.2"
GUARDIAN = "1502779995"  # MedCom test person


def test_a_person_is_sealed_and_opens_with_the_key() -> None:
    key = addressee_key(Settings(_env_file=None))
    header = recipient_header(CPR_SYSTEM, GUARDIAN, key)
    assert is_sealed(header) and GUARDIAN not in header and CPR_SYSTEM not in header
    assert open_addressee(header, key) == (CPR_SYSTEM, GUARDIAN)
    assert recipient_header(CPR_SYSTEM, GUARDIAN, key) != header  # no equal tokens to link


def test_organisations_stay_in_clear_for_routing() -> None:
    key = addressee_key(Settings(_env_file=None))
    assert (
        recipient_header("urn:oid:1.2.208.176.1.4", "123456", key)
        == "urn:oid:1.2.208.176.1.4|123456"
    )
    with pytest.raises(AddresseeError, match="not a sealed addressee"):
        open_addressee("urn:oid:1.2.208.176.1.4|123456", key)


def test_another_key_or_an_altered_token_does_not_open() -> None:
    sealed = recipient_header(CPR_SYSTEM, GUARDIAN, addressee_key(Settings(_env_file=None)))
    other = addressee_key(Settings(_env_file=None, patient_key_secret="another-secret-entirely"))
    with pytest.raises(AddresseeError, match="does not open"):
        open_addressee(sealed, other)
    own = addressee_key(Settings(_env_file=None))
    altered = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    with pytest.raises(AddresseeError):
        open_addressee(altered, own)


def test_a_configured_key_is_used_and_a_bad_one_is_refused() -> None:
    configured = Fernet.generate_key().decode()
    key = addressee_key(Settings(_env_file=None, addressee_key=configured))
    sealed = recipient_header(CPR_SYSTEM, GUARDIAN, key)
    assert (
        Fernet(configured.encode()).decrypt(sealed.split("|", 1)[1].encode())
        == f"{CPR_SYSTEM}|{GUARDIAN}".encode()
    )
    with pytest.raises(StafetError, match="not a Fernet key"):
        addressee_key(Settings(_env_file=None, addressee_key="too-short"))


def test_the_letter_service_opens_an_envelope_from_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stafet.cli import main
    from stafet.config import get_settings

    configured = Fernet.generate_key().decode()
    monkeypatch.setenv("STAFET_ADDRESSEE_KEY", configured)
    get_settings.cache_clear()
    try:
        sealed = recipient_header(CPR_SYSTEM, GUARDIAN, Fernet(configured.encode()))
        envelope = tmp_path / "m.json"
        envelope.write_text(json.dumps({"message_id": "m", "recipient": sealed}))
        result = CliRunner().invoke(main, ["letters", "addressee", str(envelope)])
        assert result.exit_code == 0, result.output
        assert result.output.strip() == f"{CPR_SYSTEM}|{GUARDIAN}"
        monkeypatch.setenv("STAFET_ADDRESSEE_KEY", Fernet.generate_key().decode())
        get_settings.cache_clear()
        wrong = CliRunner().invoke(main, ["letters", "addressee", str(envelope)])
        assert wrong.exit_code == 1 and "does not open" in wrong.output
        assert GUARDIAN not in wrong.output
        new_key = CliRunner().invoke(main, ["letters", "new-key"]).output.strip()
        Fernet(new_key.encode())  # a valid key
    finally:
        get_settings.cache_clear()
