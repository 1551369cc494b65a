"""The one way a worker stops so that its supervisor replays from the committed offsets.

Exit code 70 means "not the record's fault: start me again". Used when a send or a table write
fails (``dead_letter.stop_on_failure``) and when a partition stalls (``stall``).
"""

from __future__ import annotations

import logging
import os
from typing import Any, NoReturn

from stafet.logging import get_logger

log = get_logger(__name__)

EXIT_REPLAY = 70


def exit_for_replay(event: str, **fields: Any) -> NoReturn:
    """Log why (critical), flush the logs, and exit with 70 at once — no Faust shutdown that
    could acknowledge the record in hand."""
    log.critical(event, **fields)
    logging.shutdown()
    os._exit(EXIT_REPLAY)
