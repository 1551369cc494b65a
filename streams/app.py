"""The stream engine: quixstreams with ``processing_guarantee="exactly-once"``.

One :class:`~quixstreams.Application` consumes the four input topics. Each record goes through
its step (:mod:`normalize`, :mod:`notify`, :mod:`referrals`), a pure function that returns the
records to produce; the engine produces them, writes the step's state (RocksDB, changelog topic)
and commits the input offset in **one Kafka transaction**. A crash anywhere aborts the
transaction and the records are processed again from the last commit, so a ``read_committed``
consumer sees each output exactly once — no guards, no exit-for-replay.

Errors by kind (see docs/decisions.md):
- the record's own fault (bad HL7, unknown municipality, a second decision): the step returns a
  dead letter instead, in the same transaction;
- an output that can never be produced (larger than its topic's ``max.message.bytes``): checked
  before anything is written — the input goes to its stage's dead-letter topic with the reason,
  an alert goes to ``alerts.operator``, the step's state is left as it was, and the records
  behind it flow;
- a transient broker fault: quixstreams aborts the transaction; :func:`run_worker` backs off and
  starts the application again in the same process;
- a Kafka call that never returns (librdkafka #5511, after the group coordinator's broker was
  killed): the :mod:`watchdog` ends the process after ``worker_stall_exit_s`` and its
  supervisor starts a fresh one.
"""

from __future__ import annotations

import hashlib
import signal
import socket
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType
from quixstreams import Application, message_context
from quixstreams.kafka.configuration import ConnectionConfig
from quixstreams.models import Serializer
from quixstreams.state import State

from stafet.config import Settings
from stafet.kafka.client import client_config
from stafet.kafka.topics import (
    ALERTS_OPERATOR,
    DLQ_NORMALIZE,
    DLQ_NOTIFY,
    DLQ_REFERRAL,
    EVENTS_ENCOUNTER,
    EVENTS_REFERRAL,
    INDEX_REFERRAL,
    INGEST_FHIR,
    INGEST_HL7V2,
    STREAM_OUTPUTS,
    TIMERS_REFERRAL,
    municipality_topic,
)
from stafet.logging import get_logger
from stafet.observability import (
    DEAD_LETTERS,
    HEALTH,
    MESSAGES_IN,
    MESSAGES_OUT,
    lag_reporter,
    serve_health,
    stats_config,
)
from stafet.schemas.municipalities import municipalities
from stafet.streams.normalize import normalize_fhir, normalize_hl7
from stafet.streams.notify import notify
from stafet.streams.records import Inbound, Output, dead_letter, headers_dict, operator_alert
from stafet.streams.referrals import ReferralStep
from stafet.streams.staged_state import StagedState
from stafet.streams.watchdog import Watchdog

log = get_logger(__name__)


#: what every step may write (the callable topic in ``to_topic`` must return a declared Topic)
def output_topics() -> list[str]:
    return [*STREAM_OUTPUTS, *(municipality_topic(code) for code in municipalities())]


class OutputValue(Serializer):
    """The step already made the bytes: pass :attr:`Output.value` through."""

    def __call__(self, value: Output, ctx: Any) -> bytes | None:  # type: ignore[override]
        return value.value


class TopicLimits:
    """Each output topic's ``max.message.bytes`` (read from the broker, refreshed now and
    then), so a record that the broker would refuse is caught before the transaction."""

    DEFAULT = 1_048_588  # the broker's default

    def __init__(self, config: dict[str, Any], topics: list[str], refresh_s: float = 60.0) -> None:
        self._admin = AdminClient({**config, "log_level": 3})
        self._topics = topics
        self._refresh_s = refresh_s
        self._limits: dict[str, int] = {}
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def limit(self, topic: str) -> int:
        with self._lock:
            if time.monotonic() - self._read_at > self._refresh_s:
                self._read()
            return self._limits.get(topic, self.DEFAULT)

    def _read(self) -> None:
        resources = [ConfigResource(ResourceType.TOPIC, t) for t in self._topics]
        try:
            futures = self._admin.describe_configs(resources, request_timeout=10)
            for resource, future in futures.items():
                entry = future.result().get("max.message.bytes")
                if entry is not None and entry.value:
                    self._limits[resource.name] = int(entry.value)
            self._read_at = time.monotonic()
        except Exception as exc:  # keep the last known limits; try again on the next record
            log.warning("worker.topic_limits_unavailable", error=str(exc))


Step = Callable[[Inbound, Any], list[Output]]


