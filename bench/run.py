"""stafet end-to-end benchmark (issue #5).

    .venv/bin/python -m bench.run            # full run, ≈ 22-25 minutes
    .venv/bin/python -m bench.run --quick    # ≈ 3 minutes, for debugging

Starts an isolated stack (its own Kafka 4.1 broker, stream worker and MLLP listener on free
ports, data in a temporary directory deleted at the end), then runs, in order:

warm-up   a little paced traffic until the worker answers;
paced-low ``--low-rate`` msg/s (50) for a minute: the latency floor at a rate the pipeline keeps up with;
paced     ``--rate`` msg/s (200) over ``--connections`` MLLP connections for ``--duration``
          seconds (600 in full mode): durable-ACK latency (client write → ACK read) and
          ingest→notification latency (``stafet.received_at`` on the output → the moment a
          consumer of ``out.*`` receives it), CPU and RSS of every process each second;
saturate-1w  open throttle (each connection keeps ``--window`` frames in flight, pipelined):
          sustained end-to-end throughput with ONE worker; the worker is profiled with py-spy;
saturate-2w  the same with a second worker in the same consumer group (the baseline ratio);
fhir      the FHIR HTTP connector: ServiceRequest + decision Task bodies, paced then saturated;
replay    stop the pipeline, top up ``ingest.hl7v2`` to ``--replay-events`` with a fast
          producer, and time a fresh consumer group (a new worker with its own app id and
          state) re-processing everything on the ingest topic; extrapolated to 1 million.

Writes ``bench/results/<timestamp>.json`` and ``.png`` and prints the target table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import pickle
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from array import array
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from bench.load import FhirLoad, Item, LoadGenerator
from stafet.config import PROJECT_ROOT, Settings
from stafet.ids import patient_key
from stafet.kafka.client import PARTITIONER
from stafet.kafka.local import LocalKafka
from stafet.kafka.reader import end_offsets
from stafet.kafka.topics import (
    DLQ_TOPICS,
    EVENTS_ENCOUNTER,
    EVENTS_REFERRAL,
    H_CHARSET,
    H_RECEIVED_AT,
    H_SOURCE,
    INGEST_FHIR,
    INGEST_HL7V2,
    all_topics,
    ensure_topics,
)
from stafet.stack import Service, settings_env, wait_for_port

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
START, END = b"\x0b", b"\x1c\r"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_MB = 1 / 1024  # VmRSS/VmHWM are in kB

TARGETS = {
    "sustained_adt_per_s": 2000.0,
    "ack_p99_ms": 20.0,
    "e2e_p99_ms": 500.0,
    "replay_1m_s": 600.0,
    "rss_growth_pct": 10.0,
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float] | array, q: float) -> float | None:
    if not values:
        return None
    data = sorted(values)
    k = (len(data) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return data[lo] if lo == hi else data[lo] + (data[hi] - data[lo]) * (k - lo)


def percentiles(values: list[float], scale: float = 1000.0) -> dict[str, float | int | None]:
    out: dict[str, float | int | None] = {"n": len(values)}
    for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99), ("max", 1.0)):
        v = pct(values, q)
        out[name] = None if v is None else round(v * scale, 2)
    return out


# --- process sampling -----------------------------------------------------------------------


def read_proc(pid: int) -> tuple[float, float, float] | None:
    """(cpu seconds user+system, VmRSS MB, VmHWM MB) of one process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        rss = hwm = 0.0
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1]) * PAGE_MB
                elif line.startswith(b"VmHWM:"):
                    hwm = int(line.split()[1]) * PAGE_MB
        return cpu, rss, hwm
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


def machine_cpu() -> tuple[float, float]:
    """(busy seconds, total seconds) summed over all CPUs since boot."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:9]]
    idle = parts[3] + parts[4]
    return (sum(parts) - idle) / CLK_TCK, sum(parts) / CLK_TCK


class Sampler(threading.Thread):
    """Every second: CPU seconds, RSS and HWM of each named process, and the machine's CPU."""

    def __init__(self, pids: Callable[[], dict[str, int | None]]) -> None:
        super().__init__(name="sampler", daemon=True)
        self.pids = pids
        self.samples: list[dict[str, Any]] = []
        self.hwm: dict[str, float] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(1.0)

    def sample(self) -> None:
        row: dict[str, Any] = {"t": time.time(), "machine": machine_cpu(), "procs": {}}
        for name, pid in self.pids().items():
            if pid is None:
                continue
            got = read_proc(pid)
            if got is not None:
                row["procs"][name] = got
                self.hwm[name] = max(self.hwm.get(name, 0.0), got[2])
        self.samples.append(row)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        """CPU seconds per process and machine CPU use between two times."""
        rows = [r for r in self.samples if t0 <= r["t"] <= t1]
        if len(rows) < 2:
            return {"seconds": 0.0, "cpu_s": {}, "machine_busy_pct": None}
        first, last = rows[0], rows[-1]
        cpu = {}
        for name, (c1, _, _) in last["procs"].items():
            earlier = next((r["procs"][name] for r in rows if name in r["procs"]), None)
            if earlier is not None:
                cpu[name] = round(c1 - earlier[0], 2)
        busy = last["machine"][0] - first["machine"][0]
        total = last["machine"][1] - first["machine"][1]
        seconds = last["t"] - first["t"]
        ours = sum(cpu.values())
        return {
            "seconds": round(seconds, 1),
            "cpu_s": cpu,
            "machine_busy_pct": round(100 * busy / total, 1) if total else None,
            "machine_cores_busy": round(busy / seconds, 2) if seconds else None,
            "other_processes_cores": round((busy - ours) / seconds, 2) if seconds else None,
            "rss_mb_end": {n: round(v[1], 1) for n, v in last["procs"].items()},
        }


# --- the output consumer (its own process, so it does not share a GIL with the load) -------------


