"""FHIR HTTP source connector: referral resources over HTTP → ``ingest.fhir``.

The HTTP twin of the MLLP connector. For each POST: read the body with a hard size limit,
validate it with the same :func:`stafet.inbound.fhir_referral.parse_fhir_referral` the stream uses, write
the raw bytes durably to ``ingest.fhir`` (idempotent, ``acks=all``) keyed by the child's
pseudonymous patient key, and only then answer 202 with an OperationOutcome receipt. A body that
will never be accepted gets 400 / 413 / 415 / 422 with an OperationOutcome naming every issue and
goes to ``dlq.fhir`` with the reason; a broker that does not confirm the write gets 503 +
Retry-After (the sender retries; the ids are deterministic, so a retry is harmless).

``POST /fhir/ServiceRequest | /fhir/Task | /fhir/Communication`` (resourceType must match) and
``POST /fhir`` (one of those or a Bundle); ``GET /openapi.json``; ``GET /healthz``.

A Task or Communication must name a referral stafet has seen: :class:`ReferralIndex` reads
``index.referral`` (compacted: every referral the stream stage holds, from HL7 v2 or FHIR, for
as long as it holds it, whatever the ingest topics' retention) and ``ingest.fhir`` (what this
connector accepted and the stream stage has not reached yet) at start, follows both, adds what
this connector accepts, answers 503 instead of a false 422 while it is still loading, and waits
``fhir_unknown_referral_wait_s`` for a referral the stream stage is about to index (an HL7 v2
REF^I12 accepted a moment ago) before it answers 422.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from confluent_kafka import KafkaException, Message

from stafet.config import Settings
from stafet.connectors.sources.fhir.messaging import SeenMessages, process_message
from stafet.connectors.sources.fhir.openapi import openapi
from stafet.cpr import mask_cpr
from stafet.errors import KafkaWriteError, StafetError
from stafet.inbound.fhir_referral import FhirInputError, Issue, parse_fhir_referral
from stafet.kafka.client import KafkaTarget
from stafet.kafka.dead_letters import dead_letter_headers
from stafet.kafka.follower import TopicFollower
from stafet.kafka.producer import DurableProducer
from stafet.kafka.topics import (
    DLQ_FHIR,
    H_EVENT_ID,
    H_RECEIVED_AT,
    H_SOURCE,
    INDEX_REFERRAL,
    INGEST_FHIR,
)
from stafet.logging import get_logger
from stafet.model import ReferralEvent
from stafet.observability import (
    HEALTH,
    MESSAGES_IN,
    broker_reporter,
    observe_answer,
    run_listener,
    stats_config,
)
from stafet.tls import server_context

log = get_logger(__name__)

FHIR_JSON = "application/fhir+json"
MEDIA_TYPES = (FHIR_JSON, "application/json")
#: Path → the resourceType it takes (None: any supported one, or a Bundle).
ROUTES: dict[str, str | None] = {
    "/fhir": None,
    "/fhir/ServiceRequest": "ServiceRequest",
    "/fhir/Task": "Task",
    "/fhir/Communication": "Communication",
}
REFERRAL_KINDS = ("submitted", "modified", "cancelled")  # events that make a referral known
DLQ_SAMPLE_BYTES = 65_536
RETRY_AFTER_S = 10
EVENT_ID_HEADER = "X-Stafet-Event-Id"
Extractor = Callable[[bytes], Iterable[str]]


class ReferralIndex:
    """The referral ids stafet knows: read from Kafka at start, plus what the connector accepts.

    ``index.referral`` records name a referral by their key (a tombstone: pruned by the stream
    stage, forgotten here too); ``extractors`` maps other topics to a function from a record
    value to the referral ids it defines (``ingest.fhir``: its ServiceRequests).
    """

    def __init__(self, secret: str) -> None:
        self._secret = secret
        self._ids: dict[str, set[str]] = {}  # referral id -> who holds one (patient keys)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._follower: TopicFollower | None = None
        self.extractors: dict[str, Extractor] = {INGEST_FHIR: self.fhir_referral_ids}

    def add(self, referral_id: str, holder: str = "") -> None:
        with self._lock:
            self._ids.setdefault(referral_id, set()).add(holder)

    def discard(self, referral_id: str, holder: str = "") -> None:
        """Forget one child's referral of this id (another child's of the same id stays)."""
        with self._lock:
            holders = self._ids.get(referral_id, set())
            holders.discard(holder)
            if not holders:
                self._ids.pop(referral_id, None)

    def __contains__(self, referral_id: object) -> bool:
        with self._lock:
            return bool(self._ids.get(referral_id))  # type: ignore[call-overload]

    def __len__(self) -> int:
        return len(self._ids)

    def known(self, referral_id: str) -> bool:
        return referral_id in self

    @property
    def ready(self) -> bool:
        """True once every topic was read up to its end offset at load time."""
        follower = self._follower
        return self._ready.is_set() or follower is not None and follower.ready

    def stop(self) -> None:
        """Make a following :meth:`load_from` return (within a poll interval)."""
        self._stop.set()
        if self._follower is not None:
            self._follower.stop()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def fhir_referral_ids(self, value: bytes) -> list[str]:
        """The referrals a body on ``ingest.fhir`` defines (its ServiceRequests)."""
        try:
            events = parse_fhir_referral(value, secret=self._secret)
        except FhirInputError:
            return []
        return [e.referral_id for e in events if e.kind in REFERRAL_KINDS]

    def load_from(
        self,
        kafka: KafkaTarget,
        topics: Sequence[str] | None = None,
        *,
        idle_timeout_s: float = 30.0,
        follow: bool = False,
    ) -> int:
        """Read ``topics`` (default: every registered one) from the beginning to their end
        offsets now; with ``follow``, keep reading new records until :meth:`stop`. Blocking (run
        it in a thread); raises :class:`StafetError` if Kafka does not answer. Returns the count
        of records read."""
        topics = list(topics or [INDEX_REFERRAL, *self.extractors])
        missing = [t for t in topics if t not in self.extractors and t != INDEX_REFERRAL]
        if missing:
            raise ValueError(f"no extractor registered for {missing}")
        follower = TopicFollower(kafka, topics, self._take, name="referral-index")
        self._follower = follower
        if self._stop.is_set():
            follower.stop()
        count = follower.run(follow=follow, timeout_s=idle_timeout_s)
        self._ready.set()
        log.info("fhir.index_loaded", topics=topics, records=count, referrals=len(self))
        return count

    def _take(self, msg: Message) -> None:
        if msg.topic() == INDEX_REFERRAL:  # key "<referral id>|<patient key>"
            rid, _, holder = (msg.key() or b"").decode("utf-8", "replace").rpartition("|")
            if msg.value() is not None:
                self.add(rid, holder)
            else:
                self.discard(rid, holder)
        else:
            for referral_id in self.extractors[msg.topic() or ""](msg.value() or b""):
                self.add(referral_id)


class FhirListener:
    """The aiohttp server; ``await start()``, then ``await stop()``."""

    def __init__(
        self,
        settings: Settings,
        producer: DurableProducer | None = None,
        index: ReferralIndex | None = None,
        *,
        index_wait_s: float = 30.0,
    ) -> None:
        self.settings = settings
        self.producer = producer or DurableProducer(
            settings, timeout_s=settings.fhir_produce_timeout_s, **stats_config(broker_reporter())
        )
        self._secret = settings.patient_key_secret.get_secret_value()
        # not ``index or …``: an empty index is falsy (``__len__``) and would be replaced
        self.index = index if index is not None else ReferralIndex(self._secret)
        self._index_wait_s = index_wait_s
        self._index_task: asyncio.Task[None] | None = None
        self._seen_task: asyncio.Task[None] | None = None
        self.seen = SeenMessages()  # inbound MedCom message ids (reliable messaging)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_outcome_middleware])
        for path in ROUTES:
            app.router.add_post(path, self.handle)
        app.router.add_post("/fhir/$process-message", self.handle)
        app.router.add_get("/openapi.json", self._openapi)
        app.router.add_get("/healthz", self._health)
        return app

    async def start(self) -> None:
        self._index_task = asyncio.create_task(self._keep_index())
        self._seen_task = asyncio.create_task(self._load_seen())
        deadline = time.monotonic() + self._index_wait_s
        while not (self.index.ready and self.seen.ready) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if not (self.index.ready and self.seen.ready):  # serve; those paths answer 503 for now
            log.warning(
                "fhir.index_not_ready",
                waited_s=self._index_wait_s,
                referrals=self.index.ready,
                messages=self.seen.ready,
            )
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        tls = server_context(
            self.settings.fhir_tls_cert,
            self.settings.fhir_tls_key,
            self.settings.fhir_tls_client_ca,
        )
        self._site = web.TCPSite(
            self._runner, self.settings.fhir_host, self.settings.fhir_port, ssl_context=tls
        )
        await self._site.start()
        log.info("fhir.listening", host=self.settings.fhir_host, port=self.port)
        HEALTH.set_ready("listening", True, f"HTTP on {self.settings.fhir_host}:{self.port}")
        HEALTH.add_check(
            "referral_index",
            lambda: (
                self.index.ready and self.seen.ready,
                f"referrals {'loaded' if self.index.ready else 'loading'}, received messages "
                f"{'loaded' if self.seen.ready else 'loading'}",
            ),
        )

    @property
    def port(self) -> int:
        assert self._runner is not None
        return int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        HEALTH.set_ready("listening", False, "stopping")
        self.index.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        for task in (self._index_task, self._seen_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self.producer.close()

    async def serve_forever(self) -> None:
        await self.start()
        await asyncio.Event().wait()

    async def _load_seen(self) -> None:
        """The inbound message ids from Kafka (in a thread); retried while Kafka is away.
        Until then $process-message answers 503: a duplicate must not slip through."""
        while not self.index.stopped:
            try:
                count = await asyncio.to_thread(self.seen.load, self.settings)
                log.info("fhir.seen_messages_loaded", messages=count)
                return
            except (StafetError, KafkaException) as exc:
                log.warning("fhir.seen_messages_retry", error=str(exc))
                await asyncio.sleep(5.0)

    async def _keep_index(self) -> None:
        """Load (then follow) the index in a thread; retry while Kafka is unreachable."""
        while not self.index.stopped:
            try:
                await asyncio.to_thread(self.index.load_from, self.settings, follow=True)
                return
            except (StafetError, KafkaException) as exc:
                log.warning("fhir.index_retry", error=str(exc))
                await asyncio.sleep(5.0)

    # --- requests ------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        """Validate, store, answer one POST (counted and timed for /metrics)."""
        started = time.perf_counter()
        MESSAGES_IN.labels(stage="fhir").inc()
        response = await self._handle(request)
        observe_answer("fhir", str(response.status), started)
        return response

    async def _handle(self, request: web.Request) -> web.Response:
        received_at = datetime.now(UTC).isoformat()
        body, oversize = await _read_limited(request, self.settings.fhir_max_body_bytes)
        reject = lambda status, issues: self.reject(status, issues, body, received_at)  # noqa: E731
        if oversize:
            return await reject(
                413,
                [
                    Issue(
                        "",
                        "the body exceeds the maximum of "
                        f"{self.settings.fhir_max_body_bytes} bytes",
                        "too-long",
                    )
                ],
            )
        media, charset = request.content_type.lower(), (request.charset or "utf-8").lower()
        if media not in MEDIA_TYPES or charset not in ("utf-8", "utf8"):
            return await reject(
                415,
                [
                    Issue(
                        "",
                        f"Content-Type must be {FHIR_JSON} or application/json in UTF-8",
                        "not-supported",
                    )
                ],
            )
        if request.path == "/fhir/$process-message":
            if not self.seen.ready:
                return _transient("the memory of received messages is still loading")
            # Standard Webhooks headers of a signed acknowledgement (all three, or unsigned)
            wid, ts, sig = (
                request.headers.get(h)
                for h in ("webhook-id", "webhook-timestamp", "webhook-signature")
            )
            return await process_message(
                self,
                self.seen,
                body,
                media,
                received_at,
                (wid[:256], ts[:20], sig[:1024]) if wid and ts and sig else None,
            )
        return await self.accept(body, media, ROUTES[request.path], received_at)

    async def accept(
        self,
        body: bytes,
        media: str,
        expected: str | None,
        received_at: str,
        extra_headers: Sequence[tuple[str, bytes]] = (),
    ) -> web.Response:
        """Validate and store a referral body whose size and media type were checked."""
        reject = lambda status, issues: self.reject(status, issues, body, received_at)  # noqa: E731
        path = f"/fhir/{expected}" if expected else "/fhir"
        posted = _resource_type(body)
        if expected is not None and posted is not None and posted != expected:
            return await reject(
                400,
                [
                    Issue(
                        "resourceType",
                        f"a {posted} was posted to {path}, which takes a {expected}",
                        "invalid",
                    )
                ],
            )
        unknown: set[str] = set()

        def known(referral_id: str) -> bool:
            found = self.index.known(referral_id)
            if not found:
                unknown.add(referral_id)
            return found

        try:
            try:
                events = parse_fhir_referral(
                    body, secret=self._secret, known_referral=known if self.index.ready else None
                )
            except FhirInputError as exc:
                # a referral accepted a moment ago (HL7 v2, another instance) is indexed by the
                # stream stage within its commit interval: give it that long before a 422
                if not (exc.business_rule and unknown and await self._indexed(unknown)):
                    raise
                events = parse_fhir_referral(
                    body, secret=self._secret, known_referral=self.index.known
                )
        except FhirInputError as exc:
            return await reject(422 if exc.business_rule else 400, exc.issues)
        if not self.index.ready and _unchecked(events, self.index):
            return _transient(
                "the referral index is still loading; a decision cannot be "
                "checked against its referral yet"
            )
        first = events[0]
        try:
            await self.producer.send(
                INGEST_FHIR,
                body,
                key=first.patient_key.encode(),
                headers=[
                    ("content-type", media.encode()),
                    (H_SOURCE, b"fhir"),
                    (H_RECEIVED_AT, received_at.encode()),
                    (H_EVENT_ID, first.event_id.encode()),
                    *extra_headers,
                ],
            )
        except KafkaWriteError as exc:
            log.error("fhir.store_failed", event_id=first.event_id, error=str(exc))
            return _transient(f"not stored, please retry: {exc}")
        for event in events:
            if event.kind in REFERRAL_KINDS:
                self.index.add(event.referral_id)
        log.info(
            "fhir.accepted", event_ids=[e.event_id for e in events], kinds=[e.kind for e in events]
        )
        issues = [
            {
                "severity": "information",
                "code": "informational",
                "diagnostics": mask_cpr(
                    f"stored as event {e.event_id} ({e.kind}, referral {e.referral_id})"
                ),
            }
            for e in events
        ]
        return _outcome(202, issues, headers={EVENT_ID_HEADER: first.event_id})

    async def _indexed(self, referral_ids: set[str]) -> bool:
        """Wait (up to ``fhir_unknown_referral_wait_s``) until every id is in the index."""
        deadline = time.monotonic() + self.settings.fhir_unknown_referral_wait_s
        while not all(rid in self.index for rid in referral_ids):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    async def reject(
        self, status: int, issues: list[Issue], body: bytes, received_at: str
    ) -> web.Response:
        """The one rejection path (the $process-message handlers use it too): the body on
        dlq.fhir with the CPR-masked reason, and an OperationOutcome with ``status``."""
        issues = [Issue(mask_cpr(i.path), mask_cpr(i.reason), i.code) for i in issues]
        reason = f"HTTP {status}: " + "; ".join(
            f"{i.path}: {i.reason}" if i.path else i.reason for i in issues
        )
        try:
            await self.producer.send(
                DLQ_FHIR,
                body[:DLQ_SAMPLE_BYTES],
                headers=list(dead_letter_headers("fhir", reason, received_at=received_at).items()),
            )
        except KafkaWriteError as exc:
            log.error("fhir.dlq_failed", reason=reason, error=str(exc))
        log.warning("fhir.rejected", status=status, reason=reason[:2000])
        response = _outcome(
            status,
            [
                {
                    "severity": "error",
                    "code": i.code,
                    "diagnostics": i.reason,
                    **({"expression": [i.path]} if i.path else {}),
                }
                for i in issues
            ],
        )
        if status == 413:
            response.force_close()  # the rest of the body is not read
        return response

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi(), dumps=_dumps)

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "status": "ok",
                "referral_index": "ready" if self.index.ready else "loading",
                "referrals": len(self.index),
            }
        )


async def _read_limited(request: web.Request, limit: int) -> tuple[bytes, bool]:
    """(body, oversize): never holds more than ``limit`` + one chunk; an oversize body is cut to
    the DLQ sample."""
    declared = request.content_length
    buffer = bytearray()
    async for chunk in request.content.iter_any():
        buffer += chunk
        if len(buffer) > limit or (
            declared is not None and declared > limit and len(buffer) >= DLQ_SAMPLE_BYTES
        ):
            return bytes(buffer[:DLQ_SAMPLE_BYTES]), True
    if declared is not None and declared > limit:
        return bytes(buffer[:DLQ_SAMPLE_BYTES]), True
    return bytes(buffer), False


def _resource_type(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    kind = data.get("resourceType") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else None


def _unchecked(events: list[ReferralEvent], index: ReferralIndex) -> bool:
    """Decisions/assessments whose referral is neither in the body nor (yet) in the index."""
    in_body = {e.referral_id for e in events if e.kind in REFERRAL_KINDS}
    return any(
        e.referral_id not in in_body and e.referral_id not in index
        for e in events
        if e.kind not in REFERRAL_KINDS
    )


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False)


def _outcome(
    status: int, issues: list[dict[str, Any]], headers: dict[str, str] | None = None
) -> web.Response:
    body = {"resourceType": "OperationOutcome", "issue": issues}
    return web.Response(
        status=status,
        body=_dumps(body).encode(),
        headers=headers,
        content_type=FHIR_JSON,
        charset="utf-8",
    )


def _transient(reason: str) -> web.Response:
    return _outcome(
        503,
        [{"severity": "error", "code": "transient", "diagnostics": reason}],
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


@web.middleware
async def _outcome_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """404 / 405 / unexpected errors as OperationOutcome, like every other answer."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not-found", 405: "not-supported"}.get(exc.status, "processing")
        return _outcome(
            exc.status,
            [
                {
                    "severity": "error",
                    "code": code,
                    "diagnostics": f"{request.method} {request.path}: {exc.reason}",
                }
            ],
            headers={k: v for k, v in exc.headers.items() if k == "Allow"},
        )
    except Exception as exc:  # noqa: BLE001 - a bug must not kill the listener
        log.exception("fhir.internal_error", path=request.path, error=str(exc))
        return _outcome(
            500,
            [
                {
                    "severity": "fatal",
                    "code": "exception",
                    "diagnostics": "internal error; not stored, please retry",
                }
            ],
        )


async def run(settings: Settings) -> None:
    """Run the listener until cancelled (``stafet fhir``)."""
    await run_listener(settings, "fhir", FhirListener(settings))
