"""Access control against a real secure broker (SASL_SSL, SCRAM-SHA-512, StandardAuthorizer).

This module starts its OWN broker in sasl_ssl mode (free ports, its own home under a temporary
directory, the jars `make install` resolved), provisions it with `stafet kafka provision`, and
shows what each principal can and cannot do: a municipality reads only its own topic and joins
only its own groups, cannot write, and a client without valid credentials gets nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from stafet.config import Settings
from stafet.errors import StafetError
from stafet.kafka.client import as_admin, as_principal, client_config
from stafet.kafka.local import LocalKafka
from stafet.kafka.security import (
    CONSOLE,
    DLQ_OPERATOR,
    FHIR,
    MLLP,
    OPERATOR,
    WORKER,
    municipality_principal,
)
from stafet.kafka.topics import ensure_topics, municipality_topic
from stafet.stack import Service, service_env, settings_env, wait_for_port
from tests.integration.conftest import free_port

A, B = "0751", "0101"  # Aarhus, København


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A broker in sasl_ssl mode with every topic; provisioned by the tests (CLI) below."""
    root = tmp_path_factory.mktemp("stafet-secure")
    settings = Settings(
        kafka_security="sasl_ssl",
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        kafka_home=root / "kafka",
        worker_data_dir=root / "worker",
        mllp_port=free_port(),
        fhir_port=free_port(),
        app_id=f"stafet-acl-{uuid.uuid4().hex[:6]}",
        log_level="INFO",
    )
    kafka = LocalKafka.from_settings(settings)
    kafka.start()
    try:
        ensure_topics(as_admin(settings), settings.partitions)
        yield settings
    finally:
        kafka.stop()


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(as_admin(settings))}
    return subprocess.run(
        [sys.executable, "-m", "stafet.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def provisioned(secure: Settings) -> Settings:
    first = _cli(secure, "kafka", "provision")
    assert first.returncode == 0, first.stderr
    assert "ACLs: 0 created" not in first.stdout
    return secure


def _poll_until(consumer: Consumer, timeout_s: float = 20.0) -> KafkaError | bytes:
    """The first record's value or the first error the consumer reports."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            return msg.error()
        return msg.value() or b""
    raise AssertionError("neither a record nor an error")


def _consumer(settings: Settings, principal: str, group: str) -> Consumer:
    return Consumer(
        client_config(
            as_principal(settings, principal),
            **{
                "group.id": group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "log_level": 0,
            },
        )
    )


def _produce_as_admin(settings: Settings, topic: str, value: bytes) -> None:
    producer = Producer(client_config(as_admin(settings)))
    producer.produce(topic, value=value)
    assert producer.flush(20) == 0


def test_provision_twice_is_idempotent_and_prints_no_password(provisioned: Settings) -> None:
    again = _cli(provisioned, "kafka", "provision")
    assert again.returncode == 0, again.stderr
    assert "ACLs: 0 created" in again.stdout
    secrets = [p.read_text().strip() for p in provisioned.secrets_dir.glob("*.password")]
    assert (
        len(secrets) == 106
    )  # admin, five services (the console one), two operators, 98 municipalities
    assert all(
        oct(p.stat().st_mode & 0o777) == "0o600" for p in provisioned.secrets_dir.glob("*.password")
    )
    assert not any(s in again.stdout + again.stderr for s in secrets)


def test_municipality_reads_its_own_topic(provisioned: Settings) -> None:
    value = f"for-{A}-{uuid.uuid4()}".encode()
    _produce_as_admin(provisioned, municipality_topic(A), value)
    consumer = _consumer(provisioned, municipality_principal(A), f"municipality-{A}-inbox")
    consumer.subscribe([municipality_topic(A)])
    try:
        seen = []
        deadline = time.monotonic() + 30
        while value not in seen and time.monotonic() < deadline:
            got = _poll_until(consumer)
            assert not isinstance(got, KafkaError), got
            seen.append(got)
        assert value in seen
        consumer.commit(asynchronous=False)  # its own group: may commit
    finally:
        consumer.close()


def test_stafet_inbox_reads_as_the_municipality(provisioned: Settings) -> None:
    """The inbox reader (`stafet inbox <code>`) works with only a municipality's rights."""
    from stafet.kafka.reader import end_offsets, read_topic

    value = f"inbox-{uuid.uuid4()}".encode()
    _produce_as_admin(provisioned, municipality_topic(A), value)
    as_a = as_principal(provisioned, municipality_principal(A))
    assert value in [r.value for r in read_topic(as_a, municipality_topic(A), idle_s=1.0)]
    with pytest.raises(StafetError, match="no access"):
        end_offsets(as_a, [municipality_topic(B)], timeout_s=2.0)


def test_municipality_cannot_read_another_municipalitys_topic(provisioned: Settings) -> None:
    _produce_as_admin(provisioned, municipality_topic(B), b"for B only")
    consumer = _consumer(provisioned, municipality_principal(A), f"municipality-{A}-snoop")
    consumer.subscribe([municipality_topic(B)])
    try:
        got = _poll_until(consumer)
        assert isinstance(got, KafkaError)
        assert got.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    finally:
        consumer.close()
    # assign() without a group: B's topic has no metadata for A and no record ever comes
    consumer = _consumer(provisioned, municipality_principal(A), f"municipality-{A}-assign")
    try:
        error = (
            consumer.list_topics(municipality_topic(B), timeout=10)
            .topics[municipality_topic(B)]
            .error
        )
        assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
        consumer.assign([TopicPartition(municipality_topic(B), p, 0) for p in range(3)])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            assert msg is None or msg.error() is not None
    finally:
        consumer.close()


def test_municipality_cannot_join_another_municipalitys_group(provisioned: Settings) -> None:
    consumer = _consumer(provisioned, municipality_principal(A), f"municipality-{B}-inbox")
    consumer.subscribe([municipality_topic(A)])
    try:
        got = _poll_until(consumer)
        assert isinstance(got, KafkaError)
        assert got.code() == KafkaError.GROUP_AUTHORIZATION_FAILED
    finally:
        consumer.close()


def test_municipality_cannot_write_even_to_its_own_topic(provisioned: Settings) -> None:
    errors: list[KafkaError] = []
    producer = Producer(
        client_config(
            as_principal(provisioned, municipality_principal(A)),
            **{"message.timeout.ms": 15000, "log_level": 0},
        )
    )
    producer.produce(
        municipality_topic(A), value=b"forged", on_delivery=lambda err, _msg: errors.append(err)
    )
    producer.flush(20)
    assert errors and errors[0] is not None
    assert errors[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({}, id="plaintext"),
        pytest.param({"security.protocol": "SSL"}, id="tls-without-sasl"),
        pytest.param(
            {
                "security.protocol": "SASL_SSL",
                "sasl.mechanisms": "SCRAM-SHA-512",
                "sasl.username": "municipality-0751",
                "sasl.password": "not-the-password",
            },
            id="wrong-password",
        ),
        pytest.param(
            {
                "security.protocol": "SASL_SSL",
                "sasl.mechanisms": "SCRAM-SHA-512",
                "sasl.username": "nobody",
                "sasl.password": "nothing",
            },
            id="unknown-user",
        ),
    ],
)
@pytest.mark.parametrize("listener", ["client", "controller"])
def test_client_without_valid_credentials_gets_nothing(
    provisioned: Settings, extra: dict, listener: str
) -> None:
    port = provisioned.kafka_port if listener == "client" else provisioned.kafka_controller_port
    errors: list[KafkaError] = []
    admin = AdminClient(
        {
            "bootstrap.servers": f"127.0.0.1:{port}",
            "ssl.ca.location": str(provisioned.ca_file),
            "log_level": 0,
            "error_cb": errors.append,
            **extra,
        }
    )
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=3)
    if "sasl.password" in extra and listener == "client":
        deadline = time.monotonic() + 5
        while not errors and time.monotonic() < deadline:
            admin.poll(0.5)  # serves error_cb
        assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors


