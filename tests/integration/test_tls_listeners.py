"""TLS on the listeners (optional). MLLP (``STAFET_MLLP_TLS_CERT``): a sender that trusts the CA
gets its AA over an encrypted socket; with ``STAFET_MLLP_TLS_CLIENT_CA`` a sender without a
client certificate is turned away at the handshake; plaintext on a TLS port gets no ACK. FHIR
(``STAFET_FHIR_TLS_*``): the same over HTTPS — only a client with a certificate gets in."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import uuid

import pytest

from demo.hl7_builder import Hospital, adt, medcom_test_patients
from stafet.connectors.sources.mllp.client import MllpClient, ack_fields
from stafet.connectors.sources.mllp.listener import MllpListener
from stafet.kafka.client import as_admin
from stafet.kafka.credentials import ensure_tls

from .conftest import free_port

HOSPITAL = Hospital("BUC Test", "600000000000099")


def _message() -> bytes:
    cid = f"TLS-{uuid.uuid4().hex[:10]}"
    return adt(
        "A01",
        medcom_test_patients()["RikkeBerggren"],
        hospital=HOSPITAL,
        control_id=cid,
        visit=f"V-{cid}",
        event_time="202612011000",
        admit_time="202612010800",
    )


class Serving:
    """An MllpListener on its own event loop in a thread."""

    def __init__(self, settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.listener = MllpListener(settings)
        asyncio.run_coroutine_threadsafe(self.listener.start(), self.loop).result(30)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.listener.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return ensure_tls(tmp_path_factory.mktemp("mllp-tls"))


def test_mllp_over_tls_and_plaintext_is_refused(stack, tls):
    settings = as_admin(stack.settings).model_copy(
        update={"mllp_port": free_port(), "mllp_tls_cert": tls.keystore}
    )
    serving = Serving(settings)
    try:
        with MllpClient("127.0.0.1", settings.mllp_port, tls_ca=tls.ca) as client:
            assert isinstance(client.sock, ssl.SSLSocket)
            ack = ack_fields(client.send(_message()))
        assert ack["code"] == "AA", ack

        with pytest.raises((ConnectionError, OSError)):  # no TLS: the handshake never happens
            with MllpClient("127.0.0.1", settings.mllp_port, timeout_s=5.0) as plain:
                plain.send(_message())
        with pytest.raises(ssl.SSLError):  # a CA we do not trust: refused by the client
            other = ensure_tls(tls.ca.parent / "other")
            MllpClient("127.0.0.1", settings.mllp_port, tls_ca=other.ca)
    finally:
        serving.close()


def test_mutual_tls_turns_away_a_sender_without_a_certificate(stack, tls):
    settings = as_admin(stack.settings).model_copy(
        update={
            "mllp_port": free_port(),
            "mllp_tls_cert": tls.keystore,
            "mllp_tls_client_ca": tls.ca,
        }
    )
    serving = Serving(settings)
    try:
        # the local CA's certificate is also a client certificate (clientAuth usage)
        with MllpClient(
            "127.0.0.1", settings.mllp_port, tls_ca=tls.ca, tls_cert=tls.keystore
        ) as client:
            assert ack_fields(client.send(_message()))["code"] == "AA"
        with pytest.raises((ssl.SSLError, ConnectionError, socket.timeout, OSError)):
            with MllpClient(
                "127.0.0.1", settings.mllp_port, tls_ca=tls.ca, timeout_s=5.0
            ) as anonymous:
                anonymous.send(_message())  # TLS 1.3: the refusal arrives on first use
    finally:
        serving.close()


def _post(url: str, body: bytes, context: ssl.SSLContext) -> int:
    import urllib.request

    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/fhir+json"}
    )
    with urllib.request.urlopen(request, timeout=30, context=context) as response:
        return response.status


def test_fhir_over_mutual_tls(stack, tls):
    import json

    from stafet.connectors.sources.fhir.listener import FhirListener
    from stafet.medcom.acknowledgement import MessageIds, build_ack

    from .test_fhir_api import Running

    settings = as_admin(stack.settings).model_copy(
        update={"fhir_port": 0, "fhir_tls_cert": tls.keystore, "fhir_tls_client_ca": tls.ca}
    )
    running = Running(FhirListener(settings))
    url = f"https://127.0.0.1:{running.listener.port}/fhir/$process-message"
    ack = build_ack(
        MessageIds(str(uuid.uuid4()), str(uuid.uuid4()), "x"),
        "ok",
        sender_endpoint="https://kommune.example",
        receiver_endpoint="https://stafet",
    )
    body = json.dumps(ack).encode()
    try:
        with_cert = ssl.create_default_context(cafile=str(tls.ca))
        with_cert.load_cert_chain(tls.keystore)
        assert _post(url, body, with_cert) == 200
        without = ssl.create_default_context(cafile=str(tls.ca))
        with pytest.raises(OSError):  # URLError / SSLError / reset: no certificate, no entry
            _post(url, body, without)
    finally:
        running.close()


def test_a_forged_rejection_without_a_client_certificate_never_enters_the_pipeline(stack, tls):
    """Issue 11: a rejection sends letters to the parents and alerts to the municipality, so
    only a party with a client certificate may post one. The forged Task is turned away at the
    handshake and nothing reaches ingest.fhir — the only way to a letter; the same Task with a
    certificate is stored (202), so the check could fail."""
    from demo import fhir_samples as s
    from stafet.connectors.sources.fhir.listener import FhirListener
    from stafet.kafka.reader import end_offsets
    from stafet.kafka.topics import DLQ_FHIR, INGEST_FHIR

    from .test_fhir_api import Running

    settings = as_admin(stack.settings).model_copy(
        update={"fhir_port": 0, "fhir_tls_cert": tls.keystore, "fhir_tls_client_ca": tls.ca}
    )
    running = Running(FhirListener(settings))
    base = f"https://127.0.0.1:{running.listener.port}/fhir"
    referral_id = f"HEN-{uuid.uuid4().hex[:10]}"
    with_cert = ssl.create_default_context(cafile=str(tls.ca))
    with_cert.load_cert_chain(tls.keystore)
    without = ssl.create_default_context(cafile=str(tls.ca))
    rejection = s.to_bytes(s.rejection_task(referral_id))

    def written() -> int:
        return sum(end_offsets(settings, [INGEST_FHIR, DLQ_FHIR]).values())

    try:
        assert (
            _post(f"{base}/ServiceRequest", s.to_bytes(s.referral(referral_id)), with_cert) == 202
        )
        before = written()
        with pytest.raises(OSError):  # no certificate: no HTTP exchange at all
            _post(f"{base}/Task", rejection, without)
        assert written() == before, "a forged decision reached Kafka"
        assert _post(f"{base}/Task", rejection, with_cert) == 202
        assert written() == before + 1
    finally:
        running.close()
