"""Two ``stafet deliver`` replicas: one active, one standby (real broker, real HTTP).

The receiver acknowledges each message 8 s after it took it, so the active replica is SIGKILLed
while the acknowledgements of what it delivered are still on their way: the standby must take
over, count those acknowledgements against the deliveries the dead one made (from the audit
trail) and resend nothing — the acknowledgement timeout (25 s) passes before the test looks.
Then the other way round, gracefully: the first replica comes back as a standby and takes over
at once when the active one is stopped with SIGTERM.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest

from demo.hl7_builder import Hospital, adt, medcom_test_patients
from stafet.audit import query
from stafet.inbound.hl7v2 import parse_adt
from stafet.kafka.client import as_admin, client_config
from stafet.kafka.reader import read_to_end
from stafet.kafka.topics import DLQ_DELIVERY, H_MESSAGE_ID
from stafet.medcom.hospitalnotification import message_header_id
from stafet.observability import probe
from stafet.stack import Service

from .conftest import free_port
from .delivery_env import Rest, running_delivery

pytestmark = pytest.mark.disruptive

CODE = "0561"  # Esbjerg: no other test writes to it
SID = "esbjerg"
HOSPITAL = Hospital("Sydvestjysk Sygehus (test)", "600000000000097")
ACK_DELAY_S = 8.0
ACK_TIMEOUT_S = 25.0


def _admissions(n: int) -> tuple[list[bytes], set[str]]:
    child = medcom_test_patients()["Einer"]
    run = uuid.uuid4().hex[:8]
    messages = [
        adt(
            "A01",
            child,
            hospital=HOSPITAL,
            control_id=f"SB-{run}-{i}",
            visit=f"SB-{run}-{i}",
            event_time=f"202612{i % 28 + 1:02d}1000",
            admit_time=f"202612{i % 28 + 1:02d}0800",
            municipality_code=CODE,
        )
        for i in range(n)
    ]
    ids = {message_header_id(parse_adt(m, secret="any").event_id, CODE) for m in messages}
    return messages, ids


def _role(port: int) -> str:
    try:
        status, body = probe("127.0.0.1", port, "/readyz", timeout_s=2)
    except OSError:
        return "down"
    return str(body.get("role", "starting")) if status == 200 else "not-ready"


def _wait_role(port: int, role: str, timeout_s: float = 60.0) -> float:
    """Seconds until the replica on ``port`` reports ``role``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if _role(port) == role:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(
        f"the replica on :{port} is {_role(port)}, not {role}, after {timeout_s:.0f} s"
    )


def _actions(settings, ids: set[str]) -> Counter[tuple[str, str]]:
    """(message id, action) counts on audit.delivery for these messages."""
    return Counter(
        (r.message_id, r.action)
        for r in query(as_admin(settings))
        if r.message_id in ids and r.subscriber in (SID, "")
    )


def test_the_standby_takes_over_without_losing_an_acknowledgement_or_resending(stack, tmp_path):
    with running_delivery(
        stack,
        tmp_path,
        {SID: Rest(municipality=CODE)},
        ack_timeout_s=ACK_TIMEOUT_S,
        ack_max_resends=2,
        health_port=free_port(),
    ) as env:
        receiver = env.receivers[SID]
        receiver.ack_delay_s = ACK_DELAY_S
        a = env.service
        a_port = int(a.env["STAFET_HEALTH_PORT"])
        b_port = free_port()
        b = Service(
            "deliver-b",
            ["deliver"],
            tmp_path / "deliver-b.log",
            {**a.env, "STAFET_HEALTH_PORT": str(b_port)},
        )
        b.start()
        try:
            _wait_role(a_port, "active")
            _wait_role(b_port, "standby")
            time.sleep(3)
            assert _role(b_port) == "standby", "a joining replica does not take the lease"

            first, first_ids = _admissions(5)
            for m in first:
                assert stack.send(m)["code"] == "AA"
            receiver.wait_for(first_ids, timeout_s=60)
            deadline = time.monotonic() + 30  # delivered and audited by A, not acknowledged yet
            while time.monotonic() < deadline:
                audited = _actions(env.settings, first_ids)
                if all(audited[(i, "delivered")] for i in first_ids):
                    break
                time.sleep(0.3)
            assert not any(audited[(i, "ack-ok")] for i in first_ids), "acks came too early"
            time.sleep(1.0)  # its offsets committed after the audit lines
            a.kill()
            killed_at = time.monotonic()
            takeover_s = _wait_role(b_port, "active", timeout_s=60)

            second, second_ids = _admissions(5)
            for m in second:
                assert stack.send(m)["code"] == "AA"
            receiver.wait_for(second_ids, timeout_s=60)

            # the graceful way back: A returns as a standby, B is stopped, A takes over
            a.start()
            _wait_role(a_port, "standby")
            b.terminate()
            handback_s = _wait_role(a_port, "active", timeout_s=60)
            b.wait()
            third, third_ids = _admissions(3)
            for m in third:
                assert stack.send(m)["code"] == "AA"
            receiver.wait_for(third_ids, timeout_s=60)

            everything = first_ids | second_ids | third_ids
            time.sleep(max(0.0, killed_at + ACK_TIMEOUT_S + 8 - time.monotonic()))
            deadline = time.monotonic() + ACK_TIMEOUT_S + ACK_DELAY_S + 10
            while time.monotonic() < deadline:  # the last batch's acks, then its timeout
                audited = _actions(env.settings, everything)
                if all(audited[(i, "ack-ok")] for i in everything):
                    break
                time.sleep(1.0)
            posts = Counter(r.header_id for r in receiver.received if r.header_id in everything)
            resent = [i for i in everything if audited[(i, "resent")]]
            dead = [
                m
                for m in read_to_end(client_config(as_admin(env.settings)), DLQ_DELIVERY)
                if dict(m.headers() or [])[H_MESSAGE_ID].decode() in everything
            ]
            print(
                f"\nstandby: SIGKILL → standby active in {takeover_s:.1f} s; SIGTERM → standby "
                f"active in {handback_s:.1f} s; {len(everything)} messages, POSTs "
                f"{sum(posts.values())}, acknowledged "
                f"{sum(1 for i in everything if audited[(i, 'ack-ok')])}, resent {len(resent)}, "
                f"dead-lettered {len(dead)}"
            )
            assert all(audited[(i, "ack-ok")] for i in everything), "an acknowledgement was lost"
            assert resent == [], "a message was resent although its acknowledgement came"
            assert dead == []
            assert set(posts) == everything and max(posts.values()) == 1, posts
        finally:
            b.stop()
