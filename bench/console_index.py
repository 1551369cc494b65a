"""The operator console's index (issue 13): how fast it takes records in, what it costs in memory
per record, and how long its queries take — one process, no Kafka, the records a real day
makes.

Each generated ADT message (the benchmark's synthetic population: fictitious CPRs) becomes what
the pipeline writes about it: its event on ``events.encounter`` (Avro, as the worker writes it),
the HospitalNotification on the municipality's ``out.municipality.<code>`` and three audit lines
(published, delivered to a REST subscriber, acknowledged). The index is fed those records as its
follower would, and then asked what the pages ask.

    .venv/bin/python -m bench.console_index [--events N] [--kafka-events M]

With ``--kafka-events`` (default 20,000; 0: skip) it also starts its own broker (free ports,
temp dir), writes that many events' records — each notification with the size of MedCom's
12 KB STIN example — and times the console's follower from its start to ready: what a console
restart costs. Writes ``bench/results/console-index-<timestamp>.json`` and prints the figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import time
import tracemalloc
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.load import LoadGenerator

SECRET = "bench-console-index"
RESULTS = Path(__file__).parent / "results"


@dataclass(slots=True)
class Rec:
    """A record as the index reads one (the Record protocol of stafet.console.records)."""

    topic_: str
    offset_: int
    key_: bytes
    value_: bytes
    headers_: list[tuple[str, bytes | None]] = field(default_factory=list)
    ts_ms: int = 0

    def topic(self) -> str:
        return self.topic_

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self.offset_

    def key(self) -> bytes:
        return self.key_

    def value(self) -> bytes:
        return self.value_

    def headers(self) -> list[tuple[str, bytes | None]]:
        return self.headers_

    def timestamp(self) -> tuple[int, int]:
        return (1, self.ts_ms)


def records(n: int, seed: int = 13) -> tuple[list[Rec], list[str]]:
    """The records ``n`` ADT messages make in the pipeline, in the order they would be read."""
    from stafet.audit import AuditRecord
    from stafet.inbound.hl7v2_referral import parse_hl7v2
    from stafet.schemas.codec import encode

    gen = LoadGenerator(seed=seed, run_id="C", referral_share=0.0, invalid_share=0.0)
    out: list[Rec] = []
    keys: list[str] = []
    t0 = int(datetime(2026, 12, 1, tzinfo=UTC).timestamp() * 1000)
    for i in range(n):
        item = next(gen)
        event = parse_hl7v2(item.message, secret=SECRET, default_charset=item.charset)
        key = event.patient_key.encode()
        keys.append(event.patient_key)
        code = event.patient.municipality_code  # type: ignore[union-attr]
        ts = t0 + i * 1000
        mid = str(uuid.uuid4())
        at = datetime.fromtimestamp(ts / 1000, UTC).isoformat()
        topic = f"out.municipality.{code}"
        out.append(Rec("events.encounter", i, key, encode("encounter_event", event.to_record())))
        out.append(
            Rec(
                topic,
                i,
                key,
                b"{}",
                [
                    ("stafet.kind", b"HospitalNotification"),
                    ("stafet.message_id", mid.encode()),
                    ("stafet.event_code", event.notification_code.encode()),  # type: ignore[union-attr]
                ],
                ts,
            )
        )
        for j, (action, subscriber) in enumerate(
            (("published", f"municipality-{code}"), ("delivered", "gp-rest"), ("ack-ok", ""))
        ):
            line = AuditRecord(
                action,  # type: ignore[arg-type]
                subscriber,
                mid,
                at=at,
                kind="HospitalNotification",
                recipient=f"urn:oid:1.2.208.176.1.2|{code}",
                recipient_kind="municipality",
                event_id=str(event.event_id),
                topic=topic,
                partition=0,
                offset=i,
                attempt=1,
                detail="200" if action == "delivered" else "",
            )
            out.append(Rec("audit.delivery", 3 * i + j, key, line.encode(), ts_ms=ts))
    return out, keys


def _percentiles(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {
        "p50_ms": round(statistics.median(samples) * 1000, 3),
        "p99_ms": round(samples[int(len(samples) * 0.99) - 1] * 1000, 3),
        "max_ms": round(samples[-1] * 1000, 3),
    }


def measure(events: int) -> dict[str, Any]:
    from stafet.console.index import ConsoleIndex

    t = time.perf_counter()
    recs, keys = records(events)
    generated_s = time.perf_counter() - t
    index = ConsoleIndex()
    t = time.perf_counter()
    for rec in recs:
        index.apply(rec)
    apply_s = time.perf_counter() - t  # the clock without tracemalloc, which slows it
    del index
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    index = ConsoleIndex()
    for rec in recs:
        index.apply(rec)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    rng = random.Random(1)
    sample = [rng.choice(keys) for _ in range(500)]

    def timed(fn: Any, args: list[Any]) -> list[float]:
        times = []
        for a in args:
            t = time.perf_counter()
            fn(a)
            times.append(time.perf_counter() - t)
        return times

    trail_rows = [len(index.trail(k)[0]) for k in sample]
    message_ids = [
        line.record.message_id for k in sample[:100] for line in index.audit_lines(key=k)
    ]
    return {
        "events": events,
        "records": len(recs),
        "size": index.size(),
        "generate_s": round(generated_s, 1),
        "apply_us_per_record": round(apply_s / len(recs) * 1e6, 1),
        "apply_records_per_s": round(len(recs) / apply_s),
        "held_bytes_per_record": round(held / len(recs)),
        "held_bytes_per_event": round(held / events),
        "held_mb": round(held / 2**20, 1),
        "trail": {
            **_percentiles(timed(index.trail, sample)),
            "rows_mean": statistics.mean(trail_rows),
        },
        "search_by_message_id": _percentiles(
            timed(lambda m: index.audit_lines(message_id=m), message_ids[:500])
        ),
        "residents": _percentiles(timed(index.residents, ["0751", "0101", "0461"] * 20)),
        "subscribers": _percentiles(timed(lambda _: index.subscribers(), list(range(20)))),
        "dead_letters": _percentiles(timed(lambda _: index.dead_letters(), list(range(20)))),
    }


def _produce(settings: Any, recs: list[Rec]) -> float:
    """Write the records fast (batched, one flush at the end): the read side is measured."""
    from confluent_kafka import Producer

    from bench.delivery import EXAMPLE
    from stafet.kafka.client import client_config

    bundle = EXAMPLE.read_bytes()  # the index reads headers only; Kafka carries the body
    producer = Producer(
        client_config(settings, **{"linger.ms": 50, "compression.type": "lz4", "acks": "all"})
    )
    t = time.perf_counter()
    for rec in recs:
        value = bundle if rec.topic_.startswith("out.") else rec.value_
        while True:
            try:
                producer.produce(rec.topic_, value, key=rec.key_, headers=rec.headers_)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("records not written")
    return time.perf_counter() - t


def measure_kafka(events: int) -> dict[str, Any]:
    """The follower against a real broker: start to ready over ``events`` events' records."""
    import shutil
    import tempfile
    import threading

    from bench.run import free_port
    from stafet.config import Settings
    from stafet.console.index import ConsoleIndex, followed
    from stafet.kafka.client import client_config
    from stafet.kafka.follower import TopicFollower
    from stafet.kafka.local import LocalKafka
    from stafet.kafka.topics import ensure_topics

    root = Path(tempfile.mkdtemp(prefix="stafet-bench-console-"))
    settings = Settings(
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        kafka_home=root / "kafka",
        log_level="ERROR",
    )
    kafka = LocalKafka.from_settings(settings)
    kafka.start()
    try:
        ensure_topics(settings, settings.partitions)
        recs, _ = records(events, seed=17)
        produce_s = _produce(settings, recs)
        index = ConsoleIndex()
        follower = TopicFollower(client_config(settings), followed, index.apply, name="bench")
        t = time.perf_counter()
        thread = threading.Thread(target=follower.run, daemon=True)
        thread.start()
        follower.wait_ready(600)
        ready_s = time.perf_counter() - t
        # what each page pays first: the last stable offsets of every followed partition
        from stafet.console.data import ConsoleData

        data = ConsoleData(settings)
        fresh = []
        for _ in range(20):
            t = time.perf_counter()
            ends = data._stable_ends(follower.partitions())
            fresh.append(time.perf_counter() - t)
        assert follower.caught_up(ends)
        follower.stop()
        thread.join(10)
        return {
            "events": events,
            "records": len(recs),
            "partitions": len(follower.partitions()),
            "produce_s": round(produce_s, 1),
            "start_to_ready_s": round(ready_s, 2),
            "records_per_s": round(index.records / ready_s),
            "page_freshness_check": _percentiles(fresh[1:]),  # the first opens the connection
            "indexed": index.size(),
        }
    finally:
        kafka.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--kafka-events", type=int, default=20_000)
    args = parser.parse_args()
    from stafet.logging import configure_logging

    configure_logging("WARNING")
    result = measure(args.events)
    if args.kafka_events:
        result["kafka"] = measure_kafka(args.kafka_events)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"console-index-{stamp}.json"
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
