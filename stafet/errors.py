"""stafet's exception tree: third-party errors are mapped to these at the boundary."""

from __future__ import annotations


class StafetError(Exception):
    """Base of every error stafet raises on purpose."""


class DeliveryError(StafetError):
    """A record could not be durably written to Kafka (the sender should retry)."""


class RejectedInput(StafetError):
    """Input that will never be accepted; carries the reason that goes to the sender and the DLQ."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