class Stage:
    """One input topic's step plus the checks every step gets."""

    def __init__(self, name: str, dlq: str, step: Step, limits: TopicLimits) -> None:
        self.name, self.dlq, self.step, self.limits = name, dlq, step, limits

    def __call__(
        self, value: bytes | None, key: bytes | None, headers: Any, state: Any = None
    ) -> list[Output]:
        """The quixstreams callback: the record in hand, from the message context."""
        ctx = message_context()
        record = Inbound(ctx.topic, ctx.partition, ctx.offset, key, value, headers_dict(headers))
        return self.process(record, state)

    def process(self, record: Inbound, state: Any = None) -> list[Output]:
        """The step's outputs, or the record's dead letter + an alert when one of them could
        never be produced; the step's state writes count only in the first case."""
        MESSAGES_IN.labels(stage=self.name).inc()
        staged = StagedState(state) if state is not None else None
        outputs = self.step(record, staged)
        too_large = [
            (o, limit) for o in outputs if o.size() > (limit := self.limits.limit(o.topic))
        ]
        if too_large:  # would fail the whole transaction forever: dead-letter the input instead
            reason = "; ".join(
                f"output for {o.topic} is {o.size()} bytes, over its max.message.bytes {limit}"
                for o, limit in too_large
            )
            log.error(f"{self.name}.output_too_large", origin=record.origin, reason=reason)
            DEAD_LETTERS.labels(stage=self.name).inc()
            return [
                dead_letter(self.dlq, self.name, record, reason),
                operator_alert(
                    self.name,
                    f"{record.origin} dead-lettered: {reason}",
                    origin=record.origin,
                    topic=self.dlq,
                ),
            ]
        if staged is not None:
            staged.commit()
        _count(self.name, self.dlq, outputs)
        return outputs


def _count(stage: str, dlq: str, outputs: list[Output]) -> None:
    """/metrics: the step's outputs, its dead letters apart (alerts and index/timer records
    are bookkeeping, not output)."""
    dead = sum(1 for o in outputs if o.topic == dlq)
    if dead:
        DEAD_LETTERS.labels(stage=stage).inc(dead)
    out = sum(
        1 for o in outputs if o.topic not in (dlq, ALERTS_OPERATOR, TIMERS_REFERRAL, INDEX_REFERRAL)
    )
    if out:
        MESSAGES_OUT.labels(stage=stage).inc(out)


def sampled(every: int) -> Callable[[Inbound], bool]:
    """Deterministic sampling (a replay decides the same): 1 record in ``every``."""
    if every <= 1:
        return lambda record: True
    return lambda record: zlib.crc32(record.origin.encode()) % every == 0


def transactional_id(settings: Settings) -> str:
    """``<app id>-<host>-<data dir hash>``: the same for a worker that restarts where it ran (its
    successor then fences a crashed predecessor's open transaction at once instead of waiting
    for it to time out), different for every other worker (each has its own state directory)."""
    where = hashlib.sha256(str(settings.worker_data_dir.resolve()).encode()).hexdigest()[:8]
    return f"{settings.app_id}-{socket.gethostname()}-{where}"


def _with_state(stage: Stage) -> Callable[[Any, Any, int, Any, State], Any]:
    """quixstreams' stateful ``apply(metadata=True)`` signature for a stage."""

    def apply(value: Any, key: Any, timestamp: int, headers: Any, state: State) -> Any:
        return stage(value, key, headers, state)

    return apply


def _without_state(stage: Stage) -> Callable[[Any, Any, int, Any], Any]:
    """quixstreams' stateless ``apply(metadata=True)`` signature for a stage."""

    def apply(value: Any, key: Any, timestamp: int, headers: Any) -> Any:
        return stage(value, key, headers)

    return apply


