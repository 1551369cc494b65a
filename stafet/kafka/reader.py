"""Read a topic from a point (the beginning, a time, or given offsets) up to its current end.

Used where a process must see everything already written before it goes on: the delivery
tracker rebuilding its state from the audit topic, ``stafet audit`` and ``stafet replay``.
No consumer group is joined and nothing is committed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from stafet.errors import StafetError


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
    consumer = Consumer(
        {
            **config,
            "group.id": f"stafet-reader-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # a topic written in transactions ends in a commit marker, which is
            # never delivered: the end of a partition is its EOF event
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "log_level": 2,
        }
    )
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
        ends = {
            tp.partition: _high_watermark(consumer, TopicPartition(topic, tp.partition), timeout_s)
            for tp in partitions
        }
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


def _high_watermark(consumer: Consumer, tp: TopicPartition, timeout_s: float) -> int:
    """The partition's end offset, waiting out a leader election (a topic created a moment ago
    answers 'not leader' until its partitions have one)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return int(consumer.get_watermark_offsets(tp, timeout=timeout_s)[1])
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


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
