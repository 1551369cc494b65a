"""Following topics inside a process: read them from the beginning, then everything that arrives.

For the in-memory indexes a process keeps of what Kafka holds — the FHIR listener's known
referrals, the console's index by patient key. Partitions are assigned (never a consumer group,
never committed) and read ``read_committed``: a record of an aborted transaction is never
indexed. A follower knows where it is: :attr:`TopicFollower.ready` once it has read what every
partition held when it started, and :meth:`TopicFollower.caught_up` for a reader that must see
everything committed before a given moment (a console page after an action).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as KafkaPartition

from stafet.errors import StafetError
from stafet.kafka.client import KafkaTarget
from stafet.kafka.reader import reading_consumer
from stafet.logging import get_logger

log = get_logger(__name__)

Partition = tuple[str, int]
#: which topics to follow: a fixed list, or a test on a topic's name (new topics that pass it
#: are picked up within ``refresh_s``)
TopicChoice = Sequence[str] | Callable[[str], bool]


class TopicFollower:
    """Calls ``handle`` with every committed record of the chosen topics, in offset order per
    partition, from one thread (:meth:`run`). ``handle`` raising is logged and the record
    skipped: an index must not stop on one record it cannot read."""

    def __init__(
        self,
        kafka: KafkaTarget,
        topics: TopicChoice,
        handle: Callable[[Message], None],
        *,
        name: str,
        group_prefix: str = "stafet-reader",
        refresh_s: float = 30.0,
    ) -> None:
        self._kafka = kafka
        self._choose = topics if callable(topics) else set(topics).__contains__
        self._fixed = None if callable(topics) else list(topics)
        self._handle = handle
        self.name = name
        self._group = f"{group_prefix}-{name}-{uuid.uuid4()}"
        self._refresh_s = refresh_s
        self._positions: dict[Partition, int] = {}  # next offset to read, per assigned partition
        self._pending: set[Partition] = set()  # not yet read to their end at assignment
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self.records = 0
        self.failed = 0

    # -- state, for other threads -----------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once every partition was read to the end it had when it was assigned."""
        return self._ready.is_set()

    def wait_ready(self, timeout_s: float) -> bool:
        return self._ready.wait(timeout_s)

    def stop(self) -> None:
        """Make :meth:`run` return within a poll interval."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def positions(self) -> dict[Partition, int]:
        with self._lock:
            return dict(self._positions)

    def partitions(self) -> list[Partition]:
        return list(self.positions())

    def behind(self, ends: Mapping[Partition, int]) -> int:
        """Records (offsets) between where this follower is and ``ends`` (last stable offsets:
        a read_committed reader cannot pass them), over the partitions it follows."""
        with self._lock:
            return sum(
                max(0, end - self._positions[tp])
                for tp, end in ends.items()
                if tp in self._positions
            )

    def caught_up(self, ends: Mapping[Partition, int]) -> bool:
        return self.behind(ends) == 0

    # -- the reading thread -----------------------------------------------------------------

    def run(self, *, follow: bool = True, timeout_s: float = 30.0) -> int:
        """Read from the beginning; with ``follow`` keep reading until :meth:`stop`, else return
        once :attr:`ready`. Blocking (run it in a thread). Raises :class:`StafetError` when Kafka
        does not answer at the start, or (without ``follow``) no record comes for
        ``timeout_s`` while partitions are unread. Returns the records handled."""
        consumer = reading_consumer(self._kafka, self._group)
        try:
            started = time.monotonic()
            resumed = self.positions()  # a second run (after an error) goes on where it was
            if resumed:
                with self._lock:
                    self._pending |= set(resumed)  # read to their ends again before returning
                consumer.incremental_assign(
                    [KafkaPartition(t, p, o or OFFSET_BEGINNING) for (t, p), o in resumed.items()]
                )
            self._assign_new(consumer, timeout_s)
            last_record = last_refresh = time.monotonic()
            while not self._stop.is_set():
                if not self._pending:
                    if not self._ready.is_set():
                        self._ready.set()
                        seconds = time.monotonic() - started
                        log.info(
                            "kafka.follower_ready",
                            follower=self.name,
                            partitions=len(self._positions),
                            records=self.records,
                            seconds=round(seconds, 2),
                            records_per_s=round(self.records / max(seconds, 1e-3)),
                        )
                    if not follow:
                        break
                if follow and time.monotonic() - last_refresh > self._refresh_s:
                    last_refresh = time.monotonic()
                    self._assign_new(consumer, 5.0, quiet=True)
                msg = consumer.poll(0.2)
                if msg is None:
                    self._advance(consumer)
                    if not follow and time.monotonic() - last_record > timeout_s:
                        raise StafetError(
                            f"{self.name}: no record for {timeout_s:.0f}s with "
                            f"{len(self._pending)} partitions unread"
                        )
                    continue
                last_record = time.monotonic()
                self._take(msg)
            log.info("kafka.follower_stopped", follower=self.name, records=self.records)
            return self.records
        except KafkaException as exc:
            raise StafetError(f"{self.name}: cannot read from Kafka: {exc}") from exc
        finally:
            consumer.close()

    def _take(self, msg: Message) -> None:
        tp = (msg.topic() or "", msg.partition() or 0)
        error = msg.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                with self._lock:
                    self._positions[tp] = max(self._positions.get(tp, 0), msg.offset() or 0)
                    self._pending.discard(tp)
            else:
                log.warning("kafka.follower_error", follower=self.name, error=str(error))
            return
        try:
            self._handle(msg)
        except Exception as exc:  # one unreadable record must not stop the index
            self.failed += 1
            log.warning(
                "kafka.follower_record_failed",
                follower=self.name,
                topic=tp[0],
                partition=tp[1],
                offset=msg.offset(),
                error=type(exc).__name__,
            )
        self.records += 1
        with self._lock:
            self._positions[tp] = max(self._positions.get(tp, 0), (msg.offset() or 0) + 1)

    def _advance(self, consumer: Consumer) -> None:
        """Positions from the consumer itself: past records never delivered (an aborted
        transaction's, commit and abort markers) when no EOF event says so yet."""
        with self._lock:
            partitions = [KafkaPartition(t, p) for t, p in self._positions]
        for tp in consumer.position(partitions):
            if tp.offset >= 0:
                key = (tp.topic, tp.partition)
                with self._lock:
                    self._positions[key] = max(self._positions.get(key, 0), tp.offset)

    def _assign_new(self, consumer: Consumer, timeout_s: float, *, quiet: bool = False) -> None:
        """Assign, from the beginning, every partition of a chosen topic not yet assigned."""
        deadline = time.monotonic() + timeout_s
        while True:  # short attempts, so stop() is not held up by an unreachable broker
            try:
                metadata = consumer.list_topics(timeout=1.0)
                break
            except KafkaException:
                if quiet:
                    return
                if self._stop.is_set() or time.monotonic() > deadline:
                    raise
        known = self.positions()
        new = [
            (topic, p)
            for topic, meta in sorted(metadata.topics.items())
            if meta.error is None and self._choose(topic)
            for p in sorted(meta.partitions)
            if (topic, p) not in known
        ]
        if self._fixed is not None and not known:
            for topic in self._fixed:
                if topic not in metadata.topics or metadata.topics[topic].error is not None:
                    log.warning("kafka.follower_topic_missing", follower=self.name, topic=topic)
        if not new:
            return
        with self._lock:
            for tp in new:
                self._positions[tp] = 0
                self._pending.add(tp)
        consumer.incremental_assign([KafkaPartition(t, p, OFFSET_BEGINNING) for t, p in new])
