"""The ACL plan, the secure broker's configuration and the clients' security settings (no broker:
the integration module tests/integration/test_kafka_acl.py proves them against a real one)."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from stafet.config import Settings
from stafet.kafka.client import as_principal, client_config
from stafet.kafka.credentials import ensure_tls, stored_password
from stafet.kafka.local import LocalKafka
from stafet.kafka.security import (
    DELIVERY,
    FHIR,
    MLLP,
    WORKER,
    Grant,
    acl_plan,
    municipality_grants,
    principals,
)
from stafet.schemas.municipalities import municipalities
from stafet.stack import service_env

CODES = list(municipalities())


def _by(plan: list[Grant], principal: str) -> set[tuple[str, str, str, str]]:
    return {(g.resource, g.name, g.pattern, g.operation) for g in plan if g.principal == principal}


def test_a_municipality_may_read_only_its_own_topic_and_groups() -> None:
    plan = acl_plan(CODES, "stafet")
    assert _by(plan, "municipality-0751") == {
        ("TOPIC", "out.municipality.0751", "LITERAL", "READ"),
        ("TOPIC", "out.municipality.0751", "LITERAL", "DESCRIBE"),
        ("GROUP", "municipality-0751", "PREFIXED", "READ"),
    }


def test_no_municipality_prefix_covers_another_municipality() -> None:
    groups = [f"municipality-{c}" for c in CODES]
    assert len(CODES) == 98
    assert not [(a, b) for a in groups for b in groups if a != b and b.startswith(a)]
    for code in CODES:
        others = {g.name for g in municipality_grants(code)} - {
            f"out.municipality.{code}",
            f"municipality-{code}",
        }
        assert not others


def test_the_plan_is_pure_and_sorted() -> None:
    assert acl_plan(CODES, "x") == acl_plan(list(reversed(CODES)), "x")
    assert acl_plan(CODES, "x") == sorted(acl_plan(CODES, "x"))
    assert {g.principal for g in acl_plan(CODES, "x")} == set(principals(CODES))


def test_service_principals_have_only_what_they_use() -> None:
    plan = acl_plan(CODES, "stafet-7")
    mllp = _by(plan, MLLP)
    assert {op for (_, _, _, op) in mllp} == {"WRITE", "DESCRIBE"}
    assert {name for (_, name, _, _) in mllp} == {"ingest.hl7v2", "dlq.mllp", "index.referral"}
    worker = _by(plan, WORKER)
    assert ("GROUP", "stafet-7", "LITERAL", "READ") in worker
    assert ("TOPIC", "changelog__stafet-7--", "PREFIXED", "CREATE") in worker
    assert ("TRANSACTIONAL_ID", "stafet-7-", "PREFIXED", "WRITE") in worker
    assert not [g for g in worker if g[1].startswith("out.") and g[3] == "READ"]
    assert not [g for g in worker if g[0] == "CLUSTER"]  # idempotence needs no cluster ACL
    fhir = _by(plan, FHIR)
    assert not [g for g in fhir if g[0] == "GROUP" and g[3] != "DESCRIBE"]  # never joins
    assert not [g for g in fhir if g[1] == "ingest.hl7v2"]  # it reads index.referral instead
    delivery = _by(plan, DELIVERY)
    assert ("TOPIC", "out.municipality.", "PREFIXED", "READ") in delivery
    assert not [g for g in delivery if g[1].startswith("ingest.")]
    assert (
        Grant(MLLP, "TOPIC", "dlq.mllp", "LITERAL", "WRITE").binding().principal
        == "User:stafet-mllp"
    )


def _secure(tmp_path: Path, **kw: object) -> Settings:
    return Settings(
        kafka_security="sasl_ssl",
        kafka_home=tmp_path / "kafka",
        kafka_port=19092,
        kafka_controller_port=19093,
        **kw,
    )


def test_plaintext_broker_config_has_no_security_block(tmp_path: Path) -> None:
    settings = Settings(
        kafka_security="plaintext", kafka_home=tmp_path, kafka_port=9092, kafka_controller_port=9093
    )
    text = LocalKafka.from_settings(settings).render_config()
    assert "listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093" in text
    assert "authorizer" not in text and "${" not in text


def test_secure_broker_config_authenticates_every_listener(tmp_path: Path) -> None:
    settings = _secure(tmp_path)
    kafka = LocalKafka.from_settings(settings)
    kafka.write_config()
    text = kafka.config_file.read_text()
    lines = set(text.splitlines())
    assert "listeners=SASL_SSL://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093" in lines
    assert "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SASL_SSL" in lines
    assert "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer" in lines
    assert "allow.everyone.if.no.acl.found=false" in lines
    assert "super.users=User:admin" in lines
    assert "sasl.enabled.mechanisms=SCRAM-SHA-512" in lines
    assert "PLAINTEXT:PLAINTEXT" not in text and "${" not in text
    assert stored_password(settings.secrets_dir, "admin").get_secret_value() in text
    assert kafka.config_file.stat().st_mode & 0o777 == 0o600


def test_client_config_plaintext_and_secure(tmp_path: Path) -> None:
    assert client_config(Settings(kafka_security="plaintext", kafka_port=1234), acks="all") == {
        "bootstrap.servers": "127.0.0.1:1234",
        "acks": "all",
    }
    settings = _secure(tmp_path, kafka_username="municipality-0751", kafka_password="pw-0751")
    assert "ssl.ca.location" not in client_config(settings)  # no local CA: system trust store
    ensure_tls(settings.tls_dir)
    config = client_config(settings)
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanisms"] == "SCRAM-SHA-512"
    assert (config["sasl.username"], config["sasl.password"]) == ("municipality-0751", "pw-0751")
    assert config["ssl.ca.location"] == str(tmp_path / "kafka" / "tls" / "ca.pem")
    assert "pw-0751" not in repr(settings)
    stored_password(settings.secrets_dir, WORKER, create=True)  # as `stafet kafka provision` does
    other = client_config(as_principal(settings, WORKER))
    assert other["sasl.username"] == WORKER
    assert (
        other["sasl.password"] == stored_password(settings.secrets_dir, WORKER).get_secret_value()
    )


def test_stream_engine_gets_scram_over_tls(tmp_path: Path) -> None:
    from quixstreams.kafka.configuration import ConnectionConfig

    settings = _secure(tmp_path, kafka_username=WORKER, kafka_password="pw-worker-1")
    ensure_tls(settings.tls_dir)
    connection = ConnectionConfig.from_librdkafka_dict(client_config(settings), ignore_extras=True)
    config = connection.as_librdkafka_dict()
    assert config["security.protocol"].upper() == "SASL_SSL"
    assert config["sasl.mechanism"].upper() == "SCRAM-SHA-512"
    assert (config["sasl.username"], config["sasl.password"]) == (WORKER, "pw-worker-1")
    assert config["ssl.ca.location"] == str(settings.ca_file)
    assert "pw-worker-1" not in repr(connection)


def test_tls_material_is_made_once_and_names_loopback(tmp_path: Path) -> None:
    files = ensure_tls(tmp_path / "tls")
    ca_before = files.ca.read_bytes()
    assert ensure_tls(tmp_path / "tls").ca.read_bytes() == ca_before
    assert files.keystore.stat().st_mode & 0o777 == 0o600
    chain = x509.load_pem_x509_certificates(files.keystore.read_bytes())
    ca = x509.load_pem_x509_certificate(ca_before)
    chain[0].verify_directly_issued_by(ca)
    sans = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_passwords_are_generated_once_with_mode_0600(tmp_path: Path) -> None:
    first = stored_password(tmp_path, "stafet-mllp", create=True)
    assert stored_password(tmp_path, "stafet-mllp") == first
    assert stored_password(tmp_path, "stafet-mllp", create=True) == first
    assert (tmp_path / "stafet-mllp.password").stat().st_mode & 0o777 == 0o600
    assert first.get_secret_value() not in repr(first)


def test_each_service_gets_its_own_principal_never_the_admin_password(tmp_path: Path) -> None:
    settings = _secure(tmp_path, kafka_admin_password="admin-secret")
    password = stored_password(settings.secrets_dir, MLLP, create=True).get_secret_value()
    env = service_env(settings, MLLP)
    assert env["STAFET_KAFKA_USERNAME"] == MLLP
    assert "STAFET_KAFKA_PASSWORD" not in env and password not in env.values()  # a file will do
    assert "admin-secret" not in env.values() and "STAFET_KAFKA_ADMIN_PASSWORD" not in env
    secret_files = Path(env["STAFET_SECRETS_DIR"])
    assert not (secret_files / "STAFET_KAFKA_ADMIN_PASSWORD").exists()
    assert "admin-secret" not in "".join(f.read_text() for f in secret_files.iterdir())
    child = Settings(
        _env_file=None,
        **{
            k[7:].lower(): v
            for k, v in env.items()
            if k.startswith("STAFET_") and k != "STAFET_SECRETS_DIR"
        },
    )
    assert client_config(child)["sasl.password"] == password  # read from <principal>.password
    assert "STAFET_KAFKA_PASSWORD" not in service_env(Settings(kafka_security="plaintext"), MLLP)
