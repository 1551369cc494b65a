"""A real ``stafet worker`` process for the tests that watch one against a broker that is away
or never answers: plaintext, its own state directory, any free health port (9180 may be a
running stack's), its output in ``<tmp_path>/worker.log``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

#: exits by a signal the process gave itself: a crash in native code (librdkafka). The fault
#: tests count them as faults (the supervisor restarts the worker) and print the worker's log,
#: where faulthandler left every Python thread's frames.
NATIVE_CRASHES = (-signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS)


def start_worker(tmp_path: Path, broker_port: int, **settings: str) -> subprocess.Popen[bytes]:
    """The worker, bootstrapping from ``127.0.0.1:<broker_port>``; ``settings``: more
    ``STAFET_*`` variables."""
    env = {
        **os.environ,
        "STAFET_BOOTSTRAP_SERVERS": f"127.0.0.1:{broker_port}",
        "STAFET_KAFKA_SECURITY": "plaintext",
        "STAFET_WORKER_DATA_DIR": str(tmp_path / "w"),
        "STAFET_HEALTH_PORT": "0",
        **settings,
    }
    with open(tmp_path / "worker.log", "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "stafet.cli", "worker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