def consume_outputs(
    bootstrap: str,
    start: dict[tuple[str, int], int],
    out_path: str,
    stop: Any,
    n_records: Any,
    n_first: Any,
) -> None:
    """Read every out.* and dlq.* record after ``start``; write per-record timings at stop."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-outputs-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            # a waiting fetch returns as soon as any of its partitions gets data, so the default
            # 500 ms adds no latency; a short wait made the broker spin on ~300 partitions
            "fetch.min.bytes": 1,
            "log_level": 3,
        }
    )
    consumer.assign([TopicPartition(t, p, o) for (t, p), o in start.items()])
    recv, ts, tin = array("d"), array("d"), array("d")
    cls, first = array("b"), array("b")
    seen: set[bytes] = set()
    dlq_reasons: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    received_at_cache: dict[bytes, float] = {}
    try:
        while not stop.is_set():
            msgs = consumer.consume(num_messages=2000, timeout=0.1)
            now = time.time()
            for m in msgs:
                if m.error():
                    continue
                headers = dict(m.headers() or [])
                topic = m.topic()
                if topic == "dlq.mllp":  # answered AR at the door: not an end-to-end completion
                    kind = 4
                    reason = headers.get("stafet.reason", b"").decode(errors="replace")
                    dlq_reasons[f"{topic}: {reason[:110]}"] += 1
                elif topic.startswith("dlq."):
                    kind = 2
                    reason = headers.get("stafet.reason", b"").decode(errors="replace")
                    dlq_reasons[f"{topic}: {reason[:110]}"] += 1
                elif "stafet.referral_id" in headers:
                    kind = 1
                    codes[
                        f"referral:{headers.get('stafet.kind', b'?').decode()}->"
                        f"{headers.get('stafet.recipient_kind', b'?').decode()}"
                    ] += 1
                elif "stafet.event_code" in headers:
                    kind = 0
                    codes[headers["stafet.event_code"].decode()] += 1
                else:
                    kind = 3
                raw_in = headers.get(H_RECEIVED_AT)
                t_in = math.nan
                if raw_in and kind != 2:  # dead_letter() overwrites received_at with its own time
                    t_in = received_at_cache.get(raw_in, math.nan)
                    if math.isnan(t_in):
                        t_in = datetime.fromisoformat(raw_in.decode()).timestamp()
                        if len(received_at_cache) > 100_000:
                            received_at_cache.clear()
                        received_at_cache[raw_in] = t_in
                event_id = (
                    headers.get("stafet.event_id")
                    or f"{topic}/{m.partition()}/{m.offset()}".encode()
                )
                is_first = kind != 4 and event_id not in seen
                if is_first:
                    seen.add(event_id)
                recv.append(now)
                ts.append(m.timestamp()[1] / 1000.0)
                tin.append(t_in)
                cls.append(kind)
                first.append(1 if is_first else 0)
            if msgs:
                with n_records.get_lock():
                    n_records.value = len(recv)
                with n_first.get_lock():
                    n_first.value = len(seen)
    finally:
        consumer.close()
        with open(out_path, "wb") as f:
            pickle.dump(
                {
                    "recv": recv,
                    "ts": ts,
                    "tin": tin,
                    "cls": cls,
                    "first": first,
                    "dlq_reasons": dict(dlq_reasons),
                    "codes": dict(codes),
                },
                f,
            )


class Outputs:
    """Handle on the consumer process."""

    def __init__(self, bootstrap: str, topics: list[str], path: Path) -> None:
        ctx = mp.get_context("spawn")
        self.stop_event = ctx.Event()
        self.n_records = ctx.Value("q", 0)
        self.n_first = ctx.Value("q", 0)
        self.path = path
        start = end_offsets(bootstrap, topics)
        self.proc = ctx.Process(
            target=consume_outputs,
            name="bench-outputs",
            args=(bootstrap, start, str(path), self.stop_event, self.n_records, self.n_first),
        )
        self.proc.start()
        self.data: dict[str, Any] | None = None

    @property
    def completed(self) -> int:
        return int(self.n_first.value)

    def wait_for(self, expected: int, *, timeout_s: float, idle_s: float) -> bool:
        """Until ``expected`` inputs have an output, or nothing new for ``idle_s``."""
        deadline = time.monotonic() + timeout_s
        last, last_change = self.completed, time.monotonic()
        while time.monotonic() < deadline:
            now = self.completed
            if now >= expected:
                return True
            if now != last:
                last, last_change = now, time.monotonic()
            elif time.monotonic() - last_change > idle_s:
                return False
            time.sleep(0.25)
        return False

    def close(self) -> dict[str, Any]:
        if self.data is None:
            self.stop_event.set()
            self.proc.join(60)
            if self.proc.is_alive():
                self.proc.kill()
            with open(self.path, "rb") as f:
                self.data = pickle.load(f)
        return self.data


# --- the MLLP load driver ----------------------------------------------------------------------


@dataclass
class AckLog:
    """Every ACK the load driver read: wall time, latency, code; and per-label counts."""

    t: array = field(default_factory=lambda: array("d"))
    latency: array = field(default_factory=lambda: array("d"))
    code: array = field(default_factory=lambda: array("b"))  # 0 AA, 1 AR, 2 AE, 3 other
    sent: Counter = field(default_factory=Counter)
    codes: Counter = field(default_factory=Counter)

    def window(self, t0: float, t1: float) -> tuple[list[float], Counter]:
        lat, codes = [], Counter()
        for t, latency, c in zip(self.t, self.latency, self.code, strict=True):
            if t0 <= t <= t1:
                codes[c] += 1
                if c == 0:
                    lat.append(latency)
        return lat, codes


_CODES = {b"AA": 0, b"AR": 1, b"AE": 2}


def frame(item: Item) -> tuple[int, bytes]:
    return zlib.crc32(item.cpr.encode()), START + item.message + END


async def drive_mllp(
    host: str,
    port: int,
    source: Iterator[tuple[int, bytes]],
    *,
    conns: int,
    rate: float | None,
    duration: float,
    window: int,
    acks: AckLog,
) -> int:
    """Send frames over ``conns`` connections (one child → one connection, so its messages stay in
    order) at ``rate`` msg/s (None: as fast as ``window`` frames in flight per connection allow)
    for ``duration`` seconds; return the number sent."""
    streams = [await asyncio.open_connection(host, port, limit=1 << 22) for _ in range(conns)]
    queues: list[asyncio.Queue[bytes | None]] = [
        asyncio.Queue(maxsize=window * 4) for _ in range(conns)
    ]
    inflight: list[deque[float]] = [deque() for _ in range(conns)]
    slots = [asyncio.Semaphore(window) for _ in range(conns)]
    wall0, perf0 = time.time(), time.perf_counter()
    loop = asyncio.get_running_loop()
    sent = 0

    async def writer(i: int) -> None:
        w = streams[i][1]
        while True:
            data = await queues[i].get()
            if data is None:
                return
            await slots[i].acquire()
            inflight[i].append(time.perf_counter())
            w.write(data)
            if w.transport.get_write_buffer_size() > 1 << 16:
                await w.drain()

    async def reader(i: int) -> None:
        r = streams[i][0]
        while True:
            try:
                ack = await r.readuntil(END)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            now = time.perf_counter()
            t_sent = inflight[i].popleft()
            slots[i].release()
            j = ack.find(b"MSA|")
            code = _CODES.get(ack[j + 4 : j + 6], 3) if j >= 0 else 3
            acks.t.append(wall0 + (now - perf0))
            acks.latency.append(now - t_sent)
            acks.code.append(code)

    writers = [asyncio.create_task(writer(i)) for i in range(conns)]
    readers = [asyncio.create_task(reader(i)) for i in range(conns)]
    t0 = loop.time()
    stop_at = t0 + duration
    while True:
        now = loop.time()
        if now >= stop_at:  # checked before taking the next frame: none is lost between phases
            break
        try:
            route, data = next(source)
        except StopIteration:
            break
        if rate:
            delay = t0 + sent / rate - now
            if delay > 0:
                await asyncio.sleep(delay)
        await queues[route % conns].put(data)
        sent += 1
    for q in queues:
        await q.put(None)
    await asyncio.gather(*writers)
    deadline = loop.time() + 60
    while any(inflight) and loop.time() < deadline:
        await asyncio.sleep(0.01)
    for t in readers:
        t.cancel()
    for _, w in streams:
        w.close()
    return sent


def counting(gen: LoadGenerator, acks: AckLog) -> Iterator[tuple[int, bytes]]:
    for item in gen:
        acks.sent[item.label] += 1
        yield frame(item)


def pregenerated(gen: LoadGenerator, n: int, acks: AckLog) -> Iterator[tuple[int, bytes]]:
    """``n`` frames made before the clock starts (so the generator's CPU is not in the phase),
    then on the fly if the system is faster than expected."""
    items = [next(gen) for _ in range(n)]

    def it() -> Iterator[tuple[int, bytes]]:
        for item in items:
            acks.sent[item.label] += 1
            yield frame(item)
        yield from counting(gen, acks)

    return it()


# --- FHIR driver ---------------------------------------------------------------------------------


async def drive_fhir(
    url: str,
    load: FhirLoad,
    *,
    concurrency: int,
    rate: float | None,
    duration: float,
    results: list[tuple[float, float, int, str]],
) -> None:
    """POST ServiceRequests and, once each is accepted, its decision Task."""
    import aiohttp

    ready: deque[tuple[bytes, str]] = deque()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    stop_at = t0 + duration
    n = 0
    lock = asyncio.Lock()

    async def post(session: aiohttp.ClientSession, path: str, body: bytes, label: str) -> int:
        start = time.perf_counter()
        async with session.post(
            url + path, data=body, headers={"Content-Type": "application/fhir+json"}
        ) as r:
            await r.read()
            status = r.status
        results.append((time.time(), time.perf_counter() - start, status, label))
        return status

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal n
        while loop.time() < stop_at:
            async with lock:
                if rate:
                    delay = t0 + n / rate - loop.time()
                    n += 1
                    if delay > 0:
                        await asyncio.sleep(delay)
                if ready and (len(ready) > 20 or load.rng.random() < 0.5):
                    task = ready.popleft()
                    job = ("/fhir/Task", task[0], task[1], None)
                else:
                    sr, task_body, label = load.referral()
                    job = ("/fhir/ServiceRequest", sr, "ServiceRequest", (task_body, label))
            status = await post(session, job[0], job[1], job[2])
            if job[3] is not None and status == 202:
                ready.append(job[3])

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=30)
    ) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))


# --- Kafka helpers ---------------------------------------------------------------------------------


def group_offsets(
    admin: AdminClient, group: str, tps: list[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    request = [ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in tps])]
    result = admin.list_consumer_group_offsets(request)[group].result()
    return {(tp.topic, tp.partition): max(tp.offset, 0) for tp in result.topic_partitions}


def set_group_offsets(admin: AdminClient, group: str, offsets: dict[tuple[str, int], int]) -> None:
    request = [
        ConsumerGroupTopicPartitions(
            group, [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        )
    ]
    admin.alter_consumer_group_offsets(request)[group].result()


def group_members(admin: AdminClient, group: str) -> list[int]:
    """Partitions assigned to each member of ``group``."""
    try:
        desc = admin.describe_consumer_groups([group])[group].result()
    except Exception:
        return []
    return [len(m.assignment.topic_partitions) if m.assignment else 0 for m in desc.members]


def preload(bootstrap: str, gen: LoadGenerator, n: int, secret: str) -> dict[str, Any]:
    """Write ``n`` generated messages straight to ingest.hl7v2, as the listener would (with the
    canonical event in the headers, see stafet/inbound/canonical.py)."""
    from stafet.inbound.canonical import carry
    from stafet.inbound.hl7v2 import Hl7Error
    from stafet.inbound.hl7v2_referral import parse_hl7v2
    from stafet.kafka.topics import H_EVENT_ID

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": PARTITIONER,
            "linger.ms": 20,
            "compression.type": "lz4",
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 500000,
        }
    )
    t0 = time.monotonic()
    keys: dict[str, bytes] = {}
    for i in range(n):
        item = next(gen)
        key = keys.get(item.cpr)
        if key is None:
            key = keys[item.cpr] = patient_key(item.cpr, secret).encode()
        headers = [
            (H_CHARSET, item.charset.encode()),
            (H_SOURCE, b"bench-preload"),
            (H_RECEIVED_AT, datetime.now(UTC).isoformat().encode()),
        ]
        try:
            event = parse_hl7v2(item.message, secret=secret, default_charset=item.charset)
            headers += [(H_EVENT_ID, event.event_id.encode()), *carry(event)]
        except Hl7Error:
            pass  # the worker dead-letters it, as it would the listener's AR
        while True:
            try:
                producer.produce(INGEST_HL7V2, item.message, key=key, headers=headers)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(120)
    seconds = time.monotonic() - t0
    return {
        "events": n,
        "seconds": round(seconds, 1),
        "per_s": round(n / seconds) if seconds else None,
    }


# --- py-spy ----------------------------------------------------------------------------------------


def pyspy_start(pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        return None
    return subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(seconds),
            "--rate",
            "50",
            "--nonblocking",
            "--format",
            "raw",
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


CATEGORIES = [  # (label, substring of a frame "function (file:line)"), first match from the leaf up
    (
        "logging (structlog JSON + CPR masking)",
        ("structlog", "stafet/logging.py", "logging/__init__"),
    ),
    ("FHIR validation (fhir.resources / pydantic)", ("validate_bundle", "fhir", "pydantic")),
    ("HL7 v2 parsing (python-hl7 + checks)", ("stafet/hl7v2", "hl7/", "parse_hl7v2", "parse_adt")),
    (
        "HospitalNotification / CareCommunication build",
        ("hospitalnotification.py", "carecommunication.py"),
    ),
    ("PDF letters (reportlab)", ("reportlab", "letters.py")),
    ("Avro encode/decode", ("fastavro", "codec.py")),
    ("state stores (RocksDB)", ("rocksdict", "quixstreams/state")),
    (
        "Kafka client (librdkafka)",
        ("confluent_kafka", "quixstreams/kafka", "quixstreams/internal_"),
    ),
    ("quixstreams engine (dataframe, checkpoint)", ("quixstreams/",)),
    ("asyncio event loop", ("asyncio",)),
]


OWN_FRAMES = (
    "streams/",
    "stafet/",
    "connectors/",
    "schemas/",
    "fastavro",
    "json/encoder",
    "structlog/_base",
    "rocksdict",
    "quixstreams/state/rocksdb",
    "fhir_core/fhirabstractmodel.py (model_validate",
    "produce (quixstreams",
    "hl7/parser.py",
    "reportlab/",
)


def summarise_profile(path: Path) -> dict[str, Any] | None:
    """Inclusive and leaf shares per function and per category from py-spy's raw output."""
    if not path.exists():
        return None
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    cats: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        for f in set(frames[1:]):  # the first frame is the process/thread
            inclusive[_short(f)] += n
        leaf[_short(frames[-1])] += n
        for f in reversed(frames):
            label = next((c for c, keys in CATEGORIES if any(k in f for k in keys)), None)
            if label:
                cats[label] += n
                break
        else:
            cats["other"] += n
    if not total:
        return None
    share = lambda c, n=18: [(k, round(100 * v / total, 1)) for k, v in c.most_common(n)]  # noqa: E731
    ours = Counter({k: v for k, v in inclusive.items() if any(m in k for m in OWN_FRAMES)})
    return {
        "samples": total,
        "by_category_pct": dict(share(cats)),
        "stafet_functions_inclusive_pct": share(ours, 30),
        "inclusive_pct": share(inclusive),
        "leaf_pct": share(leaf, 25),
    }


def _short(frame_text: str) -> str:
    name, _, where = frame_text.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where.rsplit(':', 1)[0]})"


