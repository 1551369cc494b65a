"""stafet.kafka.reader against the real broker: where "the end" of a partition is, when a
transaction is still open on it."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from stafet.kafka.client import as_admin, client_config
from stafet.kafka.reader import end_offsets, read_topics

pytestmark = pytest.mark.integration


def test_the_last_stable_offset_does_not_skip_an_open_transactions_records(stack):
    """A rewind (stafet replay) set at the high watermark would lie past a record the worker has
    written in a transaction that commits a moment later; a read_committed reader starting there
    would never see it. ``last_stable`` is the end such a reader must start from; the default
    (the high watermark) is a mark for what comes after now."""
    settings = as_admin(stack.settings)
    topic = f"test.reader.{uuid.uuid4().hex[:8]}"
    admin = AdminClient(client_config(settings))
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result(30)
    producer = Producer(client_config(settings, **{"transactional.id": f"test-reader-{topic}"}))
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, b"committed a moment later")
    producer.flush(30)  # on the broker, its transaction still open

    assert end_offsets(settings, [topic]) == {(topic, 0): 1}, "the high watermark: past it"
    mark = end_offsets(settings, [topic], last_stable=True)
    assert mark == {(topic, 0): 0}, "the open transaction's record lies at or after the end"

    producer.commit_transaction(30)
    received = read_topics(settings, mark, until=1, timeout_s=30)
    assert [r.value for r in received] == [b"committed a moment later"]
    admin.delete_topics([topic])
