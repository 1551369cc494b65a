"""``stafet demo`` (the README's main job) end to end, in its own stack, as a user runs it (no
STAFET_KAFKA_SECURITY: the secure default, SASL_SSL with every process its own principal): it
exits 0 only when every municipality, referrer and guardian got what the script says, every
rejection was delivered, and every process answers /readyz with the metrics of the day."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

from .conftest import free_port


def _free_run(n: int) -> int:
    """A port p with p … p+n-1 all free (the demo's four health ports count up from one)."""
    while True:
        base = free_port()
        if base + n >= 65535:
            continue
        try:
            for port in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue


def test_the_demo_passes_its_own_checks_and_every_process_reports_health_and_metrics(tmp_path):
    health = _free_run(4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAFET_")}
    env.update(
        {
            "STAFET_KAFKA_PORT": str(free_port()),
            "STAFET_KAFKA_CONTROLLER_PORT": str(free_port()),
            "STAFET_KAFKA_HOME": str(tmp_path / "kafka"),
            "STAFET_MLLP_PORT": str(free_port()),
            "STAFET_FHIR_PORT": str(free_port()),
            "STAFET_CONSOLE_PORT": str(free_port()),
            "STAFET_HEALTH_PORT": str(health),
            "STAFET_WORKER_DATA_DIR": str(tmp_path / "worker"),
            "STAFET_OUTBOX_DIR": str(tmp_path / "outbox"),
        }
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "stafet.cli", "demo"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    took = time.monotonic() - started
    out = result.stdout
    assert result.returncode == 0, out[-4000:] + result.stderr[-4000:]
    print(f"\nstafet demo (secure default): {took:.1f}s")
    assert "Starting Kafka (SASL_SSL" in out
    assert (tmp_path / "kafka" / "security-mode").read_text() == "sasl_ssl"
    assert sorted(p.name for p in (tmp_path / "kafka" / "secrets").glob("stafet-*.password")) == [
        "stafet-console.password",
        "stafet-delivery.password",
        "stafet-dlq-operator.password",
        "stafet-fhir.password",
        "stafet-mllp.password",
        "stafet-operator.password",
        "stafet-worker.password",
    ]
    lines = {
        m.group(1): m.group(0)
        for m in re.finditer(r"^  (worker|mllp|fhir|deliver) +:(\d+) readyz 200.*$", out, re.M)
    }
    assert set(lines) == {"worker", "mllp", "fhir", "deliver"}, out[-3000:]
    assert "MISSING" not in out
    assert "active" in lines["deliver"]
    assert re.search(r"messages_in_total\{stage=normalize\} [1-9]", lines["worker"])
    assert re.search(r"code=AA\} [1-9]", lines["mllp"])
    assert re.search(r"consumer lag \d", lines["worker"])
