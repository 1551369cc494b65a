"""``POST /fhir/$process-message``: MedCom message Bundles, deduplicated as MedCom prescribes.

- An **Acknowledgement** from a receiver of our messages is stored on ``acks.inbound`` (keyed by
  the acknowledged MessageHeader.id) for the delivery tracker; the answer is 200.
- Any other message Bundle (a referral from a hospital system) goes the way of ``POST /fhir``
  and is answered with a MedCom Acknowledgement (ok) once it is stored.

Reliable messaging (MedCom): both Bundle.id and MessageHeader.id seen → the original answer is
sent again and nothing is stored twice; MessageHeader.id seen with a new Bundle.id → a resend of
a message already processed: the original answer again; Bundle.id seen with a new
MessageHeader.id → 400, Bundle ids are never reused. That 400, a body that is no message
Bundle (400) and an Acknowledgement that cannot be used (422) go to ``dlq.fhir`` with the reason,
through the listener's one rejection path (:meth:`FhirListener.reject`). The memory of seen ids is rebuilt at start
from the ids stored on ``acks.inbound`` and ``ingest.fhir``, so a restart does not forget them.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from stafet.errors import KafkaWriteError
from stafet.inbound.fhir_referral import Issue
from stafet.kafka.client import client_config
from stafet.kafka.reader import read_to_end
from stafet.kafka.topics import (
    ACKS_INBOUND,
    H_RECEIVED_AT,
    H_SIGNATURE,
    H_SIGNATURE_ID,
    H_SIGNATURE_TS,
    INGEST_FHIR,
)
from stafet.logging import get_logger
from stafet.medcom.acknowledgement import (
    MessageError,
    MessageIds,
    build_ack,
    message_ids,
    parse_ack,
)
from stafet.webhooks import SignatureError, check_timestamp

if TYPE_CHECKING:
    from stafet.connectors.sources.fhir.listener import FhirListener

log = get_logger(__name__)

H_IN_BUNDLE = "stafet.in_bundle_id"
H_IN_HEADER = "stafet.in_message_id"
H_IN_EVENT = "stafet.in_event"

STAFET_ENDPOINT = "https://stafet.dk/fhir/$process-message"


@dataclass(frozen=True, slots=True)
class Seen:
    ids: MessageIds
    received_at: str


class SeenMessages:
    """Which inbound (Bundle.id, MessageHeader.id) pairs were stored, and when."""

    def __init__(self) -> None:
        self.by_header: dict[str, Seen] = {}
        self.header_of_bundle: dict[str, str] = {}
        self.inflight: dict[str, asyncio.Future[None]] = {}  # header id → being stored now
        self.ready = False  # set once load() has read everything stored before this start

    def add(self, ids: MessageIds, received_at: str) -> None:
        self.by_header.setdefault(ids.header_id, Seen(ids, received_at))
        self.header_of_bundle.setdefault(ids.bundle_id, ids.header_id)

    def load(self, settings: Any) -> int:
        """Rebuild from the ids stored with each accepted message (blocking)."""
        n = 0
        for topic in (ACKS_INBOUND, INGEST_FHIR):
            for msg in read_to_end(client_config(settings), topic):
                h = {k: (v or b"").decode() for k, v in (msg.headers() or [])}
                if H_IN_HEADER in h:
                    self.add(
                        MessageIds(h[H_IN_BUNDLE], h[H_IN_HEADER], h.get(H_IN_EVENT, "")),
                        h.get(H_RECEIVED_AT, ""),
                    )
                    n += 1
        self.ready = True
        return n


def _answer(seen: Seen, duplicate: bool) -> web.Response:
    """The answer to a message: the same for the first time and every duplicate."""
    headers = {"X-Stafet-Duplicate": "true"} if duplicate else {}
    if seen.ids.event == "acknowledgement-message":
        body: dict[str, Any] = {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "information",
                    "code": "informational",
                    "diagnostics": f"acknowledgement {seen.ids.header_id} recorded",
                }
            ],
        }
    else:
        at = datetime.fromisoformat(seen.received_at) if seen.received_at else datetime.now(UTC)
        body = build_ack(
            seen.ids, "ok", sender_endpoint=STAFET_ENDPOINT, receiver_endpoint="urn:unknown", at=at
        )
    return web.Response(
        status=200,
        body=json.dumps(body, ensure_ascii=False).encode(),
        content_type="application/fhir+json",
        charset="utf-8",
        headers=headers,
    )


def _error(status: int, path: str, reason: str, code: str = "invalid") -> web.Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": code,
                "diagnostics": reason,
                **({"expression": [path]} if path else {}),
            }
        ],
    }
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/fhir+json",
        charset="utf-8",
    )


async def process_message(
    listener: FhirListener,
    seen: SeenMessages,
    body: bytes,
    media: str,
    received_at: str,
    signature: tuple[str, str, str] | None = None,
) -> web.Response:
    """Dedupe, then store an Acknowledgement or hand a referral message to the referral path.

    ``signature``: the Standard Webhooks headers (webhook-id, webhook-timestamp,
    webhook-signature) of a signed acknowledgement, or None."""
    try:  # a malformed message is rejected like any other body: 400 and on dlq.fhir
        ids = message_ids(json.loads(body))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        return await listener.reject(
            400, [Issue("", f"not JSON: {reason}", "structure")], body, received_at
        )
    except MessageError as exc:
        return await listener.reject(
            400, [Issue(exc.path, exc.reason, "invalid")], body, received_at
        )
    inflight = seen.inflight.get(ids.header_id)
    if inflight is not None:  # the same message, still being stored: wait for that outcome
        await asyncio.shield(inflight)
    known = seen.by_header.get(ids.header_id)
    if known is not None:  # both seen, or a resend with a new Bundle.id: the original answer
        log.info(
            "fhir.duplicate_message",
            header_id=ids.header_id,
            same_bundle=known.ids.bundle_id == ids.bundle_id,
        )
        seen.header_of_bundle.setdefault(ids.bundle_id, ids.header_id)  # never to be reused
        return _answer(known, duplicate=True)
    if ids.bundle_id in seen.header_of_bundle:  # never stored: a rejected body, dead-lettered
        return await listener.reject(
            400,
            [
                Issue(
                    "Bundle.id",
                    f"Bundle.id {ids.bundle_id} was already used with another "
                    "MessageHeader.id; Bundle ids must never be reused",
                    "invalid",
                )
            ],
            body,
            received_at,
        )
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    seen.inflight[ids.header_id] = done
    try:
        return await _store(listener, seen, ids, body, media, received_at, signature)
    finally:
        del seen.inflight[ids.header_id]
        done.set_result(None)


def _refuse_signed(
    listener: FhirListener, ids: MessageIds, acknowledged: str, webhook_id: str, timestamp: str
) -> web.Response | None:
    """The checks of a signed acknowledgement that need no secret (the delivery tracker checks
    the signature): its webhook-id is its own MessageHeader.id, and its webhook-timestamp lies
    within ``STAFET_WEBHOOK_TOLERANCE_S`` of now — a replay or a stale retry is refused here,
    before its ids are remembered, so the sender can sign it again and be heard."""
    if webhook_id != ids.header_id:
        log.warning("fhir.ack_refused", acknowledged=acknowledged, reason="bad-id")
        return _error(
            400,
            "",
            f"webhook-id must be the acknowledgement's MessageHeader.id ({ids.header_id})",
            "invalid",
        )
    try:
        check_timestamp(timestamp, listener.settings.webhook_tolerance_s)
    except SignatureError as exc:
        log.warning(
            "fhir.ack_refused", acknowledged=acknowledged, reason=exc.reason, detail=exc.detail
        )
        return _error(401, "", f"acknowledgement refused: {exc}", "security")
    return None


async def _store(
    listener: FhirListener,
    seen: SeenMessages,
    ids: MessageIds,
    body: bytes,
    media: str,
    received_at: str,
    signature: tuple[str, str, str] | None,
) -> web.Response:
    ours = [
        (H_IN_BUNDLE, ids.bundle_id.encode()),
        (H_IN_HEADER, ids.header_id.encode()),
        (H_IN_EVENT, ids.event.encode()),
    ]
    if ids.event == "acknowledgement-message":
        try:
            ack = parse_ack(body)
        except MessageError as exc:  # an acknowledgement we can never use: dead-lettered
            return await listener.reject(
                422,
                [Issue(exc.path, f"bad acknowledgement: {exc.reason}", "business-rule")],
                body,
                received_at,
            )
        if signature is not None:
            refused = _refuse_signed(listener, ids, ack.acknowledged_id, *signature[:2])
            if refused is not None:
                return refused  # not stored, not remembered: a corrected retry is taken
        try:
            signed = (
                [
                    (H_SIGNATURE_ID, signature[0].encode()),
                    (H_SIGNATURE_TS, signature[1].encode()),
                    (H_SIGNATURE, signature[2].encode()),
                ]
                if signature
                else []
            )
            await listener.producer.send(
                ACKS_INBOUND,
                body,
                key=ack.acknowledged_id.encode(),
                headers=[*ours, *signed, (H_RECEIVED_AT, received_at.encode())],
            )
        except KafkaWriteError as exc:
            return _error(503, "", f"not stored, please retry: {exc}", "transient")
        log.info("fhir.ack_received", acknowledged=ack.acknowledged_id, code=ack.code)
    else:
        response = await listener.accept(body, media, None, received_at, extra_headers=ours)
        if response.status != 202:
            return response
    entry = Seen(ids, received_at)
    seen.add(ids, received_at)
    return _answer(entry, duplicate=False)
