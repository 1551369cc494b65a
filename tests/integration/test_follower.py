"""stafet.kafka.follower against the real broker: from the beginning, then what arrives; never a
record of an aborted transaction; where it is, so a page can wait for what was committed."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from confluent_kafka import Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from stafet.kafka.client import as_admin, client_config
from stafet.kafka.follower import TopicFollower
from stafet.kafka.reader import end_offsets

pytestmark = pytest.mark.integration


def _topics(admin: AdminClient, *names: str, partitions: int = 2) -> None:
    for future in admin.create_topics([NewTopic(n, partitions, 1) for n in names]).values():
        future.result(30)


def _until(check, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.05)


def test_a_follower_reads_from_the_beginning_follows_and_skips_aborted_records(stack):
    settings = as_admin(stack.settings)
    prefix = f"test.follow.{uuid.uuid4().hex[:8]}"
    old, empty, later = f"{prefix}.old", f"{prefix}.empty", f"{prefix}.later"
    admin = AdminClient(client_config(settings))
    _topics(admin, old, empty)
    plain = Producer(client_config(settings))
    for n in range(5):
        plain.produce(old, f"before-{n}".encode(), key=f"k{n}".encode())
    plain.flush(30)
    seen: list[tuple[str, bytes]] = []
    lock = threading.Lock()

    def handle(msg: Message) -> None:
        if msg.value() == b"poison":
            raise ValueError("a record the index cannot read")
        with lock:
            seen.append((msg.topic() or "", msg.value() or b""))

    follower = TopicFollower(
        settings, lambda t: t.startswith(prefix), handle, name="test", refresh_s=1.0
    )
    thread = threading.Thread(target=follower.run, daemon=True)
    thread.start()
    try:
        assert follower.wait_ready(30), "ready: an empty partition and a full one read to the end"
        assert sorted(v for _, v in seen) == [f"before-{n}".encode() for n in range(5)]

        tx = Producer(client_config(settings, **{"transactional.id": f"test-follow-{prefix}"}))
        tx.init_transactions(30)
        tx.begin_transaction()
        tx.produce(old, b"aborted")
        tx.flush(30)
        tx.abort_transaction(30)
        tx.begin_transaction()
        tx.produce(old, b"poison")
        tx.produce(empty, b"committed")
        tx.flush(30)
        stable = end_offsets(settings, [old, empty], last_stable=True)
        _until(lambda: follower.caught_up(stable))  # past the aborted record and its marker,
        assert not follower.caught_up(end_offsets(settings, [old, empty]))  # not the open ones
        tx.commit_transaction(30)
        ends = end_offsets(settings, [old, empty], last_stable=True)
        _until(lambda: follower.caught_up(ends))  # past the commit markers too
        assert (empty, b"committed") in seen and all(v != b"aborted" for _, v in seen)
        assert follower.failed == 1, "the record its handler refused: skipped and counted"

        _topics(admin, later, partitions=1)  # a topic created after the start, and chosen
        plain.produce(later, b"new topic")
        plain.flush(30)
        _until(lambda: (later, b"new topic") in seen)
        assert (later, 0) in follower.partitions()
    finally:
        follower.stop()
        thread.join(10)
    assert not thread.is_alive()
    admin.delete_topics([old, empty, later])


def test_a_second_run_goes_on_where_the_first_stopped_without_reading_twice(stack):
    """The console retries a run that failed: its index must not get a record twice."""
    settings = as_admin(stack.settings)
    topic = f"test.follow.{uuid.uuid4().hex[:8]}.again"
    admin = AdminClient(client_config(settings))
    _topics(admin, topic)
    plain = Producer(client_config(settings))
    for n in range(4):
        plain.produce(topic, f"first-{n}".encode(), key=f"k{n}".encode())
    plain.flush(30)
    seen: list[bytes] = []
    follower = TopicFollower(settings, [topic], lambda m: seen.append(m.value() or b""), name="t")
    assert follower.run(follow=False) == 4
    for n in range(3):
        plain.produce(topic, f"second-{n}".encode(), key=f"k{n}".encode())
    plain.flush(30)
    assert follower.run(follow=False) == 7, "the 3 new ones, counted on from the first run"
    assert sorted(seen) == sorted(
        [f"first-{n}".encode() for n in range(4)] + [f"second-{n}".encode() for n in range(3)]
    )
    admin.delete_topics([topic])
