"""The stream worker's watchdog: exit when the main loop has stopped coming round.

Why a process-level watchdog and not a retry: librdkafka's transactional producer can block in
``send_offsets_to_transaction`` for good when the broker that was the consumer group's
coordinator is killed and comes back (librdkafka issues #5511 and #5456 — the coordinator stays
cached on a decommissioned broker, and the call's timeout is not checked; open upstream, not in
the confluent-kafka versions quixstreams 3.28 supports). The cluster test found it: after a
SIGKILL of the active controller the worker committed nothing more, its ``/healthz`` went stale,
and it did not even stop on SIGTERM. No Python code can interrupt a C call on the main thread;
a fresh process can. So the watchdog reads the heartbeat the main loop gives (librdkafka's
statistics are served only while the consumer is polled, and the worker beats between
applications too) and, past the limit, logs where the main thread is and exits with
:data:`EXIT_STALLED`. Its supervisor (``stafet up``, systemd ``Restart=``, Kubernetes) starts a
new worker; the same ``transactional.id`` fences the old producer and aborts its open
transaction, so every record is processed again exactly once.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
from collections.abc import Callable

from stafet.logging import get_logger
from stafet.observability import HEALTH, Health

log = get_logger(__name__)

#: the worker's exit code when the watchdog ends it (EX_SOFTWARE): a supervisor restarts it
EXIT_STALLED = 70


def main_thread_stack(limit: int = 8) -> list[str]:
    """``file:line function`` of the main thread's innermost frames (no locals: no data)."""
    frame = sys._current_frames().get(threading.main_thread().ident or -1)
    if frame is None:
        return []
    return [
        f"{os.path.basename(f.filename)}:{f.lineno} {f.name}"
        for f in traceback.extract_stack(frame)[-limit:]
    ]


def _exit_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_STALLED)


class Watchdog(threading.Thread):
    """Ends the process when ``health`` has not beaten for ``limit_s`` seconds."""

    def __init__(
        self,
        limit_s: float,
        health: Health = HEALTH,
        *,
        every_s: float = 1.0,
        exit_process: Callable[[], None] = _exit_now,
    ) -> None:
        super().__init__(daemon=True, name="watchdog")
        self.limit_s, self.health, self.every_s = limit_s, health, every_s
        self._exit_process = exit_process
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(self.every_s):
            silent_s = self.health.silent_s()
            if silent_s > self.limit_s:
                log.error(
                    "worker.stalled",
                    silent_s=round(silent_s, 1),
                    limit_s=self.limit_s,
                    exit_code=EXIT_STALLED,
                    main_thread=main_thread_stack(),
                )
                self._exit_process()
                return

    def stop(self) -> None:
        self._stopping.set()
