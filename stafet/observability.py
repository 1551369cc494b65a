"""Health, readiness and Prometheus metrics of every long-running stafet process.

Each process (``stafet worker``, ``mllp``, ``fhir``, ``deliver``) serves on
``STAFET_HEALTH_HOST:STAFET_HEALTH_PORT``:

- ``/healthz`` — liveness: 200 while the process's main loop beats (a hung loop → 503, and
  the supervisor restarts it);
- ``/readyz`` — readiness: 200 once the process can do its work (listening, connected to
  Kafka, its consumer group joined), 503 with the reason otherwise;
- ``/metrics`` — the Prometheus text format (prometheus-client's default registry).

Counters count work done, not work committed: a record processed in a transaction that is
then aborted and processed again counts twice. Exactly-once holds for the data, not for these.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from stafet.logging import get_logger

log = get_logger(__name__)

# --- the series (one definition each; labels say where) ------------------------------------

MESSAGES_IN = Counter("stafet_messages_in_total", "Records or requests a stage took in", ["stage"])
MESSAGES_OUT = Counter(
    "stafet_messages_out_total",
    "Records a stage wrote on (not counting dead letters and alerts)",
    ["stage"],
)
DEAD_LETTERS = Counter(
    "stafet_dead_letters_total", "Inputs a stage sent to its dead-letter topic", ["stage"]
)
ACK_LATENCY = Histogram(
    "stafet_ack_latency_seconds",
    "From a message's arrival to its answer (MLLP ACK / HTTP "
    "response): the sender's wait, the broker's acks=all write included",
    ["source", "code"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
CONSUMER_LAG = Gauge(
    "stafet_consumer_lag",
    "Records behind the partitions' ends, per consumer "
    "group and topic (from librdkafka statistics)",
    ["group", "topic"],
)
DELIVERIES = Counter(
    "stafet_deliveries_total",
    "Delivery outcomes per subscriber: delivered, retried, dead_lettered, resent",
    ["subscriber", "outcome"],
)
ACKNOWLEDGEMENTS = Counter(
    "stafet_acknowledgements_total",
    "MedCom Acknowledgements counted per "
    "subscriber and code (ok, transient-error, fatal-error, unverified)",
    ["subscriber", "code"],
)
ACKS_PENDING = Gauge(
    "stafet_acknowledgements_pending",
    "Delivered messages still waiting for their acknowledgement",
    ["subscriber"],
)
LAST_DELIVERY = Gauge(
    "stafet_delivery_last_success_timestamp_seconds",
    "When a subscriber last took a message",
    ["subscriber"],
)
DELIVERY_ACTIVE = Gauge("stafet_delivery_active", "1 on the active stafet deliver, 0 on a standby")

#: statistics.interval.ms for every consumer that reports its lag
STATS_INTERVAL_MS = 5000


def lag_reporter(group: str, *, readiness: bool = False) -> Callable[[str], None]:
    """A librdkafka ``stats_cb`` that sets :data:`CONSUMER_LAG` for ``group`` per topic and
    marks the process alive (statistics arrive only while the consumer is being polled);
    ``readiness``: the process is ready only while this group is joined (the worker)."""

    def report(stats_json: str) -> None:
        HEALTH.beat()
        try:
            stats = json.loads(stats_json)
        except ValueError:
            return
        for topic, info in stats.get("topics", {}).items():
            known = [
                lag
                for p in info.get("partitions", {}).values()
                if p.get("partition", -1) >= 0 and (lag := partition_lag(p)) >= 0
            ]
            if known:
                CONSUMER_LAG.labels(group=group, topic=topic).set(sum(known))
        group_state = stats.get("cgrp", {})
        if readiness and group_state:
            HEALTH.set_ready(
                "group",
                group_state.get("state") == "up" and group_state.get("join_state") == "steady",
                f"consumer group {group}: {group_state.get('state')}/"
                f"{group_state.get('join_state')}",
            )

    return report


def partition_lag(stats: dict[str, Any]) -> int:
    """One partition's lag from its librdkafka statistics (-1: unknown). ``consumer_lag`` counts
    from the committed offset, which a consumer never learns when its offsets are committed by
    a transactional producer (the worker): then from the position the application consumed."""
    if stats.get("consumer_lag", -1) >= 0:
        return int(stats["consumer_lag"])
    end, position = stats.get("ls_offset", -1), stats.get("app_offset", -1)
    return int(end - position) if end >= 0 and position >= 0 else -1


def broker_reporter() -> Callable[[str], None]:
    """A producer's ``stats_cb``: ready ("kafka") while at least one broker connection is up."""

    def report(stats_json: str) -> None:
        try:
            brokers = json.loads(stats_json).get("brokers", {}).values()
        except ValueError:
            return
        up = sum(1 for b in brokers if b.get("nodeid", -1) >= 0 and b.get("state") == "UP")
        HEALTH.set_ready("kafka", up > 0, f"{up} broker connection(s) up")

    return report


def stats_config(reporter: Callable[[str], None]) -> dict[str, Any]:
    """librdkafka settings that make ``reporter`` run every :data:`STATS_INTERVAL_MS`."""
    return {"stats_cb": reporter, "statistics.interval.ms": STATS_INTERVAL_MS}


def ack_code(ack: bytes) -> str:
    """MSA-1 of an HL7 v2 ACK (AA / AE / AR), for the latency histogram's label."""
    _, found, rest = ack.partition(b"MSA|")
    return rest[:2].decode("ascii", "replace") if found else "none"


