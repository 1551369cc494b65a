"""Start-up refusals (stafet/safety.py): each unsafe configuration, with the message it gets, and
the real `stafet` processes refusing before they connect to anything."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from stafet.config import Settings
from stafet.safety import UnsafeConfiguration, bootstrap_hosts, is_loopback, problems, refuse_unsafe

REAL_SECRET = "5c1f0e7a9d2b44e8a61f3c70b9d8e2a4"
REMOTE = "kafka-1.region-h.example:9093,kafka-2.region-h.example:9093"


def _settings(**kw: object) -> Settings:
    return Settings(_env_file=None, **kw)


def test_loopback_names_and_addresses() -> None:
    assert all(
        map(
            is_loopback,
            [
                "127.0.0.1",
                "127.8.9.10",
                "::1",
                "[::1]",
                "localhost",
                "LOCALHOST",
                "kafka.localhost",
            ],
        )
    )
    assert not any(
        map(is_loopback, ["0.0.0.0", "10.0.0.5", "::", "kafka-1", "localhost.dk", "192.168.1.1"])
    )
    assert bootstrap_hosts("a:9092, [::1]:9093,SASL_SSL://b.example:9094") == [
        "a",
        "::1",
        "b.example",
    ]


@pytest.mark.parametrize("process", ["worker", "mllp", "fhir", "deliver", "console", "up"])
def test_the_local_stack_on_loopback_starts_with_every_default(process: str) -> None:
    assert problems(_settings(), process) == []  # plaintext, the development secret, no TLS


def test_plaintext_kafka_off_loopback_is_refused_saying_what_to_set() -> None:
    settings = _settings(bootstrap_servers=REMOTE, patient_key_secret=REAL_SECRET)
    with pytest.raises(UnsafeConfiguration) as refused:
        refuse_unsafe(settings, "worker")
    message = str(refused.value)
    print(f"\n{message}")
    assert message.startswith("stafet worker refuses to start:")
    assert "kafka-1.region-h.example, kafka-2.region-h.example are not on loopback" in message
    assert "STAFET_KAFKA_SECURITY=sasl_ssl" in message
    assert "STAFET_ALLOW_PLAINTEXT_KAFKA=true" in message
    assert REAL_SECRET not in message
    assert problems(settings.model_copy(update={"kafka_security": "sasl_ssl"}), "worker") == []
    assert problems(settings.model_copy(update={"allow_plaintext_kafka": True}), "worker") == []


def test_the_development_secret_next_to_a_network_is_refused() -> None:
    for settings, process, where in [
        (
            _settings(bootstrap_servers=REMOTE, kafka_security="sasl_ssl"),
            "worker",
            "Kafka on kafka-1.region-h.example",
        ),
        (_settings(mllp_host="0.0.0.0"), "mllp", "STAFET_MLLP_HOST=0.0.0.0"),
        (_settings(health_host="10.1.2.3"), "worker", "STAFET_HEALTH_HOST=10.1.2.3"),
    ]:
        (problem,) = problems(settings, process)
        print(f"\n{problem}")
        assert problem.startswith("the built-in development patient-key secret is in use")
        assert where in problem and "STAFET_PATIENT_KEY_SECRET" in problem
        assert "stafet-local-development-only" not in problem
    # the MLLP listener's address does not matter to the worker, which does not listen there;
    # delivery makes no patient keys and holds no patient-key secret
    assert problems(_settings(mllp_host="0.0.0.0"), "worker") == []
    assert (
        problems(
            _settings(bootstrap_servers=REMOTE, kafka_security="sasl_ssl", health_host="0.0.0.0"),
            "deliver",
        )
        == []
    )


def test_a_fhir_listener_off_loopback_needs_mutual_tls(tmp_path: Path) -> None:
    settings = _settings(fhir_host="0.0.0.0", patient_key_secret=REAL_SECRET)
    (problem,) = problems(settings, "fhir")
    print(f"\n{problem}")
    assert "without client certificates" in problem and "STAFET_FHIR_TLS_CLIENT_CA" in problem
    assert problems(settings, "up") == [problem]  # `stafet up` runs a FHIR listener too
    assert problems(settings, "mllp") == []
    with_mtls = settings.model_copy(
        update={
            "fhir_tls_cert": tmp_path / "c.pem",
            "fhir_tls_key": tmp_path / "k.pem",
            "fhir_tls_client_ca": tmp_path / "ca.pem",
        }
    )
    assert problems(with_mtls, "fhir") == []


def test_a_console_off_loopback_needs_tls_and_a_fixed_session_secret(tmp_path: Path) -> None:
    settings = _settings(console_host="0.0.0.0", patient_key_secret=REAL_SECRET)
    tls, session = problems(settings, "console")
    print(f"\n{tls}\n{session}")
    assert "in clear on STAFET_CONSOLE_HOST=0.0.0.0" in tls
    assert "STAFET_CONSOLE_TLS_CERT and STAFET_CONSOLE_TLS_KEY" in tls
    assert "STAFET_CONSOLE_SESSION_SECRET" in session and "every console replica" in session
    assert "log everyone out at each restart" in session
    assert problems(settings, "up") == [tls, session]  # `stafet up` runs a console too
    assert problems(settings, "worker") == []  # the worker does not listen there
    served = settings.model_copy(
        update={
            "console_tls_cert": tmp_path / "tls.crt",
            "console_tls_key": tmp_path / "tls.key",
            "console_session_secret": SecretStr("a-fixed-key"),
        }
    )
    assert problems(served, "console") == []
    blank = served.model_copy(update={"console_session_secret": SecretStr("  ")})
    assert problems(blank, "console") == [session]
    assert "a-fixed-key" not in "".join(
        problems(served.model_copy(update={"console_tls_cert": None}), "console")
    )
    # the console has no health port: STAFET_HEALTH_HOST is not its business; on loopback
    # it may run plain HTTP with a random session key, as before
    assert (
        problems(_settings(health_host="0.0.0.0", patient_key_secret=REAL_SECRET), "console") == []
    )
    (secret,) = problems(
        _settings(
            console_host="10.0.0.5", console_tls_cert=tmp_path / "c", console_session_secret="k"
        ),
        "console",
    )
    assert secret.startswith("the built-in development patient-key secret")  # it searches by CPR
    assert "STAFET_CONSOLE_HOST=10.0.0.5" in secret


def test_a_console_off_loopback_takes_oidc_logins_only_over_https(tmp_path: Path) -> None:
    served = _settings(
        console_host="0.0.0.0",
        patient_key_secret=REAL_SECRET,
        console_tls_cert=tmp_path / "tls.crt",
        console_session_secret=SecretStr("a-fixed-key"),
        console_oidc_client_id="stafet-console",
        console_oidc_client_secret=SecretStr("the-client-secret"),
    )
    https = {
        "console_oidc_issuer": "https://login.region-h.example/realms/stafet",
        "console_oidc_redirect_url": "https://console.region-h.example/oidc/callback",
    }
    assert problems(served.model_copy(update=https), "console") == []
    plain = served.model_copy(update={**https, "console_oidc_issuer": "http://keycloak:8080/x"})
    (issuer,) = problems(plain, "console")
    assert "STAFET_CONSOLE_OIDC_ISSUER=http://keycloak:8080/x" in issuer and "https://" in issuer
    assert "the-client-secret" not in issuer
    no_redirect = served.model_copy(update={**https, "console_oidc_redirect_url": ""})
    (redirect,) = problems(no_redirect, "console")
    assert "STAFET_CONSOLE_OIDC_REDIRECT_URL" in redirect and "/oidc/callback" in redirect
    assert problems(plain, "up") == [issuer]  # `stafet up` runs a console too
    # on loopback a provider in a container next door over http is fine
    local = _settings(console_oidc_issuer="http://127.0.0.1:8080/realms/stafet")
    assert problems(local, "console") == []


def test_every_problem_is_listed_at_once() -> None:
    settings = _settings(bootstrap_servers=REMOTE, fhir_host="0.0.0.0")
    assert len(problems(settings, "fhir")) == 3


@pytest.mark.parametrize("command", ["worker", "mllp", "fhir", "deliver", "console"])
def test_the_real_process_refuses_before_connecting(command: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAFET_")}
    env.update(
        STAFET_BOOTSTRAP_SERVERS="kafka-1.region-h.example:9092",
        STAFET_KAFKA_HOME=str(tmp_path),
        STAFET_HEALTH_PORT="-1",
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "stafet.cli", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert f"stafet {command} refuses to start" in result.stderr
    assert "STAFET_KAFKA_SECURITY=sasl_ssl" in result.stderr
    assert ("STAFET_PATIENT_KEY_SECRET" in result.stderr) == (command != "deliver")
    assert "Traceback" not in result.stderr
    print(f"\nstafet {command}: exit {result.returncode} after {took:.1f}s")
