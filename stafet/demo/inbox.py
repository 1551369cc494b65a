"""Read what a municipality (or any subscriber) received, the way it would: a Kafka consumer."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from stafet.errors import StafetError
from stafet.kafka.client import KafkaTarget, resolve_config
from stafet.systems import CPR_SYSTEM


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]
    offset: int

    def json(self) -> dict:
        return json.loads(self.value)


def _consumer(kafka: KafkaTarget, *, partition_eof: bool = False) -> Consumer:
    config = resolve_config(kafka)
    # assign() only, never committed; still under the principal's own group prefix, because
    # librdkafka looks the group's coordinator up (a municipality may use municipality-<code>*)
    prefix = config.get("sasl.username", "stafet")
    return Consumer(
        resolve_config(
            config,
            **{
                "group.id": f"{prefix}-inbox-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "log_level": 2,  # a reading tool: no connection-retry noise when the broker stops
                "enable.partition.eof": partition_eof,
            },
        )
    )


def end_offsets(
    kafka: KafkaTarget, topics: list[str], timeout_s: float = 30.0
) -> dict[tuple[str, int], int]:
    """The current end offset of every partition of ``topics`` (retrying while a new topic's
    partitions are still electing leaders)."""
    admin = AdminClient(resolve_config(kafka, log_level=2))  # tools: no retry noise
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            metadata = admin.list_topics(timeout=10)
            hidden = [t for t in topics if t not in metadata.topics]
            if hidden:  # not created yet, or this principal may not describe it (ACLs)
                if time.monotonic() > deadline:
                    raise StafetError(f"no such topic, or no access to it: {', '.join(hidden)}")
                time.sleep(0.5)
                continue
            request = {
                TopicPartition(t, p): OffsetSpec.latest()
                for t in topics
                for p in metadata.topics[t].partitions
            }
            result = admin.list_offsets(request, request_timeout=10)
            return {(tp.topic, tp.partition): f.result().offset for tp, f in result.items()}
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def read_topics(
    kafka: KafkaTarget,
    start: dict[tuple[str, int], int],
    *,
    idle_s: float = 3.0,
    until: int | None = None,
    timeout_s: float = 60.0,
) -> list[Received]:
    """Records after the ``start`` offsets; stop after ``until`` records, or ``idle_s`` quiet
    once every partition has been read to its end (what was there when the read began is
    always read, however slowly the consumer starts), or ``timeout_s`` in all."""
    consumer = _consumer(kafka, partition_eof=True)
    consumer.assign([TopicPartition(t, p, o) for (t, p), o in start.items()])
    not_at_end = set(start)
    out: list[Received] = []
    deadline = time.monotonic() + timeout_s
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            if until is not None and len(out) >= until:
                break
            if until is None and not not_at_end and time.monotonic() - last > idle_s:
                break
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():  # at its end (EOF), or unreadable: nothing more to wait for there
                if not_at_end and msg.topic() is not None:
                    not_at_end.discard((msg.topic(), msg.partition()))
                    if not not_at_end:
                        last = time.monotonic()
                continue
            last = time.monotonic()
            out.append(
                Received(
                    msg.topic(),
                    msg.key(),
                    msg.value(),
                    {k: v for k, v in (msg.headers() or [])},
                    msg.offset(),
                )
            )
        return out
    finally:
        consumer.close()


def read_topic(
    kafka: KafkaTarget, topic: str, *, from_beginning: bool = True, idle_s: float = 3.0
) -> Iterator[Received]:
    ends = end_offsets(kafka, [topic])
    start = {tp: (0 if from_beginning else end) for tp, end in ends.items()}
    yield from read_topics(kafka, start, idle_s=idle_s, timeout_s=3600)


def masked_cpr(cpr: str) -> str:
    return f"{cpr[:6]}-****" if len(cpr) == 10 else "****"


def summarize(record: Received) -> dict:
    """What a caseworker would see first: event, patient (CPR masked), message id."""
    bundle = record.json()
    resources = {e["resource"]["resourceType"]: e["resource"] for e in bundle["entry"]}
    patient = resources.get("Patient", {})
    cpr = next(
        (i["value"] for i in patient.get("identifier", []) if i.get("system") == CPR_SYSTEM),
        "",
    )
    name = patient.get("name", [{}])[0]
    encounter = resources.get("Encounter", {})
    return {
        "event": record.headers.get("stafet.event_code", b"").decode(),
        "message_id": resources.get("MessageHeader", {}).get("id"),
        "patient": " ".join([*name.get("given", []), name.get("family", "")]).strip(),
        "cpr": masked_cpr(cpr),
        "encounter": f"{encounter.get('class', {}).get('code')}/{encounter.get('status')}",
        "deceased": patient.get("deceasedBoolean", False),
    }


def uncommitted_count(
    kafka: KafkaTarget,
    since: dict[tuple[str, int], int],
    topics: list[str],
    timeout_s: float = 60.0,
) -> int:
    """Records on ``topics`` after ``since`` as a read_uncommitted consumer sees them (the
    fault tests subtract what read_committed saw: the records of aborted transactions)."""
    consumer = Consumer(
        resolve_config(
            kafka,
            **{
                "group.id": f"stafet-reader-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "isolation.level": "read_uncommitted",
                "enable.partition.eof": True,
                "log_level": 2,
            },
        )
    )
    parts = [TopicPartition(t, p, o) for (t, p), o in since.items() if t in topics]
    consumer.assign(parts)
    open_parts, count = {(tp.topic, tp.partition) for tp in parts}, 0
    deadline = time.monotonic() + timeout_s
    try:
        while open_parts and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    open_parts.discard((msg.topic(), msg.partition()))
                continue
            count += 1
    finally:
        consumer.close()
    return count
