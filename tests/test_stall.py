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
