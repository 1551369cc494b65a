"""Errors by kind, on the real broker: a record whose output can never be produced (larger than
the output topic's ``max.message.bytes``) goes to its dead-letter topic with an operator alert,
and the records behind it flow; the worker keeps running."""

from __future__ import annotations

import time
import uuid

from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from demo.hl7_builder import Hospital, adt, medcom_test_patients
from stafet.inbound.hl7v2 import parse_adt
from stafet.kafka.client import as_admin, client_config
from stafet.kafka.reader import end_offsets
from stafet.kafka.topics import (
    ALERTS_OPERATOR,
    DLQ_NOTIFY,
    H_EVENT_ID,
    H_ORIGIN,
    H_REASON,
    municipality_topic,
)

HOSPITAL = Hospital("Regionshospitalet Test", "600000000000098")
POISONED, HEALTHY = "0860", "0849"  # Hjørring, Jammerbugt: no other test writes to them


def _set_max_message_bytes(settings, topic: str, value: int | None) -> None:
    admin = AdminClient(client_config(as_admin(settings)))
    entry = (
        ConfigEntry("max.message.bytes", str(value), incremental_operation=AlterConfigOpType.SET)
        if value is not None
        else ConfigEntry("max.message.bytes", "", incremental_operation=AlterConfigOpType.DELETE)
    )
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result()


def test_an_output_too_large_for_its_topic_is_dead_lettered_with_an_alert_and_the_rest_flows(stack):
    secret = stack.settings.patient_key_secret.get_secret_value()
    child = medcom_test_patients()["Aage"]
    run = uuid.uuid4().hex[:6]

    def message(code: str, n: int) -> bytes:
        return adt(
            "A01",
            child,
            hospital=HOSPITAL,
            control_id=f"P-{run}-{code}-{n}",
            visit=f"P-{run}-{code}-{n}",
            event_time="202612011000",
            admit_time="202612010800",
            municipality_code=code,
        )

    poison, after = message(POISONED, 0), [message(HEALTHY, n) for n in range(3)]
    poison_id = parse_adt(poison, secret=secret).event_id
    expected = {parse_adt(m, secret=secret).event_id for m in after}
    alerts_since = end_offsets(as_admin(stack.settings), [ALERTS_OPERATOR])
    since = stack.marks()
    _set_max_message_bytes(stack.settings, municipality_topic(POISONED), 1500)  # < one Bundle
    try:
        for m in [poison, *after]:
            assert stack.send(m)["code"] == "AA"
        deadline, seen, dead = time.monotonic() + 120, set(), []
        while time.monotonic() < deadline and not (expected <= seen and dead):
            records = stack.read(since, idle_s=2.0, timeout_s=20)
            seen = {
                r.headers.get(H_EVENT_ID, b"").decode()
                for r in records
                if r.topic == municipality_topic(HEALTHY)
            }
            dead = [
                r
                for r in records
                if r.topic == DLQ_NOTIFY and r.headers.get(H_EVENT_ID, b"").decode() == poison_id
            ]
    finally:
        _set_max_message_bytes(stack.settings, municipality_topic(POISONED), None)

    assert expected <= seen, "the records behind the poison one were notified"
    assert len(dead) == 1, "the poison record is dead-lettered once"
    reason = dead[0].headers[H_REASON].decode()
    assert municipality_topic(POISONED) in reason and "max.message.bytes 1500" in reason
    origin = dead[0].headers[H_ORIGIN].decode()
    assert origin.startswith("events.encounter/")
    poisoned = [r for r in records if r.topic == municipality_topic(POISONED)]
    assert not poisoned, "nothing half-sent to the poisoned topic"
    alerts = [r.json() for r in stack.read(alerts_since, idle_s=2.0, timeout_s=20)]
    assert [a for a in alerts if a.get("stage") == "notify" and origin in a["reason"]], alerts
    assert stack.services["worker"].alive(), "the worker kept running"
    log = (stack.log_dir / "worker.log").read_text(errors="replace")
    assert "notify.output_too_large" in log
    assert child.cpr not in log, "no CPR in the worker's log"
