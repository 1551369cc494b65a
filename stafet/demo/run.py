"""The main job: bring the stack up, replay the synthetic day over MLLP, show each inbox."""

from __future__ import annotations

import time
from collections import defaultdict

import click

from stafet.config import PROJECT_ROOT, Settings
from stafet.connectors.mllp_client import MllpClient, ack_fields
from stafet.demo.inbox import end_offsets, read_topics, summarize
from stafet.demo.scenario import synthetic_day
from stafet.schemas.municipalities import municipalities
from stafet.stack import running_stack
from stafet.topics import DLQ_MLLP, DLQ_TOPICS, H_REASON, OUT_MUNICIPALITY_PREFIX, all_topics


def run_demo(settings: Settings, timeout_s: float = 180.0) -> int:
    """0 when every municipality got exactly what the script says, 1 otherwise."""
    run_id = time.strftime("D%H%M%S")
    steps = synthetic_day(run_id)
    watched = [t for t in all_topics() if t.startswith(OUT_MUNICIPALITY_PREFIX)] + list(DLQ_TOPICS)
    click.echo("Starting Kafka, the stream worker and the MLLP listener …")
    with running_stack(settings, log_dir=PROJECT_ROOT / ".stafet" / "logs"):
        start = end_offsets(settings.bootstrap, watched)
        click.echo(f"\nA day in child psychiatry ({len(steps)} HL7 v2 messages over MLLP, "
                   f"{settings.mllp_host}:{settings.mllp_port}):")
        with MllpClient(settings.mllp_host, settings.mllp_port) as client:
            for step in steps:
                ack = ack_fields(client.send(step.message))
                note = f"  ({ack['error_text']})" if ack["error_text"] else ""
                click.echo(f"  {ack['code']}  {step.description}{note}")
        expected = [s for s in steps if s.expected] + [s for s in steps if not s.expected]
        click.echo("\nWaiting for the worker to build and route the notifications …")
        received = read_topics(settings.bootstrap, start, until=len(expected),
                               timeout_s=timeout_s)
        received += read_topics(settings.bootstrap,
                                 {tp: o for tp, o in end_offsets(settings.bootstrap, watched).items()},
                                 idle_s=0.5, timeout_s=2)  # anything extra would show here
    return _report(steps, received)


def _report(steps: list, received: list) -> int:  # type: ignore[type-arg]
    by_topic: dict[str, list] = defaultdict(list)  # type: ignore[type-arg]
    for record in received:
        by_topic[record.topic].append(record)
    names = municipalities()
    click.echo("\nWhat each municipality received (MedCom HospitalNotification, one topic each):")
    for topic in sorted(t for t in by_topic if t.startswith(OUT_MUNICIPALITY_PREFIX)):
        code = topic.removeprefix(OUT_MUNICIPALITY_PREFIX)
        m = names[code]
        click.echo(f"\n  {code} {m.name} ({m.region_name}) — topic {topic}")
        for record in by_topic[topic]:
            s = summarize(record)
            dead = "  deceased" if s["deceased"] else ""
            click.echo(f"    {s['event']:<8} {s['patient']:<24} {s['cpr']}  {s['encounter']:<22}"
                       f" message {s['message_id']}{dead}")
    for dlq in DLQ_TOPICS:
        for record in by_topic.get(dlq, []):
            click.echo(f"\n  dead-letter ({dlq}): {record.headers.get(H_REASON, b'').decode()}")

    want = sorted((f"{OUT_MUNICIPALITY_PREFIX}{s.municipality_code}", s.expected)
                  for s in steps if s.expected)
    got = sorted((r.topic, r.headers.get("stafet.event_code", b"").decode())
                 for r in received if r.topic.startswith(OUT_MUNICIPALITY_PREFIX))
    rejected = sum(1 for s in steps if not s.expected)
    dlq = len(by_topic.get(DLQ_MLLP, []))
    unexpected = sum(len(by_topic.get(t, [])) for t in DLQ_TOPICS if t != DLQ_MLLP)
    ok = want == got and dlq == rejected and not unexpected
    click.echo(f"\n{len(got)} notifications to {len({t for t, _ in got})} municipalities "
               f"(expected {len(want)}), {dlq} dead-lettered (expected {rejected}): "
               f"{'OK' if ok else 'MISMATCH'}")
    return 0 if ok else 1
