"""Generated bad input through the real parsers and listeners (no broker: a recording producer).

Properties: nothing crashes; every bad input gets a *specific* answer — an AR whose ERR names
the table-0357 code, the location and the problem, or a 4xx OperationOutcome whose issue names
it — never the generic 207 / 500 "internal error"; every rejection is dead-lettered once
(``dlq.mllp`` / ``dlq.fhir``) and nothing reaches an ingest topic. Deterministic: hypothesis runs
derandomized, without its example database, with bounded example counts.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from demo import fhir_samples as fs
from stafet.config import Settings
from stafet.connectors.sources.fhir.listener import FhirListener, ReferralIndex
from stafet.connectors.sources.mllp.client import END, START, ack_fields
from stafet.connectors.sources.mllp.listener import MllpListener
from stafet.inbound.fhir_referral import FhirInputError, parse_fhir_referral
from stafet.inbound.hl7v2 import Hl7Error
from stafet.inbound.hl7v2_referral import parse_hl7v2
from stafet.kafka.topics import DLQ_FHIR, DLQ_MLLP, H_REASON, INGEST_FHIR, INGEST_HL7V2
from stafet.medcom.acknowledgement import MessageIds, build_ack

from .fuzz_corpus import (
    CORPUS_CPRS,
    FHIR_KINDS,
    HL7_KINDS,
    Bad,
    fhir_bad,
    good_adt,
    good_ref,
    hl7_bad,
)

FUZZ = settings(
    database=None,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SECRET = "fuzz-secret"
GENERIC = ("internal error", "could not process")


class RecordingProducer:
    """Stands in for the durable producer: every write succeeds and is kept."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict[str, bytes]]] = []

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None = None, headers: Any = ()
    ) -> tuple[int, int]:
        self.sent.append((topic, value, dict(headers)))
        return 0, len(self.sent) - 1

    def close(self) -> None:
        pass

    def topics_since(self, mark: int) -> list[str]:
        return [t for t, _, _ in self.sent[mark:]]


def no_cpr(text: str) -> None:
    leaked = [c for c in CORPUS_CPRS if c in text or f"{c[:6]}-{c[6:]}" in text]
    assert not leaked, "a CPR number in an answer or a DLQ reason"


# --- HL7 v2 / MLLP ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mllp() -> Iterator[tuple[MllpListener, RecordingProducer, asyncio.AbstractEventLoop]]:
    producer = RecordingProducer()
    listener = MllpListener(Settings(patient_key_secret=SECRET), producer=producer)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    yield listener, producer, loop
    loop.close()


def answer(mllp, data: bytes) -> tuple[dict[str, str], list[str], bytes]:
    listener, producer, loop = mllp
    mark = len(producer.sent)
    ack = loop.run_until_complete(listener.handle(data))
    topics = producer.topics_since(mark)
    for _, _, headers in producer.sent[mark:]:
        no_cpr(headers.get(H_REASON, b"").decode("utf-8", "replace"))
    return ack_fields(ack), topics, ack


def assert_specific_ar(ack: dict[str, str], bad: Bad, topics: list[str]) -> None:
    where = f"{ack['error_location']} {ack['error_text']}"
    assert ack["code"] == "AR", (bad.kind, ack)
    assert ack["error_code"] in bad.codes, (bad.kind, ack)
    assert ack["error_text"] and not any(g in ack["error_text"] for g in GENERIC), (bad.kind, ack)
    assert bad.text.lower() in where.lower(), (bad.kind, bad.text, ack)
    assert topics == [DLQ_MLLP], (bad.kind, topics)


@pytest.mark.parametrize("kind", HL7_KINDS)
@settings(FUZZ, max_examples=8)
@given(rng=st.randoms(use_true_random=False))
def test_each_kind_of_bad_hl7_gets_a_specific_ar_and_is_dead_lettered(mllp, kind, rng):
    bad = hl7_bad(rng, kind)
    if b"\x0b" not in bad.data and b"\x1c" not in bad.data:  # else: the listener's framing check
        with pytest.raises(Hl7Error):
            parse_hl7v2(bad.data, secret=SECRET)
    ack, topics, raw = answer(mllp, bad.data)
    assert_specific_ar(ack, bad, topics)
    no_cpr(raw.decode("utf-8", "replace"))


