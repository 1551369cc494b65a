"""Active / standby ``stafet deliver``: two replicas are safe, one delivers.

The acknowledgement tracker's state lives in the process that delivered (rebuilt from
``audit.delivery`` when it starts), so two *active* processes would each wait for
acknowledgements the other received and resend what was already acknowledged. So every
replica joins the consumer group ``stafet-delivery-leader`` on the one-partition topic
``control.delivery`` (never written): the member that holds the partition is active and runs the
:class:`~stafet.connectors.sinks.delivery.DeliveryService`; the others wait. Kafka does the election:

- the active one stops (SIGTERM): it stops delivering first, then leaves the group — the standby
  gets the partition at once;
- the active one dies (SIGKILL, a lost node): the coordinator drops it after
  ``delivery_session_timeout_s`` (6 s) and the standby gets the partition;
- the cooperative-sticky assignor keeps the partition where it is when a standby joins.

A replica that loses the partition while alive (it was cut off from the coordinator for longer
than the session timeout) stops its service before its revocation returns, so the new active one
starts only after the old one has stopped, in every case but a cut-off that outlasts the
revocation. The takeover starts from the audit trail, where the old one wrote every delivery and
acknowledgement before committing it: nothing acknowledged is resent, nothing delivered is
forgotten, and a record delivered but not yet committed is delivered again with the same ids.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from stafet.config import Settings
from stafet.connectors.sinks.delivery import DeliveryService
from stafet.errors import StafetError
from stafet.kafka.client import client_config
from stafet.kafka.topics import CONTROL_DELIVERY
from stafet.logging import get_logger
from stafet.observability import DELIVERY_ACTIVE, HEALTH, beat_forever, serve_health
from stafet.subscribers import Registry

log = get_logger(__name__)

LEADER_GROUP = "stafet-delivery-leader"
#: how long a revocation waits for the service to stop before it lets the partition go
REVOKE_WAIT_S = 30.0


class Leadership:
    """Membership of :data:`LEADER_GROUP`, polled on its own thread; :attr:`active` is set while
    this replica holds the partition."""

    def __init__(self, settings: Settings) -> None:
        session_ms = int(settings.delivery_session_timeout_s * 1000)
        self._consumer = Consumer(
            {
                **client_config(settings),
                "group.id": LEADER_GROUP,
                "enable.auto.commit": False,
                "partition.assignment.strategy": "cooperative-sticky",
                "session.timeout.ms": session_ms,
                "heartbeat.interval.ms": max(500, session_ms // 4),
                "topic.metadata.refresh.interval.ms": 5000,
                "log_level": 3,
            }
        )
        self.active = threading.Event()
        self.inactive = threading.Event()
        self.inactive.set()
        #: set by the owner once its service has stopped after a revocation
        self.released = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delivery-leadership", daemon=True)

    def start(self) -> None:
        self._consumer.subscribe(
            [CONTROL_DELIVERY],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._consumer.poll(0.5)  # heartbeats run in librdkafka; this keeps us a member
            HEALTH.beat()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if any(p.topic == CONTROL_DELIVERY for p in partitions):
            log.info("delivery.leadership_acquired", group=LEADER_GROUP)
            self.released.clear()
            self.inactive.clear()
            self.active.set()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if not self.active.is_set() or not any(p.topic == CONTROL_DELIVERY for p in partitions):
            return
        log.warning("delivery.leadership_lost", group=LEADER_GROUP)
        self.active.clear()
        self.inactive.set()
        # runs inside poll(): the partition is handed on only after this returns
        if not self.released.wait(REVOKE_WAIT_S):
            log.error("delivery.release_timeout", waited_s=REVOKE_WAIT_S)

    def close(self) -> None:
        """Leave the group (the standby takes over at once); call after the service stopped."""
        self.released.set()
        self._stop.set()
        self._thread.join()
        self._consumer.close()


async def _wait(event: threading.Event, stop: asyncio.Event) -> bool:
    """Wait for a thread's ``event`` or ``stop``; True if ``event`` came."""
    while not stop.is_set():
        if await asyncio.to_thread(event.wait, 0.5):
            return True
    return False


async def run_replica(
    settings: Settings, registry: Registry, stop: asyncio.Event, **service_options: Any
) -> None:
    """One replica until ``stop``: deliver while active, wait while standby."""
    leadership = Leadership(settings)
    leadership.start()
    HEALTH.info["role"] = "standby"
    HEALTH.set_ready("delivery", True, "standby: waiting for the active replica to stop")
    DELIVERY_ACTIVE.set(0)
    try:
        while await _wait(leadership.active, stop):
            service = DeliveryService(settings, registry, **service_options)
            try:
                await service.start()
                HEALTH.info["role"] = "active"
                HEALTH.set_ready("delivery", True, "active: delivering")
                DELIVERY_ACTIVE.set(1)
                await _wait(leadership.inactive, stop)
            finally:
                await service.stop()
                DELIVERY_ACTIVE.set(0)
                HEALTH.info["role"] = "standby"
                HEALTH.set_ready("delivery", True, "standby: waiting for the active replica")
                leadership.released.set()
    finally:
        await asyncio.to_thread(leadership.close)


async def run(settings: Settings, registry: Registry) -> None:
    """``stafet deliver``: one replica (active or standby) until SIGTERM / Ctrl-C. A registry
    that is not ready stops it at once, active or not (a standby must be able to take over)."""
    import signal

    problems = registry.problems()
    if problems:
        raise StafetError("the subscriber registry is not ready: " + "; ".join(problems))
    health = serve_health(settings, "deliver")
    beating = asyncio.ensure_future(beat_forever())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await run_replica(settings, registry, stop)
    finally:
        beating.cancel()
        if health is not None:
            health.stop()
