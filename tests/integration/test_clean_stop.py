"""Clean stop, as systemd / Kubernetes / docker stop do it (SIGTERM): the MLLP listener answers
every frame it has read before it closes, and SIGTERM to ``stafet up`` leaves no process and no
port behind."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from stafet.connectors.sources.mllp.client import END, START, MllpClient, ack_fields
from stafet.connectors.sources.mllp.listener import MllpListener
from stafet.kafka.client import as_admin

from .conftest import free_port
from .test_mllp_rejects import good


def test_a_stopping_listener_answers_every_frame_it_has_read(stack):
    """20 pipelined frames, then stop(): each gets its AA (stored first), then the connection
    closes — nothing read is left unanswered."""
    settings = as_admin(stack.settings).model_copy(update={"mllp_port": 0})
    frames = [good() for _ in range(20)]

    async def scenario() -> list[dict[str, str]]:
        listener = MllpListener(settings)
        await listener.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"".join(START + f + END for f in frames))
        await writer.drain()
        await asyncio.sleep(0.3)  # the listener has read them
        stopping = asyncio.ensure_future(listener.stop())
        acks = []
        while True:
            try:
                data = await asyncio.wait_for(reader.readuntil(END), 30)
            except asyncio.IncompleteReadError:
                break  # closed after the last answer
            acks.append(ack_fields(data.strip(START).split(END)[0]))
        await stopping
        writer.close()
        return acks

    acks = asyncio.run(scenario())
    assert [a["code"] for a in acks] == ["AA"] * len(frames)
    sent = [f.split(b"|")[9].decode() for f in frames]  # MSH-10
    assert [a["control_id"] for a in acks] == sent


def _ours(marker: str) -> list[int]:
    """Pids of processes started for this test (their environment or command line says so)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "environ").read_bytes() + (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in blob:
            found.append(int(entry.name))
    return found


def _port_free(port: int) -> bool:
    """Nothing listens on it: bound as every server here binds (Kafka, asyncio), with
    SO_REUSEADDR, so a connection the broker closed last and left in TIME_WAIT — on SASL_SSL
    often one on the controller port — does not count as a process left behind."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _http_status(url: str, within_s: float) -> int | None:
    """The status a GET of ``url`` answers with, trying until ``within_s`` (None: no answer)."""
    from urllib.error import HTTPError, URLError
    from urllib.request import urlopen

    deadline = time.monotonic() + within_s
    while True:
        try:
            with urlopen(url, timeout=5) as response:  # noqa: S310 (loopback, the test's own)
                return int(response.status)
        except HTTPError as exc:
            return int(exc.code)
        except (URLError, OSError):
            if time.monotonic() > deadline:
                return None
            time.sleep(1.0)


def test_sigterm_to_stafet_up_stops_every_process_and_frees_every_port(tmp_path):
    marker = f"stafet-up-{uuid.uuid4().hex[:8]}"  # the app id: in every child's environment
    ports = {
        "STAFET_KAFKA_PORT": free_port(),
        "STAFET_KAFKA_CONTROLLER_PORT": free_port(),
        "STAFET_MLLP_PORT": free_port(),
        "STAFET_FHIR_PORT": free_port(),
        "STAFET_CONSOLE_PORT": free_port(),
    }
    env = {
        **os.environ,
        **{k: str(v) for k, v in ports.items()},
        "STAFET_APP_ID": marker,
        "STAFET_KAFKA_HOME": str(tmp_path / marker / "kafka"),
        "STAFET_WORKER_DATA_DIR": str(tmp_path / "worker"),
        "STAFET_PARTITIONS": "2",
        "STAFET_OUTBOX_DIR": str(tmp_path / "outbox"),
    }
    env.pop("STAFET_BOOTSTRAP_SERVERS", None)
    log = open(tmp_path / "up.log", "wb")  # noqa: SIM115
    up = subprocess.Popen(
        [sys.executable, "-m", "stafet.cli", "up"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        ack = None
        while time.monotonic() < deadline and up.poll() is None:
            try:
                with MllpClient("127.0.0.1", ports["STAFET_MLLP_PORT"], timeout_s=30) as client:
                    ack = ack_fields(client.send(good()))
                break
            except OSError:
                time.sleep(1.0)
        assert ack is not None and ack["code"] == "AA", (ack, up.poll())
        # a command run next to it, with the same environment (no STAFET_KAFKA_SECURITY unless
        # the suite runs secured), reaches the broker `stafet up` started: the storage's mode
        for command, expect in (
            (["kafka", "status"], "answers on"),
            (["topics", "--check"], "topics match the plan"),
        ):
            beside = subprocess.run(
                [sys.executable, "-m", "stafet.cli", *command],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert beside.returncode == 0 and expect in beside.stdout, beside.stdout + beside.stderr
        # the operator console is one of the stack's processes; its login page answers
        console = f"http://127.0.0.1:{ports['STAFET_CONSOLE_PORT']}/login"
        status = _http_status(console, within_s=60)
        assert status == 200, (console, status)
        children = _ours(marker)
        assert len(children) >= 6, children  # broker, worker, mllp, fhir, deliver, console
        started = time.monotonic()
        up.send_signal(signal.SIGTERM)
        up.wait(60)
        took = time.monotonic() - started
        output = (tmp_path / "up.log").read_text(errors="replace")
        assert up.returncode == 0, output[-2000:]
        if "STAFET_KAFKA_SECURITY" not in env:  # the default: the local stack runs secured
            assert "(SASL_SSL, SCRAM-SHA-512" in output, output[-2000:]
            assert (tmp_path / marker / "kafka" / "security-mode").read_text() == "sasl_ssl"
        assert took < 30, f"stafet up took {took:.1f}s to stop"
        assert _ours(marker) == [], "processes left behind"
        busy = [name for name, port in ports.items() if not _port_free(port)]
        assert busy == [], f"ports still taken: {busy}"
        print(f"SIGTERM → stafet up gone, {len(children)} children stopped, in {took:.1f}s")
    finally:
        log.close()
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
        for pid in _ours(marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_topics_check_reports_drift_from_the_plan(stack):
    """`stafet topics --check`: the session's topics match the plan; a retention changed behind
    stafet's back is reported (and the exit code says so)."""
    from confluent_kafka.admin import (
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        ResourceType,
    )

    from stafet.kafka.client import client_config
    from stafet.kafka.topics import DLQ_MLLP, TopicPlan, topic_drift

    settings = as_admin(stack.settings)
    plan = TopicPlan.from_settings(settings)
    assert topic_drift(settings, settings.partitions, plan) == []
    admin = AdminClient(client_config(settings))

    def set_retention(value: str) -> None:
        entry = ConfigEntry("retention.ms", value, incremental_operation=AlterConfigOpType.SET)
        resource = ConfigResource(ResourceType.TOPIC, DLQ_MLLP, incremental_configs=[entry])
        for future in admin.incremental_alter_configs([resource]).values():
            future.result()

    planned = plan.configs()[DLQ_MLLP]["retention.ms"]
    set_retention("3600000")
    try:
        assert topic_drift(settings, settings.partitions, plan) == [
            f"{DLQ_MLLP}: retention.ms = 3600000, plan {planned}"
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("STAFET_")}
        from stafet.stack import settings_env

        result = subprocess.run(
            [sys.executable, "-m", "stafet.cli", "topics", "--check"],
            env={**env, **settings_env(settings)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"drift: {DLQ_MLLP}: retention.ms = 3600000" in result.stdout
    finally:
        set_retention(planned)
    assert topic_drift(settings, settings.partitions, plan) == []