# --- the benchmark -----------------------------------------------------------------------------------


@dataclass
class Mode:
    warmup_s: float
    idle_s: float
    low_s: float
    drain_s: float
    paced_s: float
    saturate_s: float
    fhir_s: float
    replay_events: int
    replay_cap_s: float
    profile_s: int
    pregen_rate: int


QUICK = Mode(
    warmup_s=8,
    idle_s=5,
    low_s=10,
    drain_s=15,
    paced_s=20,
    saturate_s=15,
    fhir_s=8,
    replay_events=20_000,
    replay_cap_s=60,
    profile_s=10,
    pregen_rate=2500,
)
FULL = Mode(
    warmup_s=20,
    idle_s=15,
    low_s=60,
    drain_s=60,
    paced_s=600,
    saturate_s=120,
    fhir_s=30,
    replay_events=200_000,
    replay_cap_s=300,
    profile_s=60,
    pregen_rate=1000,
)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.mode = QUICK if args.quick else FULL
        if args.duration:
            self.mode.paced_s = args.duration
        if args.saturate:
            self.mode.saturate_s = args.saturate
        if args.replay_events is not None:
            self.mode.replay_events = args.replay_events
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        self.root = Path(tempfile.mkdtemp(prefix="stafet-bench-"))
        self.run_id = f"B{uuid.uuid4().hex[:4].upper()}"
        self.settings = Settings(
            kafka_port=free_port(),
            kafka_controller_port=free_port(),
            kafka_home=self.root / "kafka",
            worker_data_dir=self.root / "worker",
            mllp_port=free_port(),
            fhir_port=free_port(),
            app_id=f"stafet-bench-{uuid.uuid4().hex[:6]}",
            partitions=args.partitions,
            log_level=args.log_level,
            health_port=0,  # worker and listener on one host: each its own free port
        )
        self.kafka = LocalKafka.from_settings(self.settings)
        self.env = settings_env(self.settings)
        logs = self.root / "logs"
        self.services: dict[str, Service] = {
            "worker": Service("worker", ["worker"], logs / "worker.log", self.env),
            "mllp": Service("mllp", ["mllp"], logs / "mllp.log", self.env),
        }
        self.outputs: Outputs | None = None
        self.acks = AckLog()
        self.gen = LoadGenerator(seed=args.seed, run_id=self.run_id)
        self.phases: list[dict[str, Any]] = []
        self.result: dict[str, Any] = {"notes": []}
        self.sampler = Sampler(self._pids)
        self.t_start = time.time()

    def _pids(self) -> dict[str, int | None]:
        pids: dict[str, int | None] = {"broker": self.kafka.pid(), "bench": os.getpid()}
        for name, s in self.services.items():
            pids[name] = s.process.pid if s.alive() and s.process else None
        if self.outputs and self.outputs.proc.is_alive():
            pids["bench-consumer"] = self.outputs.proc.pid
        return pids

    def note(self, text: str) -> None:
        log("NOTE " + text)
        self.result["notes"].append(text)

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        log("hot path micro-benchmark (one process, no Kafka) …")
        try:
            from bench.hotpath import measure

            self.result["hotpath"] = measure(1000 if self.args.quick else 3000)
        except Exception as exc:  # noqa: BLE001  (the source is being edited concurrently)
            self.note(f"hot path micro-benchmark failed: {exc!r}")
        log(
            f"temp dir {self.root}; broker :{self.settings.kafka_port}, MLLP :{self.settings.mllp_port}"
        )
        self.sampler.start()
        self.kafka.start()
        ensure_topics(self.settings.bootstrap, self.settings.partitions)
        for s in self.services.values():
            s.start()
        wait_for_port(self.settings.mllp_host, self.settings.mllp_port)
        watched = [t for t in all_topics() if t.startswith("out.")] + list(DLQ_TOPICS)
        self.outputs = Outputs(self.settings.bootstrap, watched, self.root / "outputs.pkl")

    def stop(self) -> None:
        for s in reversed(list(self.services.values())):
            s.stop()
        if self.outputs:
            try:
                self.outputs.close()
            except Exception as exc:  # noqa: BLE001
                log(f"output consumer: {exc}")
        self.kafka.stop()
        self.sampler.stop()

    def keep_logs(self) -> None:
        dest = RESULTS / f"{self.stamp}-logs"
        dest.mkdir(parents=True, exist_ok=True)
        for path in [*(self.root / "logs").glob("*.log"), self.kafka.log_file]:
            if path.exists():
                with open(path, "rb") as f:
                    f.seek(max(0, path.stat().st_size - 200_000))
                    (dest / path.name).write_bytes(f.read())

    # --- phases ------------------------------------------------------------------------------

    def phase(self, name: str, **info: Any) -> dict[str, Any]:
        p = {"name": name, "t0": time.time(), **info}
        p["offsets0"] = self.worker_offsets()
        self.phases.append(p)
        log(f"phase {name} …")
        return p

    def end(self, p: dict[str, Any], *, offsets: bool = True) -> None:
        p["t1"] = time.time()
        if offsets:
            p["offsets1"] = self.worker_offsets()

    def worker_offsets(self) -> dict[str, int] | None:
        """The main consumer group's committed offsets, summed per stage: what the worker(s) did."""
        try:
            admin = self._admin
        except AttributeError:
            admin = self._admin = AdminClient({"bootstrap.servers": self.settings.bootstrap})
        try:
            ends = end_offsets(
                self.settings.bootstrap,
                [INGEST_HL7V2, INGEST_FHIR, EVENTS_ENCOUNTER, EVENTS_REFERRAL],
                timeout_s=5,
            )
            got = group_offsets(admin, self.settings.app_id, list(ends))
        except Exception:  # noqa: BLE001
            return None
        stage = lambda ts: sum(v for (t, _), v in got.items() if t in ts)  # noqa: E731
        end = lambda ts: sum(v for (t, _), v in ends.items() if t in ts)  # noqa: E731
        ingest, events = (INGEST_HL7V2, INGEST_FHIR), (EVENTS_ENCOUNTER, EVENTS_REFERRAL)
        return {
            "ingest_end": end(ingest),
            "normalized": stage(ingest),
            "events_end": end(events),
            "notified": stage(events),
        }

    def mllp(
        self,
        source: Iterator[tuple[int, bytes]],
        *,
        rate: float | None,
        duration: float,
        window: int,
    ) -> int:
        return asyncio.run(
            drive_mllp(
                self.settings.mllp_host,
                self.settings.mllp_port,
                source,
                conns=self.args.connections,
                rate=rate,
                duration=duration,
                window=window,
                acks=self.acks,
            )
        )

    def accepted(self) -> int:
        return sum(1 for c in self.acks.code if c == 0)

    def drain(self, timeout_s: float) -> None:
        assert self.outputs
        ok = self.outputs.wait_for(self.accepted(), timeout_s=timeout_s, idle_s=8)
        log(
            f"  outputs for {self.outputs.completed} of {self.accepted()} accepted inputs"
            + ("" if ok else " (not all: rejected downstream, or still lagging)")
        )

    def warmup(self) -> None:
        p = self.phase("warmup")
        self.mllp(counting(self.gen, self.acks), rate=50, duration=self.mode.warmup_s, window=64)
        assert self.outputs
        if not self.outputs.wait_for(max(1, self.accepted() - 5), timeout_s=180, idle_s=60):
            raise SystemExit("the worker produced no notifications during warm-up; see the logs")
        self.end(p)

    def paced(self, name: str, rate: float, seconds: float, drain_s: float) -> None:
        p = self.phase(name, rate=rate, seconds=seconds)
        sent = self.mllp(counting(self.gen, self.acks), rate=rate, duration=seconds, window=1000)
        self.end(p)
        p["sent"] = sent
        self.drain(timeout_s=drain_s)
        p["t_drained"] = time.time()

    def saturate(self, name: str, workers: int) -> None:
        n = int(self.mode.saturate_s * self.mode.pregen_rate)
        log(f"  generating {n} messages before the clock starts …")
        source = pregenerated(self.gen, n, self.acks)
        if workers == 2:
            w2 = Service(
                "worker2",
                ["worker"],
                self.root / "logs" / "worker2.log",
                {**self.env, "STAFET_WORKER_DATA_DIR": str(self.root / "worker2")},
            )
            self.services["worker2"] = w2
            w2.start()
            self._rebalance(source)
        p = self.phase(
            name, workers=workers, connections=self.args.connections, window=self.args.window
        )
        prof = None
        if workers == 1 and not self.args.no_profile:
            prof = threading.Thread(target=self._profile, daemon=True)
            prof.start()
        p["sent"] = self.mllp(
            source, rate=None, duration=self.mode.saturate_s, window=self.args.window
        )
        self.end(p)
        if prof:
            prof.join(self.mode.profile_s + 30)

    def _rebalance(self, source: Iterator[tuple[int, bytes]]) -> None:
        """Keep the load on while the second worker joins, until both hold partitions."""
        admin = AdminClient({"bootstrap.servers": self.settings.bootstrap})
        p = self.phase("rebalance")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            self.mllp(source, rate=None, duration=5, window=self.args.window)
            members = group_members(admin, self.settings.app_id)
            log(f"  consumer group members' partitions: {members}")
            if len(members) >= 2 and all(members):
                break
        else:
            self.note("the second worker did not get partitions within 90 s")
        self.mllp(source, rate=None, duration=5, window=self.args.window)  # table restore settles
        self.end(p)

    def _profile(self) -> None:
        time.sleep(3)
        seconds = int(min(self.mode.profile_s, self.mode.saturate_s - 6))
        procs = []
        for name in ("worker", "mllp"):
            s = self.services[name]
            if s.process:
                out = RESULTS / f"{self.stamp}-profile-{name}.txt"
                proc = pyspy_start(s.process.pid, seconds, out)
                if proc:
                    procs.append((name, out, proc))
        if not procs:
            self.note("py-spy is not installed: no profile (pip install py-spy)")
        for name, out, proc in procs:
            proc.wait(seconds + 30)
            self.result.setdefault("profile", {})[name] = summarise_profile(out)

    def fhir(self) -> None:
        from stafet import cli

        fhir_consumed = any(
            "INGEST_FHIR" in f.read_text() for f in (PROJECT_ROOT / "streams").glob("*.py")
        )
        if "fhir" not in cli.main.commands:
            self.note("FHIR: `stafet fhir` does not exist in this checkout; FHIR part skipped")
            return
        service = Service("fhir", ["fhir"], self.root / "logs" / "fhir.log", self.env)
        self.services["fhir"] = service
        service.start()
        url = f"http://{self.settings.fhir_host}:{self.settings.fhir_port}"
        deadline = time.monotonic() + 90
        import urllib.request

        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except Exception:  # noqa: BLE001  (503 while its referral index loads)
                time.sleep(0.5)
        else:
            self.note("the FHIR connector did not become healthy in 90 s; FHIR part skipped")
            service.stop()
            return
        load = FhirLoad(seed=self.args.seed + 1, run_id=self.run_id + "F")
        results: list[tuple[float, float, int, str]] = []
        rate = self.args.low_rate
        p = self.phase("fhir-paced", rate=rate)
        asyncio.run(
            drive_fhir(
                url, load, concurrency=8, rate=rate, duration=self.mode.fhir_s, results=results
            )
        )
        self.end(p)
        p2 = self.phase("fhir-saturate", concurrency=self.args.connections)
        asyncio.run(
            drive_fhir(
                url,
                load,
                concurrency=self.args.connections,
                rate=None,
                duration=self.mode.fhir_s / 2,
                results=results,
            )
        )
        self.end(p2)
        accepted = sum(1 for r in results if r[2] == 202)
        assert self.outputs
        target = self.outputs.completed + accepted
        # its outputs: wait for the referrals agent (PDF letters for guardians take a while)
        self.outputs.wait_for(target, timeout_s=self.mode.drain_s, idle_s=8)
        p2["t_drained"] = time.time()
        # its referral index follows ingest.* and would take CPU from the MLLP phases
        service.stop()
        summary: dict[str, Any] = {"end_to_end": fhir_consumed}
        for ph in (p, p2):
            rows = [r for r in results if ph["t0"] <= r[0] <= ph["t1"]]
            ok = [r[1] for r in rows if r[2] == 202]
            summary[ph["name"]] = {
                "requests": len(rows),
                "accepted_202": len(ok),
                "status": dict(Counter(str(r[2]) for r in rows)),
                "by_label": dict(Counter(r[3] for r in rows)),
                "per_s": round(len(ok) / (ph["t1"] - ph["t0"]), 1),
                "latency_ms": percentiles(ok),
            }
        self.result["fhir"] = summary
        if not fhir_consumed:
            self.note(
                "FHIR: no stream agent reads ingest.fhir in this checkout, so FHIR figures "
                "are ingest-only (durable 202 latency and rate), not end to end"
            )

    def idle(self) -> None:
        p = self.phase("idle")
        time.sleep(self.mode.idle_s)
        self.end(p)

    def replay(self) -> None:
        for name in ("mllp", "fhir", "worker2", "worker"):
            if name in self.services:
                self.services[name].stop()
        assert self.outputs
        self.outputs.close()  # its CPU would compete with the replay worker
        admin = AdminClient({"bootstrap.servers": self.settings.bootstrap})
        bootstrap = self.settings.bootstrap
        ingest_topics = [INGEST_HL7V2, INGEST_FHIR]
        ingest_end = end_offsets(bootstrap, ingest_topics)
        have = sum(ingest_end.values())
        top_up = max(0, self.mode.replay_events - have)
        info: dict[str, Any] = {"already_on_ingest": have}
        if top_up:
            log(f"  pre-loading {top_up} generated messages onto {INGEST_HL7V2} …")
            info["preload"] = preload(
                bootstrap,
                LoadGenerator(
                    seed=self.args.seed + 2, run_id=self.run_id + "P", referral_share=0.05
                ),
                top_up,
                self.settings.patient_key_secret.get_secret_value(),
            )
            ingest_end = end_offsets(bootstrap, ingest_topics)
        total = sum(ingest_end.values())
        info["events"] = total
        events_topics = [EVENTS_ENCOUNTER, EVENTS_REFERRAL]
        events_base = end_offsets(bootstrap, events_topics)
        group = f"{self.settings.app_id}-replay"
        # the fresh group starts at the beginning of ingest.hl7v2 (auto.offset.reset=earliest),
        # and at the *current end* of events.*: it re-derives those from ingest, instead of also
        # re-notifying what the first worker already normalised
        set_group_offsets(admin, group, events_base)
        replay = Service(
            "replay",
            ["worker"],
            self.root / "logs" / "replay.log",
            {
                **self.env,
                "STAFET_APP_ID": group,
                "STAFET_WORKER_DATA_DIR": str(self.root / "replay-worker"),
            },
        )
        self.services["replay"] = replay
        p = self.phase("replay", **info)
        replay.start()
        progress: list[tuple[float, int, int, int]] = []  # t, ingest done, events done, events end
        ingest_tps, events_tps = list(ingest_end), list(events_base)
        done_at = None
        cap = self.mode.replay_cap_s
        prof: subprocess.Popen[bytes] | None = None
        prof_out = RESULTS / f"{self.stamp}-profile-replay.txt"
        while time.time() - p["t0"] < cap:
            time.sleep(2)
            try:
                ing = sum(group_offsets(admin, group, ingest_tps).values())
                ev_now = end_offsets(bootstrap, events_topics)
                ev = sum(group_offsets(admin, group, events_tps).values())
            except Exception as exc:  # noqa: BLE001
                log(f"  offsets: {exc}")
                continue
            ev_end = sum(ev_now.values())
            progress.append(
                (
                    time.time(),
                    ing,
                    ev - sum(events_base.values()),
                    ev_end - sum(events_base.values()),
                )
            )
            if ing > 0 and prof is None and not self.args.no_profile and replay.process:
                seconds = int(min(self.mode.profile_s, cap - (time.time() - p["t0"]) - 5))
                if seconds >= 5:
                    prof_out = RESULTS / f"{self.stamp}-profile-replay.txt"
                    prof = pyspy_start(replay.process.pid, seconds, prof_out)
            if ing >= total and ev >= ev_end:
                done_at = time.time()
                break
            if not replay.alive():
                self.note("the replay worker exited; see its log")
                break
        self.end(p, offsets=False)
        if prof is not None:
            try:
                prof.wait(30)
            except subprocess.TimeoutExpired:
                prof.kill()
            self.result.setdefault("profile", {})["replay"] = summarise_profile(prof_out)
        replay.stop()
        # inputs fully processed = normalised minus those still waiting in events.*
        done, best = [], 0
        for t, ing, ev, end in progress:  # offsets are committed in bursts: keep it monotone
            best = max(best, ing - (end - ev))
            done.append((t - p["t0"], best))
        first = next((t for t, d in done if d > 0), None)
        steady = [(t, d) for t, d in done if first is not None and t >= first + 5]
        rate = None
        if len(steady) >= 2 and steady[-1][0] > steady[0][0]:
            rate = (steady[-1][1] - steady[0][1]) / (steady[-1][0] - steady[0][0])
        info.update(
            {
                "completed": done_at is not None,
                "seconds": round((done_at or p["t1"]) - p["t0"], 1),
                "startup_s": round(first, 1) if first is not None else None,
                "processed": done[-1][1] if done else 0,
                "steady_per_s": round(rate, 1) if rate else None,
                "progress": [(round(t, 1), d) for t, d in done],
            }
        )
        if rate:
            info["extrapolated_1m_s"] = round((first or 0) + 1_000_000 / rate, 0)
        p.update(info)
        self.result["replay"] = {k: v for k, v in info.items() if k != "progress"}

    # --- analysis --------------------------------------------------------------------------------

    def analyse(self) -> None:
        out = self.outputs.close() if self.outputs else None
        res = self.result
        res["run"] = {
            "timestamp": self.stamp,
            "mode": "quick" if self.args.quick else "full",
            "machine": machine_info(),
            "settings": {
                "partitions": self.settings.partitions,
                "connections": self.args.connections,
                "window": self.args.window,
                "rate": self.args.rate,
                "log_level": self.args.log_level,
                "processing_guarantee": self.settings.processing_guarantee,
                "validate_every": self.settings.validate_every,
            },
            "load_mix": self.gen.mix(),
            "sent_by_label": dict(self.acks.sent),
        }
        if out:
            res["outputs"] = {
                "codes": out["codes"],
                "dlq_reasons": out["dlq_reasons"],
                "records": len(out["recv"]),
            }
        phases = {}
        idle_phase = next((p for p in self.phases if p["name"] == "idle" and "t1" in p), None)
        idle_cores = self.sampler.window(idle_phase["t0"], idle_phase["t1"]) if idle_phase else {}
        for p in self.phases:
            if "t1" not in p:
                continue
            t0, t1 = p["t0"], p["t1"]
            lat, codes = self.acks.window(t0, t1)
            row: dict[str, Any] = {k: v for k, v in p.items() if k not in ("progress",)}
            row["seconds"] = round(t1 - t0, 1)
            row["acks"] = {"AA": codes[0], "AR": codes[1], "AE": codes[2], "other": codes[3]}
            row["ack_per_s"] = round(sum(codes.values()) / (t1 - t0), 1) if t1 > t0 else None
            row["ack_latency_ms"] = percentiles(lat)
            row["cpu"] = self.sampler.window(t0, t1)
            o0, o1 = p.get("offsets0"), p.get("offsets1")
            worked = None
            if o0 and o1:
                sec = t1 - t0
                row["worker_stages"] = {
                    "normalized_per_s": round((o1["normalized"] - o0["normalized"]) / sec, 1),
                    "notified_per_s": round((o1["notified"] - o0["notified"]) / sec, 1),
                    "ingest_backlog_end": o1["ingest_end"] - o1["normalized"],
                    "events_backlog_end": o1["events_end"] - o1["notified"],
                }
                worked = (
                    (o1["normalized"] - o0["normalized"]) + (o1["notified"] - o0["notified"])
                ) / 2
            if out:
                row.update(output_stats(out, t0, t1, p.get("t_drained", t1)))
            accepted = codes[0] or row.get("completed_in_window") or 1
            done = worked or row.get("completed_in_window") or 1
            idle = idle_cores.get("cpu_s", {})
            idle_s = idle_cores.get("seconds") or 1
            row["cpu_s_per_1000"], row["marginal_cpu_ms_per_msg"] = {}, {}
            for n, c in row["cpu"]["cpu_s"].items():
                denom = done if n.startswith("worker") else accepted
                row["cpu_s_per_1000"][n] = round(1000 * c / denom, 2)
                if n in idle:
                    extra = c - idle[n] / idle_s * row["cpu"]["seconds"]
                    row["marginal_cpu_ms_per_msg"][n] = round(1000 * extra / denom, 2)
            row.pop("offsets0", None)
            row.pop("offsets1", None)
            phases[p["name"]] = row
        res["phases"] = phases
        if idle_cores:
            sec = idle_cores.get("seconds") or 1
            res["idle_cores"] = {
                n: round(c / sec, 3) for n, c in idle_cores.get("cpu_s", {}).items()
            }
        if "fhir" in res:
            for name in ("fhir-paced", "fhir-saturate"):
                if name in phases and name in res["fhir"]:
                    res["fhir"][name]["e2e_latency_ms_all_outputs"] = phases[name].get(
                        "e2e_latency_ms_all_outputs"
                    )
        res["memory"] = memory_stats(self.sampler, phases.get("paced"), self.sampler.hwm)
        res["targets"] = targets(res, self.args.quick)

    def write(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.stamp}.json"
        path.write_text(json.dumps(self.result, indent=1, ensure_ascii=False, default=str))
        try:
            plot(self, RESULTS / f"{self.stamp}.png")
        except Exception as exc:  # noqa: BLE001
            self.note(f"plot failed: {exc!r}")
            path.write_text(json.dumps(self.result, indent=1, ensure_ascii=False, default=str))
        return path

    def run(self) -> int:
        try:
            self.start()
            self.warmup()
            self.idle()  # each process's CPU with no traffic: the fixed cost
            # the latency floor at a rate one worker sustains, FHIR at that rate, then the target rate
            self.paced("paced-low", self.args.low_rate, self.mode.low_s, drain_s=60)
            if not self.args.no_fhir:
                self.fhir()
            self.paced("paced", self.args.rate, self.mode.paced_s, drain_s=self.mode.drain_s)
            self.saturate("saturate-1w", 1)
            self.saturate("saturate-2w", 2)
            self.replay()
        except KeyboardInterrupt:
            self.note("interrupted")
        except Exception as exc:  # noqa: BLE001  (keep and analyse what was measured)
            import traceback

            traceback.print_exc()
            self.note(f"the run stopped early: {exc!r}")
        finally:
            self.stop()
            try:
                self.keep_logs()
            except Exception:  # noqa: BLE001
                pass
            if not self.args.keep:
                shutil.rmtree(self.root, ignore_errors=True)
        try:  # the raw measurements, to re-analyse if the analysis below has a bug
            RESULTS.mkdir(parents=True, exist_ok=True)
            with open(RESULTS / f"{self.stamp}-raw.pkl", "wb") as f:
                pickle.dump(
                    {
                        "acks": self.acks,
                        "phases": self.phases,
                        "samples": self.sampler.samples,
                        "hwm": self.sampler.hwm,
                        "outputs": self.outputs.data if self.outputs else None,
                        "result": self.result,
                        "t_start": self.t_start,
                    },
                    f,
                )
        except Exception as exc:  # noqa: BLE001
            log(f"raw dump failed: {exc!r}")
        try:
            self.analyse()
        except Exception as exc:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            self.note(f"analysis failed: {exc!r}")
        path = self.write()
        print_table(self.result)
        log(f"results: {path} and {path.with_suffix('.png')}")
        return 0


