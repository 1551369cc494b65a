"""Continuous MLLP load and a committed-output watcher for the cluster's fault test.

The same stays as the soak's ``Load`` (tests/adt_stays.py): admissions, corrections and
discharges of MedCom test patients to one municipality, every message sent until it is
acknowledged with AA, as a real MLLP sender does — plus the timings the fault test reports (how
long a message waited for its AA, when notifications became visible to ``read_committed``).
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

from confluent_kafka import Consumer, TopicPartition

from stafet.connectors.sources.mllp.client import MllpClient, ack_fields
from stafet.kafka.client import KafkaTarget, resolve_config
from stafet.kafka.topics import H_MESSAGE_ID
from tests.adt_stays import stay_messages


@dataclass
class Sent:
    """One message: when it was first sent, when it got its AA (None: never), how many tries."""

    raw: bytes
    first_try: float
    acked_at: float | None = None
    tries: int = 0


class MllpLoad(threading.Thread):
    """ADT A01, A08, A03 per stay at about ``rate`` messages a second to ``code``; each message
    resent (after 0.5 s) on AE or no connection until it gets AA. ``stop()`` lets the message in
    hand finish (up to ``finish_s``), then ends."""

    def __init__(
        self, host: str, port: int, code: str, rate: float = 20.0, finish_s: float = 60.0
    ) -> None:
        super().__init__(daemon=True, name="mllp-load")
        self.host, self.port, self.code = host, port, code
        self.pause, self.finish_s = 1.0 / rate, finish_s
        self.run_id = uuid.uuid4().hex[:6]
        self.stopping = threading.Event()
        self.messages: list[Sent] = []
        self.resends = 0
        self.answers: dict[str, int] = {}  # AA / AE / AR / no connection
        self.failure: BaseException | None = None

    def stop(self, timeout_s: float = 90.0) -> None:
        self.stopping.set()
        self.join(timeout_s)

    @property
    def acked(self) -> list[Sent]:
        return [m for m in self.messages if m.acked_at is not None]

    @property
    def unacked(self) -> list[Sent]:
        return [m for m in self.messages if m.acked_at is None]

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 — reported by the test, never swallowed
            self.failure = exc

    def _run(self) -> None:
        for n, raw in enumerate(stay_messages(f"C-{self.run_id}", self.code)):
            if n % 3 == 0 and self.stopping.is_set():  # between stays
                return
            sent = Sent(raw, time.monotonic())
            self.messages.append(sent)
            self._send(sent)
            if sent.acked_at is None:  # stopped while the cluster did not answer
                return
            time.sleep(self.pause)

    def _send(self, sent: Sent) -> None:
        while True:
            sent.tries += 1
            try:
                with MllpClient(self.host, self.port, timeout_s=30.0) as client:
                    code = ack_fields(client.send(sent.raw))["code"]
            except OSError:
                code = "no connection"
            self.answers[code] = self.answers.get(code, 0) + 1
            if code == "AA":
                sent.acked_at = time.monotonic()
                return
            if code not in ("AE", "no connection"):  # never AR for a good message
                raise AssertionError(f"{control_id(sent.raw)} answered {code}")
            if self.stopping.is_set() and time.monotonic() - sent.first_try > self.finish_s:
                return
            self.resends += 1
            time.sleep(0.5)


class CommittedWatcher(threading.Thread):
    """A ``read_committed`` consumer of ``topic`` from ``since``: when each notification id
    became visible (for the stall of the pipeline; the test's counts come from a fresh read)."""

    def __init__(self, kafka: KafkaTarget, topic: str, since: dict[tuple[str, int], int]) -> None:
        super().__init__(daemon=True, name="committed-watcher")
        self.config = resolve_config(
            kafka,
            **{
                "group.id": f"stafet-reader-watch-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "log_level": 2,
            },
        )
        self.parts = [TopicPartition(t, p, o) for (t, p), o in since.items() if t == topic]
        self.stopping = threading.Event()
        self.seen: list[tuple[float, str]] = []

    def run(self) -> None:
        consumer = Consumer(self.config)
        consumer.assign(self.parts)
        try:
            while not self.stopping.is_set():
                msg = consumer.poll(0.2)
                if msg is None or msg.error():
                    continue
                headers = dict(msg.headers() or [])
                self.seen.append((time.monotonic(), headers.get(H_MESSAGE_ID, b"").decode()))
        finally:
            consumer.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)

    def wait_for(self, n: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while len(self.seen) < n and time.monotonic() < deadline:
            time.sleep(0.2)
        return len(self.seen) >= n

    def longest_gap(self, start: float, end: float) -> tuple[float, float]:
        """(length, start) of the longest time in [start, end] in which no notification became
        visible."""
        times = [start, *(t for t, _ in self.seen if start < t < end), end]
        return max((b - a, a) for a, b in zip(times, times[1:], strict=False))

    def first_after(self, when: float) -> float | None:
        """When the first notification after ``when`` became visible."""
        return next((t for t, _ in self.seen if t > when), None)


def longest_ack_wait(messages: list[Sent], start: float, end: float) -> float:
    """The longest a message first sent in [start, end] waited for its AA."""
    waits = [(m.acked_at or end) - m.first_try for m in messages if start <= m.first_try <= end]
    return max(waits, default=0.0)


def control_id(raw: bytes) -> str:
    """MSH-10."""
    return raw.split(b"\r", 1)[0].split(b"|")[9].decode()


@dataclass
class Fault:
    """One SIGKILL of a node: who, why, and how long each step took."""

    node: int
    role: str
    killed_at: float = 0.0
    restarted_at: float = 0.0
    restart_s: float = 0.0
    in_sync_s: float = 0.0
    new_controller: int | None = None
    leaders_before: dict[tuple[str, int], int] = field(default_factory=dict)
