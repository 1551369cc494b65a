"""Replay: everything a subscriber was sent since a point in time, again, with the same ids.

For a REST or letter subscriber stafet sends the records of its topic from that time once more,
byte for byte (same Bundle.id and MessageHeader.id: a receiver that has them discards them and
answers with its original acknowledgement), in topic order, and audits each as ``replayed``.
For a Kafka subscriber it rewinds the subscriber's (stopped) consumer group to that time; the
subscriber then reads the same records again.
"""

from __future__ import annotations

import asyncio

import aiohttp
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from stafet.config import Settings
from stafet.connectors.sinks.channels import LetterOutbox, OutRecord, Recorder, RestHook
from stafet.errors import StafetError
from stafet.kafka.client import client_config
from stafet.kafka.producer import DurableProducer
from stafet.kafka.reader import end_offsets, read_to_end
from stafet.logging import get_logger
from stafet.subscribers import Subscriber

log = get_logger(__name__)


async def replay_pushed(
    settings: Settings,
    subscriber: Subscriber,
    since_ms: int | None = None,
    from_offsets: dict[int, int] | None = None,
) -> int:
    """Send again what ``subscriber`` was given since ``since_ms`` or from the positions
    ``from_offsets`` ({partition: offset}, as in each POST's ``X-Stafet-Position``); return how
    many."""
    records = await asyncio.to_thread(
        lambda: [
            OutRecord.from_message(m)
            for m in read_to_end(
                client_config(settings),
                subscriber.out_topic,
                since_ms=since_ms,
                from_offsets=from_offsets,
            )
        ]
    )
    records = [r for r in records if subscriber.takes(r.topic, r.recipient)]
    producer = DurableProducer(settings, timeout_s=10.0)
    recorder = Recorder(producer)
    sent = 0
    try:
        async with aiohttp.ClientSession() as session:
            channel = (
                RestHook(subscriber, session, settings.delivery_timeout_s)
                if subscriber.delivery == "rest"
                else LetterOutbox(subscriber, settings.outbox_dir)
            )
            for record in records:
                outcome = await channel.send(record.value, record, 1)
                if not outcome.delivered:
                    raise StafetError(
                        f"replay stopped at message {record.message_id} "
                        f"({sent} of {len(records)} sent): {outcome.detail}"
                    )
                await recorder.audit(
                    record.audit("replayed", subscriber.id, detail=outcome.detail), record.key
                )
                sent += 1
    finally:
        producer.close()
    log.info("replay.done", subscriber=subscriber.id, messages=sent)
    return sent


def rewind_group(
    settings: Settings,
    subscriber: Subscriber,
    group: str,
    since_ms: int | None,
    from_offsets: dict[int, int] | None = None,
) -> int:
    """Set ``group``'s offsets on the subscriber's topic to the first record at/after
    ``since_ms`` or to ``from_offsets`` (the group must have no running members); return the
    partitions moved."""
    config = client_config(settings)
    consumer = Consumer({**config, "group.id": f"stafet-rewind-{group}", "log_level": 2})
    try:
        metadata = consumer.list_topics(subscriber.out_topic, timeout=30)
        partitions = sorted(metadata.topics[subscriber.out_topic].partitions)
        if from_offsets is not None:
            wanted = [
                TopicPartition(subscriber.out_topic, p, from_offsets.get(p, 0)) for p in partitions
            ]
        else:
            wanted = consumer.offsets_for_times(
                [TopicPartition(subscriber.out_topic, p, since_ms or 0) for p in partitions],
                timeout=30,
            )
        # the last stable offset: a notification the worker has written in a transaction that
        # commits a moment later lies after it, and is replayed (the high watermark would skip it)
        stable = end_offsets(config, [subscriber.out_topic], last_stable=True)
        ends = {p: end for (_, p), end in stable.items()}
    finally:
        consumer.close()
    offsets = [
        TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else ends[tp.partition])
        for tp in wanted
    ]
    admin = AdminClient({**config, "log_level": 2})
    futures = admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, offsets)])
    try:
        for future in futures.values():
            future.result()
    except KafkaException as exc:
        raise StafetError(f"cannot rewind group {group} (stop its consumers first): {exc}") from exc
    return len(offsets)
