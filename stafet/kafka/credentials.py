"""Local secrets for a secure (SASL_SSL) broker: SCRAM passwords and the TLS material.

Generated once, on first use, into files with mode 0600 under the broker's home (``.stafet/``),
so nothing secret is ever in the repository, a setting's default, a log line or a repr. A real
deployment sets ``STAFET_KAFKA_PASSWORD`` / ``STAFET_KAFKA_CA_FILE`` instead and never reaches
the generators.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from stafet.errors import StafetError

_PRINCIPAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file only the owner can read (0600, also when it existed)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def stored_password(secrets_dir: Path, principal: str, *, create: bool = False) -> SecretStr:
    """The principal's password from ``<secrets_dir>/<principal>.password``.

    Generated (hex only, so it needs no escaping in a JAAS line) only with ``create`` — by the
    tooling that makes the principal (storage format for the admin, ``provision`` for the rest).
    A process that merely connects gets a clear error for a principal nobody provisioned,
    rather than a new password the broker does not know.
    """
    if not _PRINCIPAL.match(principal):
        raise StafetError(f"not a valid principal name: {principal!r}")
    path = secrets_dir / f"{principal}.password"
    if not path.exists():
        if not create:
            raise StafetError(
                f"no password for Kafka principal {principal!r}: {path} does not exist — set "
                "STAFET_KAFKA_PASSWORD (or its file in STAFET_SECRETS_DIR), or provision the "
                "principal first (`stafet kafka provision`, or `stafet up`)"
            )
        write_private(path, secrets.token_hex(24).encode())
    return SecretStr(path.read_text().strip())


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of the local CA and the broker's key + certificate chain."""

    ca: Path
    keystore: Path


def ensure_tls(tls_dir: Path, *, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> TlsFiles:
    """A local CA and a broker certificate for ``hosts``, created on first call and then kept
    (clients keep trusting the same CA across broker restarts)."""
    files = TlsFiles(ca=tls_dir / "ca.pem", keystore=tls_dir / "broker.pem")
    if files.ca.exists() and files.keystore.exists():
        return files
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stafet local Kafka CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # the CA key is not kept: a new broker certificate means a new CA, which is fine locally
    write_private(files.keystore, key_pem + cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    files.ca.write_bytes(ca_cert.public_bytes(pem))
    return files
