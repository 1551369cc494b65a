"""The console's own ``/healthz`` and ``/readyz``, on the console's port (it has no health port).

Both are public and carry no data. ``/readyz`` answers in the shape every other stafet process
uses (:class:`stafet.observability.Health`): 200 when the users file gave at least one user and
a Kafka metadata request succeeded a moment ago, else 503 with each condition and why — so a
Kubernetes Service sends no one to a console nobody can log in to or that cannot see Kafka.
The metadata request is cached for :attr:`Readiness.KAFKA_TTL_S`: a probe every few seconds
costs the brokers one request at most per interval, however many probes there are.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaException

from stafet.config import Settings
from stafet.console.auth import UserStore
from stafet.errors import StafetError
from stafet.logging import get_logger
from stafet.observability import Health

log = get_logger(__name__)

#: how long a metadata request may take before Kafka counts as unreachable (under the probes' 3 s)
METADATA_TIMEOUT_S = 2.0


def kafka_metadata(settings: Settings) -> Callable[[], str]:
    """A blocking metadata request against the configured brokers (one admin client, kept)."""
    from confluent_kafka.admin import AdminClient

    from stafet.kafka.client import client_config

    admin: list[AdminClient] = []

    def request() -> str:
        if not admin:  # created on first use: client_config reads the password file
            admin.append(AdminClient({**client_config(settings), "log_level": 2}))
        metadata = admin[0].list_topics(timeout=METADATA_TIMEOUT_S)
        return f"{len(metadata.brokers)} broker(s), {len(metadata.topics)} topic(s)"

    return request


class Readiness:
    """The users and Kafka conditions of ``/readyz``."""

    KAFKA_TTL_S = 5.0

    def __init__(
        self,
        users: UserStore,
        metadata: Callable[[], str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._users, self._metadata, self._clock = users, metadata, clock
        self._kafka: tuple[bool, str] = (False, "not asked yet")
        self._asked_at: float | None = None
        self._lock = asyncio.Lock()
        self.health = Health(clock=clock)
        self.health.info["service"] = "console"
        self.health.add_check("users", self._users_condition)
        self.health.add_check("kafka", lambda: self._kafka)

    def _users_condition(self) -> tuple[bool, str]:
        users = self._users.users()
        if not users:
            return False, self._users.problem or f"no users in {self._users.path}"
        detail = f"{len(users)} user(s)"
        if self._users.problem:  # the last good file is still in use
            detail += f"; the file now has a problem: {self._users.problem}"
        return True, detail

    async def _refresh_kafka(self) -> None:
        async with self._lock:
            now = self._clock()
            if self._asked_at is not None and now - self._asked_at < self.KAFKA_TTL_S:
                return
            try:
                self._kafka = (True, await asyncio.to_thread(self._metadata))
            except (StafetError, KafkaException) as exc:  # no password file, no broker
                self._kafka = (False, f"metadata request failed: {type(exc).__name__}: {exc}")
                log.warning("console.kafka_unready", error=self._kafka[1])
            self._asked_at = self._clock()

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        """(ready, the JSON body): the conditions by name, ``status`` ok or unavailable."""
        await self._refresh_kafka()
        self.health.beat()  # the event loop that answers this request is alive
        ok, body = self.health.ready()
        body["status"] = "ok" if ok else "unavailable"
        return ok, body
