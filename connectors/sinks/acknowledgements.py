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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from stafet.audit import Action, AuditRecord
from stafet.config import get_settings
from stafet.connectors.sinks.channels import OutRecord, Recorder
from stafet.cpr import mask_cpr
from stafet.logging import get_logger
from stafet.medcom.acknowledgement import Ack
from stafet.observability import ACKNOWLEDGEMENTS, ACKS_PENDING
from stafet.webhooks import SignatureError, verify

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
    """Pending acknowledgements of the ack-tracked subscribers.

    An acknowledgement counts only when it is signed (Standard Webhooks: ``webhook-signature``
    over its ``webhook-id`` — its own MessageHeader.id —, ``webhook-timestamp`` and body, the
    same scheme stafet signs its POSTs with) by the secret of the subscriber the message went
    to: nobody else can stop a resend or dead-letter a message. Its timestamp must lie within
    ``tolerance_s`` of when it was received (``received_at`` when known, else now): an
    acknowledgement replayed later is refused. Unsigned, stale or otherwise unverifiable
    acknowledgements (for example from a municipality reading Kafka, which has no secret) are
    audited as unverified with the reason and change nothing.
    """

    def __init__(
        self,
        recorder: Recorder,
        secrets: dict[str, str],
        *,
        timeout_s: float,
        max_resends: int,
        resend: Resend,
        fetch: Fetch,
        clock: Callable[[], float] = time.time,
        tolerance_s: float | None = None,
    ) -> None:
        self.recorder, self._secrets = recorder, secrets
        #: the replay window; unset: STAFET_WEBHOOK_TOLERANCE_S of this process
        self.tolerance_s = (
            get_settings().webhook_tolerance_s if tolerance_s is None else tolerance_s
        )
        self.tracked = set(secrets)
        self.timeout_s, self.max_resends = timeout_s, max_resends
        self._resend, self._fetch, self._clock = resend, fetch, clock
        self.pending: dict[str, Pending] = {}
        self.finished: set[str] = set()
        #: fatal-error acknowledgements that came before our own "delivered" line
        self.early_fatal: dict[str, str] = {}

    # --- state ---------------------------------------------------------------------------

    def replay(self, record: AuditRecord, key: bytes | None) -> None:
        """Apply one line of the audit trail (on start, in trail order)."""
        mid = record.message_id
        if record.action in ("ack-ok", "dead-lettered"):
            self.finished.add(mid)
            self.pending.pop(mid, None)
            self.early_fatal.pop(mid, None)
        elif record.action == "ack-fatal-error" and mid not in self.finished:
            # dead-lettered first, then this line: without a dead letter it is still owed
            self.early_fatal[mid] = record.detail
            if mid in self.pending:
                self.pending[mid].due_now = True
        elif record.action == "ack-transient-error" and mid in self.pending:
            self.pending[mid].due_now = True
        elif record.action in ("delivered", "replayed") and record.subscriber in self.tracked:
            if mid not in self.finished and mid not in self.pending:
                self.pending[mid] = Pending(
                    record.subscriber,
                    mid,
                    record.topic,
                    record.partition,
                    record.offset,
                    key,
                    _epoch(record.at),
                    due_now=mid in self.early_fatal,
                )
        elif record.action == "resent" and mid in self.pending:
            p = self.pending[mid]
            p.resends, p.sent_at, p.due_now = p.resends + 1, _epoch(record.at), False

    def expect(self, subscriber: str, record: OutRecord) -> None:
        """A tracked subscriber's endpoint took ``record``: wait for its acknowledgement."""
        mid = record.message_id
        if subscriber in self.tracked and mid not in self.finished and mid not in self.pending:
            self.pending[mid] = Pending(
                subscriber,
                mid,
                record.topic,
                record.partition,
                record.offset,
                record.key,
                self._clock(),
                due_now=mid in self.early_fatal,
            )

    # --- acknowledgements ------------------------------------------------------------------

    def signer(
        self,
        body: bytes,
        webhook_id: str | None,
        timestamp: str | None,
        signature: str | None,
        expected: str | None = None,
        received_at: float | None = None,
    ) -> tuple[str | None, str]:
        """The tracked subscriber whose secret signed ``body`` (``expected`` first: one system
        may serve several subscribers with one secret), or None and why not."""
        if not signature or not timestamp:
            return None, "unsigned (no webhook-signature / webhook-timestamp)"
        why = "no tracked subscriber"
        order = sorted(self._secrets, key=lambda sid: sid != expected)
        for sid in order:
            try:
                verify(
                    self._secrets[sid],
                    webhook_id,
                    timestamp,
                    body,
                    signature,
                    tolerance_s=self.tolerance_s,
                    now=self._clock() if received_at is None else received_at,
                )
                return sid, ""
            except SignatureError as exc:
                why = exc.reason
                if exc.reason != "bad-signature":  # not about the key: the same for every one
                    return None, str(exc)
            except ValueError:  # a malformed whsec_ secret (registry check reports it)
                continue
        return (
            None,
            "bad-signature: no tracked subscriber's secret signed it"
            if why == "bad-signature"
            else why,
        )

    async def on_ack(
        self,
        ack: Ack,
        body: bytes = b"",
        signature: str | None = None,
        timestamp: str | None = None,
        *,
        webhook_id: str | None = None,
        received_at: str | float | None = None,
    ) -> None:
        """Record a signed acknowledgement; fatal-error dead-letters, transient-error resends.

        ``webhook_id`` defaults to the acknowledgement's own MessageHeader.id (the listener
        refuses any other); ``received_at`` (ISO time or epoch seconds: when the listener took
        it) is what its timestamp is held against, else the tracker's clock."""
        mid = ack.acknowledged_id
        pending = self.pending.get(mid)
        at = (
            _epoch(received_at)
            if isinstance(received_at, str) and received_at
            else received_at
            if isinstance(received_at, (int, float))
            else None
        )
        signer, refusal = self.signer(
            body,
            webhook_id or ack.ids.header_id,
            timestamp,
            signature,
            expected=pending.subscriber if pending else None,
            received_at=at,
        )
        ACKNOWLEDGEMENTS.labels(
            subscriber=signer or "",
            code=ack.code
            if signer and (pending is None or signer == pending.subscriber)
            else "unverified",
        ).inc()
        if signer is None or (pending is not None and signer != pending.subscriber):
            if signer is None or pending is None:
                why = f"{refusal}: not verified, changes nothing"
            else:
                why = f"signed by {signer}, but the message went to {pending.subscriber}"
            log.warning("delivery.ack_refused", message_id=mid, code=ack.code, reason=mask_cpr(why))
            await self.recorder.audit(
                AuditRecord(
                    action="ack-unverified",
                    subscriber=signer or "",
                    message_id=mid,
                    detail=f"{ack.code}: {why}",
                ),
                pending.key if pending else None,
            )
            if signer is not None or pending is not None:
                await self.recorder.alert(
                    f"acknowledgement of {mid} refused: {why}", message_id=mid
                )
            return
        log.info(
            "delivery.ack",
            message_id=mid,
            code=ack.code,
            subscriber=signer,
            pending=pending is not None,
        )
        if ack.code == "transient-error":
            await self.recorder.audit(self._ack_line(ack, signer), pending.key if pending else None)
            if pending is not None:
                pending.due_now = True
            return
        if ack.code == "fatal-error" and mid not in self.finished:
            if pending is None:  # it overtook our "delivered" line: dead-letter on expect()
                self.early_fatal[mid] = ack.diagnostics
            else:
                self.pending.pop(mid, None)
                self.finished.add(mid)
                record = await self._fetch(pending)
                await self.recorder.dead_letter(  # first the dead letter, then the ack line
                    record,
                    pending.subscriber,
                    f"the receiver answered fatal-error: {ack.diagnostics}",
                )
        elif ack.code == "ok":
            self.finished.add(mid)
            self.pending.pop(mid, None)
        await self.recorder.audit(self._ack_line(ack, signer), pending.key if pending else None)

    @staticmethod
    def _ack_line(ack: Ack, signer: str) -> AuditRecord:
        return AuditRecord(
            action=cast(Action, f"ack-{ack.code}"),
            subscriber=signer,  # type: ignore[arg-type]
            message_id=ack.acknowledged_id,
            detail=ack.diagnostics,
        )

    # --- the clock -------------------------------------------------------------------------

    def overdue(self) -> list[Pending]:
        now = self._clock()
        return [p for p in self.pending.values() if p.due_now or now - p.sent_at >= self.timeout_s]

    async def check(self) -> int:
        """Resend or dead-letter every overdue message; return how many were handled.

        Each entry is claimed before anything is awaited, so an acknowledgement handled
        meanwhile is never followed by a resend or a dead letter of its message."""
        due = self.overdue()
        for p in due:
            if self.pending.get(p.message_id) is not p:
                continue  # acknowledged meanwhile
            fatal = self.early_fatal.get(p.message_id)
            if fatal is not None or p.resends >= self.max_resends:
                self.pending.pop(p.message_id)
                self.finished.add(p.message_id)
                why = (
                    f"the receiver answered fatal-error: {fatal}"
                    if fatal is not None
                    else f"no acknowledgement after {p.resends} resends "
                    f"({self.timeout_s:.0f} s apart)"
                )
                try:
                    record = await self._fetch(p)
                    await self.recorder.dead_letter(
                        record, p.subscriber, why, attempt=p.resends + 1
                    )
                except BaseException:
                    self.finished.discard(p.message_id)
                    self.pending[p.message_id] = p  # try again next round
                    raise
                self.early_fatal.pop(p.message_id, None)
                continue
            number = p.resends + 1
            p.resends, p.sent_at, p.due_now = number, self._clock(), False  # claimed
            record = await self._fetch(p)
            detail = await self._resend(p.subscriber, record, number)
            await self.recorder.audit(
                record.audit("resent", p.subscriber, attempt=number, detail=detail), p.key
            )
        return len(due)

    def report_pending(self, active: bool = True) -> None:
        """/metrics: pending acknowledgements per tracked subscriber (0 when not active)."""
        counts = {sid: 0 for sid in self.tracked}
        for p in list(self.pending.values()) if active else []:
            counts[p.subscriber] = counts.get(p.subscriber, 0) + 1
        for sid, n in counts.items():
            ACKS_PENDING.labels(subscriber=sid).set(n)

    async def run(self, stop: asyncio.Event, interval_s: float) -> None:
        try:
            while not stop.is_set():
                try:
                    await self.check()
                except Exception as exc:  # noqa: BLE001 - keep checking; the next round retries
                    log.error("delivery.ack_check_failed", error=str(exc))
                self.report_pending()
                try:
                    await asyncio.wait_for(stop.wait(), interval_s)
                except TimeoutError:
                    pass
        finally:
            self.report_pending(active=False)