def output_stats(out: dict[str, Any], t0: float, t1: float, t_drained: float) -> dict[str, Any]:
    """Throughput and latency of the outputs of one phase.

    Latency: outputs whose input was received (``stafet.received_at``) inside the phase.
    Throughput: inputs completed (first output for an event id) while the phase ran.
    """
    recv, ts, tin, cls, first = out["recv"], out["ts"], out["tin"], out["cls"], out["first"]
    e2e, e2e_ts, e2e_all = [], [], []
    completed = adt_done = 0
    per_s: Counter[int] = Counter()
    for i in range(len(recv)):
        if t0 <= recv[i] <= t1 and first[i]:
            completed += 1
            per_s[int(recv[i] - t0)] += 1
            if cls[i] == 0:
                adt_done += 1
        ti = tin[i]
        if not math.isnan(ti) and t0 <= ti <= t1:
            e2e_all.append(recv[i] - ti)
            if cls[i] == 0:
                e2e.append(recv[i] - ti)
                e2e_ts.append(ts[i] - ti)
    seconds = t1 - t0
    steady = [per_s.get(s, 0) for s in range(int(seconds))][5:]  # skip the ramp-up seconds
    return {
        "completed_in_window": completed,
        "completed_per_s": round(completed / seconds, 1) if seconds else None,
        "adt_notifications_per_s": round(adt_done / seconds, 1) if seconds else None,
        "completed_per_s_steady_median": statistics.median(steady) if steady else None,
        "e2e_latency_ms": percentiles(e2e),
        "e2e_latency_ms_record_timestamp": percentiles(e2e_ts),
        "e2e_latency_ms_all_outputs": percentiles(e2e_all),
    }


