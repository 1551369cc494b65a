"""The ``stafet`` command line: the local broker, each process of the pipeline, the demo."""

from __future__ import annotations

import asyncio
import faulthandler
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from stafet.config import PROJECT_ROOT, get_settings
from stafet.logging import configure_logging
from stafet.safety import safe_settings


class _Commands(click.Group):
    """stafet's command group: a :class:`~stafet.errors.StafetError` that reaches the top (a
    storage formatted in the other security mode, a broker that cannot be provisioned) is the
    user's to act on, so it ends the command with its message, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from stafet.errors import StafetError

        try:
            return super().invoke(ctx)
        except StafetError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Commands)
def main() -> None:
    """stafet: hospital events to MedCom messages for every party that must act."""
    # A crash in a C library (librdkafka) leaves the supervisor only an exit by signal; with
    # this, stderr (the journal, the container log) also gets every Python thread's frames —
    # file, line and function, never values.
    if sys.__stderr__ is not None and not faulthandler.is_enabled():
        faulthandler.enable(file=sys.__stderr__)
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)


# --- the local Kafka broker ----------------------------------------------------------------


@main.group()
def kafka() -> None:
    """A local Apache Kafka (KRaft) on loopback: one node, or a cluster (--brokers 3)."""


def _local_kafka(brokers: int | None = None):  # type: ignore[no-untyped-def]
    from stafet.kafka.local import local_cluster

    return local_cluster(get_settings(), brokers)


def _stack_settings(brokers: int | None = None):  # type: ignore[no-untyped-def]
    """The settings of a command that starts the local broker: SASL_SSL unless
    STAFET_KAFKA_SECURITY says otherwise (stafet/local_mode.py)."""
    from stafet.local_mode import LocalModeMismatch, for_local_stack_from_environment

    try:
        return for_local_stack_from_environment(brokers)
    except LocalModeMismatch as exc:
        raise click.ClickException(str(exc)) from exc


def _kafka_mode(settings) -> str:  # type: ignore[no-untyped-def]
    """How the local broker is secured, for the line that says it is up."""
    if settings.kafka_security != "sasl_ssl":
        return "plaintext"
    return f"SASL_SSL, SCRAM-SHA-512; CA {settings.ca_file}, passwords in {settings.secrets_dir}"


@kafka.command("fetch")
def kafka_fetch() -> None:
    """Resolve the broker jars from Maven Central (once; reused afterwards)."""
    broker = _local_kafka(1)
    broker.fetch()
    click.echo(f"Kafka jars in {broker.libs}")


@kafka.command("start")
@click.option(
    "--brokers",
    type=click.IntRange(1, 9),
    default=None,
    help="nodes, each a broker and a KRaft controller (default STAFET_KAFKA_BROKERS, "
    "1); 3: replication factor 3, min.insync.replicas 2; node i under "
    "<kafka_home>/node-i on port STAFET_KAFKA_PORT + 2(i-1) (set "
    "STAFET_KAFKA_BROKERS=3 for the other stafet commands' bootstrap list)",
)
def kafka_start(brokers: int | None) -> None:
    """Start the broker(s) (format storage on first start) and wait until they answer: SASL_SSL
    unless STAFET_KAFKA_SECURITY=plaintext."""
    from stafet.kafka.local import KafkaToolingError, local_cluster

    settings = _stack_settings(brokers)
    cluster = local_cluster(settings, brokers or settings.kafka_brokers)
    try:
        cluster.start()
    except KafkaToolingError as exc:  # e.g. a storage formatted in the other mode: what to do
        raise click.ClickException(str(exc)) from exc
    for node in cluster.nodes:
        label = f" node {node.node_id}" if cluster.size > 1 else ""
        click.echo(
            f"Kafka{label} is up on {node.bootstrap} (pid {node.pid()}, log {node.log_file})"
        )
    click.echo(f"security: {_kafka_mode(settings)}")
    if cluster.size > 1:
        click.echo(
            f"bootstrap: {cluster.bootstrap} (STAFET_KAFKA_BROKERS={cluster.size} gives "
            "the other commands this list)"
        )


@kafka.command("status")
@click.option(
    "--brokers",
    type=click.IntRange(1, 9),
    default=None,
    help="nodes to look at (default: STAFET_KAFKA_BROKERS, else the running ones)",
)
def kafka_status(brokers: int | None) -> None:
    """Say whether every node runs and answers; exit 1 if one does not."""
    cluster = _local_kafka(brokers)
    ok = True
    for node in cluster.nodes:
        pid, answers = node.pid(), node.answers()
        ok = ok and answers
        label = f"node {node.node_id} " if cluster.size > 1 else ""
        click.echo(
            f"{label}pid: {pid or '-'}  answers on {node.bootstrap}: {'yes' if answers else 'no'}"
        )
    if cluster.size > 1:
        listed = cluster.brokers_listed()
        ok = ok and listed == cluster.size
        try:
            controller = str(cluster.active_controller(timeout_s=2.0))
        except Exception:
            controller = "-"
        click.echo(
            f"brokers in the cluster metadata: {listed}/{cluster.size}  "
            f"active controller: {controller}"
        )
    sys.exit(0 if ok else 1)


@kafka.command("stop")
@click.option(
    "--brokers",
    type=click.IntRange(1, 9),
    default=None,
    help="nodes to stop (default: STAFET_KAFKA_BROKERS, else the running ones)",
)
def kafka_stop(brokers: int | None) -> None:
    """Stop the broker(s) started by `stafet kafka start`."""
    _local_kafka(brokers).stop()
    click.echo("Kafka stopped")


@kafka.command("provision")
def kafka_provision() -> None:
    """Create the SCRAM users and ACLs (sasl_ssl; run as admin; safe to run again)."""
    from stafet.kafka.security import provision
    from stafet.schemas.municipalities import municipalities

    settings = get_settings()
    report = provision(settings, list(municipalities()))
    named = [u for u in report.users if not u.startswith("municipality-")]
    click.echo(
        f"users: {len(report.users)} created or updated ({', '.join(named)}, "
        f"municipality-<code> ×{len(report.users) - len(named)}); passwords in "
        f"{settings.secrets_dir} (mode 0600)"
    )
    click.echo(f"ACLs: {report.acls_created} created, {report.acls_existing} already there")


@main.command()
@click.option(
    "--check",
    is_flag=True,
    help="create nothing; report where the cluster's topics "
    "differ from the plan (partitions, replication, retention, min.insync.replicas); "
    "exit 1 if they do",
)
def topics(check: bool) -> None:
    """Create every stafet topic that does not exist yet (or --check them)."""
    from stafet.kafka.topics import TopicPlan, ensure_topics, topic_drift

    settings = get_settings()
    plan = TopicPlan.from_settings(settings)
    if check:
        drift = topic_drift(settings, settings.partitions, plan)
        for line in drift:
            click.echo(f"drift: {line}")
        click.echo(f"{len(drift)} differences from the plan" if drift else "topics match the plan")
        sys.exit(1 if drift else 0)
    created = ensure_topics(settings, settings.partitions, plan=plan)
    click.echo(f"created {len(created)} topics" if created else "all topics exist")


# --- the pipeline's processes ----------------------------------------------------------------


@main.command()
def worker() -> None:
    """Run the stream worker (normalize → notify, referrals) until SIGTERM / Ctrl-C."""
    from stafet.streams.app import run_worker

    try:
        run_worker(
            safe_settings("worker")
        )  # creates the topics it needs first (retrying while Kafka is away)
    except KeyboardInterrupt:
        pass


@main.command()
@click.option("--port", type=int, default=None, help="listen port (default STAFET_MLLP_PORT, 2575)")
def mllp(port: int | None) -> None:
    """Run the MLLP source connector until SIGTERM / Ctrl-C."""
    from stafet.connectors.sources.mllp.listener import run

    settings = safe_settings("mllp")
    if port is not None:
        settings = settings.model_copy(update={"mllp_port": port})
    _serve_until_signal(run(settings))


def _serve_until_signal(service: Any) -> None:
    """Run an asyncio service until SIGTERM or SIGINT, then let it stop gracefully (its
    ``finally`` stops listening, answers what is in flight and flushes the producer)."""
    import signal

    async def main() -> None:
        task = asyncio.ensure_future(service)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(main())


@main.command()
@click.option("--port", type=int, default=None, help="listen port (default STAFET_FHIR_PORT, 8080)")
def fhir(port: int | None) -> None:
    """Run the FHIR R4 HTTP source connector until SIGTERM / Ctrl-C."""
    from stafet.connectors.sources.fhir.listener import run

    settings = safe_settings("fhir")
    if port is not None:
        settings = settings.model_copy(update={"fhir_port": port})
    _serve_until_signal(run(settings))


@main.command()
def up() -> None:
    """Kafka, the worker, the MLLP and FHIR listeners and delivery, for real senders on
    loopback, until Ctrl-C. Kafka runs SASL_SSL (every child its own principal) unless
    STAFET_KAFKA_SECURITY=plaintext."""
    import signal
    import threading

    from stafet.stack import running_stack

    settings = safe_settings("up", _stack_settings())
    stopping = threading.Event()  # SIGTERM (systemd, Kubernetes, docker stop) or Ctrl-C
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    with running_stack(settings, log_dir=PROJECT_ROOT / ".stafet" / "logs") as services:
        click.echo(
            f"stafet is up: MLLP on {settings.mllp_host}:{settings.mllp_port}, FHIR on "
            f"http://{settings.fhir_host}:{settings.fhir_port}/fhir, Kafka on "
            f"{settings.bootstrap} ({_kafka_mode(settings)}). Logs in .stafet/logs. "
            "Ctrl-C or SIGTERM stops."
        )
        from stafet.stack import health_ports

        click.echo(
            "health and metrics: "
            + ", ".join(
                f"{name} http://{settings.health_host}:{port}/metrics"
                for name, port in health_ports(settings).items()
                if port > 0
            )
        )
        while not stopping.wait(1.0):  # a supervisor: whatever exited is started again
            for name, service in services.items():
                if service.restart_if_exited(time.monotonic()):
                    click.echo(f"{name} exited; restarted it (see .stafet/logs)", err=True)
        click.echo("stopping…")


@main.command()
@click.option("--timeout", type=float, default=180.0, help="seconds to wait for the notifications")
def demo(timeout: float) -> None:
    """Replay a scripted synthetic day and show what each municipality received (on the local
    stack, SASL_SSL unless STAFET_KAFKA_SECURITY=plaintext)."""
    sys.exit(_checkout_demo()(safe_settings("up", _stack_settings()), timeout_s=timeout))


def _checkout_demo() -> Any:
    """``run_demo`` from the checkout's ``demo/`` folder: the demo (sample data, a scripted day,
    a MedCom receiver) is not part of the installed package a hospital deploys."""
    root = str(PROJECT_ROOT)
    if (PROJECT_ROOT / "demo" / "run.py").is_file() and root not in sys.path:
        sys.path.insert(0, root)
    try:
        from demo.run import run_demo
    except ImportError as exc:
        raise click.ClickException(
            "the demo runs from a checkout of stafet (make demo): it is not in the installed "
            f"package ({exc})"
        ) from exc
    return run_demo


@main.command()
@click.argument("files", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--host", default=None)
@click.option("--port", type=int, default=None)
@click.option(
    "--tls-ca",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="MLLP over TLS: trust this CA (PEM)",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="client certificate (PEM, may hold the key) for mutual TLS",
)
@click.option("--tls-key", type=click.Path(exists=True, path_type=Path), default=None)
def send(
    files: tuple[Path, ...],
    host: str | None,
    port: int | None,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
) -> None:
    """Send HL7 v2 files over MLLP (one message per file, segments on lines) and print each ACK."""
    from stafet.connectors.sources.mllp.client import MllpClient, ack_fields

    settings = get_settings()
    with MllpClient(
        host or settings.mllp_host,
        port or settings.mllp_port,
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
    ) as client:
        for path in files:
            raw = path.read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r").strip(b"\r")
            ack = ack_fields(client.send(raw + b"\r"))
            click.echo(f"{path}: {ack['code']} {ack['control_id']} {ack['error_text']}".rstrip())


@main.command()
@click.argument("municipality_code")
@click.option("--from-beginning/--new-only", default=True)
@click.option("--idle", type=float, default=3.0, help="stop after this many idle seconds")
def inbox(municipality_code: str, from_beginning: bool, idle: float) -> None:
    """Print the notifications on a municipality's topic (event code, message id, patient)."""
    from stafet.kafka.reader import read_topic
    from stafet.kafka.topics import H_EVENT_CODE, municipality_topic
    from stafet.medcom.hospitalnotification import summarize

    settings = get_settings()
    for record in read_topic(
        settings, municipality_topic(municipality_code), from_beginning=from_beginning, idle_s=idle
    ):
        event_code = record.headers.get(H_EVENT_CODE, b"").decode()
        click.echo(json.dumps(summarize(record.json(), event_code), ensure_ascii=False))


from stafet.cli.console import register as _register_console  # noqa: E402
from stafet.cli.delivery import register as _register_delivery  # noqa: E402
from stafet.cli.deploy import register as _register_deploy  # noqa: E402
from stafet.cli.directory import register as _register_directory  # noqa: E402

_register_delivery(main)
_register_directory(main)
_register_deploy(main)
_register_console(main)
