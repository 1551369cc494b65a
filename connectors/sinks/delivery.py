"""Delivery: out.* topics → each subscriber, reliably, audited (``stafet deliver``).

One process runs, side by side and independent of each other:

- a :class:`SubscriberSink` per REST / letter subscriber, with **its own consumer group**
  (``stafet-delivery-<id>``), so a slow or dead endpoint holds back only its own queue. It
  delivers its records one at a time in topic order (one patient's messages stay in order),
  retries with exponential backoff and jitter, dead-letters after the retry budget (or at once on
  a 4xx refusal), writes every attempt to ``audit.delivery``, and commits its offset only after
  the outcome is recorded — a crash means a redelivery with the same ids, never a loss;
- the :class:`Watcher`, which audits records that Kafka subscribers read themselves and raises
  an operator alert for any record no subscriber takes;
- the acknowledgement listener on ``acks.inbound`` and the :class:`AckTracker` clock.

Only one :class:`DeliveryService` per registry may be active: the acknowledgement state lives
in the process that delivered. ``stafet deliver`` replicas elect the active one through Kafka
group membership (:mod:`stafet.connectors.sinks.standby`); the others stand by. One process
delivers ≈ 500 messages/s on 2 cores (bench/delivery.py) — several times what the pipeline
produces.
"""

from __future__ import annotations

import asyncio
import random
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import aiohttp
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from stafet.audit import AuditRecord, headers_of
from stafet.config import Settings
from stafet.connectors.sinks.acknowledgements import AckTracker, Pending
from stafet.connectors.sinks.channels import (
    AttemptResult,
    LetterOutbox,
    OutRecord,
    Recorder,
    RestHook,
)
from stafet.errors import StafetError
from stafet.kafka.client import client_config
from stafet.kafka.producer import DurableProducer
from stafet.kafka.reader import fetch_record, read_to_end
from stafet.kafka.topics import (
    ACKS_INBOUND,
    AUDIT_DELIVERY,
    H_RECEIVED_AT,
    H_SIGNATURE,
    H_SIGNATURE_ID,
    H_SIGNATURE_TS,
)
from stafet.logging import get_logger
from stafet.medcom.acknowledgement import MessageError, parse_ack, resend_copy
from stafet.observability import DELIVERIES, LAST_DELIVERY, lag_reporter, stats_config
from stafet.subscribers import Registry, Subscriber

log = get_logger(__name__)

WATCH_GROUP = "stafet-delivery-watch"
ACK_GROUP = "stafet-delivery-acks"
OUT_PATTERN = "^out\\..*"


class GroupConsumer:
    """A confluent-kafka consumer driven from asyncio through its own thread (manual commits).

    Its session timeout is the standby's takeover time (``delivery_session_timeout_s``): the
    partitions a SIGKILLed replica held are free for its successor after that long, not after
    librdkafka's default of 45 s (during which acknowledgements would wait and resends fire)."""

    def __init__(
        self,
        settings: Settings,
        group: str,
        topics: list[str],
        *,
        max_poll_interval_ms: int = 300_000,
    ) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"consumer-{group}")
        session_ms = int(settings.delivery_session_timeout_s * 1000)
        self._consumer = Consumer(
            {
                **client_config(settings),
                "group.id": group,
                "enable.auto.commit": False,
                "session.timeout.ms": session_ms,
                "heartbeat.interval.ms": max(500, session_ms // 4),
                "auto.offset.reset": "earliest",
                "log_level": 3,
                "topic.metadata.refresh.interval.ms": 5000,
                **stats_config(lag_reporter(group)),
                # a sink retries one record for as long as its endpoint is
                # down without polling: keep its partitions meanwhile
                "max.poll.interval.ms": max_poll_interval_ms,
            }
        )
        self._consumer.subscribe(topics)

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, lambda: fn(*args, **kwargs)
        )

    async def poll(self, max_records: int = 100, timeout_s: float = 0.5) -> list[Message]:
        messages = await self._call(self._consumer.consume, max_records, timeout_s)
        for m in messages:
            if m.error() and not m.error().retriable():
                log.warning("delivery.consumer_error", error=str(m.error()))
        return [m for m in messages if not m.error()]

    async def commit(
        self, msg: Message | None = None, offsets: dict[tuple[str, int], int] | None = None
    ) -> None:
        """Commit after ``msg`` (its partition), the given next ``offsets``, or every position
        consumed so far."""
        try:
            if offsets is not None:
                if offsets:
                    await self._call(
                        self._consumer.commit,
                        offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                        asynchronous=False,
                    )
            elif msg is None:
                await self._call(self._consumer.commit, asynchronous=False)
            else:
                await self._call(self._consumer.commit, message=msg, asynchronous=False)
        except KafkaException as exc:
            if "NO_OFFSET" not in str(exc):  # nothing consumed since the last commit
                raise

    async def close(self) -> None:
        await self._call(self._consumer.close)
        self._pool.shutdown(wait=False)


