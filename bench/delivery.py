"""Delivery benchmark: how fast `stafet deliver` takes out.* records to REST subscribers.

Starts its own broker (free ports, temp dir), writes N HospitalNotification-sized records
(MedCom's STIN example, 12 KB, fresh ids each) onto municipality topics, then runs the delivery
service in-process against real HTTP receivers on loopback (HMAC checked, no acknowledgements)
and measures, per scenario: messages/s end to end, produce→receipt latency percentiles, CPU
seconds per 1,000 messages of this process. Scenarios: one subscriber; four subscribers at once
(isolation: each its own queue); one subscriber whose endpoint answers 503 for the first
seconds (catch-up rate after an outage).

    python -m bench.delivery [--n 2000]       # or: make bench-delivery

Prints a table and writes bench/results/delivery-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from bench.run import free_port, percentiles
from stafet.config import Settings
from stafet.connectors.sinks.delivery import DeliveryService
from stafet.kafka.local import LocalKafka
from stafet.kafka.producer import DurableProducer
from stafet.kafka.topics import ensure_topics, municipality_topic
from stafet.subscribers import new_secret, parse_registry
from stafet.webhooks import SignatureError, verify_headers

EXAMPLE = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "domain"
    / "medcom-examples"
    / "hospitalnotification"
    / "Bundle-a5e5b880-c087-4055-b9ec-99108695f81d.json"
)
RESULTS = Path(__file__).parent / "results"


class Endpoint:
    """A subscriber endpoint: records arrival times; can refuse (503) until a moment."""

    def __init__(self, secret: str, down_until: float = 0.0) -> None:
        self.secret, self.down_until = secret, down_until
        self.arrived: dict[str, float] = {}
        self.bad_signatures = 0
        self.port = free_port()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if time.time() < self.down_until:
            return web.Response(status=503)
        try:
            verify_headers(self.secret, request.headers, body)
        except SignatureError:
            self.bad_signatures += 1
            return web.Response(status=401)
        self.arrived.setdefault(request.headers["X-Stafet-Message-Id"], time.time())
        return web.Response(status=200)

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        return runner


async def produce(settings: Settings, codes: list[str], n: int) -> dict[str, float]:
    """n records spread over the municipalities' topics; message id → produce time."""
    template = json.loads(EXAMPLE.read_text("utf-8"))
    producer = DurableProducer(settings, timeout_s=30.0)
    sent: dict[str, float] = {}
    try:
        pending = []
        for i in range(n):
            mid = str(uuid.uuid4())
            template["id"], template["entry"][0]["resource"]["id"] = str(uuid.uuid4()), mid
            body = json.dumps(template).encode()
            sent[mid] = time.time()
            pending.append(
                producer.send(
                    municipality_topic(codes[i % len(codes)]),
                    body,
                    key=f"patient-{i % 97}".encode(),
                    headers=[("stafet.message_id", mid.encode())],
                )
            )
            if len(pending) >= 500:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        producer.close()
    return sent


async def scenario(
    settings: Settings, name: str, codes: list[str], n: int, outage_s: float = 0.0
) -> dict[str, Any]:
    secret = new_secret()
    os.environ["STAFET_SECRET_BENCH"] = secret
    endpoints = {c: Endpoint(secret, time.time() + outage_s if outage_s else 0.0) for c in codes}
    runners = [await e.start() for e in endpoints.values()]
    run = uuid.uuid4().hex[:6]
    registry = parse_registry(
        {
            "defaults": {"municipalities": "none"},
            "subscriber": [
                {
                    "id": f"m{c}-{run}",
                    "name": c,
                    "party": "municipality",
                    "municipality": c,
                    "delivery": "rest",
                    "url": f"http://127.0.0.1:{e.port}/",
                    "secret_env": "STAFET_SECRET_BENCH",
                    "expects_ack": False,
                }
                for c, e in endpoints.items()
            ],
        }
    )
    service = DeliveryService(settings, registry)
    sent = await produce(settings, codes, n)  # the backlog is there before delivery starts …
    cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.time()
    await service.start()
    while sum(len(e.arrived) for e in endpoints.values()) < n and time.time() - t0 < 600:
        await asyncio.sleep(0.2)
    t1, cpu1 = time.time(), resource.getrusage(resource.RUSAGE_SELF)
    await service.stop()
    for r in runners:
        await r.cleanup()
    arrived = {m: t for e in endpoints.values() for m, t in e.arrived.items()}
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {
        "scenario": name,
        "subscribers": len(codes),
        "messages": n,
        "delivered": len(arrived),
        "seconds": round(t1 - t0, 2),
        "msgs_per_s": round(len(arrived) / (t1 - t0), 1),
        "per_subscriber_msgs_per_s": {
            c: round(len(e.arrived) / (t1 - t0), 1) for c, e in endpoints.items()
        },
        "backlog_drain_latency_ms": percentiles([arrived[m] - sent[m] for m in arrived]),
        "cpu_s_per_1000": round(cpu / max(1, len(arrived)) * 1000, 2),
        "bad_signatures": sum(e.bad_signatures for e in endpoints.values()),
        "outage_s": outage_s,
    }


async def main_async(n: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="stafet-bench-delivery-"))
    settings = Settings(
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        kafka_home=root / "kafka",
        log_level="ERROR",
        delivery_backoff_initial_s=0.5,
        delivery_backoff_max_s=2.0,
    )
    kafka = LocalKafka.from_settings(settings)
    kafka.start()
    try:
        ensure_topics(settings, settings.partitions)
        results = [
            await scenario(settings, "one subscriber", ["0751"], n),
            await scenario(
                settings, "four subscribers at once", ["0101", "0147", "0461", "0851"], n
            ),
            await scenario(
                settings, "one subscriber after a 10 s outage", ["0370"], n // 2, outage_s=10.0
            ),
        ]
    finally:
        kafka.stop()
    return {
        "run": time.strftime("%Y%m%d-%H%M%S"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="messages per scenario")
    args = parser.parse_args()
    from stafet.logging import configure_logging

    configure_logging("CRITICAL", json=True)
    out = asyncio.run(main_async(args.n))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"delivery-{out['run']}.json"
    path.write_text(json.dumps(out, indent=2), encoding="utf-8")
    print(
        f"\n{'scenario':<38} {'msgs':>6} {'msg/s':>8} {'p50 ms':>9} {'p99 ms':>9} {'CPU s/1k':>9}"
    )
    for r in out["results"]:
        lat = r["backlog_drain_latency_ms"]
        print(
            f"{r['scenario']:<38} {r['delivered']:>6} {r['msgs_per_s']:>8} "
            f"{lat['p50']:>9} {lat['p99']:>9} {r['cpu_s_per_1000']:>9}"
        )
    print(f"\n{path}")


if __name__ == "__main__":
    main()
