"""The stall watchdog reacts to Faust's own stall reports (as Faust words them) and nothing else."""

from __future__ import annotations

import logging

from faust.transport.drivers import aiokafka as driver

from stafet.streams.stall import StallHandler


def _logger(handler: StallHandler) -> logging.Logger:
    logger = logging.getLogger("test.stall")
    logger.handlers[:] = [handler]
    logger.propagate = False
    return logger


def test_faust_stall_reports_trip_it():
    handler = StallHandler(exit_process=False)
    log = _logger(handler)
    tp = "TP(topic='events.encounter', partition=2)"
    log.error("[^---AIOKafkaConsumerThread]: " + driver.SLOW_PROCESSING_NO_FETCH_SINCE_START,
              tp, "2.1 minutes ago")
    log.error(driver.SLOW_PROCESSING_NO_RECENT_FETCH, tp, "70 seconds ago")
    log.error(driver.SLOW_PROCESSING_STREAM_IDLE + " more explanation", tp, "61 seconds ago")
    assert len(handler.tripped) == 3
    assert "events.encounter" in handler.tripped[0]


def test_other_errors_and_warnings_do_not():
    handler = StallHandler(exit_process=False)
    log = _logger(handler)
    log.error("Heartbeat failed for group stafet because it is rebalancing")
    log.error(driver.SLOW_PROCESSING_NO_HIGHWATER_SINCE_START, "tp", "now")  # no data yet
    log.warning(driver.SLOW_PROCESSING_NO_RECENT_FETCH, "tp", "now")  # below ERROR
    assert handler.tripped == []
