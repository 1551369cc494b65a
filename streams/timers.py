"""The referral scheduler: turns the due times on ``timers.referral`` into ``tick`` events.

It runs beside the stream engine in every worker. It reads ``timers.referral`` (compacted,
read_committed: only times whose transaction committed) from the beginning and keeps the latest
due time per referral; every ``referral_timer_interval_s`` it puts a tick on
``events.referral`` for each time that has come. The referral step decides what the tick means
(a deadline alert, an expired parked decision, or nothing) and clears or moves the timer in its
own transaction. A tick is idempotent, so a tick sent twice (two workers, a restart before the
clear arrived) changes nothing; a timer still set ``retry_s`` after its tick is ticked again.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from stafet.kafka.client import PARTITIONER
from stafet.kafka.topics import TIMERS_REFERRAL
from stafet.logging import get_logger
from stafet.streams.referrals import tick_output

log = get_logger(__name__)


class TimerBook:
    """The latest due time per timer key, and when each was last ticked (pure, no Kafka)."""

    def __init__(self, retry_s: float) -> None:
        self.retry_s = retry_s
        self.timers: dict[bytes, dict[str, Any]] = {}
        self.fired: dict[bytes, float] = {}

    def update(self, key: bytes, value: bytes | None) -> None:
        self.fired.pop(key, None)
        if value is None:
            self.timers.pop(key, None)
        else:
            self.timers[key] = json.loads(value)

    def due(self, now: datetime, clock: float) -> list[dict[str, Any]]:
        """Timers whose time has come and which were not ticked in the last ``retry_s``."""
        out = []
        for key, timer in self.timers.items():
            if datetime.fromisoformat(timer["due_at"]) > now:
                continue
            if clock - self.fired.get(key, -1e18) < self.retry_s:
                continue
            self.fired[key] = clock
            out.append(timer)
        return out


class ReferralScheduler(threading.Thread):
    """A daemon thread: consume timers, produce ticks (idempotent producer, acks=all)."""

    def __init__(
        self,
        config: dict[str, Any],
        interval_s: float,
        retry_s: float | None = None,
        group_id: str = "stafet-reader-timers",
    ) -> None:
        super().__init__(name="referral-scheduler", daemon=True)
        self.config = config
        self.interval_s = interval_s
        self.book = TimerBook(retry_s if retry_s is not None else max(30.0, 10 * interval_s))
        self.group_id = group_id
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._run()
            except Exception:  # a broker fault: start over (the book is rebuilt from the topic)
                log.exception("timers.failed")
                self.stopping.wait(5.0)

    def _run(self) -> None:
        consumer = Consumer(
            {
                **self.config,
                "group.id": self.group_id,
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "log_level": 3,
            }
        )
        producer = Producer(
            {
                **self.config,
                "enable.idempotence": True,
                "acks": "all",
                "partitioner": PARTITIONER,
                "linger.ms": 5,
                "log_level": 3,
            }
        )
        try:
            metadata = consumer.list_topics(TIMERS_REFERRAL, timeout=30)
            partitions = sorted(metadata.topics[TIMERS_REFERRAL].partitions)
            consumer.assign(
                [TopicPartition(TIMERS_REFERRAL, p, OFFSET_BEGINNING) for p in partitions]
            )
            self.book = TimerBook(self.book.retry_s)
            next_check = time.monotonic() + self.interval_s
            while not self.stopping.is_set():
                for msg in consumer.consume(500, timeout=min(0.5, self.interval_s)):
                    if msg.error():
                        if msg.error().code() != KafkaError._PARTITION_EOF:
                            log.warning("timers.read_error", error=str(msg.error()))
                        continue
                    self.book.update(msg.key(), msg.value())
                if time.monotonic() >= next_check:
                    self._fire(producer)
                    next_check = time.monotonic() + self.interval_s
        finally:
            producer.flush(10)
            consumer.close()

    def _fire(self, producer: Producer) -> None:
        due = self.book.due(datetime.now(UTC), time.monotonic())
        for timer in due:
            out = tick_output(timer["patient_key"], timer["referral_id"], timer["since"])
            producer.produce(out.topic, key=out.key, value=out.value)
        if due:
            producer.flush(10)
            log.info("timers.ticked", count=len(due))
