"""Killing the worker mid-stream (SIGKILL, no goodbye) and starting it again must not produce a
notification with a new id for a message that was already handled: every output id is the
deterministic one, and every input is notified."""

from __future__ import annotations

import time
import uuid

from demo.hl7_builder import Hospital, adt, medcom_test_patients
from stafet.inbound.hl7v2 import parse_adt
from stafet.kafka.topics import H_EVENT_ID, H_MESSAGE_ID, OUT_MUNICIPALITY_PREFIX

HOSPITAL = Hospital("BUC Test", "600000000000099")
CHILDREN = ["RikkeBerggren", "BoVestergaard", "AliJensen", "PiaBerggren", "GitteNancy"]
N = 60


def test_worker_killed_mid_stream_yields_no_new_ids_and_loses_nothing(stack):
    secret = stack.settings.patient_key_secret.get_secret_value()
    run = uuid.uuid4().hex[:8]
    messages = []
    for i in range(N):
        patient = medcom_test_patients()[CHILDREN[i % len(CHILDREN)]]
        trigger = "A01" if i < len(CHILDREN) else ("A08" if i % 2 else "A21")
        messages.append(
            adt(
                trigger,
                patient,
                hospital=HOSPITAL,
                control_id=f"R-{run}-{i}",
                visit=f"V-{run}-{i % len(CHILDREN)}",
                event_time="202611231000",
                admit_time="202611230800",
            )
        )
    expected_events = {parse_adt(m, secret=secret).event_id for m in messages}
    since = stack.marks()

    for i, message in enumerate(messages):
        assert stack.send(message)["code"] == "AA"
        if i == N // 3:
            # let the worker get going, then kill it while the rest is still arriving
            stack.read(since, until=3, timeout_s=90)
            stack.restart_worker(kill=True)
        if i == 2 * N // 3:
            time.sleep(0.5)
            stack.restart_worker(kill=True)

    # a killed worker's partitions wait for its session timeout before they move: the output
    # pauses for seconds, so wait for the events themselves, not for a quiet moment
    deadline = time.monotonic() + 180
    while True:
        records = stack.read(since, idle_s=3.0, timeout_s=60)
        seen = {
            r.headers.get(H_EVENT_ID, b"").decode()
            for r in records
            if r.topic.startswith(OUT_MUNICIPALITY_PREFIX)
        }
        if expected_events <= seen or time.monotonic() > deadline:
            break
        time.sleep(2.0)
    out = [r for r in records if r.topic.startswith(OUT_MUNICIPALITY_PREFIX)]
    ids_per_event: dict[str, set[str]] = {}
    for record in out:
        ids_per_event.setdefault(record.headers[H_EVENT_ID].decode(), set()).add(
            record.headers[H_MESSAGE_ID].decode()
        )
    assert expected_events <= set(ids_per_event), "every input notified"
    assert all(len(ids_per_event[e]) == 1 for e in expected_events), "one message id per event"
    mine = {r.headers.get(H_EVENT_ID, b"").decode() for r in records} & expected_events
    assert not [
        r
        for r in records
        if not r.topic.startswith(OUT_MUNICIPALITY_PREFIX)
        and r.headers.get(H_EVENT_ID, b"").decode() in mine
    ], "none in a DLQ"
