"""One real 3-node KRaft cluster (each node a broker and a controller), one stream worker and one
MLLP listener per test session — separate processes on loopback, free ports, a temporary
``kafka_home``; the topics made with stafet's plan (replication factor 3, min.insync.replicas 2).
The broker jars are the ones ``make install`` resolved (``.stafet/kafka-libs``).
"""

from __future__ import annotations

import random
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from stafet.config import Settings
from stafet.kafka.local import LocalKafkaCluster, node_ports
from stafet.kafka.security import MLLP, WORKER
from stafet.stack import Service, prepare_kafka, service_env, wait_for_port

BROKERS = 3
#: partitions of every stafet topic: few, so three brokers, a worker and a listener fit 2 cores
PARTITIONS = 3
#: held while a test (re)starts a process, so the supervision thread leaves it alone
SUPERVISION = threading.RLock()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_block(n: int) -> int:
    """The first of ``n`` consecutive free loopback ports (node i of the cluster listens on
    base + 2(i-1), its controller on base + 2(i-1) + 1), below the kernel's ephemeral range:
    a killed node's ports must stay free while it is down, and a client's outgoing connection
    could otherwise take one of them (a restart then fails with "Address already in use")."""
    low = (
        int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        if Path("/proc/sys/net/ipv4/ip_local_port_range").exists()
        else 32768
    )
    for _ in range(200):
        base = random.randrange(10000, low - n)
        with ExitStack() as stack:
            try:
                for port in range(base, base + n):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return base
    raise RuntimeError(f"no {n} consecutive free ports")


@dataclass
class ClusterStack:
    settings: Settings
    cluster: LocalKafkaCluster
    services: dict[str, Service]
    log_dir: Path
    #: services that exited without the test asking them to (name, return code); a worker's
    #: watchdog exit (code 70, streams/watchdog.py) is listed too — the test tells them apart
    exits: list[tuple[str, int | None]]


class Supervisor(threading.Thread):
    """Restarts a child that exited on its own (as `stafet up` or systemd would) and notes it."""

    def __init__(self, services: dict[str, Service], exits: list[tuple[str, int | None]]) -> None:
        super().__init__(daemon=True, name="supervisor")
        self.services, self.exits = services, exits
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(1.0):
            with SUPERVISION:
                for service in self.services.values():
                    if not service.alive():
                        assert service.process is not None
                        self.exits.append((service.name, service.process.returncode))
                        service.start()


@pytest.fixture(scope="session")
def cluster_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterStack]:
    root = tmp_path_factory.mktemp("stafet-cluster")
    base = free_port_block(2 * BROKERS)
    settings = Settings(
        kafka_brokers=BROKERS,
        kafka_port=base,
        kafka_controller_port=base + 1,
        kafka_home=root / "kafka",
        worker_data_dir=root / "worker",
        partitions=PARTITIONS,
        mllp_port=free_port(),
        fhir_port=free_port(),
        app_id=f"stafet-cluster-{uuid.uuid4().hex[:6]}",
        mllp_produce_timeout_s=5.0,
        log_level="INFO",
    )
    cluster = LocalKafkaCluster.from_settings(settings)
    assert [node_ports(settings, i) for i in range(1, BROKERS + 1)] == [
        (n.port, n.controller_port) for n in cluster.nodes
    ]
    assert settings.bootstrap == cluster.bootstrap  # what the children get (STAFET_KAFKA_BROKERS)
    cluster.start()
    services: dict[str, Service] = {}
    supervisor: Supervisor | None = None
    try:
        prepare_kafka(settings)  # topics at RF 3; with STAFET_KAFKA_SECURITY=sasl_ssl also ACLs
        services = {
            "worker": Service(
                "worker", ["worker"], root / "logs" / "worker.log", service_env(settings, WORKER)
            ),
            "mllp": Service(
                "mllp", ["mllp"], root / "logs" / "mllp.log", service_env(settings, MLLP)
            ),
        }
        for service in services.values():
            service.start()
        wait_for_port(settings.mllp_host, settings.mllp_port)
        exits: list[tuple[str, int | None]] = []
        supervisor = Supervisor(services, exits)
        supervisor.start()
        yield ClusterStack(settings, cluster, services, root / "logs", exits)
    finally:
        if supervisor is not None:
            supervisor.stopping.set()
            supervisor.join(5)
        for service in services.values():
            service.terminate()
        for service in services.values():
            service.wait()
        cluster.stop()