def memory_stats(
    sampler: Sampler, paced: dict[str, Any] | None, hwm: dict[str, float]
) -> dict[str, Any]:
    """Peak memory per process, and RSS growth over the paced phase (after its first 20 %)."""
    out: dict[str, Any] = {"peak_hwm_mb": {k: round(v, 1) for k, v in hwm.items()}}
    if not paced:
        return out
    t0, t1 = paced["t0"], paced["t1"]
    t_ref = t0 + 0.2 * (t1 - t0)
    growth = {}
    for name in ("broker", "worker", "mllp"):
        series = [
            (r["t"], r["procs"][name][1])
            for r in sampler.samples
            if t0 <= r["t"] <= t1 and name in r["procs"]
        ]
        if len(series) < 10:
            continue
        ref = (
            statistics.mean(v for t, v in series if abs(t - t_ref) <= 5)
            if any(abs(t - t_ref) <= 5 for t, _ in series)
            else series[0][1]
        )
        end = statistics.mean(v for _, v in series[-5:])
        later = [(t, v) for t, v in series if t >= t_ref]
        slope = _slope(later) * 60 if len(later) > 2 else None
        growth[name] = {
            "rss_ref_mb": round(ref, 1),
            "rss_end_mb": round(end, 1),
            "growth_pct": round(100 * (end - ref) / ref, 1) if ref else None,
            "slope_mb_per_min": round(slope, 2) if slope is not None else None,
        }
    out["paced_rss_growth"] = growth
    out["paced_minutes"] = round((t1 - t0) / 60, 1)
    return out


