"""A worker told to stop while it cannot reach Kafka (a rolling restart during a broker outage)
stops at once with 0 — it is retrying, not processing, so nothing is left half done."""

from __future__ import annotations

import signal
import socket
import time

from tests.worker_process import start_worker


def test_sigterm_while_the_broker_is_away_stops_the_worker_cleanly(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker = start_worker(tmp_path, port)
    log_path = tmp_path / "worker.log"
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
