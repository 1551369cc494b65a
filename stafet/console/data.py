"""What the console shows: the index of what Kafka holds, and the processes' health and metrics.

The index (:mod:`stafet.console.index`) is built by a follower thread that reads the topics
from their beginning and then each new record (assigned, never a consumer group, never
committed, ``read_committed``); a page first waits until it holds everything committed before
the page was asked for (:meth:`ConsoleData.fresh`), so an operator's action shows on the next
page. Record counts and the processes' states are asked for on each view.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from confluent_kafka import IsolationLevel, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from prometheus_client.parser import text_string_to_metric_families

from stafet.audit import AuditRecord, now_iso
from stafet.config import Settings
from stafet.console.index import ConsoleIndex, followed
from stafet.console.records import DeadLetter, masked
from stafet.errors import StafetError
from stafet.kafka.client import client_config
from stafet.kafka.follower import TopicFollower
from stafet.kafka.producer import DurableProducer
from stafet.kafka.topics import AUDIT_ACCESS, AUDIT_DELIVERY, all_topics
from stafet.logging import get_logger

log = get_logger(__name__)

# --- the Flow page ----------------------------------------------------------------------------


@dataclass
class ProcessState:
    name: str
    url: str
    up: bool
    detail: str
    ready: bool | None = None
    series: list[tuple[str, str, float, float | None]] = field(default_factory=list)


class ConsoleData:
    """The console's window on Kafka and the processes (one per console process)."""

    #: how long a page waits for the index to reach what Kafka held when it was asked for
    FRESH_WAIT_S = 5.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config = client_config(settings)
        self.index = ConsoleIndex()
        self.follower = TopicFollower(self.config, followed, self.index.apply, name="console")
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._admin: AdminClient | None = None
        self._admin_lock = threading.Lock()
        self._producer: DurableProducer | None = None
        self._rates: dict[tuple[str, str], tuple[float, float]] = {}

    # -- the index -------------------------------------------------------------------------

    def start(self) -> None:
        """Start following the topics (in a thread of its own), once."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._follow, name="console-index", daemon=True)
            self._thread.start()

    def _follow(self) -> None:
        while not self.follower.stopped:
            try:
                self.follower.run(follow=True)
            except StafetError as exc:  # Kafka away at the start: try again
                log.warning("console.index_retry", error=str(exc))
                self._closing.wait(5.0)

    def index_condition(self) -> tuple[bool, str]:
        """``/readyz``'s ``index``: the topics read to the ends they had at the start."""
        size = self.index.size()
        held = f"{size['records']} records, {size['patients']} patients"
        if self.follower.ready:
            return True, held
        return False, f"reading the topics from their beginning: {held} so far"

    def close(self) -> None:
        self._closing.set()
        self.follower.stop()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self._producer is not None:
            self._producer.close()

    def _writer(self) -> DurableProducer:
        if self._producer is None:
            self._producer = DurableProducer(self.settings, timeout_s=10.0)
        return self._producer

    async def fresh(self) -> int:
        """Wait (a few seconds at most) until the index holds everything committed before this
        call; the records it is still behind by (0: a page shows all there is)."""
        self.start()
        if not self.follower.wait_ready(0) and not await asyncio.to_thread(
            self.follower.wait_ready, self.FRESH_WAIT_S
        ):
            return -1  # still reading the topics from their beginning
        try:
            ends = await asyncio.to_thread(self._stable_ends, self.follower.partitions())
        except KafkaException as exc:
            log.warning("console.offsets_failed", error=str(exc))
            return -1
        deadline = time.monotonic() + self.FRESH_WAIT_S
        while (behind := self.follower.behind(ends)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return behind

    def _admin_client(self) -> AdminClient:
        with self._admin_lock:  # pages ask from worker threads, perhaps two at once
            if self._admin is None:
                self._admin = AdminClient({**self.config, "log_level": 2})
            return self._admin

    def _stable_ends(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Each partition's last stable offset (where a read_committed reader stops)."""
        if not partitions:
            return {}
        answer = self._admin_client().list_offsets(
            {TopicPartition(t, p): OffsetSpec.latest() for t, p in partitions},
            isolation_level=IsolationLevel.READ_COMMITTED,
            request_timeout=10,
        )
        return {(tp.topic, tp.partition): f.result().offset for tp, f in answer.items()}

    async def topic_counts(self, topics: list[str] | None = None) -> dict[str, int]:
        """Records per topic: the sum over its partitions of end − start offsets (transaction
        markers count as offsets too, so a transactional topic shows a little more)."""
        wanted = topics or all_topics()

        def count() -> dict[str, int]:
            admin = self._admin_client()
            metadata = admin.list_topics(timeout=10)
            tps = [
                TopicPartition(t, p)
                for t in wanted
                if t in metadata.topics
                for p in metadata.topics[t].partitions
            ]
            if not tps:
                return {}
            ends = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}, request_timeout=10)
            starts = admin.list_offsets(
                {tp: OffsetSpec.earliest() for tp in tps}, request_timeout=10
            )
            out: dict[str, int] = dict.fromkeys((t for t in wanted if t in metadata.topics), 0)
            for tp in tps:
                out[tp.topic] += ends[tp].result().offset - starts[tp].result().offset
            return out

        try:
            return await asyncio.to_thread(count)
        except KafkaException as exc:
            log.warning("console.offsets_failed", error=str(exc))
            return {}

    # -- the processes ---------------------------------------------------------------------

    def processes(self) -> list[tuple[str, str]]:
        spec = self.settings.console_processes.strip()
        if spec:
            pairs = [p.split("=", 1) for p in spec.split(",") if "=" in p]
            return [(n.strip(), u.strip().rstrip("/")) for n, u in pairs]
        from stafet.stack import health_ports

        host = self.settings.health_host
        return [
            (name, f"http://{host}:{port}")
            for name, port in health_ports(self.settings).items()
            if port > 0
        ]

    async def probe(self) -> list[ProcessState]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session:
            return list(
                await asyncio.gather(*(self._probe(session, n, u) for n, u in self.processes()))
            )

    async def _probe(self, session: aiohttp.ClientSession, name: str, url: str) -> ProcessState:
        try:
            async with session.get(f"{url}/healthz") as answer:
                up, detail = answer.status == 200, f"/healthz {answer.status}"
            async with session.get(f"{url}/readyz") as answer:
                ready = answer.status == 200
            async with session.get(f"{url}/metrics") as answer:
                metrics = await answer.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return ProcessState(name, url, False, f"unreachable ({type(exc).__name__})")
        state = ProcessState(name, url, up, detail, ready)
        now = time.monotonic()
        for family in text_string_to_metric_families(metrics):
            for sample in family.samples:
                if not sample.name.startswith("stafet_") or sample.name.endswith(
                    ("_bucket", "_created", "_sum", "_count")
                ):
                    continue
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                rate = None
                if sample.name.endswith("_total"):
                    previous = self._rates.get((name, sample.name + labels))
                    if previous and now > previous[0]:
                        rate = (sample.value - previous[1]) / (now - previous[0])
                    self._rates[(name, sample.name + labels)] = (now, sample.value)
                state.series.append((sample.name, labels, sample.value, rate))
        return state

    # -- actions ---------------------------------------------------------------------------

    async def resend(self, dead: DeadLetter, actor: str) -> str:
        from stafet.kafka.dead_letters import resend

        target = await asyncio.to_thread(
            resend, self.settings, dead.topic, dead.partition, dead.offset
        )
        await self._audit(dead, "dlq-resent", actor, f"sent back to {target}")
        return target

    async def discard(self, dead: DeadLetter, actor: str, reason: str) -> None:
        await self._audit(dead, "dlq-discarded", actor, masked(reason)[:1000])

    async def _audit(self, dead: DeadLetter, action: str, actor: str, detail: str) -> None:
        record = AuditRecord(
            action=action,  # type: ignore[arg-type]
            subscriber="",
            message_id=dead.position,
            at=now_iso(),
            kind=dead.stage,
            referral_id=dead.decoded.referral_id,
            topic=dead.topic,
            partition=dead.partition,
            offset=dead.offset,
            detail=detail,
            actor=actor,
        )
        await self._writer().send(AUDIT_DELIVERY, record.encode(), key=dead.key.encode() or None)

    async def record_view(self, line: dict[str, Any], patient_key: str) -> None:
        """One line on ``audit.access``: who viewed which page about whom, stored (acks=all)
        before the page is sent. Keyed by the patient key (a patient's access log is one key),
        else by the user."""
        body = {"at": now_iso(), **{k: v for k, v in line.items() if v not in (None, "")}}
        key = patient_key or str(line.get("user", ""))
        await self._writer().send(AUDIT_ACCESS, json.dumps(body).encode(), key=key.encode())