def _slope(points: list[tuple[float, float]]) -> float:
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    den = sum((t - mx) ** 2 for t, _ in points)
    return sum((t - mx) * (v - my) for t, v in points) / den if den else 0.0


def targets(res: dict[str, Any], quick: bool) -> list[dict[str, Any]]:
    ph = res.get("phases", {})
    rows = []

    def add(
        name: str, figure: float | None, target: float, higher_is_better: bool, unit: str, how: str
    ) -> None:
        if figure is None:
            rows.append(
                {
                    "target": name,
                    "figure": None,
                    "goal": target,
                    "unit": unit,
                    "verdict": "not measured",
                    "how": how,
                }
            )
            return
        met = figure >= target if higher_is_better else figure <= target
        gap = (target - figure) if higher_is_better else (figure - target)
        rows.append(
            {
                "target": name,
                "figure": round(figure, 1),
                "goal": target,
                "unit": unit,
                "verdict": "met"
                if met
                else f"missed by {gap:,.0f} {unit} ({100 * gap / target:.0f} %)",
                "how": how,
            }
        )

    s1, s2 = ph.get("saturate-1w", {}), ph.get("saturate-2w", {})
    add(
        "sustained ADT end to end (1 worker)",
        s1.get("adt_notifications_per_s"),
        TARGETS["sustained_adt_per_s"],
        True,
        "msg/s",
        "ADT notifications out per second while the MLLP side is saturated, broker on the same 2 cores",
    )
    add(
        "sustained ADT end to end (2 workers)",
        s2.get("adt_notifications_per_s"),
        TARGETS["sustained_adt_per_s"],
        True,
        "msg/s",
        "same, 2 workers in one consumer group",
    )
    pa = ph.get("paced", {})
    add(
        f"durable ACK p99 at {res['run']['settings']['rate']}/s",
        pa.get("ack_latency_ms", {}).get("p99"),
        TARGETS["ack_p99_ms"],
        False,
        "ms",
        "client write → AA read, MLLP",
    )
    add(
        f"ingest→notification p99 at {res['run']['settings']['rate']}/s",
        pa.get("e2e_latency_ms", {}).get("p99"),
        TARGETS["e2e_p99_ms"],
        False,
        "ms",
        "stafet.received_at → a consumer of out.municipality.* has the record",
    )
    low = ph.get("paced-low", {})
    if low:
        add(
            f"(info) ingest→notification p99 at {low.get('rate')}/s",
            low.get("e2e_latency_ms", {}).get("p99"),
            TARGETS["e2e_p99_ms"],
            False,
            "ms",
            "the latency floor at a rate one worker sustains",
        )
    rp = res.get("replay", {})
    add(
        "replay 1 million ingest events (extrapolated)",
        rp.get("extrapolated_1m_s"),
        TARGETS["replay_1m_s"],
        False,
        "s",
        f"fresh consumer group re-processing {rp.get('events')} events, rate extrapolated to 1M",
    )
    mem = res.get("memory", {}).get("paced_rss_growth", {})
    if mem and not quick:
        worst = max(
            (g["growth_pct"] for g in mem.values() if g["growth_pct"] is not None), default=None
        )
        add(
            f"memory flat over {res['memory'].get('paced_minutes')} min (worst RSS growth)",
            worst,
            TARGETS["rss_growth_pct"],
            False,
            "%",
            "RSS at the end vs at 20 % into the paced phase",
        )
    else:
        rows.append(
            {
                "target": "memory flat over 10 min",
                "figure": None,
                "goal": "≤ 10 % growth",
                "unit": "%",
                "verdict": "not assessed (quick mode)" if quick else "not measured",
                "how": "",
            }
        )
    ratio = None
    if s1.get("completed_per_s") and s2.get("completed_per_s"):
        ratio = s2["completed_per_s"] / s1["completed_per_s"]
    res["baseline_ratio_2w_over_1w"] = round(ratio, 2) if ratio else None
    return rows


