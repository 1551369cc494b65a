"""Delivery state per message: which REST deliveries still wait for a MedCom Acknowledgement.

MedCom: every message is acknowledged; without an acknowledgement the sender may resend after
30 minutes, at most twice. The tracker keeps, per message id, where the delivered record sits
and how often it was resent; it resends when the acknowledgement is overdue (or the receiver
said transient-error) and dead-letters with an operator alert when the resends are used up or
the receiver said fatal-error.

Its memory is the audit topic: on start it reads ``audit.delivery`` to its end and rebuilds the
state, so a restart neither forgets a pending acknowledgement nor resends twice. Acknowledgement
lines are written under the acknowledged message id; they may reach the trail before the
``delivered`` line (a receiver can acknowledge before our POST returns), so a finished message is
remembered and never becomes pending again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Awaitable
from dataclasses import dataclass
from datetime import datetime

from stafet.audit import AuditRecord
from stafet.connectors.delivery_sinks import OutRecord, Recorder
from stafet.connectors.medcom_ack import Ack
from stafet.logging import get_logger

log = get_logger(__name__)

#: resend(subscriber id, the delivered record, resend number) → detail of the attempt
Resend = Callable[[str, OutRecord, int], Awaitable[str]]
Fetch = Callable[["Pending"], Awaitable[OutRecord]]


@dataclass
class Pending:
    """A delivered message that waits for its acknowledgement."""

    subscriber: str
    message_id: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    sent_at: float  # epoch seconds of the last send
    resends: int = 0
    due_now: bool = False  # the receiver asked for a resend (transient-error)


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


class AckTracker:
    """Pending acknowledgements of the ack-tracked subscribers."""

    def __init__(self, recorder: Recorder, tracked: set[str], *, timeout_s: float,
                 max_resends: int, resend: Resend, fetch: Fetch,
                 clock: Callable[[], float] = time.time) -> None:
        self.recorder, self.tracked = recorder, tracked
        self.timeout_s, self.max_resends = timeout_s, max_resends
        self._resend, self._fetch, self._clock = resend, fetch, clock
        self.pending: dict[str, Pending] = {}
        self.finished: set[str] = set()

    # --- state ---------------------------------------------------------------------------

    def replay(self, record: AuditRecord, key: bytes | None) -> None:
        """Apply one line of the audit trail (on start, in trail order)."""
        mid = record.message_id
        if record.action in ("ack-ok", "ack-fatal-error", "dead-lettered"):
            self.finished.add(mid)
            self.pending.pop(mid, None)
        elif record.action == "ack-transient-error" and mid in self.pending:
            self.pending[mid].due_now = True
        elif record.action in ("delivered", "replayed") and record.subscriber in self.tracked:
            if mid not in self.finished and mid not in self.pending:
                self.pending[mid] = Pending(record.subscriber, mid, record.topic,
                                            record.partition, record.offset, key,
                                            _epoch(record.at))
        elif record.action == "resent" and mid in self.pending:
            p = self.pending[mid]
            p.resends, p.sent_at, p.due_now = p.resends + 1, _epoch(record.at), False

    def expect(self, subscriber: str, record: OutRecord) -> None:
        """A tracked subscriber's endpoint took ``record``: wait for its acknowledgement."""
        mid = record.message_id
        if subscriber in self.tracked and mid not in self.finished and mid not in self.pending:
            self.pending[mid] = Pending(subscriber, mid, record.topic, record.partition,
                                        record.offset, record.key, self._clock())

    # --- acknowledgements ------------------------------------------------------------------

    async def on_ack(self, ack: Ack) -> None:
        """Record the acknowledgement; fatal-error dead-letters, transient-error resends."""
        mid = ack.acknowledged_id
        pending = self.pending.get(mid)
        line = AuditRecord(action=f"ack-{ack.code}", subscriber=pending.subscriber if pending
                           else "", message_id=mid, detail=ack.diagnostics)  # type: ignore[arg-type]
        await self.recorder.audit(line, pending.key if pending else None)
        log.info("delivery.ack", message_id=mid, code=ack.code, pending=pending is not None)
        if ack.code == "transient-error":
            if pending is not None:
                pending.due_now = True
            return
        self.finished.add(mid)
        self.pending.pop(mid, None)
        if ack.code == "fatal-error" and pending is not None:
            record = await self._fetch(pending)
            await self.recorder.dead_letter(record, pending.subscriber,
                                            f"the receiver answered fatal-error: {ack.diagnostics}")

    # --- the clock -------------------------------------------------------------------------

    def overdue(self) -> list[Pending]:
        now = self._clock()
        return [p for p in self.pending.values()
                if p.due_now or now - p.sent_at >= self.timeout_s]

    async def check(self) -> int:
        """Resend or dead-letter every overdue message; return how many were handled."""
        due = self.overdue()
        for p in due:
            if p.message_id not in self.pending:
                continue
            if p.resends >= self.max_resends:
                record = await self._fetch(p)
                self.finished.add(p.message_id)
                self.pending.pop(p.message_id, None)
                await self.recorder.dead_letter(
                    record, p.subscriber, f"no acknowledgement after {p.resends} resends "
                    f"({self.timeout_s:.0f} s apart)", attempt=p.resends + 1)
                continue
            number = p.resends + 1
            record = await self._fetch(p)
            detail = await self._resend(p.subscriber, record, number)
            p.resends, p.sent_at, p.due_now = number, self._clock(), False
            await self.recorder.audit(record.audit("resent", p.subscriber, attempt=number,
                                                   detail=detail), p.key)
        return len(due)

    async def run(self, stop: asyncio.Event, interval_s: float) -> None:
        while not stop.is_set():
            try:
                await self.check()
            except Exception as exc:  # noqa: BLE001 - keep checking; the next round retries
                log.error("delivery.ack_check_failed", error=str(exc))
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
            except asyncio.TimeoutError:
                pass
