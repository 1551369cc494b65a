"""Start-up refusals: the configurations that are fine on one laptop and unsafe next to a network.

Every long-running process (``stafet worker | mllp | fhir | deliver | console | up``) calls
:func:`refuse_unsafe` before it connects to anything. On loopback (the local stack, the tests,
``make demo``) nothing is refused. As soon as a peer is elsewhere — a bootstrap server that is not
127.0.0.1 / ::1 / localhost, or a listener bound to a non-loopback address — the process refuses
to start with:

- plaintext Kafka (anyone on the network reads every CPR and may write a rejection), unless
  ``STAFET_ALLOW_PLAINTEXT_KAFKA=true`` says the network is a closed pilot's;
- the built-in development patient-key secret in a process that makes patient keys (it is
  published, so every pseudonymous patient key could be reversed by trying the CPR space);
- a FHIR listener without mutual TLS (anyone who reaches it could post a rejection, and letters
  would go to parents and alerts to a municipality);
- an operator console without TLS (passwords and session cookies in clear) or without a fixed
  session secret (a random key per process logs everyone out at a restart and makes one
  replica's sessions invalid on the next), or with an OIDC provider that is not https (or no
  https redirect URL).

The message names each setting to change; none of them is ever a value of a secret.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Literal
from urllib.parse import urlsplit

from stafet.config import DEVELOPMENT_PATIENT_KEY_SECRET, Settings
from stafet.errors import StafetError

Process = Literal["worker", "mllp", "fhir", "deliver", "console", "up"]
#: the processes that make patient keys (``stafet deliver`` never does, and holds no secret;
#: the console does, for a search by CPR)
USES_PATIENT_KEY = frozenset({"worker", "mllp", "fhir", "console", "up"})


class UnsafeConfiguration(StafetError):
    """The settings would run a process unprotected on a network; the message says what to set."""


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and ``localhost`` (a name, a literal, or ``[::1]``)."""
    host = host.strip().strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bootstrap_hosts(bootstrap: str) -> list[str]:
    """The hosts of a ``host:port,host:port`` list (IPv6 in brackets)."""
    hosts = []
    for server in filter(None, (s.strip() for s in bootstrap.split(","))):
        server = server.split("://", 1)[-1]
        host = server[1 : server.index("]")] if server.startswith("[") else server.rsplit(":", 1)[0]
        hosts.append(host)
    return hosts


def _listener_hosts(settings: Settings, process: Process) -> dict[str, str]:
    """The addresses this process listens on, by the setting that chooses them (the console
    has no health port of its own: its /healthz and /readyz are on the console's port)."""
    hosts = {} if process == "console" else {"STAFET_HEALTH_HOST": settings.health_host}
    if process in ("mllp", "up"):
        hosts["STAFET_MLLP_HOST"] = settings.mllp_host
    if process in ("fhir", "up"):
        hosts["STAFET_FHIR_HOST"] = settings.fhir_host
    if process in ("console", "up"):
        hosts["STAFET_CONSOLE_HOST"] = settings.console_host
    return hosts