def print_table(res: dict[str, Any]) -> None:
    print()
    print(f"{'target':<52} {'figure':>12} {'goal':>10}  verdict")
    print("-" * 110)
    for r in res.get("targets", []):
        fig = "-" if r["figure"] is None else f"{r['figure']:,} {r['unit']}"
        print(f"{r['target']:<52} {fig:>12} {str(r['goal']):>10}  {r['verdict']}")
    print()
    ph = res.get("phases", {})
    print(
        f"{'phase':<14} {'s':>5} {'in AA/s':>8} {'done/s':>8} {'ADT/s':>7} {'ACK p50/p99 ms':>16} "
        f"{'e2e p50/p95/p99 ms':>22}  CPU s/1000 (broker, worker, mllp)  other procs (cores)"
    )
    for name, r in ph.items():
        if name in ("warmup", "rebalance", "idle") or name.startswith("fhir") or name == "replay":
            continue
        a, e = r.get("ack_latency_ms", {}), r.get("e2e_latency_ms", {})
        c = r.get("cpu_s_per_1000", {})
        print(
            f"{name:<14} {r['seconds']:>5} {r['acks']['AA'] / r['seconds']:>8.0f} "
            f"{r.get('completed_per_s') or 0:>8.0f} {r.get('adt_notifications_per_s') or 0:>7.0f} "
            f"{str(a.get('p50')) + '/' + str(a.get('p99')):>16} "
            f"{str(e.get('p50')) + '/' + str(e.get('p95')) + '/' + str(e.get('p99')):>22}  "
            f"{c.get('broker')}, {c.get('worker')}, {c.get('mllp')}  {r['cpu'].get('other_processes_cores')}"
        )
    if res.get("baseline_ratio_2w_over_1w"):
        print(
            f"\nbaseline ratio (2 workers / 1 worker, inputs completed per s): "
            f"{res['baseline_ratio_2w_over_1w']}"
        )
    rp = res.get("replay")
    if rp:
        print(
            f"replay: {rp.get('processed')} of {rp.get('events')} events in {rp.get('seconds')} s "
            f"(startup {rp.get('startup_s')} s, steady {rp.get('steady_per_s')}/s, complete: "
            f"{rp.get('completed')}); 1M extrapolated: {rp.get('extrapolated_1m_s')} s"
        )
    fh = res.get("fhir")
    if fh:
        for k in ("fhir-paced", "fhir-saturate"):
            if k in fh:
                print(
                    f"{k}: {fh[k]['per_s']}/s accepted, 202 latency {fh[k]['latency_ms']}, "
                    f"status {fh[k]['status']}; e2e (all outputs) {fh[k].get('e2e_latency_ms_all_outputs')}"
                )
    hp = res.get("hotpath")
    if hp:
        print(
            f"hot path (one process, µs/msg): {hp['us_per_message']}; worker hot path "
            f"{hp['worker_hot_path_us']} µs = {hp['worker_hot_path_max_per_s_one_core']}/s per core; "
            f"hl7apy baseline {hp['baseline']}"
        )
    for name, r in ph.items():
        if r.get("worker_stages") and name not in ("warmup", "idle"):
            print(
                f"{name}: worker stages {r['worker_stages']}; marginal CPU ms/msg {r.get('marginal_cpu_ms_per_msg')}"
            )
    if res.get("idle_cores"):
        print(f"idle CPU (cores): {res['idle_cores']}")
    print(f"peak memory (VmHWM MB): {res.get('memory', {}).get('peak_hwm_mb')}")
    for n in res.get("notes", []):
        print(f"note: {n}")


