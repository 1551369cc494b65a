"""Run the whole local stack: Kafka, the stream worker, the MLLP and FHIR listeners, each its own
process (as an integration team would run them), started in order and stopped in reverse."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from stafet.config import CREDENTIALS_DIR_ENV, SECRETS_DIR_ENV, Settings
from stafet.errors import StafetError
from stafet.kafka.client import as_admin, password_for
from stafet.kafka.credentials import write_private
from stafet.kafka.local import LocalKafka
from stafet.kafka.security import CONSOLE, DELIVERY, FHIR, MLLP, WORKER, provision
from stafet.kafka.topics import TopicPlan, ensure_topics
from stafet.logging import get_logger

log = get_logger(__name__)


def wait_for_port(host: str, port: int, timeout_s: float = 30.0) -> None:
    """Return once something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise StafetError(f"nothing listens on {host}:{port} after {timeout_s:.0f}s")


@dataclass
class Service:
    """A stafet child process (``stafet worker`` / ``stafet mllp``) with its log file."""

    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    #: variables of our environment this child must not inherit (secrets it gets as files)
    withheld: frozenset[str] = frozenset()
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0  # consecutive quick exits: the next restart waits 2^restarts s (max 30)
    started_at: float = 0.0
    next_start: float = 0.0

    def start(self) -> None:
        self.started_at = time.monotonic()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log_path, "ab")  # noqa: SIM115 (kept open for the child's lifetime)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stafet.cli", *self.args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**inherited_environment(self.withheld), **self.env},
            start_new_session=True,
        )
        log.info("service.started", service=self.name, pid=self.process.pid, log=str(self.log_path))

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM (graceful: the worker commits and closes), SIGKILL after ``timeout_s``."""
        if not self.alive():
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        log.info("service.stopped", service=self.name, returncode=self.process.returncode)

    def terminate(self) -> None:
        """Send SIGTERM and return (``wait`` for it): stopping several at once."""
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float = 20.0) -> None:
        """Wait for the exit a :meth:`terminate` asked for; SIGKILL after ``timeout_s``."""
        if self.process is None or self.process.returncode is not None:
            return
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("service.killed", service=self.name, after_s=timeout_s)
            self.process.kill()
            self.process.wait()
        log.info("service.stopped", service=self.name, returncode=self.process.returncode)

    def restart_if_exited(self, now: float) -> bool:
        """Supervision: start it again if it exited, backing off 1, 2, 4 … 30 s while it keeps
        exiting within a minute of its start; True when it was restarted."""
        if self.alive():
            if now - self.started_at > 60:
                self.restarts = 0
            return False
        if self.next_start == 0.0:  # just noticed: schedule the restart
            quick = now - self.started_at < 60
            self.restarts = self.restarts + 1 if quick else 0
            self.next_start = now + min(30.0, 2.0**self.restarts) if quick else now
            log.warning(
                "service.exited",
                service=self.name,
                returncode=self.process.returncode if self.process else None,
                restart_in_s=round(self.next_start - now, 1),
            )
        if now < self.next_start:
            return False
        self.next_start = 0.0
        self.start()
        return True

    def kill(self) -> None:
        """SIGKILL: a crash, for fault tests."""
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait()


#: the settings that are secrets: never passed to a child in its environment
SECRET_VARIABLES = frozenset(
    f"STAFET_{name.upper()}"
    for name, info in Settings.model_fields.items()
    if "SecretStr" in str(info.annotation)
)


def inherited_environment(withheld: frozenset[str] = frozenset()) -> dict[str, str]:
    """Our environment without any secret setting or other ``withheld`` variable (a child
    reads its secrets from files)."""
    return {
        k: v
        for k, v in os.environ.items()
        if k.upper() not in SECRET_VARIABLES
        and k not in withheld
        and k not in (SECRETS_DIR_ENV, CREDENTIALS_DIR_ENV)
    }


def settings_env(settings: Settings, extra_secrets: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that gives a child process the same settings as ours. Secrets are not
    in it (``/proc/<pid>/environ``, crash reports, ``docker inspect``): they go to 0600 files in
    a private directory under the secrets directory, which the child reads through
    ``STAFET_SECRETS_DIR`` — with ``extra_secrets`` (file name → value), secrets that are not
    settings (REST subscribers' webhook secrets)."""
    env: dict[str, str] = {}
    secrets: dict[str, str] = dict(extra_secrets or {})
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            secrets[f"STAFET_{name.upper()}"] = value.get_secret_value()
            continue
        env[f"STAFET_{name.upper()}"] = (
            str(value).lower() if isinstance(value, bool) else str(value)
        )
    if secrets:
        env[SECRETS_DIR_ENV] = str(write_secret_files(settings.secrets_dir, secrets))
    return env


def write_secret_files(secrets_dir: Path, secrets: dict[str, str]) -> Path:
    """``secrets`` as one 0600 file each in a 0700 directory named by their digest (the same
    secrets, the same directory: running twice leaves nothing behind)."""
    digest = hashlib.sha256(json.dumps(sorted(secrets.items())).encode()).hexdigest()[:16]
    directory = secrets_dir / f"settings-{digest}"
    for name, value in secrets.items():
        write_private(directory / name, value.encode())
    return directory