def backoff_s(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: about initial·2^(attempt−1), capped, times 0.5–1."""
    return min(max_s, initial_s * 2 ** min(attempt - 1, 30)) * rng.uniform(0.5, 1.0)


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep; True if ``stop`` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
        return True
    except TimeoutError:
        return False


class SubscriberSink:
    """One REST or letter subscriber's queue (see the module docstring)."""

    def __init__(
        self,
        subscriber: Subscriber,
        settings: Settings,
        recorder: Recorder,
        tracker: AckTracker | None,
        session: aiohttp.ClientSession,
    ) -> None:
        self.subscriber, self.settings, self.recorder = subscriber, settings, recorder
        self.tracker = tracker
        self.channel: RestHook | LetterOutbox = (
            RestHook(subscriber, session, settings.delivery_timeout_s)
            if subscriber.delivery == "rest"
            else LetterOutbox(subscriber, settings.outbox_dir)
        )
        self._rng = random.Random()

    async def run(self, stop: asyncio.Event) -> None:
        consumer = GroupConsumer(
            self.settings,
            self.subscriber.group_id,
            [self.subscriber.out_topic],
            max_poll_interval_ms=int(
                min(86_400_000, max(300_000, (self.settings.delivery_retry_budget_s + 600) * 1000))
            ),
        )
        try:
            while not stop.is_set():
                messages = await consumer.poll(max_records=100)
                audits: list[asyncio.Future[None]] = []
                done: dict[tuple[str, int], int] = {}  # next offset per partition, handled

                async def flush(
                    audits: list[asyncio.Future[None]] = audits,
                    done: dict[tuple[str, int], int] = done,
                ) -> None:
                    """Every outcome so far on the audit topic, then commit exactly those."""
                    failures = [
                        r
                        for r in await asyncio.gather(*audits, return_exceptions=True)
                        if isinstance(r, BaseException)
                    ]
                    audits.clear()
                    if failures:
                        raise failures[0]
                    await consumer.commit(offsets=dict(done))

                for msg in messages:
                    record = OutRecord.from_message(msg)
                    if self.subscriber.takes(record.topic, record.recipient):
                        if not await self.deliver(record, stop, audits, before_retry=flush):
                            await flush()  # stopping mid-retry: this record comes again
                            return
                    done[(msg.topic(), msg.partition())] = msg.offset() + 1
                await flush()
        finally:
            await consumer.close()

    async def deliver(
        self,
        record: OutRecord,
        stop: asyncio.Event,
        audits: list[asyncio.Future[None]] | None = None,
        before_retry: Any = None,
    ) -> bool:
        """Deliver with retries until delivered or dead-lettered (True), or stopping (False).
        The ``delivered`` audit line is written in the background into ``audits`` (the caller
        awaits them before it commits); failures and dead letters are awaited here."""
        sid, started = self.subscriber.id, asyncio.get_running_loop().time()
        attempt = 0
        while True:
            attempt += 1
            outcome = await self.channel.send(record.value, record, attempt)
            if outcome.delivered:
                line = self.recorder.audit(
                    record.audit("delivered", sid, attempt=attempt, detail=outcome.detail),
                    record.key,
                )
                if audits is None:
                    await line
                else:
                    audits.append(asyncio.ensure_future(line))
                DELIVERIES.labels(subscriber=sid, outcome="delivered").inc()
                LAST_DELIVERY.labels(subscriber=sid).set_to_current_time()
                if self.tracker is not None:
                    self.tracker.expect(sid, record)
                log.debug(
                    "delivery.delivered",
                    subscriber=sid,
                    message_id=record.message_id,
                    attempt=attempt,
                )
                return True
            elapsed = asyncio.get_running_loop().time() - started
            if not outcome.retry or elapsed >= self.settings.delivery_retry_budget_s:
                why = (
                    "refused: "
                    if not outcome.retry
                    else f"no success in {elapsed:.0f} s ({attempt} attempts): "
                ) + outcome.detail
                await self.recorder.dead_letter(record, sid, why, attempt=attempt)
                DELIVERIES.labels(subscriber=sid, outcome="dead_lettered").inc()
                return True
            if attempt == 1 and before_retry is not None:
                await before_retry()  # what is done before this record is committed first
            await self.recorder.audit(
                record.audit("attempt-failed", sid, attempt=attempt, detail=outcome.detail),
                record.key,
            )
            DELIVERIES.labels(subscriber=sid, outcome="retried").inc()
            log.warning(
                "delivery.retry",
                subscriber=sid,
                message_id=record.message_id,
                attempt=attempt,
                detail=outcome.detail,
            )
            wait = backoff_s(
                attempt,
                self.settings.delivery_backoff_initial_s,
                self.settings.delivery_backoff_max_s,
                self._rng,
            )
            if await _sleep_unless(stop, wait):
                return False

    async def send_again(
        self, record: OutRecord, number: int, *, replay: bool = False
    ) -> AttemptResult:
        """One more send of a delivered record: a resend gets a new Bundle.id (MedCom MR7), a
        replay is byte-identical."""
        body = record.value
        if not replay and self.subscriber.delivery == "rest":
            body = resend_copy(record.value, number)
        return await self.channel.send(body, record, number + 1)


class Watcher:
    """Audits what Kafka subscribers read themselves; alerts on records nobody takes."""

    def __init__(self, registry: Registry, settings: Settings, recorder: Recorder) -> None:
        self.registry, self.settings, self.recorder = registry, settings, recorder

    async def handle(self, record: OutRecord) -> None:
        takers = self.registry.takers(record.topic, record.recipient)
        if not takers:
            await self.recorder.audit(
                record.audit(
                    "unrouted",
                    "",
                    detail=f"no subscriber takes {record.recipient} on {record.topic}",
                ),
                record.key,
            )
            await self.recorder.alert(
                f"no subscriber for recipient {record.recipient} on {record.topic}: message "
                f"{record.message_id} is not delivered; add the party to the subscriber registry",
                topic=record.topic,
                message_id=record.message_id,
            )
        for s in takers:
            if s.delivery == "kafka":
                at = _iso_ms(record.timestamp_ms)
                await self.recorder.audit(record.audit("published", s.id, at=at), record.key)

    async def run(self, stop: asyncio.Event) -> None:
        consumer = GroupConsumer(self.settings, WATCH_GROUP, [OUT_PATTERN])
        try:
            while not stop.is_set():
                messages = await consumer.poll()
                await asyncio.gather(*(self.handle(OutRecord.from_message(m)) for m in messages))
                if messages:
                    await consumer.commit()  # every partition of the batch
        finally:
            await consumer.close()


def _iso_ms(timestamp_ms: int) -> str:
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC).isoformat(timespec="milliseconds")


