"""The FHIR HTTP connector over real HTTP against the real broker: accepted bodies are on
``ingest.fhir`` byte for byte before the 202; every bad body gets its specific status and
OperationOutcome and lands on ``dlq.fhir`` with the reason; good traffic flows after each; a
broker that is down gives 503, never 202."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from demo import fhir_samples as s
from stafet.config import Settings
from stafet.connectors.sources.fhir.listener import EVENT_ID_HEADER, FhirListener
from stafet.ids import patient_key
from stafet.inbound.fhir_referral import parse_fhir_referral
from stafet.kafka.client import as_admin
from stafet.kafka.reader import Received, end_offsets, read_topics
from stafet.kafka.topics import DLQ_FHIR, H_EVENT_ID, H_REASON, H_SOURCE, H_STAGE, INGEST_FHIR

from .conftest import free_port

RIKKE = "0505209996"
FHIR_JSON = "application/fhir+json"


class Running:
    """A FhirListener served by an event loop in a thread, so sync tests can call it over HTTP."""

    def __init__(self, listener: FhirListener) -> None:
        self.listener = listener
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(listener.start(), self.loop).result(60)
        self.url = f"http://127.0.0.1:{listener.port}"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.listener.stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    text: str

    @property
    def outcome(self) -> dict[str, Any]:
        body = json.loads(self.text)
        assert body["resourceType"] == "OperationOutcome"
        return body


def http(method: str, url: str, body: bytes | None = None, content_type: str = FHIR_JSON) -> Answer:
    async def call() -> Answer:
        async with aiohttp.ClientSession() as session:
            async with session.request(
                method,
                url,
                data=body,
                headers={"Content-Type": content_type},
                timeout=aiohttp.ClientTimeout(total=60),
            ) as r:
                return Answer(r.status, dict(r.headers), await r.text())

    return asyncio.run(call())


@pytest.fixture(scope="module")
def api(stack) -> Iterator[Running]:
    settings = stack.settings.model_copy(update={"fhir_port": 0, "fhir_produce_timeout_s": 5.0})
    running = Running(FhirListener(settings))
    try:
        yield running
    finally:
        running.close()


def marks(stack) -> dict[tuple[str, int], int]:
    return end_offsets(as_admin(stack.settings), [INGEST_FHIR, DLQ_FHIR])


def records(stack, since, *, until: int) -> list[Received]:
    return read_topics(as_admin(stack.settings), since, until=until, timeout_s=30)


def new_id() -> str:
    return f"HEN-{uuid.uuid4().hex[:10]}"


def post_referral(api: Running, stack, referral_id: str) -> bytes:
    """A good referral: 202, and exactly its bytes on ingest.fhir under Rikke's key."""
    body = s.to_bytes(s.referral(referral_id))
    since = marks(stack)
    answer = http("POST", f"{api.url}/fhir/ServiceRequest", body)
    assert answer.status == 202, answer.text
    [event] = parse_fhir_referral(body, secret="x")
    assert answer.headers[EVENT_ID_HEADER] == event.event_id
    [record] = records(stack, since, until=1)
    assert (record.topic, record.value) == (INGEST_FHIR, body)
    secret = stack.settings.patient_key_secret.get_secret_value()
    assert record.key == patient_key(RIKKE, secret).encode()
    assert record.headers[H_EVENT_ID].decode() == event.event_id
    assert record.headers[H_SOURCE] == b"fhir"
    assert record.headers["content-type"] == FHIR_JSON.encode()
    return body


def test_referral_then_rejection_are_stored_before_the_202(api, stack):
    referral_id = new_id()
    post_referral(api, stack, referral_id)
    task = s.to_bytes(s.rejection_task(referral_id))
    since = marks(stack)
    answer = http("POST", f"{api.url}/fhir/Task", task)
    assert answer.status == 202, answer.text
    [issue] = answer.outcome["issue"]
    assert issue["severity"] == "information"
    assert answer.headers[EVENT_ID_HEADER] in issue["diagnostics"]
    [record] = records(stack, since, until=1)
    assert (record.topic, record.value) == (INGEST_FHIR, task)
    [event] = parse_fhir_referral(record.value, secret="x")
    assert event.decision is not None and event.decision.reason_code == "missing-ppv"


def test_bundle_to_the_base_endpoint(api, stack):
    referral_id = new_id()
    body = s.to_bytes(s.bundle(s.referral(referral_id), s.rejection_task(referral_id)))
    answer = http("POST", f"{api.url}/fhir", body)
    assert answer.status == 202, answer.text
    assert len(answer.outcome["issue"]) == 2  # one receipt line per stored event


def _bad_cpr() -> bytes:
    referral = s.referral(new_id())
    referral["contained"][0]["identifier"][0]["value"] = "3213209996"
    return s.to_bytes(referral)


def _unknown_municipality() -> bytes:
    referral = s.referral(new_id(), municipality_as="district")
    referral["contained"][0]["address"][0]["district"] = "0999"
    return s.to_bytes(referral)