def build_application(settings: Settings) -> Application:
    """The application with every stage attached; not started."""
    config = client_config(settings)
    app = _Application(
        broker_address=ConnectionConfig.from_librdkafka_dict(config, ignore_extras=True),
        consumer_group=settings.app_id,
        processing_guarantee=settings.processing_guarantee,
        auto_offset_reset="earliest",
        state_dir=str(settings.worker_data_dir),
        commit_interval=settings.worker_commit_interval_s,
        consumer_extra_config={
            "session.timeout.ms": int(settings.worker_session_timeout_s * 1000),
            "heartbeat.interval.ms": int(min(3.0, settings.worker_session_timeout_s / 3) * 1000),
            "log_level": 3,
            **stats_config(lag_reporter(settings.app_id, readiness=True)),
        },
        producer_extra_config={
            "transactional.id": transactional_id(settings),
            "linger.ms": 5,
            "log_level": 3,
            "transaction.timeout.ms": int(settings.worker_transaction_timeout_s * 1000),
        },
        loglevel=None,  # its loggers go through our CPR-masking handler (stafet.logging)
        auto_create_topics=True,  # only the changelogs are missing; `stafet topics` made the rest
    )
    topic = {
        name: app.topic(
            name,
            key_deserializer="bytes",
            value_deserializer="bytes",
            key_serializer="bytes",
            value_serializer=OutputValue(),
        )
        for name in {*output_topics(), INGEST_HL7V2, INGEST_FHIR}
    }
    limits = TopicLimits(config, output_topics())
    validate = sampled(settings.validate_every)
    referrals = ReferralStep(settings)
    stages = [
        (
            INGEST_HL7V2,
            Stage("normalize", DLQ_NORMALIZE, lambda r, s: normalize_hl7(r, settings), limits),
            False,
        ),
        (
            INGEST_FHIR,
            Stage("normalize", DLQ_NORMALIZE, lambda r, s: normalize_fhir(r, settings), limits),
            False,
        ),
        (
            EVENTS_ENCOUNTER,
            Stage(
                "notify",
                DLQ_NOTIFY,
                lambda r, s: notify(r, s, settings, validate=validate(r)),
                limits,
            ),
            True,
        ),
        (EVENTS_REFERRAL, Stage("referrals", DLQ_REFERRAL, referrals, limits), True),
    ]
    for source, stage, stateful in stages:
        sdf = app.dataframe(topic[source])
        if stateful:
            sdf = sdf.apply(_with_state(stage), stateful=True, metadata=True, expand=True)
        else:
            sdf = sdf.apply(_without_state(stage), metadata=True, expand=True)
        sdf = sdf.set_headers(lambda v, k, t, h: list(v.headers.items()))
        sdf.to_topic(lambda v, k, t, h: topic[v.topic], key=lambda v: v.key)
    return app


class _Application(Application):
    """quixstreams' Application, with the process's signals left to :class:`Stopper`."""

    def _setup_signal_handlers(self) -> None:
        pass


class Stopper:
    """SIGTERM / SIGINT for the worker process: a running application stops gracefully (commits
    its checkpoint, leaves the group); between applications — after a fault, during the backoff —
    the process exits at once (no transaction is open then).

    quixstreams' own handler was not enough: it stays installed after ``run()`` fails (a SIGTERM
    during the retry was ignored), and a ``stop()`` that arrives while ``run()`` starts is lost
    (its running flag is set after); the soak test found both. So the stop is repeated until the
    application has returned."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._app: Application | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stopping.set()
        if self._app is None:
            raise SystemExit(0)
        self._app.stop()

    def run(self, app: Application) -> None:
        """``app.run()``, stopped when a signal comes (however early)."""
        self._app = app
        keeper = threading.Thread(target=self._keep_stopping, args=(app,), daemon=True)
        keeper.start()
        try:
            app.run()
        finally:
            self._app = None

    def _keep_stopping(self, app: Application) -> None:
        self.stopping.wait()
        while self._app is app:
            app.stop()
            time.sleep(0.5)


def run_worker(settings: Settings) -> None:
    """Run the stream stage until SIGTERM / Ctrl-C. A fault that stops the application (the
    broker away at start or longer than quixstreams waits, a failed commit) aborts its
    transaction; the application is then started again from the committed offsets, in this
    process, after a backoff (1 s doubling to 30 s)."""
    from stafet.directory import directory_file
    from stafet.kafka.topics import TopicPlan, ensure_topics
    from stafet.streams.timers import ReferralScheduler

    # the party directory is read and validated before anything starts: without it no message
    # can be addressed, so a missing or bad file stops the worker with the reason (exit 1)
    directory = directory_file(settings.directory_file)
    log.info("worker.directory", path=str(settings.directory_file), entries=len(directory.get()))
    health = serve_health(settings, "worker")
    HEALTH.set_ready("group", False, f"joining consumer group {settings.app_id}")
    scheduler = ReferralScheduler(client_config(settings), settings.referral_timer_interval_s)
    scheduler.start()
    watchdog = Watchdog(settings.worker_stall_exit_s)
    watchdog.start()
    backoff = 1.0
    stopper = Stopper()
    stopper.install()
    try:
        while not stopper.stopping.is_set():
            started = time.monotonic()
            HEALTH.beat()  # alive between applications too (statistics beat while one runs)
            try:
                ensure_topics(
                    settings,
                    settings.partitions,
                    timeout=10.0,
                    plan=TopicPlan.from_settings(settings),
                )
                stopper.run(build_application(settings))
                if stopper.stopping.is_set():
                    return
                log.warning("worker.application_returned")  # not asked to: start it again
            except Exception:
                log.exception("worker.application_failed", retry_in_s=backoff)
                HEALTH.set_ready("group", False, f"restarting after a fault (in {backoff:.0f} s)")
            if time.monotonic() - started > 60:
                backoff = 1.0
            time.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
    finally:
        watchdog.stop()
        scheduler.stop()
        if health is not None:
            health.stop()
