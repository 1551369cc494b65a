"""Soak: exactly once through repeated faults under continuous load (``make soak``).

A sender keeps admitting, correcting and discharging children (every message resent until AA,
as a real MLLP sender does). Meanwhile, ``STAFET_SOAK_CYCLES`` times (20): a second worker joins
the group, the first is SIGKILLed and started again, the broker is restarted, and the second
worker is stopped with SIGTERM. Afterwards, read with ``isolation.level=read_committed``:

- every input has exactly one canonical event on ``events.encounter`` and exactly one
  HospitalNotification on its municipality's topic — no output message id twice, none missing;
- nothing went to a dead-letter topic;
- no worker ever exited on its own (every exit was one the test caused).

Marked ``soak`` (not in the default run: it takes about ten minutes) and ``disruptive``.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter

import pytest

from stafet.inbound.hl7v2 import parse_adt
from stafet.kafka.client import as_admin
from stafet.kafka.reader import end_offsets
from stafet.kafka.security import WORKER
from stafet.kafka.topics import (
    DLQ_TOPICS,
    EVENTS_ENCOUNTER,
    H_EVENT_ID,
    H_MESSAGE_ID,
    INGEST_HL7V2,
    municipality_topic,
)
from stafet.medcom.hospitalnotification import message_header_id
from stafet.stack import Service, service_env
from tests.adt_stays import stay_messages
from tests.uncommitted import uncommitted_count
from tests.worker_process import NATIVE_CRASHES

from .conftest import SUPERVISION

pytestmark = [pytest.mark.soak, pytest.mark.disruptive, pytest.mark.timeout(3600)]

CODE = "0147"  # Frederiksberg: no other test writes to it
CYCLES = int(os.environ.get("STAFET_SOAK_CYCLES", "20"))
#: how long a SIGTERMed worker may take to commit and leave (systemd's default stop timeout;
#: right after a broker restart the transaction coordinator may still be loading)
STOP_GRACE_S = 90.0


class Load(threading.Thread):
    """Admissions, corrections and discharges at about ``rate`` messages a second, each sent
    until it is acknowledged with AA."""

    def __init__(self, stack, run: str, rate: float = 20.0) -> None:
        super().__init__(daemon=True)
        self.stack, self.run_id, self.pause = stack, run, 1.0 / rate
        self.stopping = threading.Event()
        self.sent: list[bytes] = []
        self.resends = 0

    def run(self) -> None:
        for n, m in enumerate(stay_messages(f"S-{self.run_id}", CODE)):
            if n % 3 == 0 and self.stopping.is_set():  # between stays
                return
            self._send(m)
            self.sent.append(m)
            time.sleep(self.pause)

    def _send(self, message: bytes) -> None:
        while True:
            try:
                code = self.stack.send(message)["code"]
            except OSError:
                code = "no connection"
            if code == "AA":
                return
            assert code in ("AE", "no connection"), code  # never AR for a good message
            self.resends += 1
            time.sleep(0.5)


def test_exactly_once_through_repeated_joins_kills_and_broker_restarts(stack, tmp_path):
    secret = stack.settings.patient_key_secret.get_secret_value()
    out_topic = municipality_topic(CODE)
    since = {
        **stack.marks(),
        **end_offsets(as_admin(stack.settings), [INGEST_HL7V2, EVENTS_ENCOUNTER]),
    }
    first = stack.services["worker"]
    second = Service(
        "worker2",
        ["worker"],
        tmp_path / "worker2.log",
        {**service_env(stack.settings, WORKER), "STAFET_WORKER_DATA_DIR": str(tmp_path / "w2")},
    )
    load = Load(stack, uuid.uuid4().hex[:6])
    load.start()
    unexpected_exits: list[str] = []
    native_crashes: list[str] = []
    stop_times: list[float] = []

    def check_alive(*services: Service) -> None:
        for s in services:
            if not s.alive():
                code = s.process.returncode
                tail = s.log_path.read_text(errors="replace").splitlines()[-60:]
                crashed = code in NATIVE_CRASHES
                (native_crashes if crashed else unexpected_exits).append(f"{s.name}: {code}")
                print(f"\n{s.name} exited with {code}; its log ends:", flush=True)
                print("\n".join(tail), flush=True)
                s.start()  # what its supervisor does

    started = time.monotonic()
    try:
        for cycle in range(CYCLES):
            with SUPERVISION:
                second.start()  # joins: a rebalance under load
                time.sleep(4)
                check_alive(first, second)
                first.kill()  # SIGKILL: its open transaction is aborted by the broker
                first.start()
                time.sleep(3)
                check_alive(first, second)
                stack.kafka.stop()
                stack.kafka.start()
                time.sleep(3)
                check_alive(first, second)
                t0 = time.monotonic()
                second.stop(timeout_s=STOP_GRACE_S)  # SIGTERM: commits, leaves the group
                stop_times.append(time.monotonic() - t0)
                if second.process.returncode not in (0, -15):
                    unexpected_exits.append(f"worker2 stopped with {second.process.returncode}")
            print(
                f"cycle {cycle + 1}/{CYCLES}: {len(load.sent)} messages sent, "
                f"{time.monotonic() - started:.0f}s",
                flush=True,
            )
    finally:
        load.stopping.set()
        load.join(60)
        second.kill()
        check_alive(stack.services["mllp"], stack.services["fhir"])

    event_of = {control_id(m): parse_adt(m, secret=secret).event_id for m in load.sent}
    expected_events = set(event_of.values())
    expected_ids = {message_header_id(e, CODE) for e in expected_events}
    deadline = time.monotonic() + 300
    while True:
        records = stack.read(since, idle_s=3.0, timeout_s=120)
        notified = {r.headers[H_MESSAGE_ID].decode() for r in records if r.topic == out_topic}
        if expected_ids <= notified or time.monotonic() > deadline:
            break
    events = Counter(
        r.headers.get(H_EVENT_ID, b"").decode() for r in records if r.topic == EVENTS_ENCOUNTER
    )
    notifications = Counter(
        r.headers[H_MESSAGE_ID].decode() for r in records if r.topic == out_topic
    )
    dead = [
        r
        for r in records
        if r.topic in DLQ_TOPICS and r.headers.get(H_EVENT_ID, b"").decode() in expected_events
    ]
    mine = {e: n for e, n in events.items() if e in expected_events}
    # what the faults did: outputs of aborted transactions, visible only to read_uncommitted
    aborted = uncommitted_count(
        as_admin(stack.settings), since, [EVENTS_ENCOUNTER, out_topic]
    ) - sum(1 for r in records if r.topic in (EVENTS_ENCOUNTER, out_topic))
    # a sender that got AE resends, and the first copy may have been stored after all: an
    # input twice on ingest.hl7v2 is two inputs (notify recognises the second)
    copies = Counter(
        event_of.get(control_id(r.value), "") for r in records if r.topic == INGEST_HL7V2
    )
    print(
        f"\nsoak: {CYCLES} cycles in {time.monotonic() - started:.0f}s; {len(load.sent)} "
        f"messages ({load.resends} resends after AE/no connection); events.encounter: "
        f"{len(mine)} events, {sum(mine.values()) - len(mine)} twice (ingest copies "
        f"{sum(copies.values()) - len(copies)} twice); {out_topic}: "
        f"{len(notifications)} message ids, {sum(notifications.values()) - len(notifications)} "
        f"twice, {len(expected_ids - set(notifications))} missing; dead letters "
        f"{len(dead)}; unexpected worker exits {len(unexpected_exits)}; native crashes "
        f"{len(native_crashes)} {native_crashes}; records of aborted "
        f"transactions (seen only read_uncommitted) {aborted}; SIGTERM → exit: max "
        f"{max(stop_times, default=0):.1f}s, median "
        f"{sorted(stop_times)[len(stop_times) // 2] if stop_times else 0:.1f}s"
    )
    assert not unexpected_exits, unexpected_exits
    # a crash inside librdkafka under repeated broker restarts (SIGSEGV once in CI, stop 18) is
    # a fault like a SIGKILL: the supervisor restarts the worker and the counts below must hold
    # through it. Rare is tolerated and printed (with the faulthandler frames above); a crash in
    # more than a quarter of the cycles is a systematic bug, not a race.
    assert len(native_crashes) <= CYCLES // 4, native_crashes
    assert set(mine) == expected_events, "every input has its canonical event"
    assert all(n == copies[e] for e, n in mine.items()), "one canonical event per input record"
    assert set(notifications) == expected_ids, "every event notified, nothing else"
    assert all(n == 1 for n in notifications.values()), "no notification id twice"
    assert not dead, "nothing dead-lettered"


def control_id(raw: bytes) -> str:
    return raw.split(b"\r", 1)[0].split(b"|")[9].decode()
