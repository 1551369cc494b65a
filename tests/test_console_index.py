"""The console's index, fed records one by one (as its follower does): a child's trail, a
municipality's residents, dead letters closed by an operator's line in either order, subscriber
counters that follow acknowledgements, and searches that look keys up."""

from __future__ import annotations

from stafet.console.index import ConsoleIndex, followed
from tests.test_console import LARS_KEY, RIKKE, RIKKE_KEY, FakeRecord, _audit, _dead, _out


def _index(*records: FakeRecord) -> ConsoleIndex:
    index = ConsoleIndex()
    for record in records:
        index.apply(record)
    return index


def test_the_index_follows_the_topics_its_pages_show_and_no_raw_ingest():
    assert all(
        followed(t)
        for t in ("events.encounter", "events.referral", "out.municipality.0751", "out.referrer")
    )
    assert followed("dlq.notify") and followed("audit.delivery") and followed("alerts.operator")
    assert not followed("ingest.hl7v2") and not followed("acks.inbound")


def test_a_trail_holds_what_was_sent_delivered_and_acknowledged_in_time_order():
    index = _index(
        _out("out.municipality.0751", 0, RIKKE_KEY, "m-1"),
        _audit(0, RIKKE_KEY, "delivered", "aarhus", "m-1", at="2026-12-03T10:00:01+00:00"),
        # the acknowledgement line of a message the delivery no longer had pending: keyed by
        # its message id, not the patient — it still belongs to Rikke's trail
        _audit(1, "m-1", "ack-ok", "", "m-1", at="2026-12-03T10:00:05+00:00"),
        _out("out.municipality.0219", 0, LARS_KEY, "m-2"),
    )
    rows, _ = index.trail(RIKKE_KEY)
    assert [r.kind for r in rows] == ["message", "delivery", "delivery"]
    assert [r.what for r in rows[1:]] == ["delivered", "ack-ok"]
    assert all(r.message_id == "m-1" for r in rows)
    assert index.trail("0" * 32) == ([], {})
    assert index.residents("0751") == {RIKKE_KEY} and index.residents("0219") == {LARS_KEY}


def test_a_dead_letter_is_closed_by_its_operator_line_whichever_is_read_first():
    resent = _audit(5, RIKKE_KEY, "dlq-resent", "", "dlq.notify/0/1", actor="anna")
    for records in ([_dead(1, "0751", RIKKE_KEY), resent], [resent, _dead(1, "0751", RIKKE_KEY)]):
        index = _index(*records)
        dead = index.dead_letter("dlq.notify", 0, 1)
        assert dead is not None and dead.status == "resent" and dead.closed_by == "anna"
        assert RIKKE.cpr not in dead.decoded.body and "<cpr>" in dead.decoded.body
    assert index.residents("0751") == {RIKKE_KEY}, "a dead letter naming Aarhus"
    assert index.subscribers() == {}, "an operator's action is no delivery"


def test_subscriber_counters_follow_deliveries_retries_and_acknowledgements():
    index = _index(
        _audit(0, RIKKE_KEY, "attempt-failed", "gp", "m-1", at="2026-12-03T10:00:00", detail="503"),
        _audit(1, RIKKE_KEY, "delivered", "gp", "m-1", at="2026-12-03T10:00:30"),
        _audit(2, RIKKE_KEY, "delivered", "gp", "m-2", at="2026-12-03T10:01:00"),
        _audit(3, RIKKE_KEY, "ack-ok", "", "m-1"),
        _audit(4, RIKKE_KEY, "delivered", "gp", "m-1", at="2026-12-03T10:02:00"),  # again
        _audit(
            5, RIKKE_KEY, "published", "municipality-0751", "m-3", topic="out.municipality.0751"
        ),
    )
    gp = index.subscribers()["gp"]
    assert (gp.sent, gp.retries, gp.acked, gp.pending) == (3, 1, 1, {"m-2"})
    assert gp.last_success == "2026-12-03T10:02:00" and gp.failure_detail == "503"
    assert index.subscribers()["municipality-0751"].published == 1
    index.apply(_audit(6, RIKKE_KEY, "ack-ok", "", "m-2"))
    assert index.subscribers()["gp"].pending == set(), "the page's copy was not changed"
    assert gp.pending == {"m-2"}


def test_a_search_looks_its_patients_up_by_referral_or_message_id():
    index = _index(
        _audit(0, RIKKE_KEY, "delivered", "gp", "m-1", referral_id="HEN-1"),
        _audit(1, RIKKE_KEY, "delivered", "aarhus", "m-2", referral_id="HEN-1"),
        _audit(2, LARS_KEY, "delivered", "gp", "m-3", referral_id="HEN-2"),
    )
    by_referral = index.audit_lines(referral_id="HEN-1")
    assert {line.record.message_id for line in by_referral} == {"m-1", "m-2"}
    assert [line.key for line in index.audit_lines(message_id="m-3")] == [LARS_KEY]
    assert [line.record.message_id for line in index.audit_lines(key=LARS_KEY)] == ["m-3"]
    assert index.audit_lines(referral_id="HEN-1", message_id="m-3") == []
    assert index.audit_lines(message_id="unknown") == []


def test_alerts_are_kept_newest_first_and_masked():
    index = _index(
        FakeRecord("alerts.operator", 0, "", b'{"at": "2026-12-03T09", "reason": "old"}'),
        FakeRecord(
            "alerts.operator", 1, "", f'{{"at": "2026-12-03T10", "reason": "{RIKKE.cpr}"}}'.encode()
        ),
        FakeRecord("alerts.operator", 2, "", b"not json"),
    )
    alerts = index.alerts()
    assert [a["at"] for a in alerts[:2]] == ["2026-12-03T10", "2026-12-03T09"]
    assert RIKKE.cpr not in str(alerts) and {"reason": "not json"} in alerts


def test_a_console_is_not_ready_before_its_index_has_read_the_topics():
    from stafet.config import Settings
    from stafet.console.data import ConsoleData

    ready, detail = ConsoleData(Settings(_env_file=None)).index_condition()
    assert not ready and "reading the topics from their beginning: 0 records" in detail


def test_a_search_by_dates_alone_looks_at_every_line_and_keeps_the_range():
    index = _index(
        _audit(0, RIKKE_KEY, "delivered", "gp", "m-1", at="2026-12-01T23:59:59+00:00"),
        _audit(1, RIKKE_KEY, "delivered", "gp", "m-2", at="2026-12-02T08:00:00+00:00"),
        _audit(2, LARS_KEY, "delivered", "gp", "m-3", at="2026-12-03T00:00:00+00:00"),
    )
    in_range = index.audit_lines(since="2026-12-02", until="2026-12-03")
    assert sorted(line.record.message_id for line in in_range) == ["m-2", "m-3"]
    assert [line.record.message_id for line in index.audit_lines(until="2026-12-01")] == ["m-1"]
    assert index.audit_lines(since="2026-12-04") == []
    assert index.audit_lines() == [], "no field: nothing, never everything"
