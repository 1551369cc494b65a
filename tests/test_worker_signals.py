"""A worker told to stop while it cannot reach Kafka (a rolling restart during a broker outage)
stops at once with 0 — it is retrying, not processing, so nothing is left half done."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time


def test_sigterm_while_the_broker_is_away_stops_the_worker_cleanly(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "STAFET_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
        "STAFET_KAFKA_SECURITY": "plaintext",
        "STAFET_WORKER_DATA_DIR": str(tmp_path / "w"),
        "STAFET_HEALTH_PORT": "0",
    }  # any free port: 9180 may be a running stack's
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "stafet.cli", "worker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 40
        while "worker.application_failed" not in log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, "the worker never said it is retrying"
            time.sleep(0.5)
        assert worker.poll() is None, "a worker without a broker keeps retrying"
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        assert time.monotonic() - started < 15
    finally:
        worker.kill()
