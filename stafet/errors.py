"""stafet's exception tree: third-party errors are mapped to these at the boundary."""

from __future__ import annotations


class StafetError(Exception):
    """Base of every error stafet raises on purpose."""


class KafkaWriteError(StafetError):
    """Kafka did not durably store a record (the sender should retry). Not about delivery to a
    subscriber: that is connectors/sinks."""


class RejectedInput(StafetError):
    """Input that will never be accepted; carries the reason that goes to the sender and the DLQ."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