def service_env(
    settings: Settings,
    principal: str,
    *,
    health_port: int = 0,
    extra_secrets: dict[str, str] | None = None,
) -> dict[str, str]:
    """``settings_env`` for a child that connects as ``principal`` (sasl_ssl): its own password
    (from its file, or the one configured for it), never the admin's; its health endpoints on
    ``health_port`` (0: any free port — several children on one host must not share one)."""
    child = settings.model_copy(update={"kafka_admin_password": None, "health_port": health_port})
    if settings.kafka_security == "sasl_ssl":
        own = settings.kafka_password if principal == settings.kafka_username else None
        child = child.model_copy(update={"kafka_username": principal, "kafka_password": own})
        password_for(child, principal)  # provisioned? a clear error here, not in the child
    return settings_env(child, extra_secrets)


def subscriber_secret_files(settings: Settings) -> dict[str, str]:
    """The REST subscribers' webhook secrets this process has — from its environment or its
    secret files — for a ``stafet deliver`` child, which gets them as files in its own private
    secrets directory (and does not inherit the variables: ``Service.withheld``). A registry
    that does not load: none — the child names the problem."""
    from stafet.config import read_secret_file
    from stafet.subscribers import RegistryError, load_registry

    try:
        registry = load_registry(settings.subscribers_file)
    except RegistryError:
        return {}
    found = {}
    for s in registry.pushed():
        if s.secret_env:
            value = os.environ.get(s.secret_env) or read_secret_file(s.secret_env)
            if value:
                found[s.secret_env] = value
    return found


def prepare_kafka(settings: Settings) -> None:
    """As the super user: every topic and, on a secure broker, every principal and ACL."""
    admin = as_admin(settings) if settings.kafka_security == "sasl_ssl" else settings
    ensure_topics(admin, settings.partitions, plan=TopicPlan.from_settings(settings))
    if settings.kafka_security == "sasl_ssl":
        from stafet.schemas.municipalities import municipalities

        provision(admin, list(municipalities()))


#: the order of the children's health ports from STAFET_HEALTH_PORT up
HEALTH_PORT_ORDER = ("worker", "mllp", "fhir", "deliver")


def health_ports(settings: Settings) -> dict[str, int]:
    """Each child's /healthz, /readyz, /metrics port: STAFET_HEALTH_PORT + 0, 1, 2, 3 (-1: none,
    0: any free one)."""
    base = settings.health_port
    return {name: base if base <= 0 else base + i for i, name in enumerate(HEALTH_PORT_ORDER)}


@contextmanager
def running_stack(
    settings: Settings, *, log_dir: Path, stop_kafka: bool = True
) -> Iterator[dict[str, Service]]:
    """Kafka + topics + worker + MLLP and FHIR listeners + delivery + the operator console, torn
    down on exit."""
    kafka = LocalKafka.from_settings(settings)
    started_kafka = kafka.pid() is None
    kafka.start()
    prepare_kafka(settings)
    ports = health_ports(settings)
    hook_secrets = subscriber_secret_files(settings)
    services = {
        "worker": Service(
            "worker",
            ["worker"],
            log_dir / "worker.log",
            service_env(settings, WORKER, health_port=ports["worker"]),
        ),
        "mllp": Service(
            "mllp",
            ["mllp"],
            log_dir / "mllp.log",
            service_env(settings, MLLP, health_port=ports["mllp"]),
        ),
        "fhir": Service(
            "fhir",
            ["fhir"],
            log_dir / "fhir.log",
            service_env(settings, FHIR, health_port=ports["fhir"]),
        ),
        # REST hooks, the letter outbox, acknowledgements and the audit trail
        "deliver": Service(
            "deliver",
            ["deliver"],
            log_dir / "deliver.log",
            service_env(
                settings, DELIVERY, health_port=ports["deliver"], extra_secrets=hook_secrets
            ),
            withheld=frozenset(hook_secrets),
        ),
        # the operator console (http://<console_host>:<console_port>/; users in its users file)
        "console": Service(
            "console",
            ["console"],
            log_dir / "console.log",
            service_env(settings, CONSOLE, health_port=-1),
        ),
    }
    try:
        for service in services.values():
            service.start()
        wait_for_port(settings.mllp_host, settings.mllp_port)
        wait_for_port(settings.fhir_host, settings.fhir_port)
        yield services
    finally:
        stop_services(services)
        if stop_kafka and started_kafka:
            kafka.stop()


def stop_services(services: dict[str, Service]) -> None:
    """SIGTERM in the order data flows: the listeners first (no new input; what is in flight is
    answered), then the worker and delivery together (each commits and leaves its group), each
    given 20 s before SIGKILL."""
    waves = [
        [s for s in services.values() if s.name in ("mllp", "fhir")],
        [s for s in services.values() if s.name not in ("mllp", "fhir")],
    ]
    for wave in waves:
        for service in wave:
            service.terminate()
        for service in wave:
            service.wait()
