"""The stall watchdog's decision: waiting records and a committed offset that does not move."""

from __future__ import annotations

from stafet.streams.stall import StallDetector

TP = ("ingest.hl7v2", 2)


def test_a_partition_with_waiting_records_and_no_progress_stalls_after_the_timeout():
    d = StallDetector(timeout_s=30)
    assert d.observe({TP: 8}, {TP: 19}, now=0) == []
    assert d.observe({TP: 8}, {TP: 19}, now=29) == []
    assert d.observe({TP: 8}, {TP: 19}, now=30) == [TP]


def test_progress_or_an_empty_backlog_resets_the_clock():
    d = StallDetector(timeout_s=30)
    d.observe({TP: 8}, {TP: 19}, now=0)
    assert d.observe({TP: 9}, {TP: 19}, now=25) == []  # it moved: a slow backlog, not a stall
    assert d.observe({TP: 9}, {TP: 19}, now=50) == []
    assert d.observe({TP: 9}, {TP: 19}, now=55) == [TP]
    assert d.observe({TP: 19}, {TP: 19}, now=60) == []  # caught up
    assert d.observe({TP: 19}, {TP: 25}, now=61) == []  # new records: the clock starts again
    assert d.observe({TP: 19}, {TP: 25}, now=90) == []


def test_a_partition_the_group_never_committed_is_not_judged():
    d = StallDetector(timeout_s=30)
    assert d.observe({}, {TP: 5}, now=0) == [] and d.observe({}, {TP: 5}, now=100) == []


# --- the offset guard ------------------------------------------------------------------------

import asyncio  # noqa: E402

import pytest  # noqa: E402

from stafet.streams.offset_guard import OffsetGap, OffsetGuard  # noqa: E402


def _guard(committed: dict[tuple[str, int], int]) -> tuple[OffsetGuard, list]:
    guard = OffsetGuard({}, "stafet")
    asked: list = []

    def fake(topic: str, partition: int) -> int:
        asked.append((topic, partition))
        return committed[(topic, partition)]

    guard._committed = fake  # type: ignore[method-assign]
    return guard, asked


def test_consecutive_records_pass_without_asking_the_broker():
    guard, asked = _guard({("ingest.hl7v2", 0): 65})
    for offset in (65, 66, 67):
        asyncio.run(guard.check("ingest.hl7v2", 0, offset))
    assert asked == [("ingest.hl7v2", 0)]  # only the first, after the start


def test_a_record_beyond_the_commit_is_refused_a_replay_is_fine():
    guard, _ = _guard({("ingest.hl7v2", 0): 65})
    with pytest.raises(OffsetGap, match="offset 77 .* committed only up to 65"):
        asyncio.run(guard.check("ingest.hl7v2", 0, 77))  # the prefetched record after a rebalance
    asyncio.run(guard.check("ingest.hl7v2", 0, 65))
    asyncio.run(guard.check("ingest.hl7v2", 0, 66))
    asyncio.run(guard.check("ingest.hl7v2", 0, 60))  # rewound by a rebalance: duplicates, fine


def test_a_jump_that_another_worker_committed_is_fine():
    committed = {("events.encounter", 2): 40}
    guard, _ = _guard(committed)
    asyncio.run(guard.check("events.encounter", 2, 40))
    committed[("events.encounter", 2)] = 71  # the partition was away; its new owner committed
    asyncio.run(guard.check("events.encounter", 2, 71))
