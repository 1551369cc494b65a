"""A real, local Apache Kafka (KRaft) for development, tests and the demo: one combined broker +
controller node (:class:`LocalKafka`), or a cluster of N such nodes (:class:`LocalKafkaCluster`,
``stafet kafka start --brokers 3`` / ``STAFET_KAFKA_BROKERS=3``).

The broker jars are resolved from Maven Central by ``deploy/kafka/pom.xml`` once and reused; the
storage is formatted on first start; ``start`` returns only when the broker answers metadata
requests. Everything lives under ``Settings.kafka_home`` (config, data, log, pid file); a cluster
node *i* lives under ``kafka_home/node-i`` (node.id *i*, client port ``kafka_port + i - 1``,
controller port ``kafka_controller_port + i - 1``), the secrets and TLS material stay shared in
``kafka_home``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import string
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from stafet.config import PROJECT_ROOT, Settings
from stafet.errors import StafetError
from stafet.kafka.client import ADMIN, SCRAM_MECHANISM, as_admin, client_config, password_for
from stafet.kafka.credentials import ensure_tls, write_private
from stafet.local_mode import MODE_FILE, storage_mode
from stafet.logging import get_logger

log = get_logger(__name__)

DEPLOY_DIR = PROJECT_ROOT / "deploy" / "kafka"
KAFKA_VERSION = "4.1.1"


class KafkaToolingError(StafetError):
    """The local broker could not be resolved, formatted, started or stopped."""


def replication_for(brokers: int) -> tuple[int, int]:
    """(default replication factor, min.insync.replicas) of a local cluster of ``brokers``: RF
    min(3, N) for every internal topic, and 2 in sync at 3 or more (as stafet's topic plan)."""
    rf = min(3, max(brokers, 1))
    return rf, 2 if rf >= 3 else 1


@dataclass(frozen=True)
class LocalKafka:
    """Paths and ports of one local broker (a combined KRaft broker + controller node). Alone
    (the defaults) it is node 1 of a quorum of one; as a member of a :class:`LocalKafkaCluster`
    it has its own node id, home, ports, and the cluster's shared quorum."""

    home: Path
    libs: Path
    port: int
    controller_port: int
    partitions: int
    heap: str
    settings: Settings = field(compare=False, repr=False)
    node_id: int = 1
    #: controller.quorum.voters; empty: this node alone
    voters: str = ""
    #: how many brokers the cluster has (its internal topics' replication)
    brokers: int = 1

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalKafka:
        """The local broker: the single node (``STAFET_KAFKA_BROKERS`` 1, the default), or with
        ``STAFET_KAFKA_BROKERS`` > 1 the :class:`LocalKafkaCluster` (the same start / stop /
        pid / answers / bootstrap), so ``stafet up`` and the test stacks run on either."""
        if settings.kafka_brokers > 1:
            return LocalKafkaCluster.from_settings(settings)  # type: ignore[return-value]
        return cls.single(settings)

    @classmethod
    def single(cls, settings: Settings) -> LocalKafka:
        """The single-node broker under ``kafka_home`` on ``kafka_port``, whatever
        ``kafka_brokers`` says."""
        return cls(
            home=settings.kafka_home,
            libs=settings.kafka_libs,
            port=settings.kafka_port,
            controller_port=settings.kafka_controller_port,
            partitions=settings.partitions,
            heap=settings.kafka_heap,
            settings=settings.model_copy(update={"bootstrap_servers": ""}),
        )

    @property
    def secure(self) -> bool:
        return self.settings.kafka_security == "sasl_ssl"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metadata_dir(self) -> Path:
        """The KRaft metadata log (``quorum-state`` holds the leader this node knows)."""
        return self.data_dir / "__cluster_metadata-0"

    @property
    def config_file(self) -> Path:
        return self.home / "server.properties"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "broker.log"

    @property
    def mode_file(self) -> Path:
        """The security mode the storage was formatted for (plaintext / sasl_ssl)."""
        return self.home / MODE_FILE

    def refuse_other_mode(self) -> None:
        """A storage formatted in the other security mode is not reused (nor wiped): say how to
        use it as it is, or how to start afresh. Before anything is written."""
        formatted, mode = storage_mode(self.home), self.settings.kafka_security
        if formatted is not None and formatted != mode:
            raise KafkaToolingError(
                f"the storage in {self.data_dir} was formatted for {formatted}, not {mode}: set "
                f"STAFET_KAFKA_SECURITY={formatted} to use it as it is, or start afresh in {mode} "
                "with `make clean` (deletes .stafet/) or another STAFET_KAFKA_HOME (and "
                "STAFET_WORKER_DATA_DIR)"
            )

    def admin_config(self, **extra: object) -> dict[str, object]:
        """confluent-kafka config of the broker's super user (plaintext: no credentials)."""
        return client_config(as_admin(self.settings), **extra)

    # --- jars ----------------------------------------------------------------------------

    def jars_present(self) -> bool:
        return (self.libs / f"kafka_2.13-{KAFKA_VERSION}.jar").exists() and (
            self.libs / ".resolved"
        ).exists()

    def fetch(self) -> None:
        """Resolve the broker and its runtime dependencies from Maven Central (once)."""
        if self.jars_present():
            return
        mvn = shutil.which("mvn")
        if mvn is None:
            raise KafkaToolingError(
                "Maven (mvn) is not installed: run `make install` or `apt-get install -y maven`"
            )
        self.libs.mkdir(parents=True, exist_ok=True)
        log.info("kafka.fetch", version=KAFKA_VERSION, libs=str(self.libs))
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(DEPLOY_DIR / "pom.xml"),
            f"-Dlibs.dir={self.libs}",
            f"-Dkafka.version={KAFKA_VERSION}",
            "dependency:copy-dependencies",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise KafkaToolingError(f"resolving Kafka jars failed:\n{result.stdout}{result.stderr}")
        (self.libs / ".resolved").write_text(KAFKA_VERSION)

    # --- lifecycle -----------------------------------------------------------------------

    def _java(self, *args: str, heap: str = "256m") -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise KafkaToolingError(
                "Java 17+ is not installed: run `make install` or "
                "`apt-get install -y openjdk-17-jre-headless`"
            )
        return [
            java,
            f"-Xmx{heap}",
            f"-Dlog4j2.configurationFile={DEPLOY_DIR / 'log4j2.yaml'}",
            "-cp",
            f"{self.libs}/*",
            *args,
        ]

    def render_config(self) -> str:
        """server.properties for this broker; in sasl_ssl mode it holds the admin password."""
        template = string.Template((DEPLOY_DIR / "server.properties.template").read_text())
        rf, min_isr = replication_for(self.brokers)
        values: dict[str, object] = dict(
            port=self.port,
            controller_port=self.controller_port,
            data_dir=self.data_dir,
            partitions=self.partitions,
            client_listener="PLAINTEXT",
            controller_protocol="PLAINTEXT",
            security="",
            node_id=self.node_id,
            voters=self.voters or f"{self.node_id}@127.0.0.1:{self.controller_port}",
            replication_factor=rf,
            min_isr=min_isr,
        )
        if self.secure:
            tls = ensure_tls(self.settings.tls_dir)
            secure = string.Template((DEPLOY_DIR / "sasl_ssl.properties.template").read_text())
            values.update(
                client_listener="SASL_SSL",
                controller_protocol="SASL_SSL",
                security=secure.substitute(
                    admin_password=password_for(
                        self.settings, ADMIN, create=True
                    ).get_secret_value(),
                    keystore=tls.keystore,
                    ca_file=tls.ca,
                ),
            )
        return template.substitute(values)

    def write_config(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        write_private(self.config_file, self.render_config().encode())

    def formatted_cluster_id(self) -> str | None:
        """The cluster id this node's storage was formatted with (None: not formatted)."""
        try:
            lines = (self.data_dir / "meta.properties").read_text().splitlines()
        except FileNotFoundError:
            return None
        for line in lines:
            if line.startswith("cluster.id="):
                return line.split("=", 1)[1].strip()
        return None

    def format_storage(self, cluster_id: str | None = None) -> None:
        """Format the KRaft storage once; an already formatted directory is kept. In sasl_ssl
        mode the admin's SCRAM credential is written into the metadata log here, so the broker
        never runs without a super user who can provision the others. ``cluster_id``: the
        cluster's (every node of a cluster is formatted with the same); None: a new one."""
        mode = self.settings.kafka_security
        if (self.data_dir / "meta.properties").exists():
            self.refuse_other_mode()
            return
        cluster_id = cluster_id or new_cluster_id()
        tool = ["kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.config_file)]
        if not self.secure:
            result = subprocess.run(self._java(*tool), capture_output=True, text=True)
        else:
            # the admin's password never on a command line (ps, /proc/<pid>/cmdline): the java
            # launcher reads the main class and its arguments from a 0600 @argfile
            password = password_for(self.settings, ADMIN, create=True).get_secret_value()
            argfile = self.home / "format.args"
            write_private(
                argfile,
                " ".join(
                    [
                        *tool,
                        "--add-scram",
                        f"{SCRAM_MECHANISM}=[name={ADMIN},password={password}]",
                    ]
                ).encode(),
            )
            try:
                result = subprocess.run(self._java(f"@{argfile}"), capture_output=True, text=True)
            finally:
                argfile.unlink(missing_ok=True)
        if result.returncode != 0:  # the tool's output, never its arguments (a password)
            raise KafkaToolingError(f"formatting storage failed:\n{result.stdout}{result.stderr}")
        self.mode_file.write_text(mode)

    def pid(self) -> int | None:
        """The broker's pid if it is running (a stale pid file is ignored)."""
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            return None
        return pid

    def answers(self, timeout: float = 2.0) -> bool:
        """True when a broker on our port answers a metadata request (False too when there is
        no admin password yet: no secure broker was ever formatted here)."""
        try:
            admin = AdminClient(self.admin_config(log_level=0, logger=_SilentLogger()))
            admin.list_topics(timeout=timeout)
        except Exception:
            return False
        return True

    def start(self, wait_s: float = 90.0, *, cluster_id: str | None = None) -> None:
        """Start the broker (resolving jars and formatting storage if needed) and wait for it.
        A cluster member waits for a quorum: start the others too (see LocalKafkaCluster)."""
        if self.pid() is not None and self.answers():
            log.info("kafka.already_running", bootstrap=self.bootstrap)
            return
        self.refuse_other_mode()
        self.fetch()
        self.write_config()
        self.format_storage(cluster_id)
        self.wait_until_answering(self.launch(), wait_s)

    def launch(self) -> subprocess.Popen[bytes]:
        """Start the broker process (configured and formatted already) and return at once."""
        with open(self.log_file, "ab") as out:
            proc = subprocess.Popen(
                self._java("kafka.Kafka", str(self.config_file), heap=self.heap),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))
        return proc

    def wait_until_answering(self, proc: subprocess.Popen[bytes], wait_s: float) -> None:
        """Return once the launched broker answers metadata requests; stop it if it does not."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-3000:]
                raise KafkaToolingError(f"the broker exited with {proc.returncode}:\n{tail}")
            if self.answers(timeout=1.0):
                log.info("kafka.started", bootstrap=self.bootstrap, pid=proc.pid)
                return
            time.sleep(0.5)
        self.stop()
        raise KafkaToolingError(
            f"the broker did not answer within {wait_s:.0f}s; see {self.log_file}"
        )

    def kill(self) -> None:
        """SIGKILL: a crashed broker (fault tests); its storage is kept for a restart."""
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            _reap(pid)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        log.info("kafka.killed", node=self.node_id, pid=pid)

    def known_leader(self) -> tuple[int, int] | None:
        """(leader epoch, leader id) of the KRaft quorum as this node last wrote it down in its
        ``quorum-state`` file (None: no leader known, or not readable)."""
        try:
            state = json.loads((self.metadata_dir / "quorum-state").read_text())
        except (FileNotFoundError, ValueError):
            return None
        leader, epoch = int(state.get("leaderId", -1)), int(state.get("leaderEpoch", -1))
        return (epoch, leader) if leader >= 0 else None

    def stop(self, wait_s: float = 30.0) -> None:
        """Stop the broker: SIGTERM (a clean shutdown), SIGKILL after ``wait_s``."""
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            _reap(pid)
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
            _reap(pid)
        self.pid_file.unlink(missing_ok=True)
        log.info("kafka.stopped", pid=pid)


def node_ports(settings: Settings, node_id: int) -> tuple[int, int]:
    """(client port, controller port) of node ``node_id`` of a local cluster: the ports of
    node 1 (``kafka_port``, ``kafka_controller_port``) stepped by 2, so the defaults give
    9092/9093, 9094/9095, 9096/9097 (``Settings.bootstrap`` lists the same client ports)."""
    step = 2 * (node_id - 1)
    return settings.kafka_port + step, settings.kafka_controller_port + step


class LocalKafkaCluster:
    """N local KRaft nodes, each a combined broker + controller, one quorum: node *i* under
    ``kafka_home/node-i`` with node.id *i* and the ports of :func:`node_ports`, every node
    formatted with the same cluster id, the internal topics replicated min(3, N) times with 2
    in sync at 3. With N = 1 it is the single-node broker exactly (``kafka_home``, node 1)."""

    def __init__(self, settings: Settings, nodes: tuple[LocalKafka, ...]) -> None:
        self.nodes = nodes
        self.settings = settings.model_copy(
            update={"bootstrap_servers": ",".join(n.bootstrap for n in nodes)}
        )

    @classmethod
    def from_settings(cls, settings: Settings, brokers: int | None = None) -> LocalKafkaCluster:
        """``brokers`` nodes (None: ``settings.kafka_brokers``)."""
        n = brokers or settings.kafka_brokers
        if n < 1:
            raise KafkaToolingError(f"a cluster needs at least one broker, not {n}")
        if n == 1:
            return cls(settings, (LocalKafka.single(settings),))
        ports = [node_ports(settings, i) for i in range(1, n + 1)]
        used = [p for pair in ports for p in pair]
        if len(set(used)) != len(used):
            raise KafkaToolingError(
                f"the ports of {n} nodes overlap (client {[c for c, _ in ports]}, controller "
                f"{[c for _, c in ports]}): choose STAFET_KAFKA_CONTROLLER_PORT apart from "
                "STAFET_KAFKA_PORT"
            )
        voters = ",".join(f"{i}@127.0.0.1:{c}" for i, (_, c) in enumerate(ports, start=1))
        nodes = tuple(
            LocalKafka(
                home=settings.kafka_home / f"node-{i}",
                libs=settings.kafka_libs,
                port=port,
                controller_port=controller,
                partitions=settings.partitions,
                heap=settings.kafka_heap,
                settings=settings.model_copy(update={"bootstrap_servers": f"127.0.0.1:{port}"}),
                node_id=i,
                voters=voters,
                brokers=n,
            )
            for i, (port, controller) in enumerate(ports, start=1)
        )
        return cls(settings, nodes)

    # --- what LocalKafka offers too (stafet up, the test stacks) --------------------------------

    @property
    def size(self) -> int:
        return len(self.nodes)

    @property
    def home(self) -> Path:
        return self.settings.kafka_home

    @property
    def libs(self) -> Path:
        return self.settings.kafka_libs

    @property
    def bootstrap(self) -> str:
        return self.settings.bootstrap_servers

    @property
    def log_file(self) -> Path:
        return self.nodes[0].log_file

    @property
    def secure(self) -> bool:
        return self.settings.kafka_security == "sasl_ssl"

    def node(self, node_id: int) -> LocalKafka:
        """Node ``node_id`` (1 … N)."""
        return self.nodes[node_id - 1]

    def admin_config(self, **extra: object) -> dict[str, object]:
        """confluent-kafka config of the super user, bootstrapping from every node."""
        return client_config(as_admin(self.settings), **extra)

    def jars_present(self) -> bool:
        return self.nodes[0].jars_present()

    def fetch(self) -> None:
        self.nodes[0].fetch()

    def pid(self) -> int | None:
        """A running node's pid (None: no node runs)."""
        return next((p for p in self.pids().values() if p is not None), None)

    def pids(self) -> dict[int, int | None]:
        return {n.node_id: n.pid() for n in self.nodes}

    def brokers_listed(self, timeout: float = 2.0) -> int:
        """How many brokers the cluster metadata lists (0: no node answers)."""
        try:
            admin = AdminClient(self.admin_config(log_level=0, logger=_SilentLogger()))
            return len(admin.list_topics(timeout=timeout).brokers)
        except Exception:
            return 0

    def answers(self, timeout: float = 2.0) -> bool:
        """True when every node answers and the cluster metadata lists all of them."""
        if self.size == 1:
            return self.nodes[0].answers(timeout)
        return (
            all(n.answers(timeout) for n in self.nodes)
            and self.brokers_listed(timeout) == self.size
        )

    def start(self, wait_s: float = 120.0) -> None:
        """Start every node that is not running — concurrently, since a KRaft quorum elects
        its leader only once a majority is up — formatting storage first where needed; return
        when every node answers and the metadata lists all N brokers."""
        self._refuse_other_layout()
        if self.size == 1:
            self.nodes[0].start(wait_s)
            return
        if self.pid() is not None and self.answers():
            log.info("kafka.already_running", bootstrap=self.bootstrap)
            return
        for node in self.nodes:
            node.refuse_other_mode()
        self.fetch()
        ids = {i for i in (n.formatted_cluster_id() for n in self.nodes) if i is not None}
        if len(ids) > 1:
            raise KafkaToolingError(
                f"the nodes under {self.home} were formatted for different "
                f"clusters ({', '.join(sorted(ids))}): run `make clean`"
            )
        cluster_id = ids.pop() if ids else new_cluster_id()
        for node in self.nodes:
            node.write_config()
            node.format_storage(cluster_id)
        launched = {n.node_id: n.launch() for n in self.nodes if n.pid() is None}
        deadline = time.monotonic() + wait_s
        try:
            with ThreadPoolExecutor(len(launched) or 1) as pool:
                for future in [
                    pool.submit(self.node(i).wait_until_answering, proc, wait_s)
                    for i, proc in launched.items()
                ]:
                    future.result()
            while self.brokers_listed() != self.size:
                if time.monotonic() > deadline:
                    raise KafkaToolingError(
                        f"the cluster metadata does not list {self.size} brokers after "
                        f"{wait_s:.0f}s; see {self.home}/node-*/broker.log"
                    )
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise
        log.info(
            "kafka.started",
            bootstrap=self.bootstrap,
            brokers=self.size,
            pids=[p.pid for p in launched.values()],
        )

    def stop(self, wait_s: float = 30.0) -> None:
        """Stop every node, all at once (a node stopped after the quorum lost its majority
        would wait for a controller that is gone): SIGTERM, SIGKILL after ``wait_s``."""
        with ThreadPoolExecutor(self.size) as pool:
            for future in [pool.submit(n.stop, wait_s) for n in self.nodes]:
                future.result()

    def _refuse_other_layout(self) -> None:
        """The single node and a cluster's node 1 share a port: only one of them may run."""
        other = (
            running_cluster_nodes(self.settings)
            if self.size == 1
            else ([1] if LocalKafka.single(self.settings).pid() is not None else [])
        )
        if other:
            what = "a cluster of local brokers" if self.size == 1 else "the single-node broker"
            raise KafkaToolingError(
                f"{what} already runs from {self.home}: `stafet kafka stop` "
                "it first (or choose another STAFET_KAFKA_HOME)"
            )

    # --- for fault tests ---------------------------------------------------------------------

    def active_controller(self, timeout_s: float = 30.0) -> int:
        """The node id of the active KRaft controller (the quorum leader): the leader with the
        highest epoch that a majority of the voters wrote into their ``quorum-state`` file,
        and that runs. Waits up to ``timeout_s`` for such agreement (an election under way)."""
        majority = self.size // 2 + 1
        deadline = time.monotonic() + timeout_s
        while True:
            votes: dict[tuple[int, int], int] = {}
            for node in self.nodes:
                if node.pid() is not None and (known := node.known_leader()) is not None:
                    votes[known] = votes.get(known, 0) + 1
            agreed = sorted((k for k, v in votes.items() if v >= majority), reverse=True)
            if agreed and self.node(agreed[0][1]).pid() is not None:
                return agreed[0][1]
            if time.monotonic() > deadline:
                raise KafkaToolingError(
                    f"no majority of live nodes agrees on a running KRaft leader: {votes}"
                )
            time.sleep(0.2)

    def metadata(self, topics: list[str] | None = None, timeout: float = 10.0) -> Any:
        """Cluster metadata (librdkafka's ClusterMetadata) from whichever node answers."""
        admin = AdminClient(self.admin_config(log_level=0, logger=_SilentLogger()))
        if topics is not None and len(topics) == 1:
            return admin.list_topics(topics[0], timeout=timeout)
        return admin.list_topics(timeout=timeout)

    def partition_leaders(self, topics: list[str]) -> dict[tuple[str, int], int]:
        """The leader (node id, -1 for none) of every partition of ``topics``."""
        metadata = self.metadata()
        return {
            (t, p): part.leader for t in topics for p, part in metadata.topics[t].partitions.items()
        }

    def under_replicated(self, topics: list[str] | None = None) -> list[tuple[str, int]]:
        """Partitions (of ``topics``; None: every topic) whose ISR is not all their replicas,
        or that have no leader."""
        metadata = self.metadata()
        names = topics if topics is not None else list(metadata.topics)
        return [
            (t, p)
            for t in names
            for p, part in metadata.topics[t].partitions.items()
            if part.leader < 0 or set(part.isrs) != set(part.replicas)
        ]

    def wait_in_sync(self, timeout_s: float = 120.0, topics: list[str] | None = None) -> float:
        """Wait until every partition's ISR is all its replicas again; return how long it took."""
        started = time.monotonic()
        while True:
            try:
                lagging = self.under_replicated(topics)
            except Exception as exc:  # a metadata request that timed out: ask again
                lagging = [("?", -1)]
                log.debug("kafka.metadata_failed", error=str(exc))
            if not lagging:
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise KafkaToolingError(
                    f"{len(lagging)} partitions still under-replicated "
                    f"after {timeout_s:.0f}s, e.g. {lagging[:5]}"
                )
            time.sleep(0.5)


def running_cluster_nodes(settings: Settings) -> list[int]:
    """The node ids under ``kafka_home/node-*`` whose broker runs (from their pid files)."""
    found = []
    for pid_file in settings.kafka_home.glob("node-*/broker.pid"):
        try:
            node_id = int(pid_file.parent.name.removeprefix("node-"))
            os.kill(int(pid_file.read_text().strip()), 0)
        except (ValueError, OSError):
            continue
        found.append(node_id)
    return sorted(found)


def local_cluster(settings: Settings, brokers: int | None = None) -> LocalKafkaCluster:
    """The local Kafka the CLI manages: ``brokers`` nodes if given, else
    ``settings.kafka_brokers`` if above 1, else as many as the running cluster nodes under
    ``kafka_home`` (``stafet kafka status`` / ``stop`` after ``start --brokers 3``), else the
    single node."""
    if brokers is None and settings.kafka_brokers == 1:
        running = running_cluster_nodes(settings)
        if running and LocalKafka.single(settings).pid() is None:
            configured = sum(1 for _ in settings.kafka_home.glob("node-*/server.properties"))
            brokers = max(max(running), configured)
    return LocalKafkaCluster.from_settings(settings, brokers)


def new_cluster_id() -> str:
    """A KRaft cluster id: base64url of a random UUID. Like Kafka's own Uuid.randomUuid, never one
    that starts with '-', which the storage tool's argument parser would take for an option."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _reap(pid: int) -> None:
    """Collect a child we started ourselves so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


class _SilentLogger:
    """librdkafka logs 'connection refused' while we poll for the broker: not worth a line."""

    def log(self, *args: object, **kwargs: object) -> None:  # noqa: D401
        return None
