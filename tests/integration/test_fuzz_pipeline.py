"""A fixed, generated corpus of bad input (tests/fuzz_corpus.py, seeded) against the running
listeners over a real MLLP socket and real HTTP: every input gets a specific AR / 4xx and is
dead-lettered once (``dlq.mllp`` / ``dlq.fhir``), nothing reaches the stream stages' DLQs, no
listener exits, one good message each way still flows to its topic afterwards, and no CPR number
is in the listeners' or the worker's logs."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from datetime import UTC, datetime

import aiohttp

from demo import fhir_samples as fs
from stafet.connectors.sources.mllp.client import END, START, MllpClient, ack_fields
from stafet.kafka.topics import (
    DLQ_FHIR,
    DLQ_MLLP,
    DLQ_NORMALIZE,
    DLQ_NOTIFY,
    DLQ_REFERRAL,
    H_EVENT_ID,
    H_REASON,
    OUT_REFERRER,
    municipality_topic,
)

from ..fuzz_corpus import CHILD, CORPUS_CPRS, Bad, corpus, good_adt

SEED, ROUNDS = 20261203, 4
GENERIC = ("internal error", "could not process")


def _specific_ar(ack: dict[str, str], bad: Bad) -> bool:
    where = f"{ack['error_location']} {ack['error_text']}".lower()
    return (
        ack["code"] == "AR"
        and ack["error_code"] in bad.codes
        and bool(ack["error_text"])
        and bad.text.lower() in where
        and not any(g in where for g in GENERIC)
    )


def _raw_exchange(stack, raw: bytes) -> dict[str, str] | None:
    """One connection: send ``raw`` (then half-close), read the first ACK."""
    with socket.create_connection((stack.settings.mllp_host, stack.settings.mllp_port), 30) as s:
        try:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    frames = [f.strip(START) for f in data.split(END) if f.strip(START)]
    return ack_fields(frames[0]) if frames else None


def _post_all(url: str, bad: list[Bad]) -> list[tuple[int, str]]:
    async def run() -> list[tuple[int, str]]:
        out = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            for b in bad:
                try:
                    async with session.post(
                        url + b.path, data=b.data, headers={"Content-Type": b.content_type}
                    ) as r:
                        out.append((r.status, await r.text()))
                except aiohttp.ClientError as exc:  # a 413 may close before the body is sent
                    out.append((0, f"{type(exc).__name__}: {exc}"))
        return out

    return asyncio.run(run())


def _issues(text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        return ""
    if body.get("resourceType") != "OperationOutcome":
        return ""
    return " ".join(
        f"{' '.join(i.get('expression', []))} {i.get('diagnostics', '')}"
        for i in body.get("issue", [])
    )


def test_generated_bad_input_is_answered_dead_lettered_and_the_pipeline_flows(stack):
    hl7, fhir = corpus(SEED, ROUNDS)
    framing = [  # frame-level faults: each on a connection of its own
        ("truncated frame", START + good_adt()[:120], "truncated frame"),
        ("no start block", good_adt() + END, "start block"),
        (
            "oversize",
            START
            + good_adt()
            + b"NTE|1||"
            + b"x" * (stack.settings.mllp_max_message_bytes + 10)
            + b"\r"
            + END,
            "exceeds the maximum",
        ),
    ]
    since = stack.marks()
    started = time.monotonic()
    failures: list[str] = []
    crashes = 0

    # HL7 v2 over one MLLP connection (a few reconnects if the listener closes it)
    specific_hl7 = 0
    client = MllpClient(stack.settings.mllp_host, stack.settings.mllp_port)
    client.__enter__()
    try:
        for bad in hl7:
            try:
                ack = ack_fields(client.send(bad.data))
            except (OSError, ValueError) as exc:
                crashes += 1
                failures.append(f"mllp {bad.kind}: no answer ({exc})")
                client.close()
                client = MllpClient(stack.settings.mllp_host, stack.settings.mllp_port)
                client.__enter__()
                continue
            if _specific_ar(ack, bad):
                specific_hl7 += 1
            else:
                if ack["error_code"] == "207" or ack["code"] not in ("AA", "AR", "AE"):
                    crashes += 1
                failures.append(f"mllp {bad.kind}: {ack}")
    finally:
        client.close()
    for name, raw, text in framing:
        ack = _raw_exchange(stack, raw)
        if ack is not None and ack["code"] == "AR" and text in ack["error_text"]:
            specific_hl7 += 1
        else:
            failures.append(f"mllp frame {name}: {ack}")
    hl7_s = time.monotonic() - started

    # FHIR over HTTP
    started_fhir = time.monotonic()
    url = f"http://{stack.settings.fhir_host}:{stack.settings.fhir_port}"
    answers = _post_all(url, fhir)
    specific_fhir = 0
    for bad, (status, text) in zip(fhir, answers, strict=True):
        issues = _issues(text)
        if (
            str(status) in bad.codes
            and issues
            and bad.text.lower() in issues.lower()
            and not any(g in issues for g in GENERIC)
        ):
            specific_fhir += 1
        else:
            if status >= 500 or status == 0:
                crashes += 1
            failures.append(f"fhir {bad.kind}: {status} {text[:300]}")
    fhir_s = time.monotonic() - started_fhir

    # dead letters: one per bad input on the listener's DLQ, none on the stream stages'
    tried_hl7, tried_fhir = len(hl7) + len(framing), len(fhir)
    expected = tried_hl7 + tried_fhir
    records = stack.read(since, until=expected, timeout_s=120)
    records += stack.read(since, idle_s=3.0, timeout_s=60)[len(records) :]  # and nothing more
    dead_mllp = [r for r in records if r.topic == DLQ_MLLP]
    dead_fhir = [r for r in records if r.topic == DLQ_FHIR]
    stream_dead = [r for r in records if r.topic in (DLQ_NORMALIZE, DLQ_NOTIFY, DLQ_REFERRAL)]
    leaked = [r.topic for r in records if r.topic.startswith("out.")]
    for r in dead_mllp + dead_fhir:
        reason = r.headers.get(H_REASON, b"").decode("utf-8", "replace")
        assert not [c for c in CORPUS_CPRS if c in reason], "a CPR in a DLQ reason"

    # one good message each way still flows
    marks = stack.marks()
    good = good_adt(f"FZ-GOOD-{uuid.uuid4().hex[:8]}")
    ack = stack.send(good)
    ref_id = f"FZ-GOOD-{uuid.uuid4().hex[:8]}"
    authored = datetime.now(UTC).isoformat(timespec="seconds")
    [(fhir_status, fhir_text)] = _post_all(
        url,
        [
            Bad(
                "good",
                json.dumps(fs.referral(ref_id, authored_on=authored)).encode(),
                ("202",),
                path="/fhir/ServiceRequest",
            )
        ],
    )
    flowed = stack.read(marks, until=2, timeout_s=90)
    adt_flowed = ack["code"] == "AA" and any(
        r.topic == municipality_topic(CHILD.municipality_code) for r in flowed
    )
    fhir_flowed = fhir_status == 202 and any(
        r.topic == OUT_REFERRER and r.headers.get("stafet.referral_id", b"").decode() == ref_id
        for r in flowed
    )
    alive = {name: service.alive() for name, service in stack.services.items()}

    print(
        f"\nfuzz corpus (seed {SEED}): inputs tried {expected} (MLLP {tried_hl7}, FHIR "
        f"{tried_fhir}); answered with a specific error {specific_hl7 + specific_fhir} "
        f"(MLLP {specific_hl7}, FHIR {specific_fhir}); dead-lettered "
        f"{len(dead_mllp) + len(dead_fhir)} (dlq.mllp {len(dead_mllp)}, dlq.fhir "
        f"{len(dead_fhir)}); stream DLQs {len(stream_dead)}; crashes {crashes}; good message "
        f"flowed: MLLP {adt_flowed}, FHIR {fhir_flowed}; listeners alive {alive}; "
        f"MLLP {hl7_s:.1f} s, FHIR {fhir_s:.1f} s"
    )

    assert not failures, "\n".join(failures[:30])
    assert crashes == 0
    assert len(dead_mllp) == tried_hl7, "every bad HL7 v2 input dead-lettered once"
    assert len(dead_fhir) == tried_fhir, "every bad FHIR body dead-lettered once"
    assert not stream_dead, [(r.topic, r.headers.get(H_REASON)) for r in stream_dead]
    assert not leaked, f"bad input produced output: {leaked}"
    assert adt_flowed, (ack, [(r.topic, r.headers.get(H_EVENT_ID)) for r in flowed])
    assert fhir_flowed, (fhir_status, fhir_text, [r.topic for r in flowed])
    assert all(alive.values()), alive

    # no CPR number in any process log after the corpus
    for name in ("mllp", "fhir", "worker"):
        log = (stack.log_dir / f"{name}.log").read_text(errors="replace")
        found = sorted(c for c in CORPUS_CPRS if c in log or f"{c[:6]}-{c[6:]}" in log)
        assert not found, f"{len(found)} CPR numbers in {name}.log"