class DeliveryService:
    """Every sink, the watcher and the acknowledgement handling of one registry."""

    def __init__(
        self, settings: Settings, registry: Registry, producer: DurableProducer | None = None
    ) -> None:
        problems = registry.problems()
        if problems:
            raise StafetError("the subscriber registry is not ready: " + "; ".join(problems))
        self.settings, self.registry = settings, registry
        self.producer = producer or DurableProducer(settings, timeout_s=10.0)
        self.recorder = Recorder(self.producer)
        self.sinks: dict[str, SubscriberSink] = {}
        secrets = {s.id: s.secret().get_secret_value() for s in registry.pushed() if s.tracks_acks}
        self.tracker = AckTracker(
            self.recorder,
            secrets,
            timeout_s=settings.ack_timeout_s,
            max_resends=settings.ack_max_resends,
            resend=self._resend,
            fetch=self._fetch,
        )
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def start(self, rebuild_timeout_s: float = 120.0) -> None:
        deadline = asyncio.get_running_loop().time() + rebuild_timeout_s
        while True:  # Kafka may still be starting (or electing the audit topic's leader)
            try:
                await asyncio.to_thread(self._rebuild)
                break
            except (StafetError, KafkaException) as exc:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                log.warning("delivery.audit_replay_retry", error=str(exc))
                self.tracker.pending.clear()
                self.tracker.finished.clear()
                await asyncio.sleep(2.0)
        self._session = aiohttp.ClientSession()
        for s in self.registry.pushed():
            self.sinks[s.id] = SubscriberSink(
                s, self.settings, self.recorder, self.tracker, self._session
            )
        coros = [
            *(self._guard(f"sink {sid}", sink.run) for sid, sink in self.sinks.items()),
            self._guard("watcher", Watcher(self.registry, self.settings, self.recorder).run),
            self._guard("acks", self._listen_acks),
            self._guard(
                "ack clock", lambda stop: self.tracker.run(stop, self.settings.ack_check_interval_s)
            ),
        ]
        self._tasks = [asyncio.create_task(c) for c in coros]
        log.info(
            "delivery.started",
            sinks=sorted(self.sinks),
            tracked=sorted(self.tracker.tracked),
            pending_acks=len(self.tracker.pending),
        )

    def _rebuild(self) -> None:
        """The tracker's state from the audit trail (everything written before this start)."""
        n = 0
        for msg in read_to_end(client_config(self.settings), AUDIT_DELIVERY):
            self.tracker.replay(AuditRecord.decode(msg.value()), msg.key())
            n += 1
        log.info("delivery.audit_replayed", records=n, pending_acks=len(self.tracker.pending))

    async def _guard(self, name: str, run: Any) -> None:
        """Run a part; if it fails, log, wait, and start it again (the others go on)."""
        while not self._stop.is_set():
            try:
                await run(self._stop)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a part must never die silently
                log.error("delivery.part_failed", part=name, error=f"{type(exc).__name__}: {exc}")
                await _sleep_unless(self._stop, 5.0)

    async def _listen_acks(self, stop: asyncio.Event) -> None:
        consumer = GroupConsumer(self.settings, ACK_GROUP, [ACKS_INBOUND])
        try:
            while not stop.is_set():
                for msg in await consumer.poll():
                    body = msg.value() or b""
                    try:
                        ack = parse_ack(body)
                    except MessageError as exc:  # the FHIR connector checked it; be safe
                        log.error("delivery.bad_ack", error=str(exc))
                    else:
                        headers = headers_of(msg.headers())
                        # the replay window is held against when the listener took it in,
                        # not against now: a delivery that was down must not refuse them
                        await self.tracker.on_ack(
                            ack,
                            body,
                            headers.get(H_SIGNATURE),
                            headers.get(H_SIGNATURE_TS),
                            webhook_id=headers.get(H_SIGNATURE_ID),
                            received_at=headers.get(H_RECEIVED_AT),
                        )
                    await consumer.commit(msg)
        finally:
            await consumer.close()

    async def _fetch(self, pending: Pending) -> OutRecord:
        msg = await asyncio.to_thread(
            fetch_record,
            client_config(self.settings),
            pending.topic,
            pending.partition,
            pending.offset,
        )
        return OutRecord.from_message(msg)

    async def _resend(self, subscriber_id: str, record: OutRecord, number: int) -> str:
        outcome = await self.sinks[subscriber_id].send_again(record, number)
        DELIVERIES.labels(subscriber=subscriber_id, outcome="resent").inc()
        log.warning(
            "delivery.resent",
            subscriber=subscriber_id,
            message_id=record.message_id,
            resend=number,
            outcome=outcome.detail,
        )
        return outcome.detail

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        self.producer.close()

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()
