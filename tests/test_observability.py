"""Health, readiness and metrics endpoints (stafet/observability.py) over real HTTP."""

from __future__ import annotations

import json

import pytest

from stafet.config import Settings
from stafet.errors import StafetError
from stafet.observability import (
    CONSUMER_LAG,
    DEAD_LETTERS,
    MESSAGES_OUT,
    Health,
    HealthServer,
    ack_code,
    broker_reporter,
    lag_reporter,
    observe_answer,
    partition_lag,
    probe,
    scrape,
    total,
)
from stafet.stack import health_ports, service_env


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_liveness_fails_when_the_loop_stops_beating_and_readiness_needs_every_condition():
    clock = Clock()
    health = Health(stale_after_s=30, clock=clock)
    assert health.alive()[0]
    assert not health.ready()[0], "no condition reported yet: not ready"
    health.set_ready("listening", True)
    health.set_ready("kafka", False, "0 broker connection(s) up")
    ok, body = health.ready()
    assert not ok and body["conditions"]["kafka"] == {
        "ok": False,
        "detail": "0 broker connection(s) up",
    }
    health.set_ready("kafka", True)
    assert health.ready()[0]
    health.add_check("index", lambda: (False, "loading"))
    assert not health.ready()[0]
    clock.now += 31
    assert not health.alive()[0]
    health.beat()
    assert health.alive()[0]


def test_the_endpoints_answer_over_http_with_status_codes_a_probe_understands():
    health = Health()
    server = HealthServer("127.0.0.1", 0, health).start()
    try:
        assert probe("127.0.0.1", server.port, "/healthz")[0] == 200
        status, body = probe("127.0.0.1", server.port, "/readyz")
        assert status == 503 and body["status"] == "unavailable"
        health.set_ready("listening", True)
        assert probe("127.0.0.1", server.port, "/readyz")[0] == 200
        assert probe("127.0.0.1", server.port, "/nothing")[0] == 404
        before = total(
            scrape("127.0.0.1", server.port), "stafet_messages_out_total", stage="unit-test"
        )
        MESSAGES_OUT.labels(stage="unit-test").inc(3)
        after = total(
            scrape("127.0.0.1", server.port), "stafet_messages_out_total", stage="unit-test"
        )
        assert after - before == 3
    finally:
        server.stop()


def test_a_port_in_use_is_a_clear_error():
    first = HealthServer("127.0.0.1", 0).start()
    try:
        with pytest.raises(StafetError, match="STAFET_HEALTH_PORT"):
            HealthServer("127.0.0.1", first.port)
    finally:
        first.stop()


def test_lag_comes_from_the_committed_offset_or_else_the_consumed_position():
    assert partition_lag({"consumer_lag": 7, "ls_offset": 100, "app_offset": 10}) == 7
    # a transactional producer commits the worker's offsets: the consumer never learns them
    assert partition_lag({"consumer_lag": -1, "ls_offset": 100, "app_offset": 60}) == 40
    assert partition_lag({"consumer_lag": -1, "ls_offset": 100, "app_offset": -1001}) == -1


def test_statistics_set_the_lag_per_topic_and_readiness_from_the_group_state():
    health_stats = {
        "topics": {
            "ingest.hl7v2": {
                "partitions": {
                    "0": {"partition": 0, "consumer_lag": 3},
                    "1": {"partition": 1, "consumer_lag": -1, "ls_offset": 9, "app_offset": 4},
                    "-1": {"partition": -1, "consumer_lag": 99},
                }
            }
        },
        "cgrp": {"state": "up", "join_state": "steady"},
    }
    lag_reporter("unit-group", readiness=True)(json.dumps(health_stats))
    assert CONSUMER_LAG.labels(group="unit-group", topic="ingest.hl7v2")._value.get() == 8
    from stafet.observability import HEALTH

    assert HEALTH.ready()[1]["conditions"]["group"]["ok"] is True
    health_stats["cgrp"]["join_state"] = "wait-join"
    lag_reporter("unit-group", readiness=True)(json.dumps(health_stats))
    assert HEALTH.ready()[1]["conditions"]["group"]["ok"] is False
    broker_reporter()(
        json.dumps(
            {"brokers": {"b1": {"nodeid": 1, "state": "UP"}, "boot": {"nodeid": -1, "state": "UP"}}}
        )
    )
    assert HEALTH.ready()[1]["conditions"]["kafka"] == {
        "ok": True,
        "detail": "1 broker connection(s) up",
    }


def test_an_answer_is_counted_by_its_code():
    assert ack_code(b"MSH|^~\\&|...\rMSA|AR|X1\rERR|...") == "AR"
    assert ack_code(b"garbage") == "none"
    before = DEAD_LETTERS.labels(stage="unit-src")._value.get()
    observe_answer("unit-src", "AR", 0.0)
    observe_answer("unit-src", "AE", 0.0)  # not stored, the sender retries: no dead letter
    assert DEAD_LETTERS.labels(stage="unit-src")._value.get() - before == 1


def test_children_of_one_host_get_their_own_health_ports():
    assert health_ports(Settings(health_port=9180)) == {
        "worker": 9180,
        "mllp": 9181,
        "fhir": 9182,
        "deliver": 9183,
    }
    assert set(health_ports(Settings(health_port=0)).values()) == {0}
    assert set(health_ports(Settings(health_port=-1)).values()) == {-1}
    assert service_env(Settings(health_port=9180), "stafet-mllp")["STAFET_HEALTH_PORT"] == "0"
