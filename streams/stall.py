"""A stalled partition stops the worker for a restart, instead of waiting for the next rebalance.

Faust/aiokafka sometimes stop fetching one partition after a rebalance (faust-streaming #629:
"partitions are not sending fetch requests since initial start"); its records then wait until
some later rebalance — minutes, or forever on a quiet cluster. Faust notices (its livelock
detector logs "Aiokafka has not sent fetch request …", "Aiokafka stopped fetching …" or "Stream
stopped processing …" once ``stream_processing_timeout`` has passed) but only logs. This log
handler turns those lines into an exit with code 70, like any failure that is not the record's
fault: the supervisor starts the worker again, it rejoins, and the records are read from the
committed offsets (deterministic ids and the tables make the replay harmless).
"""

from __future__ import annotations

import logging
import os

from stafet.logging import get_logger
from stafet.streams.dead_letter import EXIT_REPLAY

log = get_logger(__name__)

STALL_MARKERS = ("Aiokafka has not sent fetch request", "Aiokafka stopped fetching",
                 "Stream stopped processing")


class StallHandler(logging.Handler):
    """Exits the process on Faust's stall reports."""

    def __init__(self, exit_process: bool = True) -> None:
        super().__init__(level=logging.ERROR)
        self.exit_process = exit_process
        self.tripped: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = str(record.msg)
        if not any(marker in message for marker in STALL_MARKERS):
            return
        text = record.getMessage().splitlines()[0][:300]
        self.tripped.append(text)
        if self.exit_process:
            log.critical("worker.stalled_restarting", detail=text)
            logging.shutdown()
            os._exit(EXIT_REPLAY)


def install() -> StallHandler:
    """Watch the aiokafka driver's logger (where Faust reports stalls)."""
    handler = StallHandler()
    logging.getLogger("faust.transport.drivers.aiokafka").addHandler(handler)
    return handler