# byte-level and field-level mutations of good messages: they may stay valid (AA) or not (AR);
# either way no crash and no generic answer
BASES = [
    good_adt("FZ-BASE-1"),
    good_adt("FZ-BASE-2", trigger="A03"),
    good_ref("FZ-BASE-3"),
    good_ref("FZ-BASE-4", trigger="RRI^I12", status="R", reason=("missing-ppv", "Mangler PPV")),
]
NASTY = [
    b"|",
    b"^",
    b"~",
    b"\\",
    b"&",
    b"\r",
    b"\n",
    b"\x00",
    b"\xff",
    b"\xc3",
    b"MSH|",
    b"\\X41\\",
    b"\\F\\",
    b"PID|",
    b"NK1|",
    b"PRD|",
    b"RF1|",
    b"^^^CPR",
    b"0505209996",
    b"\\.br\\",
    b"\t",
    b" ",
    b"~~~~",
    b"|||||||||||||||||||||||||||||||||||||||",
]


@st.composite
def mutated_hl7(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "field", "segment", "cut"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "insert":
            data[at:at] = draw(st.sampled_from(NASTY) | st.binary(max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 20))]
        elif op == "replace":
            data[at : at + 1] = draw(st.binary(min_size=1, max_size=1))
        elif op == "field":  # replace everything up to the next separator
            end = min(
                [i for i in (data.find(b"|", at + 1), data.find(b"\r", at + 1)) if i > 0]
                or [len(data)]
            )
            data[at:end] = draw(st.sampled_from(NASTY) | st.text(max_size=12).map(str.encode))
        elif op == "segment":
            segs = bytes(data).strip(b"\r").split(b"\r")
            i = draw(st.integers(0, len(segs) - 1))
            what = draw(st.sampled_from(["drop", "dup", "swap"]))
            if what == "drop":
                del segs[i]
            elif what == "dup":
                segs.insert(i, segs[i])
            else:
                j = draw(st.integers(0, len(segs) - 1))
                segs[i], segs[j] = segs[j], segs[i]
            data = bytearray(b"\r".join(segs) + b"\r")
        else:
            del data[at:]
    return bytes(data)


@settings(FUZZ, max_examples=400)
@given(data=mutated_hl7())
def test_mutated_hl7_never_crashes_and_never_gets_a_generic_answer(mllp, data):
    try:
        parse_hl7v2(data, secret=SECRET)
    except Hl7Error as exc:
        assert exc.reason and exc.code in (100, 101, 102, 103, 200, 201)
    ack, topics, _raw = answer(mllp, data)
    assert ack["code"] in ("AA", "AR"), ack
    if ack["code"] == "AR":
        assert ack["error_code"] in ("100", "101", "102", "103", "200", "201"), ack
        assert ack["error_text"], ack
        assert topics == [DLQ_MLLP]
    else:
        assert topics[0] == INGEST_HL7V2 and DLQ_MLLP not in topics
    no_cpr(ack["error_text"])


@settings(FUZZ, max_examples=150)
@given(data=st.binary(max_size=600) | st.binary(max_size=300).map(lambda b: b"MSH" + b))
def test_random_bytes_get_a_specific_ar(mllp, data):
    ack, topics, _ = answer(mllp, data)
    if ack["code"] == "AA":  # astronomically unlikely, but it would have to be a real message
        pytest.fail(f"random bytes accepted: {data!r}")
    assert ack["code"] == "AR" and ack["error_code"] != "207" and ack["error_text"], ack
    assert topics == [DLQ_MLLP]


# framing over a real socket (the recording producer behind it)


