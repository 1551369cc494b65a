"""Reading topics without joining a consumer group or committing anything, one module for it.

- :func:`read_to_end`: everything a topic holds when the call starts, from a point (the
  beginning, a time, given offsets) — the delivery tracker rebuilding its state from the audit
  topic, ``stafet audit``, ``stafet replay``, the FHIR listener's message-id index.
- :func:`read_topics` / :func:`read_topic`: what arrives after given offsets, until it is quiet —
  what a municipality's consumer sees (``stafet inbox``, the demo, the tests).
- :func:`end_offsets`: each partition's current end (the one offset helper).
- :func:`fetch_record`: the one record at topic/partition/offset (a resend).

Reads are ``read_committed``: records of aborted transactions are never seen.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from stafet.errors import StafetError
from stafet.kafka.client import KafkaTarget, resolve_config


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]
    offset: int

    def json(self) -> dict:
        return json.loads(self.value)


def reading_consumer(kafka: KafkaTarget, group_id: str, *, partition_eof: bool = True) -> Consumer:
    """An assign()-only consumer that never commits, reads ``read_committed`` and, with
    ``partition_eof``, reports each partition's end as an EOF event (a topic written in
    transactions ends in a commit marker, which is never delivered). ``group_id`` is never
    joined; librdkafka still looks its coordinator up, so it must be one the principal may
    DESCRIBE (``stafet-reader-…``; a municipality: ``municipality-<code>…``)."""
    return Consumer(
        resolve_config(
            kafka,
            **{
                "group.id": group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "log_level": 2,  # a reading tool: no connection-retry noise when the broker stops
                "enable.partition.eof": partition_eof,
            },
        )
    )


def _consumer(kafka: KafkaTarget, *, partition_eof: bool = False) -> Consumer:
    # under the principal's own group prefix (a municipality may use municipality-<code>*)
    prefix = resolve_config(kafka).get("sasl.username", "stafet")
    return reading_consumer(kafka, f"{prefix}-inbox-{uuid.uuid4()}", partition_eof=partition_eof)


def end_offsets(
    kafka: KafkaTarget, topics: list[str], timeout_s: float = 30.0, *, last_stable: bool = False
) -> dict[tuple[str, int], int]:
    """The current end of every partition of ``topics``, retrying while a new topic's partitions
    are still electing leaders. Two ends differ while a transaction is open on a partition:

    - the high watermark (default): past every record written so far, committed or not — a mark
      for "what comes after now" (the demo, the tests);
    - ``last_stable``: where a read_committed reader stops — a record of an open transaction
      lies at or after it, so a reader starting there still gets it once it commits (``stafet
      replay``'s rewind, :func:`read_to_end`)."""
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
            isolation = (
                IsolationLevel.READ_COMMITTED if last_stable else IsolationLevel.READ_UNCOMMITTED
            )
            result = admin.list_offsets(request, isolation_level=isolation, request_timeout=10)
            return {(tp.topic, tp.partition): f.result().offset for tp, f in result.items()}
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def read_to_end(
    config: dict[str, Any],
    topic: str,
    *,
    since_ms: int | None = None,
    from_offsets: dict[int, int] | None = None,
    timeout_s: float = 60.0,
) -> Iterator[Message]:
    """Every record of ``topic`` that exists when the call starts — from ``since_ms`` (epoch
    milliseconds) or from ``from_offsets`` ({partition: first offset}; partitions not named are
    read from the beginning), if given — partition by partition in offset order."""
    consumer = reading_consumer(config, f"stafet-reader-{uuid.uuid4()}")
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s)
        if topic not in metadata.topics or metadata.topics[topic].error is not None:
            raise StafetError(
                f"topic {topic} is not readable: "
                f"{metadata.topics.get(topic) and metadata.topics[topic].error}"
            )
        partitions = [
            TopicPartition(topic, p, OFFSET_BEGINNING)
            for p in sorted(metadata.topics[topic].partitions)
        ]
        if from_offsets is not None:
            partitions = [
                TopicPartition(
                    topic, tp.partition, from_offsets.get(tp.partition, OFFSET_BEGINNING)
                )
                for tp in partitions
            ]
        elif since_ms is not None:
            partitions = consumer.offsets_for_times(
                [TopicPartition(topic, tp.partition, since_ms) for tp in partitions],
                timeout=timeout_s,
            )
        stable = end_offsets(config, [topic], timeout_s, last_stable=True)
        ends = {p: end for (_, p), end in stable.items()}
        todo = {
            tp.partition
            for tp in partitions
            if tp.offset >= 0
            and tp.offset < ends[tp.partition]
            or tp.offset == OFFSET_BEGINNING
            and ends[tp.partition] > 0
        }
        consumer.assign([tp for tp in partitions if tp.partition in todo])
        deadline = time.monotonic() + timeout_s  # moves on with every record: a long topic
        while todo:  # is fine, a stalled read is not
            if time.monotonic() > deadline:
                raise StafetError(f"reading {topic} made no progress for {timeout_s:.0f}s")
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            deadline = time.monotonic() + timeout_s
            eof = msg.error() is not None and msg.error().code() == KafkaError._PARTITION_EOF
            if msg.error() and not eof:
                raise StafetError(f"reading {topic}: {msg.error()}")
            if not eof and msg.offset() < ends[msg.partition()]:
                yield msg
            if msg.partition() in todo and (eof or msg.offset() >= ends[msg.partition()] - 1):
                todo.discard(msg.partition())
                consumer.incremental_unassign([TopicPartition(topic, msg.partition())])
    except KafkaException as exc:
        raise StafetError(f"reading {topic}: {exc}") from exc
    finally:
        consumer.close()


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


def fetch_record(
    config: dict[str, Any], topic: str, partition: int, offset: int, timeout_s: float = 30.0
) -> Message:
    """The one record at ``topic/partition/offset`` (for a resend of what was delivered)."""
    consumer = Consumer(
        {
            **config,
            "group.id": f"stafet-reader-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "log_level": 2,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                raise StafetError(f"reading {topic}/{partition}/{offset}: {msg.error()}")
            if msg.offset() == offset:
                return msg
            raise StafetError(f"{topic}/{partition}/{offset} no longer exists (retention?)")
        raise StafetError(f"{topic}/{partition}/{offset} was not read in {timeout_s:.0f}s")
    finally:
        consumer.close()