def problems(settings: Settings, process: Process) -> list[str]:
    """Every unsafe choice for ``process`` under ``settings`` (empty: it may start)."""
    remote_kafka = [h for h in bootstrap_hosts(settings.bootstrap) if not is_loopback(h)]
    exposed = {
        name: host
        for name, host in _listener_hosts(settings, process).items()
        if not is_loopback(host)
    }
    found: list[str] = []
    if (
        remote_kafka
        and settings.kafka_security == "plaintext"
        and not settings.allow_plaintext_kafka
    ):
        found.append(
            f"Kafka is plaintext (STAFET_KAFKA_SECURITY=plaintext) but the bootstrap servers "
            f"{', '.join(remote_kafka)} are not on loopback: set STAFET_KAFKA_SECURITY=sasl_ssl "
            "with STAFET_KAFKA_USERNAME and its password (STAFET_KAFKA_PASSWORD, or its file in "
            "STAFET_SECRETS_DIR), or STAFET_ALLOW_PLAINTEXT_KAFKA=true on a closed pilot network"
        )
    if (
        (remote_kafka or exposed)
        and process in USES_PATIENT_KEY
        and settings.patient_key_secret.get_secret_value() == DEVELOPMENT_PATIENT_KEY_SECRET
    ):
        where = _where(remote_kafka, exposed)
        found.append(
            f"the built-in development patient-key secret is in use with {where}: it is "
            "published, so patient keys could be reversed — set STAFET_PATIENT_KEY_SECRET "
            "(best as the file STAFET_PATIENT_KEY_SECRET in STAFET_SECRETS_DIR; e.g. "
            "`openssl rand -hex 32`), the same on every stafet process of a deployment"
        )
    if "STAFET_FHIR_HOST" in exposed and settings.fhir_tls_client_ca is None:
        found.append(
            f"the FHIR listener would accept decisions, communications and acknowledgements on "
            f"{exposed['STAFET_FHIR_HOST']} without client certificates: off loopback it needs "
            "mutual TLS — set STAFET_FHIR_TLS_CERT, STAFET_FHIR_TLS_KEY and "
            "STAFET_FHIR_TLS_CLIENT_CA (the CA that signs the senders' certificates)"
        )
    if "STAFET_CONSOLE_HOST" in exposed:
        found += _console_problems(settings, exposed["STAFET_CONSOLE_HOST"])
    return found


def _console_problems(settings: Settings, host: str) -> list[str]:
    """Off loopback the console needs HTTPS and a session key shared by its replicas."""
    found = []
    if settings.console_tls_cert is None:
        found.append(
            f"the operator console would take passwords and send session cookies in clear on "
            f"STAFET_CONSOLE_HOST={host}: off loopback it serves HTTPS only — set "
            "STAFET_CONSOLE_TLS_CERT and STAFET_CONSOLE_TLS_KEY (PEM files, e.g. a cert-manager "
            "Certificate's tls.crt and tls.key)"
        )
    secret = settings.console_session_secret
    if secret is None or not secret.get_secret_value().strip():
        found.append(
            f"the operator console on STAFET_CONSOLE_HOST={host} has no "
            "STAFET_CONSOLE_SESSION_SECRET: a random key per process would log everyone out at "
            "each restart, and a session from one replica would be refused by the next — set "
            "it (best as the file STAFET_CONSOLE_SESSION_SECRET in STAFET_SECRETS_DIR; e.g. "
            "`openssl rand -hex 32`), the same on every console replica"
        )
    issuer = settings.console_oidc_issuer
    if issuer and urlsplit(issuer).scheme != "https":
        found.append(
            f"the operator console on STAFET_CONSOLE_HOST={host} would take logins from the "
            f"OIDC provider STAFET_CONSOLE_OIDC_ISSUER={issuer} over plain HTTP (its keys and "
            "tokens could be changed on the way): set an https:// issuer"
        )
    redirect = settings.console_oidc_redirect_url
    if issuer and not redirect.startswith("https://"):
        found.append(
            f"the operator console on STAFET_CONSOLE_HOST={host} has no https "
            "STAFET_CONSOLE_OIDC_REDIRECT_URL: set the console's external URL + /oidc/callback, "
            "as registered at the provider"
        )
    return found


def _where(remote_kafka: Iterable[str], exposed: dict[str, str]) -> str:
    parts = []
    if remote_kafka:
        parts.append(f"Kafka on {', '.join(remote_kafka)}")
    parts += [f"{name}={host}" for name, host in exposed.items()]
    return " and ".join(parts)


def safe_settings(process: Process, settings: Settings | None = None) -> Settings:
    """The process's settings (by default the environment's), checked: for the CLI."""
    import click

    from stafet.config import get_settings

    settings = settings or get_settings()
    try:
        refuse_unsafe(settings, process)
    except UnsafeConfiguration as exc:
        raise click.ClickException(str(exc)) from exc
    return settings


def refuse_unsafe(settings: Settings, process: Process) -> None:
    """Raise :class:`UnsafeConfiguration` listing every problem, or return."""
    found = problems(settings, process)
    if found:
        raise UnsafeConfiguration(
            f"stafet {process} refuses to start:\n" + "\n".join(f"  - {p}" for p in found)
        )
