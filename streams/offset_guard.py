"""Refuse to skip records: an agent that is handed a record *beyond* the group's committed offset
stops the worker before that record is acknowledged.

The fault test found a lost record: after a second worker was SIGKILLed and its partitions moved
back, Faust handed the surviving worker records that had been fetched before the rebalance,
further on than the committed offset; once they were acknowledged Faust committed past the
records in between, which no worker ever processed (faust-streaming #221 and relatives: after a
reassignment Faust does not know the committed offset and commits the first run of acknowledged
offsets it has). So each agent checks every record's offset: the next one after the previous is
fine; after any jump (a restart, a rebalance) the group's committed offset is asked from the
broker, and a record beyond it means records in between would be skipped. The worker then exits
with 70 before acknowledging anything further; the restart resumes at the committed offset.
"""

from __future__ import annotations

import asyncio
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from stafet.errors import StafetError
from stafet.logging import get_logger

log = get_logger(__name__)


class OffsetGap(StafetError):
    """A record arrived although records before it were neither processed nor committed."""


class OffsetGuard:
    """Per input partition: the last offset this process handled."""

    def __init__(self, config: dict[str, Any], group: str) -> None:
        self._config, self.group = config, group
        self._admin: AdminClient | None = None
        self.last: dict[tuple[str, int], int] = {}

    async def check(self, topic: str, partition: int, offset: int) -> None:
        """Raise :class:`OffsetGap` if records before ``offset`` would be skipped."""
        tp = (topic, partition)
        previous = self.last.get(tp)
        if previous is not None and offset == previous + 1:
            self.last[tp] = offset
            return
        committed = await asyncio.to_thread(self._committed, topic, partition)
        if offset > committed:
            raise OffsetGap(f"{topic}/{partition}: handed offset {offset} but the group "
                            f"{self.group} has committed only up to {committed} (last handled "
                            f"here: {previous}); records in between would be skipped")
        self.last[tp] = offset

    def _committed(self, topic: str, partition: int) -> int:
        """The next offset the group would read: its commit, or the log start when there is none
        (or the commit was deleted by retention)."""
        if self._admin is None:
            self._admin = AdminClient({**self._config, "log_level": 2})
        tp = TopicPartition(topic, partition)
        [future] = self._admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(self.group, [tp])], request_timeout=10).values()
        [got] = future.result().topic_partitions
        [start] = self._admin.list_offsets({tp: OffsetSpec.earliest()},
                                           request_timeout=10).values()
        return max(got.offset, start.result().offset)


async def checked(event: Any) -> None:
    """The check for one Faust event (inside ``stop_on_failure``: a gap stops the worker)."""
    from stafet.streams.app import offset_guard

    message = event.message
    await offset_guard.check(message.topic, message.partition, message.offset)

