"""Broker failure on the 3-node cluster under continuous MLLP load (``make cluster-test``).

A sender keeps admitting, correcting and discharging children of one municipality (every message
resent until AA). Meanwhile: the node that leads the ingest.hl7v2 and out.municipality.<code>
partitions the load writes to is SIGKILLed, stays down ~15 s and is restarted, and the test
waits until every partition's ISR is whole again; then the same with the active KRaft
controller. Afterwards, read with ``isolation.level=read_committed``:

- every message that got AA has exactly one HospitalNotification (by its MessageHeader id, from
  the message's event id) on the municipality's topic — none missing, none twice, none for
  anything else;
- nothing went to a dead-letter topic; neither the worker nor the listener exited on its own,
  except the worker by its watchdog (code 70): when the killed node was the consumer group's
  coordinator, librdkafka's ``send_offsets_to_transaction`` can block for good (#5511); the
  watchdog ends that worker after ``worker_stall_exit_s`` and the supervisor starts a new one,
  which replays from the last commit. How often that happened is printed. A crash of the worker
  in native code (SIGSEGV / SIGABRT / SIGBUS, seen once in the soak) is a fault of the same kind:
  counted and printed with the worker's faulthandler frames; more than one fails the test.

Marked ``cluster`` (``make cluster-test``, in ``.ci/run``) and ``integration``.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from stafet.inbound.hl7v2 import parse_adt
from stafet.kafka.client import as_admin
from stafet.kafka.local import LocalKafkaCluster
from stafet.kafka.reader import end_offsets, read_topics
from stafet.kafka.topics import (
    DLQ_TOPICS,
    EVENTS_ENCOUNTER,
    H_EVENT_ID,
    H_MESSAGE_ID,
    INGEST_HL7V2,
    TopicPlan,
    municipality_topic,
    topic_drift,
)
from stafet.medcom.hospitalnotification import message_header_id
from stafet.streams.watchdog import EXIT_STALLED
from tests.uncommitted import uncommitted_count
from tests.worker_process import NATIVE_CRASHES

from .conftest import BROKERS, PARTITIONS
from .load import CommittedWatcher, Fault, MllpLoad, control_id, longest_ack_wait

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.integration,
    pytest.mark.disruptive,
    pytest.mark.timeout(900),
]

CODE = "0147"  # Frederiksberg
DOWN_S = 15.0  # how long a killed node stays down
WARMUP_S = 5.0  # load after the first notification, before the first kill
TAIL_S = 5.0  # load after the last node is back in sync


def test_every_acknowledged_message_notified_once_through_leader_and_controller_kills(
    cluster_stack,
):
    settings, cluster = cluster_stack.settings, cluster_stack.cluster
    admin = as_admin(settings)
    out_topic = municipality_topic(CODE)
    t0 = time.monotonic()

    metadata = cluster.metadata()
    assert len(metadata.brokers) == BROKERS
    assert {len(metadata.topics[t].partitions[0].replicas) for t in (INGEST_HL7V2, out_topic)} == {
        3
    }
    assert topic_drift(admin, PARTITIONS, TopicPlan.from_settings(settings)) == [], (
        "topics as the plan says: RF 3, min.insync.replicas 2"
    )

    since = end_offsets(admin, [INGEST_HL7V2, EVENTS_ENCOUNTER, out_topic, *DLQ_TOPICS])
    watcher = CommittedWatcher(admin, out_topic, since)
    watcher.start()
    load = MllpLoad(settings.mllp_host, settings.mllp_port, CODE)
    load.start()
    faults: list[Fault] = []
    in_use: set[tuple[str, int]] = set()
    try:
        assert watcher.wait_for(1, 120), "no notification within 120 s of the load starting"
        first_seen = time.monotonic()
        time.sleep(WARMUP_S)
        now = end_offsets(admin, [INGEST_HL7V2, out_topic])
        in_use = {tp for tp, end in now.items() if end > since[tp]}
        leaders = cluster.partition_leaders([INGEST_HL7V2, out_topic])
        for node, role in leader_targets(in_use, leaders, cluster.active_controller()):
            faults.append(kill_and_restart(cluster, node, role))
        faults.append(kill_and_restart(cluster, cluster.active_controller(), "active controller"))
        time.sleep(TAIL_S)
    finally:
        load.stop()
        watcher.stop()
    load_end = time.monotonic()
    assert load.failure is None, f"the sender failed: {load.failure!r}"

    secret = settings.patient_key_secret.get_secret_value()
    event_of = {control_id(m.raw): parse_adt(m.raw, secret=secret).event_id for m in load.messages}
    notification_of = lambda m: message_header_id(event_of[control_id(m.raw)], CODE)  # noqa: E731
    expected = {notification_of(m) for m in load.acked}
    maybe = {notification_of(m) for m in load.unacked}  # given up on: stored or not
    deadline = time.monotonic() + 240
    while True:  # until the pipeline has drained (then counted once, below)
        records = read_topics(admin, since, idle_s=3.0, timeout_s=120)
        notified = {r.headers[H_MESSAGE_ID].decode() for r in records if r.topic == out_topic}
        if expected <= notified or time.monotonic() > deadline:
            break
    drained = time.monotonic() - load_end
    notifications = Counter(
        r.headers[H_MESSAGE_ID].decode() for r in records if r.topic == out_topic
    )
    events = Counter(
        r.headers.get(H_EVENT_ID, b"").decode() for r in records if r.topic == EVENTS_ENCOUNTER
    )
    ingest_copies = Counter(control_id(r.value) for r in records if r.topic == INGEST_HL7V2)
    dead = [r for r in records if r.topic in DLQ_TOPICS]
    duplicates = sum(n - 1 for n in notifications.values())
    missing = expected - set(notifications)
    extra = set(notifications) - expected - maybe
    aborted = uncommitted_count(admin, since, [EVENTS_ENCOUNTER, out_topic]) - sum(
        1 for r in records if r.topic in (EVENTS_ENCOUNTER, out_topic)
    )

    watchdog = [e for e in cluster_stack.exits if e == ("worker", EXIT_STALLED)]
    # a crash in librdkafka is a fault like the kills: counted, the worker's log printed, and
    # the counts below must hold through it (see test_soak)
    crashes = [e for e in cluster_stack.exits if e[0] == "worker" and e[1] in NATIVE_CRASHES]
    unexpected = [
        e for e in cluster_stack.exits if e != ("worker", EXIT_STALLED) and e not in crashes
    ]
    if crashes:
        log = cluster_stack.services["worker"].log_path.read_text(errors="replace")
        print(f"\nworker crashed {crashes}; its log around the crash:", flush=True)
        print(
            "\n".join(
                line
                for line in log.splitlines()
                if "File " in line or "Fatal" in line or "Thread" in line
            )[-6000:]
        )
    print(
        f"\ncluster: {BROKERS} nodes, {PARTITIONS} partitions per topic, RF 3, "
        f"min.insync.replicas 2; the load wrote to {sorted(in_use)}"
    )
    for f, after in zip(faults, [*(g.killed_at for g in faults[1:]), load_end], strict=True):
        gap, gap_start = watcher.longest_gap(f.killed_at, after)
        first = watcher.first_after(f.killed_at)
        print(
            f"  SIGKILL node {f.node} ({f.role}) at +{f.killed_at - t0:.0f}s"
            + (f"; new controller: node {f.new_controller}" if f.new_controller else "")
            + f"; restarted after {f.restarted_at - f.killed_at:.0f}s, answering "
            f"{f.restart_s:.1f}s later, every ISR whole {f.in_sync_s - f.restart_s:.1f}s after "
            f"that; longest wait for an AA "
            f"{longest_ack_wait(load.messages, f.killed_at - 1, after):.1f}s; first committed "
            f"notification {'-' if first is None else f'{first - f.killed_at:.1f}s'} after "
            f"the kill; until the next fault the longest time without one {gap:.1f}s (from "
            f"+{gap_start - t0:.0f}s)"
        )
    print(
        f"  sent {len(load.messages)} messages, {load.resends} resends "
        f"(answers: {dict(sorted(load.answers.items()))}), AA'd {len(load.acked)}, "
        f"never AA'd {len(load.unacked)}"
    )
    print(
        f"  {out_topic} (read_committed): {len(notifications)} notification ids, "
        f"{duplicates} twice, {len(missing)} missing, {len(extra)} unexpected; "
        f"events.encounter: {len(events)} events, {sum(events.values()) - len(events)} twice; "
        f"ingest.hl7v2 copies stored twice (AE, then resent): "
        f"{sum(ingest_copies.values()) - len(ingest_copies)}; dead letters {len(dead)}; "
        f"records of aborted transactions {aborted}"
    )
    gap, gap_start = watcher.longest_gap(first_seen, load_end)
    print(
        f"  longest time without a committed notification under load: {gap:.1f}s (from "
        f"+{gap_start - t0:.0f}s); drained {drained:.0f}s after the "
        f"load stopped; worker restarts by its watchdog {len(watchdog)}; native crashes "
        f"{len(crashes)}; other exits "
        f"{unexpected}; "
        f"{time.monotonic() - t0:.0f}s in all"
    )

    assert any(f.role != "active controller" and "ingest" in f.role for f in faults)
    assert any(f.role != "active controller" and "out." in f.role for f in faults)
    assert not unexpected, "no process exited on its own (but the worker by its watchdog)"
    assert len(crashes) <= 1, f"the worker crashed more than once: {crashes}"
    assert not missing, f"AA'd but never notified: {sorted(missing)[:5]}"
    assert duplicates == 0, f"notified twice: {[i for i, n in notifications.items() if n > 1][:5]}"
    assert not extra, f"notifications for no message sent: {sorted(extra)[:5]}"
    assert not dead, f"dead letters: {[(r.topic, r.headers) for r in dead[:3]]}"


def leader_targets(
    in_use: set[tuple[str, int]], leaders: dict[tuple[str, int], int], controller: int
) -> list[tuple[int, str]]:
    """Whom to kill first: the node leading the most partitions the load uses, one that leads
    both an ingest and an output partition if there is one (not the active controller if that
    can be helped: it has its own round); if no node leads both, the ingest partitions' leader,
    then the output partitions' leader."""

    def led(node: int, prefix: str) -> list[tuple[str, int]]:
        return sorted(tp for tp in in_use if leaders[tp] == node and tp[0].startswith(prefix))

    def role(node: int, prefix: str = "") -> str:
        return "leader of " + ", ".join(f"{t}[{p}]" for t, p in led(node, prefix))

    nodes = sorted(set(leaders.values()) - {-1})
    both = [n for n in nodes if led(n, "ingest.") and led(n, "out.")]
    if both:
        best = max(both, key=lambda n: (len(led(n, "")), n != controller))
        return [(best, role(best))]
    ingest = max(nodes, key=lambda n: (len(led(n, "ingest.")), n != controller))
    out = max(nodes, key=lambda n: (len(led(n, "out.")), n != controller))
    return [(ingest, role(ingest, "ingest.")), (out, role(out, "out."))]


def kill_and_restart(cluster: LocalKafkaCluster, node_id: int, role: str) -> Fault:
    """SIGKILL the node, keep it down DOWN_S, start it, wait until every ISR is whole."""
    node = cluster.node(node_id)
    fault = Fault(node_id, role, leaders_before=cluster.partition_leaders([INGEST_HL7V2]))
    fault.killed_at = time.monotonic()
    node.kill()
    if role == "active controller":
        fault.new_controller = cluster.active_controller(timeout_s=DOWN_S)
        assert fault.new_controller != node_id
    time.sleep(max(0.0, fault.killed_at + DOWN_S - time.monotonic()))
    fault.restarted_at = time.monotonic()
    node.start()
    fault.restart_s = time.monotonic() - fault.restarted_at
    fault.in_sync_s = fault.restart_s + cluster.wait_in_sync(timeout_s=180)
    return fault