@pytest.fixture(scope="module")
def mllp_server() -> Iterator[tuple[int, RecordingProducer]]:
    producer = RecordingProducer()
    listener = MllpListener(
        Settings(
            patient_key_secret=SECRET,
            mllp_port=0,  # type: ignore[arg-type]
            mllp_max_message_bytes=8192,
        ),
        producer=producer,
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(listener.start(), loop).result(10)
    yield listener.port, producer
    asyncio.run_coroutine_threadsafe(listener.stop(drain_s=2), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def exchange(port: int, raw: bytes, *, half_close: bool = True) -> list[dict[str, str]]:
    with socket.create_connection(("127.0.0.1", port), 10) as s:
        try:
            s.sendall(raw)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        s.settimeout(10)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return [ack_fields(f.strip(START)) for f in data.split(END) if f.strip(START)]


FRAMES = [
    ("truncated frame", lambda g: START + g[: len(g) // 2], ["AR"], "truncated frame"),
    ("no start block", lambda g: g + END, ["AR"], "start block"),
    (
        "end block inside",
        lambda g: START + g.replace(b"\rPID", b"\x1c\rPID") + END,
        ["AR", "AR"],
        "",
    ),
    ("two messages, one end block", lambda g: START + g + START + good_adt() + END, ["AR"], "0x0B"),
    (
        "oversize",
        lambda g: START + g + b"NTE|1||" + b"x" * 20_000 + b"\r" + END,
        ["AR"],
        "exceeds the maximum",
    ),
    ("empty frame", lambda g: START + END, ["AR"], "MSH"),
    ("junk then a good frame", lambda g: b"\r\n  " + START + g + END, ["AA"], ""),
]


@pytest.mark.parametrize(("name", "make", "codes", "text"), FRAMES, ids=[f[0] for f in FRAMES])
def test_bad_frames_over_a_socket_and_the_listener_keeps_serving(
    mllp_server, name, make, codes, text
):
    port, producer = mllp_server
    mark = len(producer.sent)
    acks = exchange(port, make(good_adt()))
    assert [a["code"] for a in acks] == codes, acks
    assert all(text in a["error_text"] for a in acks if a["code"] == "AR"), acks
    assert all(a["error_code"] != "207" for a in acks), acks
    assert producer.topics_since(mark).count(DLQ_MLLP) == codes.count("AR")
    assert [a["code"] for a in exchange(port, START + good_adt() + END)] == ["AA"]


# --- FHIR / HTTP ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fhir() -> Iterator[Any]:
    producer = RecordingProducer()
    config = Settings(patient_key_secret=SECRET, fhir_unknown_referral_wait_s=0.0)  # type: ignore[arg-type]
    index = ReferralIndex(SECRET)
    index._ready.set()  # nothing to load: no broker
    listener = FhirListener(config, producer=producer, index=index)
    listener.seen.ready = True
    loop = asyncio.new_event_loop()
    client = TestClient(TestServer(listener.app()), loop=loop)
    loop.run_until_complete(client.start_server())

    def post(
        path: str, body: bytes, content_type: str = "application/fhir+json"
    ) -> tuple[int, dict[str, Any], list[str]]:
        mark = len(producer.sent)

        async def go() -> tuple[int, bytes]:
            response = await client.post(path, data=body, headers={"Content-Type": content_type})
            return response.status, await response.read()

        status, raw = loop.run_until_complete(go())
        for _, _, headers in producer.sent[mark:]:
            no_cpr(headers.get(H_REASON, b"").decode("utf-8", "replace"))
        no_cpr(raw.decode("utf-8", "replace"))
        return status, json.loads(raw), producer.topics_since(mark)

    yield post
    loop.run_until_complete(client.close())
    loop.close()


def issue_text(outcome: dict[str, Any]) -> str:
    assert outcome["resourceType"] == "OperationOutcome"
    return " ".join(
        f"{' '.join(i.get('expression', []))} {i.get('diagnostics', '')}" for i in outcome["issue"]
    )


@pytest.mark.parametrize("kind", FHIR_KINDS)
@settings(FUZZ, max_examples=3)
@given(rng=st.randoms(use_true_random=False))
def test_each_kind_of_bad_fhir_gets_a_specific_4xx_and_is_dead_lettered(fhir, kind, rng):
    bad = fhir_bad(rng, kind)
    status, outcome, topics = fhir(bad.path, bad.data, bad.content_type)
    text = issue_text(outcome)
    assert str(status) in bad.codes, (kind, status, text[:500])
    assert outcome["issue"] and all(
        i["severity"] == "error" and i.get("diagnostics") for i in outcome["issue"]
    ), (kind, outcome)
    assert not any(g in text for g in GENERIC), (kind, text[:500])
    assert bad.text.lower() in text.lower(), (kind, bad.text, text[:500])
    assert topics == [DLQ_FHIR], (kind, topics)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
    | st.sampled_from(["0505209996", "#child", "urn:uuid:x", "", "T"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
GOOD_FHIR = [
    fs.referral("FZ-MUT-1"),
    fs.rejection_task("FZ-MUT-1"),
    fs.status_communication("FZ-MUT-1"),
    fs.bundle(fs.referral("FZ-MUT-2"), fs.forward_task("FZ-MUT-2")),
]


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_fhir(draw: st.DrawFn, bases: list[dict[str, Any]] = GOOD_FHIR) -> dict[str, Any]:
    doc = json.loads(json.dumps(draw(st.sampled_from(bases))))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_paths(doc)[1:]))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JSON_VALUES)
    return doc


@settings(FUZZ, max_examples=250)
@given(doc=mutated_fhir())
def test_mutated_fhir_never_crashes_and_never_gets_a_generic_answer(fhir, doc):
    body = json.dumps(doc).encode()
    try:
        parse_fhir_referral(body, secret=SECRET)
    except FhirInputError as exc:
        assert exc.issues and all(i.reason and i.code for i in exc.issues)
    status, outcome, topics = fhir("/fhir", body)
    assert status in (202, 400, 422), (status, outcome)
    if status == 202:
        assert topics == [INGEST_FHIR]
    else:
        text = issue_text(outcome)
        assert text.strip() and not any(g in text for g in GENERIC), text
        assert topics == [DLQ_FHIR]


def _messages() -> list[dict[str, Any]]:
    header = {
        "resourceType": "MessageHeader",
        "id": "8f7c3f0e-0000-4000-8000-000000000001",
        "eventCoding": {
            "system": "http://medcomfhir.dk/ig/terminology/CodeSystem/medcom-messaging-eventCodes",
            "code": "referral-message",
        },
        "source": {"endpoint": "https://ehr.example/fhir"},
    }
    referral = fs.bundle(header, fs.referral("FZ-MSG-1"), type_="message")
    referral["id"] = "8f7c3f0e-0000-4000-8000-000000000002"
    ack = build_ack(
        MessageIds("b-fz", "8f7c3f0e-0000-4000-8000-000000000003", "care-communication-message"),
        "ok",
        sender_endpoint="https://kommune.example/fhir",
        receiver_endpoint="https://stafet.dk/fhir",
    )
    return [referral, ack]


MESSAGES = _messages()


@settings(FUZZ, max_examples=150)
@given(doc=mutated_fhir(MESSAGES))
def test_mutated_medcom_messages_never_crash_nor_get_a_generic_answer(fhir, doc):
    status, outcome, topics = fhir("/fhir/$process-message", json.dumps(doc).encode())
    assert status in (200, 400, 422), (status, outcome)
    if outcome.get("resourceType") == "OperationOutcome" and status >= 400:
        text = issue_text(outcome)
        assert text.strip() and not any(g in text for g in GENERIC), text
    if status >= 400:  # a reused Bundle.id and a bad acknowledgement too
        assert topics == [DLQ_FHIR], (status, outcome)


def test_a_reused_bundle_id_and_a_bad_acknowledgement_are_dead_lettered(fhir):
    ack = json.loads(json.dumps(MESSAGES[1]))
    ack["id"], ack["entry"][0]["resource"]["id"] = "fz-reuse-bundle", "fz-reuse-header-1"
    assert fhir("/fhir/$process-message", json.dumps(ack).encode())[0] == 200
    ack["entry"][0]["resource"]["id"] = "fz-reuse-header-2"  # same Bundle.id, new message
    status, outcome, topics = fhir("/fhir/$process-message", json.dumps(ack).encode())
    assert (status, topics) == (400, [DLQ_FHIR]) and "never be reused" in issue_text(outcome)
    ack["id"], ack["entry"][0]["resource"]["response"]["code"] = "fz-bad-ack", "fine"
    status, outcome, topics = fhir("/fhir/$process-message", json.dumps(ack).encode())
    assert (status, topics) == (422, [DLQ_FHIR]), outcome


def test_null_in_a_primitive_array_is_not_an_internal_error(fhir):
    """FHIR JSON may hold null in a primitive array (the value in _given); found by fuzzing:
    a guardian's name with given [null] made the listener answer 500."""
    sr = fs.referral("FZ-NULL-1")
    guardian = next(c for c in sr["contained"] if c["resourceType"] == "RelatedPerson")
    guardian["name"] = [
        {
            "family": "Berggren",
            "given": [None],
            "_given": [{"extension": [{"url": "https://example.org/x", "valueString": "x"}]}],
        }
    ]
    status, outcome, topics = fhir("/fhir/ServiceRequest", json.dumps(sr).encode())
    assert status == 202, outcome
    assert topics == [INGEST_FHIR]


@settings(FUZZ, max_examples=100)
@given(
    body=st.binary(max_size=300) | JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    path=st.sampled_from(["/fhir", "/fhir/Task", "/fhir/$process-message"]),
)
def test_random_bodies_get_a_specific_400(fhir, body, path):
    status, outcome, topics = fhir(path, body)
    assert status == 400, (status, outcome)
    text = issue_text(outcome)
    assert text.strip() and not any(g in text for g in GENERIC), text
    assert topics == [DLQ_FHIR]


def test_the_corpus_uses_only_synthetic_cprs():
    """The corpus' CPRs are MedCom test patients (checked against the shared list)."""
    import pathlib

    shared = (
        pathlib.Path(__file__).resolve().parents[2] / "shared" / "domain" / "test-patients.json"
    )
    if shared.exists():
        listed = {p["cpr"] for p in json.loads(shared.read_text("utf-8"))["patients"]}
        assert {c for c in CORPUS_CPRS if c} <= listed | _related_cprs()
    assert random.Random(1).random() == random.Random(1).random()


def _related_cprs() -> set[str]:
    from importlib import resources

    text = resources.files("demo").joinpath("test-patients.json").read_text("utf-8")
    data = json.loads(text)
    return {p["cpr"] for p in data.get("patients", [])} | {
        r.get("related_cpr", "") for r in data.get("related_persons", [])
    }
