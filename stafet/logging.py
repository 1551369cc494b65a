"""structlog JSON logging with CPR masking on every line, stafet's and the libraries' alike."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from structlog.typing import EventDict, WrappedLogger

from stafet.cpr import mask_cpr


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        return mask_cpr(value)
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_mask(v) for v in value)
    if isinstance(value, (bytes, bytearray)):
        return mask_cpr(bytes(value).decode("latin-1"))
    if isinstance(value, BaseException):
        return mask_cpr(repr(value))
    return value


def mask_cpr_processor(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Mask CPR numbers in every value of the event, nested ones and exceptions included."""
    return {key: _mask(value) for key, value in event_dict.items()}


def mask_rendered(_: WrappedLogger, __: str, line: Any) -> str:
    """Last line of defence: mask the rendered line (catches formatted tracebacks)."""
    return mask_cpr(line)


def configure_logging(level: str = "INFO", json: bool = True) -> None:
    """Route structlog and stdlib logging (quixstreams, confluent-kafka) through one masking JSON renderer."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            mask_cpr_processor,
            renderer,
            mask_rendered,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