def observe_answer(source: str, code: str, started: float) -> None:
    """Count one answered message: latency by code; stored → out, rejected → dead letter."""
    ACK_LATENCY.labels(source=source, code=code).observe(time.perf_counter() - started)
    if code in ("AA", "202", "200"):
        MESSAGES_OUT.labels(stage=source).inc()
    elif code in ("AR", "400", "413", "415", "422"):
        DEAD_LETTERS.labels(stage=source).inc()


# --- health ----------------------------------------------------------------------------------


class Health:
    """What ``/healthz`` and ``/readyz`` answer: a heartbeat and named readiness conditions."""

    def __init__(
        self, stale_after_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stale_after_s, self._clock = stale_after_s, clock
        self._last_beat = clock()
        self._ready: dict[str, tuple[bool, str]] = {}
        self._checks: dict[str, Callable[[], tuple[bool, str]]] = {}
        self.info: dict[str, Any] = {}
        self._lock = threading.Lock()

    def beat(self) -> None:
        self._last_beat = self._clock()

    def set_ready(self, condition: str, ok: bool, detail: str = "") -> None:
        with self._lock:
            self._ready[condition] = (ok, detail)

    def add_check(self, condition: str, check: Callable[[], tuple[bool, str]]) -> None:
        """A readiness condition evaluated at each ``/readyz`` (for state kept elsewhere)."""
        with self._lock:
            self._checks[condition] = check

    def silent_s(self) -> float:
        """Seconds since the last beat."""
        return self._clock() - self._last_beat

    def alive(self) -> tuple[bool, dict[str, Any]]:
        age = self.silent_s()
        return age <= self.stale_after_s, {"last_beat_s_ago": round(age, 1)}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            conditions = dict(self._ready)
            checks = dict(self._checks)
        for name, check in checks.items():
            conditions[name] = check()
        alive, body = self.alive()
        ok = alive and bool(conditions) and all(c[0] for c in conditions.values())
        body.update(self.info)
        body["conditions"] = {name: {"ok": c[0], "detail": c[1]} for name, c in conditions.items()}
        return ok, body


#: the process's one health state (a process is one service)
HEALTH = Health()


class _Handler(BaseHTTPRequestHandler):
    health: Health = HEALTH

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/metrics":
            self._answer(200, generate_latest(), CONTENT_TYPE_LATEST)
            return
        check = {"/healthz": self.health.alive, "/readyz": self.health.ready}.get(self.path)
        if check is None:
            self._answer(404, b'{"error": "not found: /healthz, /readyz, /metrics"}')
            return
        ok, body = check()
        body["status"] = "ok" if ok else "unavailable"
        self._answer(200 if ok else 503, json.dumps(body).encode())

    def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - probes: no log line
        return None


class HealthServer:
    """The endpoints on a daemon thread. Port 0 takes a free port (:attr:`port` says which)."""

    def __init__(self, host: str, port: int, health: Health = HEALTH) -> None:
        handler = type("Handler", (_Handler,), {"health": health})
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            from stafet.errors import StafetError

            raise StafetError(
                f"the health endpoint cannot listen on {host}:{port} ({exc}); set "
                "STAFET_HEALTH_PORT to a free port (0: any)"
            ) from exc
        self._server.daemon_threads = True
        self.host, self.port = host, self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health", daemon=True
        )

    def start(self) -> HealthServer:
        self._thread.start()
        log.info(
            "health.listening", host=self.host, port=self.port, paths="/healthz /readyz /metrics"
        )
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_health(settings: Any, service: str) -> HealthServer | None:
    """Start this process's endpoints from the settings (``health_port`` < 0: none)."""
    if settings.health_port < 0:
        return None
    HEALTH.info["service"] = service
    return HealthServer(settings.health_host, settings.health_port).start()


async def beat_forever(interval_s: float = 5.0) -> None:
    """An asyncio task that proves the event loop still runs (``/healthz``)."""
    import asyncio

    while True:
        HEALTH.beat()
        await asyncio.sleep(interval_s)


class Listener(Protocol):
    """A network source (the MLLP and FHIR listeners)."""

    async def serve_forever(self) -> None: ...

    async def stop(self) -> None: ...


async def run_listener(settings: Any, service: str, listener: Listener) -> None:
    """Serve ``listener`` until cancelled, with this process's health endpoints and the event
    loop's heartbeat; stop it (draining what is in flight) on the way out."""
    import asyncio

    health = serve_health(settings, service)
    beating = asyncio.ensure_future(beat_forever())
    try:
        await listener.serve_forever()
    finally:
        beating.cancel()
        await listener.stop()
        if health is not None:
            health.stop()


# --- reading them back (the demo's report, tests, the console) ---------------------------------

Sample = tuple[str, frozenset[tuple[str, str]]]


def scrape(host: str, port: int, timeout_s: float = 5.0) -> dict[Sample, float]:
    """A process's ``/metrics`` as {(sample name, labels): value}."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    with urlopen(f"http://{host}:{port}/metrics", timeout=timeout_s) as response:  # noqa: S310
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def probe(host: str, port: int, path: str, timeout_s: float = 5.0) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of ``/healthz`` or ``/readyz``."""
    from urllib.error import HTTPError
    from urllib.request import urlopen

    try:
        with urlopen(f"http://{host}:{port}{path}", timeout=timeout_s) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def total(samples: dict[Sample, float], name: str, **labels: str) -> float:
    """The sum of every sample called ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)