BAD = [  # name, path, body, content type, status, issue code, expression, reason snippet
    (
        "wrong resourceType",
        "/fhir",
        lambda: s.to_bytes({"resourceType": "Patient"}),
        FHIR_JSON,
        400,
        "not-supported",
        "resourceType",
        "resourceType 'Patient'",
    ),
    (
        "resourceType does not match path",
        "/fhir/Task",
        lambda: s.to_bytes(s.referral(new_id())),
        FHIR_JSON,
        400,
        "invalid",
        "resourceType",
        "posted to /fhir/Task",
    ),
    (
        "a CPR as resourceType is not echoed",
        "/fhir/Task",
        lambda: s.to_bytes({"resourceType": RIKKE}),
        FHIR_JSON,
        400,
        "invalid",
        "resourceType",
        "a <cpr> was posted to /fhir/Task",
    ),
    (
        "missing focus",
        "/fhir/Task",
        lambda: s.to_bytes({k: v for k, v in s.rejection_task(new_id()).items() if k != "focus"}),
        FHIR_JSON,
        400,
        "required",
        "Task.focus",
        "Task.focus (the referral) is required",
    ),
    (
        "unknown referral",
        "/fhir/Task",
        lambda: s.to_bytes(s.rejection_task("HEN-never-sent")),
        FHIR_JSON,
        422,
        "not-found",
        "Task.focus",
        "unknown referral 'HEN-never-sent'",
    ),
    (
        "invalid CPR",
        "/fhir/ServiceRequest",
        _bad_cpr,
        "application/json",
        400,
        "value",
        "ServiceRequest.contained[0].identifier[0].value",
        "CPR number of the child is not",
    ),
    (
        "unknown municipality",
        "/fhir/ServiceRequest",
        _unknown_municipality,
        FHIR_JSON,
        422,
        "code-invalid",
        "ServiceRequest.contained[0].address[0].district",
        "unknown municipality code '0999'",
    ),
    (
        "malformed JSON",
        "/fhir",
        lambda: b'{"resourceType": "Task", "status": ',
        FHIR_JSON,
        400,
        "structure",
        None,
        "the body is not JSON",
    ),
    (
        "oversize body (2 MB)",
        "/fhir/ServiceRequest",
        lambda: b'{"resourceType": "ServiceRequest", "note": "' + b"x" * (2 * 1024 * 1024) + b'"}',
        FHIR_JSON,
        413,
        "too-long",
        None,
        "exceeds the maximum",
    ),
    (
        "not JSON content type",
        "/fhir/Task",
        lambda: s.to_bytes(s.rejection_task(new_id())),
        "text/plain",
        415,
        "not-supported",
        None,
        "Content-Type must be",
    ),
]


@pytest.mark.parametrize(
    ("name", "path", "make", "ctype", "status", "code", "expression", "reason"),
    BAD,
    ids=[b[0] for b in BAD],
)
def test_bad_input_gets_status_outcome_and_dlq(
    api, stack, name, path, make, ctype, status, code, expression, reason
):
    body = make()
    since = marks(stack)
    answer = http("POST", f"{api.url}{path}", body, ctype)
    assert answer.status == status, answer.text
    issues = answer.outcome["issue"]
    assert all(i["severity"] == "error" for i in issues)
    match = [i for i in issues if i["code"] == code and reason in i["diagnostics"]]
    assert match, issues
    if expression:
        assert match[0]["expression"] == [expression]
    for cpr in (RIKKE, "3213209996"):
        assert cpr not in answer.text
    [dlq] = records(stack, since, until=1)  # nothing on ingest.fhir, one record on dlq.fhir
    assert dlq.topic == DLQ_FHIR
    assert reason in dlq.headers[H_REASON].decode() and dlq.headers[H_STAGE] == b"fhir"
    assert RIKKE not in dlq.headers[H_REASON].decode()
    assert dlq.value == body[:65_536]
    post_referral(api, stack, new_id())  # good traffic still flows


def test_a_new_listener_knows_referrals_from_kafka(api, stack):
    """The index is read from ingest.fhir at start: a second instance accepts the decision."""
    referral_id = new_id()
    post_referral(api, stack, referral_id)
    settings = stack.settings.model_copy(update={"fhir_port": 0})
    other = Running(FhirListener(settings))
    try:
        health = json.loads(http("GET", f"{other.url}/healthz").text)
        assert health["referral_index"] == "ready" and health["referrals"] >= 1
        task = s.to_bytes(s.rejection_task(referral_id))
        assert http("POST", f"{other.url}/fhir/Task", task).status == 202
        unknown = s.to_bytes(s.rejection_task(new_id()))
        assert http("POST", f"{other.url}/fhir/Task", unknown).status == 422
    finally:
        other.close()


def test_openapi_and_health(api):
    answer = http("GET", f"{api.url}/openapi.json")
    assert answer.status == 200
    doc = json.loads(answer.text)
    assert doc["openapi"] == "3.1.0" and "/fhir/Task" in doc["paths"]
    assert http("GET", f"{api.url}/healthz").status == 200
    missing = http("GET", f"{api.url}/fhir/Patient")
    assert missing.status in (404, 405) and missing.outcome["issue"][0]["severity"] == "error"


def test_broker_unavailable_gives_503_never_202():
    settings = Settings(
        bootstrap_servers=f"127.0.0.1:{free_port()}", fhir_port=0, fhir_produce_timeout_s=1.5
    )
    running = Running(FhirListener(settings, index_wait_s=0.5))
    try:
        for path, body in (
            ("/fhir/ServiceRequest", s.referral(new_id())),
            ("/fhir/Task", s.rejection_task(new_id())),
        ):
            answer = http("POST", f"{running.url}{path}", s.to_bytes(body))
            assert answer.status == 503, answer.text
            assert answer.headers["Retry-After"].isdigit()
            [issue] = answer.outcome["issue"]
            assert issue["code"] == "transient"
    finally:
        running.close()
