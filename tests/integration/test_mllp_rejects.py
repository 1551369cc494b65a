"""Bad input over a real MLLP socket: a specific AR/AE, the DLQ gets it with the reason, and the
next good message still flows."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid

import pytest

from demo.hl7_builder import Hospital, adt, medcom_test_patients
from stafet.config import Settings
from stafet.connectors.sources.mllp.client import END, START, MllpClient, ack_fields
from stafet.connectors.sources.mllp.listener import MllpListener
from stafet.kafka.topics import DLQ_MLLP, H_REASON, municipality_topic

from .conftest import free_port

HOSPITAL = Hospital("BUC Test", "600000000000099")
CHILD = medcom_test_patients()["RikkeBerggren"]


def good(control_id: str | None = None, **kw) -> bytes:
    control_id = control_id or f"G-{uuid.uuid4().hex[:12]}"
    return adt(
        "A01",
        CHILD,
        hospital=HOSPITAL,
        control_id=control_id,
        visit=f"V-{control_id}",
        event_time="202611231000",
        admit_time="202611230800",
        **kw,
    )


def swap_segments(message: bytes) -> bytes:
    seg = message.strip(b"\r").split(b"\r")
    return b"\r".join([seg[0], seg[2], seg[1], seg[3]]) + b"\r"


def without_cpr(message: bytes) -> bytes:
    return message.replace(f"{CHILD.cpr}^^^CPR^NNDNK".encode(), b"")


BAD = [
    ("missing MSH", lambda: good().split(b"\r", 1)[1], "100", "does not start with an MSH"),
    ("wrong segment order", lambda: swap_segments(good()), "100", "MSH EVN PID PV1"),
    ("no CPR", lambda: without_cpr(good()), "101", "no CPR number in PID-3"),
    (
        "unknown municipality",
        lambda: good(municipality_code="0999"),
        "103",
        "unknown municipality code '0999'",
    ),
    (
        "bad encoding",
        lambda: good().replace(b"Berggren", "Bergrøn".encode("latin-1")),
        "102",
        "not valid utf-8",
    ),
    (
        "unsupported event",
        lambda: good().replace(b"ADT^A01^ADT_A01", b"ADT^A02^ADT_A02"),
        "201",
        "ADT event 'A02' is not supported",
    ),
]


def _dlq_reasons(stack, since) -> list[str]:
    records = stack.read(since, idle_s=1.0, timeout_s=15)
    return [r.headers[H_REASON].decode() for r in records if r.topic == DLQ_MLLP]


def _good_message_still_flows(stack) -> None:
    since = stack.marks()
    ack = stack.send(good())
    assert ack["code"] == "AA", ack
    records = stack.read(since, until=1)
    assert [r.topic for r in records] == [municipality_topic(CHILD.municipality_code)]


@pytest.mark.parametrize(("name", "make", "error_code", "reason"), BAD, ids=[b[0] for b in BAD])
def test_bad_message_gets_ar_with_reason_and_goes_to_dlq(stack, name, make, error_code, reason):
    since = stack.marks()
    ack = stack.send(make())
    assert ack["code"] == "AR"
    assert ack["error_code"] == error_code
    assert reason in ack["error_text"]
    assert any(reason in r for r in _dlq_reasons(stack, since))
    _good_message_still_flows(stack)


def test_iso_8859_1_message_keeps_danish_letters(stack):
    """MSH-18 8859/1: æ, ø, å arrive intact in the notification."""
    patient = medcom_test_patients()["JulianeJoergensen"]  # family name Jørgensen
    control_id = f"L-{uuid.uuid4().hex[:12]}"
    message = adt(
        "A01",
        patient,
        hospital=Hospital("Børne- og Ungdomspsykiatri Århus", "600000000000098"),
        control_id=control_id,
        visit="V-æøå",
        event_time="202611231000",
        charset="8859/1",
    )
    assert "Jørgensen".encode("latin-1") in message
    since = stack.marks()
    ack = stack.send(message)
    assert ack["code"] == "AA", ack
    [record] = stack.read(since, until=1)
    text = record.value.decode("utf-8")
    assert "Jørgensen" in text and "Børne- og Ungdomspsykiatri Århus" in text


def test_truncated_frame_gets_ar_and_dlq(stack):
    since = stack.marks()
    message = good()
    with socket.create_connection((stack.settings.mllp_host, stack.settings.mllp_port), 10) as s:
        s.sendall(START + message[: len(message) // 2])
        s.shutdown(socket.SHUT_WR)  # the sender gives up mid-message but still listens
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    ack = ack_fields(data.strip(START).split(END)[0])
    assert ack["code"] == "AR"
    assert "truncated frame" in ack["error_text"]
    assert any("truncated frame" in r for r in _dlq_reasons(stack, since))
    _good_message_still_flows(stack)


def test_five_megabytes_of_garbage_is_rejected_and_the_listener_survives(stack):
    since = stack.marks()
    garbage = os.urandom(5 * 1024 * 1024).replace(b"\x1c", b"x").replace(b"\x0b", b"y")
    with socket.create_connection((stack.settings.mllp_host, stack.settings.mllp_port), 30) as s:
        s.sendall(START + garbage[: 2 * 1024 * 1024])
        try:
            s.sendall(garbage[2 * 1024 * 1024 :] + END)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the listener closed the connection after the limit: that is the point
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    ack = ack_fields(data.strip(START).split(END)[0])
    assert ack["code"] == "AR"
    assert "exceeds the maximum" in ack["error_text"]
    assert any("exceeds the maximum" in r for r in _dlq_reasons(stack, since))
    _good_message_still_flows(stack)


def test_pipelined_messages_are_answered_in_order(stack):
    """A sender may send several messages before reading any ACK, in one TCP write."""
    ids = [f"P-{uuid.uuid4().hex[:10]}-{i}" for i in range(5)]
    burst = b"".join(START + good(i) + END for i in ids)
    with MllpClient(stack.settings.mllp_host, stack.settings.mllp_port) as client:
        client.send_raw(burst)
        acks = [ack_fields(client.read_ack()) for _ in ids]
    assert [a["control_id"] for a in acks] == ids
    assert {a["code"] for a in acks} == {"AA"}


def test_broker_unavailable_gives_ae_never_aa():
    """A listener whose broker does not answer must answer AE (retry), not AA."""
    settings = Settings(
        bootstrap_servers=f"127.0.0.1:{free_port()}", mllp_port=0, mllp_produce_timeout_s=1.5
    )

    async def scenario() -> dict[str, str]:
        listener = MllpListener(settings)
        await listener.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            writer.write(START + good() + END)
            await writer.drain()
            data = await asyncio.wait_for(reader.readuntil(END), 30)
            writer.close()
            return ack_fields(data.strip(START).split(END)[0])
        finally:
            await listener.stop()

    ack = asyncio.run(scenario())
    assert ack["code"] == "AE"
    assert ack["error_code"] == "207"
    assert "not stored" in ack["error_text"]
