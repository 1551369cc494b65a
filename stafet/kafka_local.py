"""A real, local, single-node Apache Kafka (KRaft, broker + controller) for development, tests and
the demo.

The broker jars are resolved from Maven Central by ``deploy/kafka/pom.xml`` once and reused; the
storage is formatted on first start; ``start`` returns only when the broker answers metadata
requests. Everything lives under ``Settings.kafka_home`` (config, data, log, pid file).
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import string
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka.admin import AdminClient

from stafet.config import PROJECT_ROOT, Settings
from stafet.errors import StafetError
from stafet.kafka_client import ADMIN, SCRAM_MECHANISM, as_admin, client_config, password_for
from stafet.kafka_credentials import ensure_tls, write_private
from stafet.logging import get_logger

log = get_logger(__name__)

DEPLOY_DIR = PROJECT_ROOT / "deploy" / "kafka"
KAFKA_VERSION = "4.1.1"


class KafkaToolingError(StafetError):
    """The local broker could not be resolved, formatted, started or stopped."""


@dataclass(frozen=True)
class LocalKafka:
    """Paths and ports of one local broker."""

    home: Path
    libs: Path
    port: int
    controller_port: int
    partitions: int
    heap: str
    settings: Settings = field(compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalKafka:
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
        return self.home / "security-mode"

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
            raise KafkaToolingError("Maven (mvn) is not installed: run `make install` or "
                                    "`apt-get install -y maven`")
        self.libs.mkdir(parents=True, exist_ok=True)
        log.info("kafka.fetch", version=KAFKA_VERSION, libs=str(self.libs))
        cmd = [mvn, "-q", "-B", "-f", str(DEPLOY_DIR / "pom.xml"), f"-Dlibs.dir={self.libs}",
               f"-Dkafka.version={KAFKA_VERSION}", "dependency:copy-dependencies"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise KafkaToolingError(f"resolving Kafka jars failed:\n{result.stdout}{result.stderr}")
        (self.libs / ".resolved").write_text(KAFKA_VERSION)

    # --- lifecycle -----------------------------------------------------------------------

    def _java(self, *args: str, heap: str = "256m") -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise KafkaToolingError("Java 17+ is not installed: run `make install` or "
                                    "`apt-get install -y openjdk-17-jre-headless`")
        return [java, f"-Xmx{heap}",
                f"-Dlog4j2.configurationFile={DEPLOY_DIR / 'log4j2.yaml'}",
                "-cp", f"{self.libs}/*", *args]

    def render_config(self) -> str:
        """server.properties for this broker; in sasl_ssl mode it holds the admin password."""
        template = string.Template((DEPLOY_DIR / "server.properties.template").read_text())
        values: dict[str, object] = dict(
            port=self.port, controller_port=self.controller_port, data_dir=self.data_dir,
            partitions=self.partitions, client_listener="PLAINTEXT",
            controller_protocol="PLAINTEXT", security="",
        )
        if self.secure:
            tls = ensure_tls(self.settings.tls_dir)
            secure = string.Template((DEPLOY_DIR / "sasl_ssl.properties.template").read_text())
            values.update(client_listener="SASL_SSL", controller_protocol="SASL_SSL",
                          security=secure.substitute(
                              admin_password=password_for(self.settings, ADMIN).get_secret_value(),
                              keystore=tls.keystore, ca_file=tls.ca))
        return template.substitute(values)

    def write_config(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        write_private(self.config_file, self.render_config().encode())

    def format_storage(self) -> None:
        """Format the KRaft storage once; an already formatted directory is kept. In sasl_ssl
        mode the admin's SCRAM credential is written into the metadata log here, so the broker
        never runs without a super user who can provision the others."""
        mode = self.settings.kafka_security
        if (self.data_dir / "meta.properties").exists():
            formatted = (self.mode_file.read_text().strip() if self.mode_file.exists()
                         else "plaintext")
            if formatted != mode:
                raise KafkaToolingError(
                    f"the storage in {self.data_dir} was formatted for {formatted}, not {mode}: "
                    "run `make clean` or choose another STAFET_KAFKA_HOME")
            return
        cluster_id = new_cluster_id()
        cmd = self._java("kafka.tools.StorageTool", "format", "-t", cluster_id,
                         "-c", str(self.config_file))
        if self.secure:
            password = password_for(self.settings, ADMIN).get_secret_value()
            cmd += ["--add-scram", f"{SCRAM_MECHANISM}=[name={ADMIN},password={password}]"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:  # the tool's output, never the command line (a password)
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
        """True when a broker on our port answers a metadata request."""
        admin = AdminClient(self.admin_config(log_level=0, logger=_SilentLogger()))
        try:
            admin.list_topics(timeout=timeout)
        except Exception:
            return False
        return True

    def start(self, wait_s: float = 90.0) -> None:
        """Start the broker (resolving jars and formatting storage if needed) and wait for it."""
        if self.pid() is not None and self.answers():
            log.info("kafka.already_running", bootstrap=self.bootstrap)
            return
        self.fetch()
        self.write_config()
        self.format_storage()
        with open(self.log_file, "ab") as out:
            proc = subprocess.Popen(
                self._java("kafka.Kafka", str(self.config_file), heap=self.heap),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))
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
        raise KafkaToolingError(f"the broker did not answer within {wait_s:.0f}s; see {self.log_file}")

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
