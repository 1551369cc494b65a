"""A stalled partition stops the worker for a restart, instead of waiting for the next rebalance.

Faust sometimes stops processing one input partition after a restart or rebalance although it
is assigned (faust-streaming #629, #583: records fetched before the rebalance are dropped from
its buffers while the fetch position moves on). Nothing is lost — the group's committed offset
stays before those records — but they wait until some later rebalance: minutes, or forever on a
quiet cluster. Faust's own livelock detector does not see this case (its fetch position is
current). This watchdog looks from outside, at what the broker knows: for every input partition
of the group, if records are waiting (end offset > committed offset) and the committed offset
has not moved for ``stall_timeout_s``, the worker exits with 70 like any failure that is not
the record's fault. The supervisor starts it again, it rejoins, and Faust resumes from the
committed offsets (deterministic ids and the tables make the replay harmless).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from stafet.logging import get_logger
from stafet.streams.replay_exit import exit_for_replay

log = get_logger(__name__)

TP = tuple[str, int]


class StallDetector:
    """Pure bookkeeping: which partitions have had waiting records and an unmoved committed
    offset for at least ``timeout_s``."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._since: dict[TP, tuple[int, float]] = {}  # tp → (committed offset, unchanged since)

    def observe(self, committed: Mapping[TP, int], ends: Mapping[TP, int], now: float) -> list[TP]:
        stalled = []
        for tp, end in ends.items():
            done = committed.get(tp, -1)
            if done < 0 or end <= done:  # nothing waiting (or never committed: not ours yet)
                self._since.pop(tp, None)
                continue
            offset, since = self._since.get(tp, (done, now))
            if offset != done:
                offset, since = done, now
            self._since[tp] = (offset, since)
            if now - since >= self.timeout_s:
                stalled.append(tp)
        return stalled


class StallWatchdog(threading.Thread):
    """Checks the group's committed offsets against the inputs' end offsets every
    ``interval_s`` and calls ``on_stall`` (default: exit 70) when a partition stalls."""

    def __init__(self, config: dict[str, Any], group: str, topics: list[str], timeout_s: float,
                 interval_s: float = 10.0,
                 on_stall: Callable[[list[TP]], None] | None = None) -> None:
        super().__init__(name="stall-watchdog", daemon=True)
        self.admin = AdminClient({**config, "log_level": 2})
        self.group, self.topics, self.interval_s = group, topics, interval_s
        self.detector = StallDetector(timeout_s)
        self.on_stall = on_stall or _exit_for_replay
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                committed, ends = self._offsets()
            except (KafkaException, KeyError, ValueError) as exc:  # broker away: try later
                log.info("worker.stall_check_skipped", error=str(exc)[:200])
                continue
            stalled = self.detector.observe(committed, ends, time.monotonic())
            if stalled:
                self.on_stall(stalled)

    def _offsets(self) -> tuple[dict[TP, int], dict[TP, int]]:
        [future] = self.admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(self.group)], request_timeout=10).values()
        committed = {(tp.topic, tp.partition): tp.offset
                     for tp in future.result().topic_partitions if tp.topic in self.topics}
        metadata = self.admin.list_topics(timeout=10)
        request = {TopicPartition(t, p): OffsetSpec.latest()
                   for t in self.topics for p in metadata.topics[t].partitions}
        ends = {(tp.topic, tp.partition): f.result().offset
                for tp, f in self.admin.list_offsets(request, request_timeout=10).items()}
        return committed, ends


def _exit_for_replay(stalled: list[TP]) -> None:
    exit_for_replay("worker.stalled_restarting", partitions=[f"{t}/{p}" for t, p in stalled])