def machine_info() -> dict[str, Any]:
    mem = ""
    try:
        mem = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout.splitlines()[1]
    except Exception:  # noqa: BLE001
        pass
    cpu = ""
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        )
    except Exception:  # noqa: BLE001
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": " ".join(mem.split()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_end": os.getloadavg(),
    }


def plot(bench: Bench, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t_base = bench.t_start
    out = bench.outputs.data if bench.outputs else None
    fig, axes = plt.subplots(4, 1, figsize=(13, 15), sharex=True)
    ax_tp, ax_lat, ax_rss, ax_cpu = axes
    # throughput: ACKed inputs and completed inputs per second
    ack_s: Counter[int] = Counter(
        int(t - t_base) for t, c in zip(bench.acks.t, bench.acks.code, strict=False) if c == 0
    )
    xs = range(0, int(time.time() - t_base) + 1)
    ax_tp.plot(list(xs), [ack_s.get(x, 0) for x in xs], lw=0.8, label="MLLP inputs ACKed (AA)/s")
    if out:
        done_s: Counter[int] = Counter(
            int(r - t_base) for r, f in zip(out["recv"], out["first"], strict=False) if f
        )
        adt_s: Counter[int] = Counter(
            int(r - t_base)
            for r, f, c in zip(out["recv"], out["first"], out["cls"], strict=False)
            if f and c == 0
        )
        ax_tp.plot(
            list(xs), [done_s.get(x, 0) for x in xs], lw=0.8, label="inputs completed end to end/s"
        )
        ax_tp.plot(
            list(xs), [adt_s.get(x, 0) for x in xs], lw=0.6, alpha=0.7, label="ADT notifications/s"
        )
    rp = next((p for p in bench.phases if p["name"] == "replay"), None)
    if rp and rp.get("progress"):
        prog = rp["progress"]
        rx = [rp["t0"] - t_base + t for t, _ in prog]
        rates = [0.0] + [
            (prog[i][1] - prog[i - 1][1]) / max(0.1, prog[i][0] - prog[i - 1][0])
            for i in range(1, len(prog))
        ]
        ax_tp.plot(rx, rates, lw=1, label="replay: events re-processed/s")
    ax_tp.axhline(
        TARGETS["sustained_adt_per_s"], color="red", ls=":", lw=0.8, label="target 2,000/s"
    )
    ax_tp.set_ylabel("messages / s")
    ax_tp.legend(loc="upper left", fontsize=8)
    # latency percentiles per 5 s bucket of input receive time
    if out:
        buckets: dict[int, list[float]] = defaultdict(list)
        for r, ti, c in zip(out["recv"], out["tin"], out["cls"], strict=False):
            if c == 0 and not math.isnan(ti):
                buckets[int((ti - t_base) // 5) * 5].append((r - ti) * 1000)
        bx = sorted(buckets)
        for q, style in ((0.5, "-"), (0.95, "--"), (0.99, ":")):
            ax_lat.plot(
                bx,
                [pct(buckets[b], q) for b in bx],
                style,
                lw=1,
                label=f"ingest→notification p{int(q * 100)}",
            )
    ab: dict[int, list[float]] = defaultdict(list)
    for t, latency in zip(bench.acks.t, bench.acks.latency, strict=True):
        ab[int((t - t_base) // 5) * 5].append(latency * 1000)
    ax_lat.plot(
        sorted(ab),
        [pct(ab[b], 0.99) for b in sorted(ab)],
        lw=1,
        color="black",
        label="durable ACK p99",
    )
    ax_lat.axhline(TARGETS["e2e_p99_ms"], color="red", ls=":", lw=0.8)
    ax_lat.axhline(TARGETS["ack_p99_ms"], color="orange", ls=":", lw=0.8)
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latency, ms (5 s buckets)")
    ax_lat.legend(loc="upper left", fontsize=8)
    # RSS and CPU per process
    names = sorted({n for r in bench.sampler.samples for n in r["procs"]})
    prev: dict[str, tuple[float, float]] = {}
    cpu_series: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in names}
    for n in names:
        pts = [
            (r["t"] - t_base, r["procs"][n][1]) for r in bench.sampler.samples if n in r["procs"]
        ]
        ax_rss.plot([p[0] for p in pts], [p[1] for p in pts], lw=1, label=n)
    for r in bench.sampler.samples:
        for n, (c, _, _) in r["procs"].items():
            if n in prev and r["t"] > prev[n][0]:
                cpu_series[n][0].append(r["t"] - t_base)
                cpu_series[n][1].append(100 * (c - prev[n][1]) / (r["t"] - prev[n][0]))
            prev[n] = (r["t"], c)
    mach = []
    for a, b in zip(bench.sampler.samples, bench.sampler.samples[1:], strict=False):
        busy = b["machine"][0] - a["machine"][0]
        mach.append((b["t"] - t_base, 100 * busy / max(1e-6, b["t"] - a["t"])))
    for n in names:
        ax_cpu.plot(*cpu_series[n], lw=0.8, label=n)
    ax_cpu.plot(
        [m[0] for m in mach],
        [m[1] for m in mach],
        lw=0.8,
        color="black",
        alpha=0.5,
        label="whole machine",
    )
    ax_rss.set_ylabel("RSS, MB")
    ax_rss.legend(loc="upper left", fontsize=8, ncol=3)
    ax_cpu.set_ylabel("CPU % (100 = one core)")
    ax_cpu.legend(loc="upper left", fontsize=8, ncol=4)
    ax_cpu.set_xlabel("seconds since start")
    for ax in axes:
        for p in bench.phases:
            if "t1" in p and p["name"] != "warmup":
                ax.axvspan(
                    p["t0"] - t_base,
                    p["t1"] - t_base,
                    alpha=0.06,
                    color="C1" if "saturate" in p["name"] else "C0",
                )
        ax.grid(alpha=0.3)
    for p in bench.phases:
        if "t1" in p:
            ax_tp.text(
                p["t0"] - t_base,
                ax_tp.get_ylim()[1] * 0.95,
                p["name"],
                fontsize=7,
                rotation=90,
                va="top",
            )
    fig.suptitle(
        f"stafet end-to-end benchmark {bench.stamp} ({'quick' if bench.args.quick else 'full'}, "
        f"{os.cpu_count()} cores)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--quick", action="store_true", help="≈ 3 minutes instead of ≈ 23")
    ap.add_argument(
        "--duration", type=float, help="seconds of the paced phase (full 600, quick 30)"
    )
    ap.add_argument(
        "--saturate", type=float, help="seconds of each saturation phase (full 120, quick 20)"
    )
    ap.add_argument("--rate", type=float, default=200.0, help="msg/s of the paced phase (200)")
    ap.add_argument(
        "--low-rate",
        type=float,
        default=50.0,
        help="msg/s of the short paced phase before it: the latency floor (50)",
    )
    ap.add_argument("--connections", type=int, default=16, help="concurrent MLLP connections (16)")
    ap.add_argument(
        "--window", type=int, default=8, help="frames in flight per connection when saturating"
    )
    ap.add_argument(
        "--replay-events", type=int, help="events on ingest.hl7v2 to replay (full 200000)"
    )
    ap.add_argument(
        "--partitions", type=int, default=Settings().partitions, help="partitions per topic"
    )
    ap.add_argument(
        "--log-level", default="INFO", help="STAFET_LOG_LEVEL of the services (INFO, as shipped)"
    )
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--no-fhir", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    os.chdir(PROJECT_ROOT)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
