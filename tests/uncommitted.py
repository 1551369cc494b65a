"""What the fault tests count besides what a read_committed consumer sees: records of aborted
transactions (visible only to read_uncommitted)."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, KafkaError, TopicPartition

from stafet.kafka.client import KafkaTarget, resolve_config


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
