"""MLLP source connector: HL7 v2 ADT over TCP → ``ingest.hl7v2``.

For each framed message: validate it with the same :func:`stafet.inbound.hl7v2_referral.parse_hl7v2` (ADT
and REF/RRI) the stream
uses, write the raw bytes durably to ``ingest.hl7v2`` (idempotent, ``acks=all``) keyed by the
pseudonymous patient key, and only then answer AA. A message that will never be accepted gets
AR with an ERR segment and goes to ``dlq.mllp`` with the reason; a broker that does not confirm
the write gets AE (the sender retries). Messages on one connection are answered in order, so a
sender may pipeline; many connections are served concurrently. A new referral (REF^I12) is
also written to ``index.referral`` before its AA, so a FHIR decision that follows finds it at
once, however far behind the stream stage is.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import UTC, datetime

from hl7.mllp import start_hl7_server

from stafet.config import Settings
from stafet.connectors.sources.mllp.ack import build_ack
from stafet.cpr import MASK, mask_cpr
from stafet.errors import KafkaWriteError
from stafet.inbound.canonical import carry
from stafet.inbound.hl7v2 import Hl7Error, RawHeader, decode, read_header
from stafet.inbound.hl7v2_referral import parse_hl7v2
from stafet.kafka.dead_letters import dead_letter_headers
from stafet.kafka.producer import DurableProducer
from stafet.kafka.topics import (
    DLQ_MLLP,
    H_CHARSET,
    H_EVENT_ID,
    H_RECEIVED_AT,
    H_SOURCE,
    INDEX_REFERRAL,
    INGEST_HL7V2,
    index_key,
)
from stafet.logging import get_logger
from stafet.model import ReferralEvent
from stafet.observability import (
    HEALTH,
    MESSAGES_IN,
    ack_code,
    broker_reporter,
    observe_answer,
    run_listener,
    stats_config,
)
from stafet.tls import server_context

log = get_logger(__name__)

START_OF_FRAME = b"\x0b"
END_OF_FRAME = b"\x1c\x0d"
#: How much of an oversize or truncated frame is kept in the DLQ.
DLQ_SAMPLE_BYTES = 65_536


class MllpListener:
    """An asyncio MLLP server; ``await start()``, then ``await stop()``."""

    def __init__(self, settings: Settings, producer: DurableProducer | None = None) -> None:
        self.settings = settings
        self.producer = producer or DurableProducer(
            settings, timeout_s=settings.mllp_produce_timeout_s, **stats_config(broker_reporter())
        )
        self._server: asyncio.Server | None = None
        self._secret = settings.patient_key_secret.get_secret_value()
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        tls = server_context(
            self.settings.mllp_tls_cert,
            self.settings.mllp_tls_key,
            self.settings.mllp_tls_client_ca,
        )
        self._server = await start_hl7_server(
            self._serve,
            host=self.settings.mllp_host,
            port=self.settings.mllp_port,
            limit=self.settings.mllp_max_message_bytes,
            ssl=tls,
        )
        log.info(
            "mllp.listening",
            host=self.settings.mllp_host,
            port=self.port,
            tls="mutual" if self.settings.mllp_tls_client_ca else bool(tls),
        )
        HEALTH.set_ready("listening", True, f"MLLP on {self.settings.mllp_host}:{self.port}")

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def stop(self, drain_s: float = 10.0) -> None:
        """Stop accepting, stop reading new frames, answer the frames already read (each is
        stored first: AA, or AE if the broker does not confirm), then flush the producer. A
        frame whose ACK is not sent in time is simply resent by the sender (same ids)."""
        HEALTH.set_ready("listening", False, "stopping")
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.cancel()  # _serve answers what it holds, then closes the connection
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=drain_s)
        if self._server is not None:
            await self._server.wait_closed()
        self.producer.close()

    async def serve_forever(self) -> None:
        await self.start()
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    # --- one connection ----------------------------------------------------------------

    async def _serve(self, reader, writer) -> None:  # type: ignore[no-untyped-def]
        """Read frames and answer them in order. Frames a sender pipelines are handled
        concurrently — each is validated and handed to the producer as soon as it is read, so
        their ``acks=all`` writes share batches — while one writer sends the ACKs in frame
        order. At most ``PIPELINE`` frames of a connection are in flight (then reading waits)."""
        peer = writer.get_extra_info("peername")
        me = asyncio.current_task()
        if me is not None:
            self._connections.add(me)
            me.add_done_callback(self._connections.discard)
        in_flight: asyncio.Queue[asyncio.Future[bytes] | None] = asyncio.Queue(self.PIPELINE)
        answering = asyncio.create_task(self._answer(in_flight, writer))
        # each frame's work is a task started in frame order: it runs up to its produce() before
        # the next frame's does, so the records go to Kafka in the order the frames came
        answer = asyncio.ensure_future

        try:
            while not answering.done():
                try:
                    frame = await reader.readuntil(END_OF_FRAME)
                except asyncio.IncompleteReadError as exc:
                    if exc.partial.strip():
                        await in_flight.put(
                            answer(
                                self._frame_rejection(
                                    exc.partial,
                                    "truncated frame: the connection ended after "
                                    f"{len(exc.partial)} bytes without the MLLP end block 0x1C 0x0D",
                                )
                            )
                        )
                    return
                except asyncio.LimitOverrunError:
                    await in_flight.put(
                        answer(
                            self._frame_rejection(
                                b"",
                                "frame exceeds the maximum of "
                                f"{self.settings.mllp_max_message_bytes} bytes (or has no MLLP end block)",
                            )
                        )
                    )
                    return  # the stream cannot be resynchronised: close the connection
                start = frame.find(START_OF_FRAME)
                if start < 0:
                    await in_flight.put(
                        answer(
                            self._frame_rejection(
                                frame[:-2],
                                "data outside an MLLP frame: a message must start with the "
                                "start block 0x0B",
                            )
                        )
                    )
                    continue
                if frame[:start].strip():
                    log.warning("mllp.junk_before_frame", bytes=start)
                await in_flight.put(answer(self.handle(frame[start + 1 : -2], peer)))
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            try:
                in_flight.put_nowait(None)
            except asyncio.QueueFull:
                answering.cancel()
            try:
                await answering
            except (ConnectionError, asyncio.CancelledError):
                pass
            writer.close()

    #: frames of one connection handled at once
    PIPELINE = 32

    @staticmethod
    async def _answer(in_flight: asyncio.Queue[asyncio.Future[bytes] | None], writer) -> None:  # type: ignore[no-untyped-def]
        """Write each frame's ACK in the order the frames came (a stored message whose ACK
        cannot be written any more is simply sent again by the sender: same MSH-10, same ids)."""
        while (work := await in_flight.get()) is not None:
            ack = await work
            writer.writeblock(ack)
            await writer.drain()

    async def _frame_rejection(self, data: bytes, reason: str) -> bytes:
        """A framing error: DLQ what we have, and the AR for it."""
        started = time.perf_counter()
        MESSAGES_IN.labels(stage="mllp").inc()
        sample = data.lstrip(b"\x0b")[:DLQ_SAMPLE_BYTES]
        header = _try_header(sample, self.settings.mllp_default_charset)
        ack = await self._reject(sample, header, 100, "Segment sequence error", "", reason)
        observe_answer("mllp", ack_code(ack), started)
        return ack

    async def handle(self, block: bytes, peer: object = None) -> bytes:
        """Validate, store, acknowledge one message; return the ACK bytes."""
        started = time.perf_counter()
        MESSAGES_IN.labels(stage="mllp").inc()
        ack = await self._handle(block)
        observe_answer("mllp", ack_code(ack), started)
        return ack

    async def _handle(self, block: bytes) -> bytes:
        s = self.settings
        received_at = datetime.now(UTC).isoformat()
        header: RawHeader | None = _try_header(block, s.mllp_default_charset)
        stray = next((f"0x{b:02X}" for b in (0x0B, 0x1C) if b in block), None)
        if stray is not None:  # never inside a message: two frames run together (a lost end
            # block) or a corrupt one; accepting the first half would lose the rest silently
            return await self._reject(
                block,
                header,
                100,
                "Segment sequence error",
                "",
                f"the MLLP block byte {stray} occurs inside the message "
                "(a missing end block 0x1C 0x0D?); send one message per "
                "frame",
            )
        try:
            event = parse_hl7v2(
                block,
                secret=self._secret,
                default_charset=s.mllp_default_charset,
                timezone=s.default_timezone,
            )
        except Hl7Error as exc:
            return await self._reject(block, header, exc.code, exc.text, exc.location, exc.reason)
        except Exception as exc:  # a bug of ours, not the sender's: keep the message, say so
            log.exception("mllp.parse_failed", control_id=header.control_id if header else None)
            return await self._reject(
                block,
                header,
                207,
                "Application internal error",
                "",
                f"stafet could not process the message ({type(exc).__name__})",
            )
        assert header is not None  # parse_adt succeeded, so MSH was readable
        writes = [
            self.producer.send(
                INGEST_HL7V2,
                block,
                key=event.patient_key.encode(),
                headers=[
                    (H_CHARSET, header.charset.encode()),
                    (H_SOURCE, b"mllp"),
                    (H_RECEIVED_AT, received_at.encode()),
                    (H_EVENT_ID, event.event_id.encode()),
                    *carry(event),
                ],
            )
        ]
        if isinstance(event, ReferralEvent) and event.kind == "submitted":
            # known to the FHIR listener at once, however far behind the stream stage is (a
            # decision may follow by FHIR); the stream stage writes its status over it
            writes.append(
                self.producer.send(
                    INDEX_REFERRAL,
                    json.dumps({"referral_id": event.referral_id, "status": "received"}).encode(),
                    key=index_key(event.referral_id, event.patient_key),
                )
            )
        try:
            await asyncio.gather(*writes)
        except KafkaWriteError as exc:
            log.error("mllp.store_failed", control_id=header.control_id, error=str(exc))
            return self._retry_later(header, f"not stored, please retry: {exc}")
        log.debug(
            "mllp.accepted",
            control_id=header.control_id,
            message_type=header.message_type,
            event_id=event.event_id,
        )
        return build_ack(
            "AA", header, application=s.receiving_application, facility=s.receiving_facility
        )

    def _retry_later(self, header: RawHeader | None, reason: str) -> bytes:
        """AE 207: nothing was stored, the sender must send the message again."""
        return build_ack(
            "AE",
            header,
            application=self.settings.receiving_application,
            facility=self.settings.receiving_facility,
            error_code=207,
            error_text="Application internal error",
            reason=reason,
        )

    async def _reject(
        self,
        block: bytes,
        header: RawHeader | None,
        code: int,
        text: str,
        location: str,
        reason: str,
    ) -> bytes:
        """AR once the message is on the DLQ; AE if even that failed (nothing may be lost)."""
        s = self.settings
        reason = mask_cpr(_LONG_DIGITS.sub(MASK, reason))  # it may echo input: a CPR in it, too
        if not await self._dead_letter(
            block, f"{code} {text}" + (f" at {location}" if location else "") + f": {reason}"
        ):
            return self._retry_later(header, "the rejection could not be recorded, please retry")
        log.warning(
            "mllp.rejected",
            control_id=header.control_id if header else None,
            code=code,
            location=location,
            reason=reason,
        )
        return build_ack(
            "AR",
            header,
            application=s.receiving_application,
            facility=s.receiving_facility,
            error_code=code,
            error_text=text,
            location=location,
            reason=reason,
        )

    async def _dead_letter(self, data: bytes, reason: str) -> bool:
        try:
            await self.producer.send(
                DLQ_MLLP,
                data,
                headers=list(dead_letter_headers("mllp", reason).items()),
            )
        except KafkaWriteError as exc:
            log.error("mllp.dlq_failed", reason=reason, error=str(exc))
            return False
        return True


#: a run of ten or more digits echoed from the input could hold a CPR number inside it
_LONG_DIGITS = re.compile(r"\d{10,}")


def _try_header(data: bytes, default_charset: str) -> RawHeader | None:
    """The MSH fields of a message, or None if it has no readable MSH."""
    try:
        return decode(data, default_charset)[1]
    except Hl7Error:
        try:
            return read_header(data.replace(b"\n", b"\r"), default_charset, strict=False)
        except Hl7Error:
            return None


async def run(settings: Settings) -> None:
    """Run the listener until cancelled (``stafet mllp``)."""
    await run_listener(settings, "mllp", MllpListener(settings))
