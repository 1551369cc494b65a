"""Faults while a stream of admissions flows to a REST subscriber, all in one run: a second
worker joins (a rebalance) and later dies by SIGKILL, the delivery process is SIGKILLed and
started again, the first worker is SIGKILLed, and the broker itself is restarted. Afterwards every
input has reached the subscriber — counted, none missing — with exactly the expected message id
per event, and any repeated delivery carries a MessageHeader.id the receiver has already seen
(which MedCom's rule makes it discard).

Marked ``disruptive``: it restarts the session's broker, so it runs after every other test.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict

import pytest

from demo.hl7_builder import Hospital, adt, medcom_test_patients
from stafet.inbound.hl7v2 import parse_adt
from stafet.kafka.security import WORKER
from stafet.medcom.hospitalnotification import message_header_id
from stafet.stack import Service, service_env

from .conftest import SUPERVISION
from .delivery_env import Rest, running_delivery

pytestmark = pytest.mark.disruptive

HOSPITAL = Hospital("Nordsjællands Hospital (test)", "600000000000097")
CHILDREN = [
    "Einer",
    "Lonni",
    "Magnus",
    "Rasmus",
    "ElseLauridsen",
    "EllenLouise",
    "Sverre",
    "Torre",
    "OddHaugen",
    "KnutOdvar",
]  # all in Hillerød (0219)
VISITS = 24  # × A01, A08, A03 = 72 messages


def _send_until_accepted(stack, message: bytes, timeout_s: float = 120.0) -> int:
    """What a real MLLP sender does: resend on AE or a refused connection until AA."""
    deadline, tries = time.monotonic() + timeout_s, 0
    while time.monotonic() < deadline:
        tries += 1
        try:
            ack = stack.send(message)
        except OSError:
            ack = {"code": "no connection"}
        if ack["code"] == "AA":
            return tries
        assert ack["code"] in ("AE", "no connection"), ack  # never AR for a good message
        time.sleep(1.0)
    raise AssertionError("the message was never accepted")


def _tail(path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])[-6000:]
    except OSError:
        return "(no log)"


def _supervise(services: dict[str, Service]) -> None:
    """What `stafet up` (or systemd) does: start a service that exited."""
    with SUPERVISION:
        for service in services.values():
            if not service.alive():
                service.start()


def test_every_admission_arrives_through_kills_a_rebalance_and_a_broker_restart(stack, tmp_path):
    patients = medcom_test_patients()
    run = uuid.uuid4().hex[:6]
    messages, expected = [], {}
    for v in range(VISITS):
        child = patients[CHILDREN[v % len(CHILDREN)]]
        visit = f"F-{run}-{v}"
        for i, trigger in enumerate(("A01", "A08", "A03")):
            m = adt(
                trigger,
                child,
                hospital=HOSPITAL,
                control_id=f"{visit}-{trigger}",
                visit=visit,
                event_time=f"202612{v % 28 + 1:02d}1{i}00",
                admit_time=f"202612{v % 28 + 1:02d}0800",
                **({"discharge_time": f"202612{v % 28 + 1:02d}1500"} if trigger == "A03" else {}),
            )
            messages.append(m)
            expected[message_header_id(parse_adt(m, secret="any").event_id, "0219")] = (visit, i)

    with running_delivery(
        stack, tmp_path, {"hilleroed": Rest(municipality="0219")}, ack_timeout_s=20.0
    ) as delivery:
        second = Service(
            "worker2",
            ["worker"],
            tmp_path / "worker2.log",
            {**service_env(stack.settings, WORKER), "STAFET_WORKER_DATA_DIR": str(tmp_path / "w2")},
        )
        stack.services["worker2"] = second
        n = len(messages)
        try:
            for k, message in enumerate(messages):
                if k == n // 6:
                    second.start()  # joins the group: a rebalance mid-stream
                if k == n // 3:
                    delivery.service.kill()  # SIGKILL mid-delivery …
                    delivery.service.start()  # … and back: resumes from its committed offsets
                if k == n // 2:
                    second.kill()  # the second worker dies: its partitions move back
                if k == 2 * n // 3:
                    stack.restart_worker(kill=True)
                if k == 5 * n // 6:
                    stack.kafka.stop()
                    stack.kafka.start()
                    _supervise({"worker": stack.services["worker"], "deliver": delivery.service})
                _send_until_accepted(stack, message)
            deadline = time.monotonic() + 240
            receiver = delivery.receivers["hilleroed"]
            while time.monotonic() < deadline:
                _supervise(
                    {
                        "worker": stack.services["worker"],
                        "mllp": stack.services["mllp"],
                        "fhir": stack.services["fhir"],
                        "deliver": delivery.service,
                    }
                )
                if set(expected) <= {r.header_id for r in list(receiver.received)}:
                    break
                time.sleep(1.0)
        finally:
            second.kill()
            stack.services.pop("worker2", None)

        got = [r for r in receiver.received if r.header_id in expected]
        missing = set(expected) - {r.header_id for r in got}
        assert not missing, (
            f"{len(missing)} of {len(expected)} never arrived (first missing: "
            f"{sorted(expected[m] for m in missing)[:5]}); worker log tail:\n"
            + _tail(stack.log_dir / "worker.log")
            + "\ndeliver log tail:\n"
            + _tail(tmp_path / "deliver.log")
        )
        everything = {r.header_id for r in receiver.received}  # only this test sends to 0219 now
        assert everything == set(expected), "no message id other than the expected ones"
        repeats = Counter(r.header_id for r in got)
        # a repeat is harmless only when it is the same message (same MessageHeader.id and
        # content): the receiver discards it
        by_id = defaultdict(set)
        for r in got:
            by_id[r.header_id].add(str([e["resource"] for e in r.bundle["entry"]]))
        assert all(len(v) == 1 for v in by_id.values()), "a repeated id with other content"
        order = defaultdict(list)
        for r in got:  # first arrival per message: each visit's events in order
            if r.header_id not in {x for xs in order.values() for x in xs}:
                order[expected[r.header_id][0]].append(r.header_id)
        for visit, ids in order.items():
            assert [expected[i][1] for i in ids] == sorted(expected[i][1] for i in ids), visit
        print(
            f"\n{len(expected)} messages, {sum(repeats.values()) - len(repeats)} repeated "
            "deliveries (same ids, discarded by the receiver)"
        )