def _read_assigned(
    settings: Settings, principal: str, topic: str, timeout_s: float = 20.0
) -> KafkaError | list[bytes]:
    """Every record of ``topic`` by assign() (no group join, no commit) as ``principal``, or
    the topic's authorization error."""
    consumer = Consumer(
        client_config(
            as_principal(settings, principal),
            **{
                "group.id": f"stafet-reader-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "log_level": 0,
            },
        )
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        if meta.error is not None:
            return meta.error
        parts = {p for p in meta.partitions}
        consumer.assign([TopicPartition(topic, p, -2) for p in parts])  # OFFSET_BEGINNING
        values: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while parts and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    parts.discard(msg.partition())
                    continue
                return msg.error()
            values.append(msg.value())
        assert not parts, f"{topic}: no end reached"
        return values
    finally:
        consumer.close()


def test_the_operator_reads_alerts_and_audit_and_no_message(provisioned: Settings) -> None:
    _produce_as_admin(provisioned, "audit.delivery", b'{"action": "delivered"}')
    _produce_as_admin(provisioned, "alerts.operator", b'{"reason": "test alert"}')
    assert b'{"action": "delivered"}' in _read_assigned(provisioned, OPERATOR, "audit.delivery")
    assert b'{"reason": "test alert"}' in _read_assigned(provisioned, OPERATOR, "alerts.operator")
    for topic in (
        "ingest.hl7v2",
        "ingest.fhir",
        "events.encounter",
        municipality_topic(A),
        "out.letter",
        "dlq.normalize",
        "dlq.mllp",
    ):
        got = _read_assigned(provisioned, OPERATOR, topic)
        assert isinstance(got, KafkaError), topic
        assert got.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, (topic, got)
    # ... but sees every topic and their ends (for lag), and cannot write
    admin = AdminClient(client_config(as_principal(provisioned, OPERATOR), log_level=0))
    assert {"ingest.hl7v2", municipality_topic(A), "dlq.normalize"} <= set(
        admin.list_topics(timeout=10).topics
    )
    producer = Producer(client_config(as_principal(provisioned, OPERATOR), log_level=0))
    errors: list[KafkaError] = []
    producer.produce("alerts.operator", b"forged", on_delivery=lambda e, _: errors.append(e))
    producer.flush(20)
    assert errors and errors[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_the_dlq_operator_resends_a_dead_letter_without_reading_ingest(
    provisioned: Settings,
) -> None:
    from stafet.kafka.topics import H_ORIGIN

    body = f"MSH|^~\\&|dead-letter-{uuid.uuid4().hex[:6]}".encode()
    producer = Producer(client_config(as_admin(provisioned)))
    where: list[tuple[int, int]] = []
    producer.produce(
        "dlq.normalize",
        value=body,
        key=b"k",
        partition=0,
        headers=[(H_ORIGIN, b"ingest.hl7v2/0/0")],
        on_delivery=lambda e, m: where.append((m.partition(), m.offset())),
    )
    assert producer.flush(20) == 0
    assert body in _read_assigned(provisioned, DLQ_OPERATOR, "dlq.normalize")
    env = {**os.environ, **settings_env(as_principal(provisioned, DLQ_OPERATOR))}
    resent = subprocess.run(
        [
            sys.executable,
            "-m",
            "stafet.cli",
            "dlq",
            "resend",
            "dlq.normalize",
            f"{where[0][0]}/{where[0][1]}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resent.returncode == 0, resent.stderr
    assert body in _read_assigned(provisioned, "admin", "ingest.hl7v2")
    got = _read_assigned(provisioned, DLQ_OPERATOR, "ingest.hl7v2")
    assert isinstance(got, KafkaError) and got.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_the_console_reads_what_its_pages_show_and_no_raw_input(provisioned: Settings) -> None:
    """stafet-console (the operator console's process) reads dead letters, the audit trail and
    the event topics (a child's trail), writes its actions' audit lines — and reads neither the
    raw ingest topics nor the receivers' acknowledgements."""
    mark = uuid.uuid4().hex[:8].encode()
    _produce_as_admin(provisioned, "dlq.notify", b"dead letter " + mark)
    _produce_as_admin(provisioned, "events.encounter", b"event " + mark)
    assert b"dead letter " + mark in _read_assigned(provisioned, CONSOLE, "dlq.notify")
    assert b"event " + mark in _read_assigned(provisioned, CONSOLE, "events.encounter")
    for topic in ("ingest.hl7v2", "ingest.fhir", "acks.inbound"):
        got = _read_assigned(provisioned, CONSOLE, topic)
        assert isinstance(got, KafkaError), topic
        assert got.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, (topic, got)
    producer = Producer(client_config(as_principal(provisioned, CONSOLE), log_level=0))
    reports: list[tuple[str, KafkaError | None]] = []
    for topic, value in (("audit.delivery", b"console action " + mark), ("alerts.operator", b"x")):
        producer.produce(topic, value, on_delivery=lambda e, m: reports.append((m.topic(), e)))
    producer.flush(20)
    outcome = dict(reports)
    assert outcome["audit.delivery"] is None, "its actions' audit lines"
    forged = outcome["alerts.operator"]
    assert forged is not None and forged.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_services_see_only_their_topics(provisioned: Settings) -> None:
    """The MLLP listener may write ingest.hl7v2 (and index a new referral) but sees no
    municipality topic; the FHIR listener no longer sees ingest.hl7v2."""
    admin = AdminClient(client_config(as_principal(provisioned, MLLP), log_level=0))
    visible = set(admin.list_topics(timeout=10).topics)
    assert visible == {"ingest.hl7v2", "dlq.mllp", "index.referral"}
    fhir = AdminClient(client_config(as_principal(provisioned, FHIR), log_level=0))
    assert "ingest.hl7v2" not in set(fhir.list_topics(timeout=10).topics)


def test_hl7_message_flows_end_to_end_on_the_secure_broker(
    provisioned: Settings, tmp_path: Path
) -> None:
    """worker, mllp and fhir each as their own principal; the municipality reads the result."""
    from demo.hl7_builder import Hospital, adt, medcom_test_patients
    from stafet.connectors.sources.mllp.client import MllpClient, ack_fields

    patient = medcom_test_patients()["RikkeBerggren"]  # lives in 0751 (A)
    assert patient.municipality_code == A
    services = [
        Service(name, [name], tmp_path / f"{name}.log", service_env(provisioned, who))
        for name, who in (("worker", WORKER), ("mllp", MLLP), ("fhir", FHIR))
    ]
    consumer = _consumer(provisioned, municipality_principal(A), f"municipality-{A}-e2e")
    try:
        for service in services:
            service.start()
        wait_for_port(provisioned.mllp_host, provisioned.mllp_port)
        wait_for_port(provisioned.fhir_host, provisioned.fhir_port)
        control_id = f"ACL-{uuid.uuid4().hex[:8]}"
        message = adt(
            "A01",
            patient,
            hospital=Hospital("BUC Test", "600000000000099"),
            control_id=control_id,
            visit=f"V-{control_id}",
            event_time="202611231000",
            admit_time="202611230800",
        )
        with MllpClient(provisioned.mllp_host, provisioned.mllp_port) as client:
            assert ack_fields(client.send(message))["code"] == "AA"
        consumer.subscribe([municipality_topic(A)])
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            got = _poll_until(consumer, timeout_s=90)
            assert not isinstance(got, KafkaError), got
            if b"STIN" in got and control_id.encode() not in got:  # ids are derived, not copied
                break
        else:
            raise AssertionError("no notification for the municipality")
        for service in services:
            assert service.alive(), service.log_path.read_text()[-3000:]
    finally:
        consumer.close()
        for service in reversed(services):
            service.stop()
