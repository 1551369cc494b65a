"""One real Kafka broker, one stream worker, one MLLP and one FHIR listener per test session.

Everything runs as separate processes on loopback with free ports and a temporary data
directory; the broker jars are the ones ``make install`` resolved (``.stafet/kafka-libs``).
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stafet.config import Settings
from stafet.connectors.sources.mllp.client import MllpClient, ack_fields
from stafet.kafka.client import as_admin
from stafet.kafka.local import LocalKafka
from stafet.kafka.reader import Received, end_offsets, read_topics
from stafet.kafka.security import FHIR, MLLP, WORKER
from stafet.kafka.topics import DLQ_TOPICS, all_topics
from stafet.stack import Service, prepare_kafka, service_env, wait_for_port

pytestmark = pytest.mark.integration


DEADLINE_S = 45.0
#: held while a process is (re)started by a test
SUPERVISION = threading.RLock()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    """Handles on the running processes plus helpers to talk to them as a sender would."""

    settings: Settings
    kafka: LocalKafka
    services: dict[str, Service]
    log_dir: Path
    watched: list[str] = field(default_factory=list)

    def send(self, message: bytes) -> dict[str, str]:
        with MllpClient(self.settings.mllp_host, self.settings.mllp_port) as client:
            return ack_fields(client.send(message))

    def marks(self) -> dict[tuple[str, int], int]:
        """End offsets of every out.* and dlq.* topic: 'now', to read what comes after."""
        return end_offsets(as_admin(self.settings), self.watched)

    def read(
        self,
        since: dict[tuple[str, int], int],
        *,
        until: int | None = None,
        idle_s: float = 2.0,
        timeout_s: float = 90.0,
    ) -> list[Received]:
        return read_topics(
            as_admin(self.settings), since, until=until, idle_s=idle_s, timeout_s=timeout_s
        )

    def restart_worker(self, *, kill: bool) -> None:
        with SUPERVISION:
            worker = self.services["worker"]
            worker.kill() if kill else worker.stop()
            worker.start()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stafet")
    settings = Settings(
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        kafka_home=root / "kafka",
        worker_data_dir=root / "worker",
        mllp_port=free_port(),
        fhir_port=free_port(),
        app_id=f"stafet-test-{uuid.uuid4().hex[:6]}",
        mllp_produce_timeout_s=5.0,
        log_level="INFO",
        # the 30-day assessment guarantee, shrunk to 45 s so the deadline test can watch it pass
        referral_decision_deadline_days=DEADLINE_S / 86400,
        referral_timer_interval_s=2.0,
        validate_every=1,  # every HospitalNotification through fhir.resources in the tests
    )
    kafka = LocalKafka.from_settings(settings)
    kafka.start()
    prepare_kafka(settings)  # topics; with STAFET_KAFKA_SECURITY=sasl_ssl also users and ACLs
    services = {
        "worker": Service(
            "worker", ["worker"], root / "logs" / "worker.log", service_env(settings, WORKER)
        ),
        "mllp": Service("mllp", ["mllp"], root / "logs" / "mllp.log", service_env(settings, MLLP)),
        "fhir": Service("fhir", ["fhir"], root / "logs" / "fhir.log", service_env(settings, FHIR)),
    }
    try:
        for service in services.values():
            service.start()
        wait_for_port(settings.mllp_host, settings.mllp_port)
        wait_for_port(settings.fhir_host, settings.fhir_port)
        watched = [t for t in all_topics() if t.startswith("out.")]
        yield Stack(settings, kafka, services, root / "logs", [*watched, *DLQ_TOPICS])
    finally:
        for service in services.values():
            service.stop()
        kafka.stop()
