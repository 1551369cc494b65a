"""The main job: bring the stack up, replay the synthetic day over MLLP, show each inbox."""

from __future__ import annotations

import os
import socket
import time
from collections import defaultdict

import click

from demo.receiver import Receiver
from demo.scenario import BUC_ODENSE, ReferralStep, referral_day, synthetic_day
from stafet.config import PROJECT_ROOT, Settings
from stafet.connectors.sources.mllp.client import MllpClient, ack_fields
from stafet.kafka.reader import end_offsets, read_topics
from stafet.kafka.topics import (
    DLQ_MLLP,
    DLQ_TOPICS,
    H_EVENT_CODE,
    H_REASON,
    OUT_MUNICIPALITY_PREFIX,
    all_topics,
)
from stafet.medcom.hospitalnotification import summarize
from stafet.schemas.municipalities import municipalities
from stafet.stack import running_stack
from stafet.subscribers import new_secret

DEMO_GPS = ("100001", "100002")  # the scenario's GPs (ydernumre), one GP system for both
GP_SECRET_ENV = "STAFET_SECRET_DEMO_GP"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _demo_registry(settings: Settings, gp: Receiver) -> Settings:
    """Municipalities read Kafka (the default), the GPs' system takes REST, letters go to the
    outbox: the registry a region would start with."""
    path = PROJECT_ROOT / ".stafet" / "demo" / "subscribers.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    gps = "".join(
        f'[[subscriber]]\nid = "gp-{y}"\nname = "GP {y} (demo)"\nparty = "referrer"\n'
        f'topic = "out.referrer"\nentries = ["gp/{y}"]\n'  # deploy/directory.toml
        f'delivery = "rest"\nurl = "{gp.url}"\nsecret_env = "{GP_SECRET_ENV}"\n\n'
        for y in DEMO_GPS
    ) + (
        # the unit a referral is forwarded to gets its message on out.referrer too
        f'[[subscriber]]\nid = "bua-odense"\nname = "BUA Odense (demo)"\nparty = "other"\n'
        f'topic = "out.referrer"\nentries = ["hospital/{BUC_ODENSE.sor}"]\n'
        f'delivery = "rest"\nurl = "{gp.url}"\nsecret_env = "{GP_SECRET_ENV}"\n\n'
    )
    path.write_text(
        '[defaults]\nmunicipalities = "kafka"\n\n'
        + gps
        + '[[subscriber]]\nid = "letters"\nname = "Brevservice (demo)"\n'
        'party = "letter-service"\ndelivery = "letter"\ntopic = "out.letter"\n',
        encoding="utf-8",
    )
    return settings.model_copy(update={"subscribers_file": path})


def run_demo(settings: Settings, timeout_s: float = 180.0) -> int:
    """0 when every municipality got exactly what the script says, 1 otherwise."""
    run_id = time.strftime("D%H%M%S")
    steps = synthetic_day(run_id)
    referrals = referral_day(run_id)
    watched = [t for t in all_topics() if t.startswith("out.")] + list(DLQ_TOPICS)
    os.environ[GP_SECRET_ENV] = new_secret()  # inherited by `stafet deliver`
    gp = Receiver(
        _free_port(),
        os.environ[GP_SECRET_ENV],
        f"http://{settings.fhir_host}:{settings.fhir_port}/fhir/$process-message",
    )
    settings = _demo_registry(settings, gp)
    gp.start()
    secured = (
        "SASL_SSL: SCRAM-SHA-512 over TLS, ACLs, each process its own principal"
        if settings.kafka_security == "sasl_ssl"
        else "plaintext"
    )
    click.echo(
        f"Starting Kafka ({secured}), the stream worker, the MLLP and FHIR listeners and delivery …"
    )
    try:
        with running_stack(settings, log_dir=PROJECT_ROOT / ".stafet" / "logs"):
            start = end_offsets(settings, watched)
            click.echo(
                f"\nA day in child psychiatry ({len(steps)} HL7 v2 messages over MLLP, "
                f"{settings.mllp_host}:{settings.mllp_port}):"
            )
            with MllpClient(settings.mllp_host, settings.mllp_port) as client:
                for step in steps:
                    ack = ack_fields(client.send(step.message))
                    note = f"  ({ack['error_text']})" if ack["error_text"] else ""
                    click.echo(f"  {ack['code']}  {step.description}{note}")
                click.echo(
                    f"\nReferrals to child and adolescent psychiatry ({len(referrals)} "
                    "HL7 v2 REF/RRI messages, two of six rejected):"
                )
                for ref in referrals:
                    ack = ack_fields(client.send(ref.message))
                    click.echo(f"  {ack['code']}  {ref.description}")
            expected = len(steps) + sum(len(r.expected) for r in referrals)
            click.echo("\nWaiting for the worker to build and route the messages …")
            received = read_topics(settings, start, until=expected, timeout_s=timeout_s)
            received += read_topics(
                settings,
                {tp: o for tp, o in end_offsets(settings, watched).items()},
                idle_s=0.5,
                timeout_s=2,
            )  # anything extra would show here
            failed = _report(steps, received) + _report_referrals(referrals, received)
            failed += _report_delivery(settings, referrals, timeout_s=90.0)
            failed += _report_health(settings)
    finally:
        gp.stop()
    return min(1, failed)


#: per process: series that must have counted something after the demo's day
EXPECTED_SERIES: dict[str, list[tuple[str, dict[str, str]]]] = {
    "worker": [
        ("stafet_messages_in_total", {"stage": "normalize"}),
        ("stafet_messages_out_total", {"stage": "notify"}),
        ("stafet_messages_out_total", {"stage": "referrals"}),
    ],
    "mllp": [
        ("stafet_ack_latency_seconds_count", {"source": "mllp", "code": "AA"}),
        ("stafet_messages_out_total", {"stage": "mllp"}),
    ],
    "fhir": [("stafet_messages_in_total", {"stage": "fhir"})],
    "deliver": [
        ("stafet_deliveries_total", {"outcome": "delivered"}),
        ("stafet_acknowledgements_total", {"code": "ok"}),
        ("stafet_delivery_active", {}),
    ],
}


def _report_health(settings: Settings, timeout_s: float = 30.0) -> int:
    """Every process ready, and its metrics counted the day (consumer lag reported by the worker
    and delivery); 1 if not."""
    from stafet.observability import probe, scrape, total
    from stafet.stack import health_ports

    click.echo("\nHealth and metrics (/readyz, /metrics of each process):")
    host, failed = settings.health_host, 0
    for name, port in health_ports(settings).items():
        if port <= 0:
            click.echo(f"  {name:<8} no health port (STAFET_HEALTH_PORT={settings.health_port})")
            continue
        deadline = time.monotonic() + timeout_s
        while True:  # lag arrives with the consumers' statistics (every few seconds)
            status, body = probe(host, port, "/readyz")
            samples = scrape(host, port)
            want = [(n, labels, total(samples, n, **labels)) for n, labels in EXPECTED_SERIES[name]]
            lag = [v for (n, _), v in samples.items() if n == "stafet_consumer_lag"]
            ok = (
                status == 200
                and all(v > 0 for _, _, v in want)
                and (bool(lag) or name not in ("worker", "deliver"))
            )
            if ok or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        shown = ", ".join(
            f"{n.removeprefix('stafet_')}{_labels(labels)} {v:g}" for n, labels, v in want
        )
        click.echo(
            f"  {name:<8} :{port} readyz {status} {body.get('role', '')}  {shown}"
            + (f", consumer lag {sum(lag):g}" if lag else "")
            + ("" if ok else "  MISSING")
        )
        failed |= not ok
    return int(failed)


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f"{k}={v}" for k, v in labels.items()) + "}" if labels else ""


def _report_delivery(settings: Settings, referrals: list[ReferralStep], timeout_s: float) -> int:
    """The audit trail of each rejection: every recipient, delivered when, acknowledged when."""
    from stafet.audit import query
    from stafet.audit import summarize as audit_rows

    rejected = sorted({r.referral_id for r in referrals if r.rejections})
    want = {ref: sum(r.rejections for r in referrals if r.referral_id == ref) for ref in rejected}
    rows: dict[str, list] = {}  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = {
            ref: [
                r for r in audit_rows(query(settings, referral_id=ref)) if r["kind"] == "rejection"
            ]
            for ref in rejected
        }
        if all(
            len(rows[ref]) == want[ref] and all(_settled(r) for r in rows[ref]) for ref in rejected
        ):
            break
        time.sleep(1.0)
    click.echo("\nDelivery audit of the rejections (`stafet audit --referral <id>`):")
    ok = True
    for ref in rejected:
        click.echo(f"\n  referral {ref}")
        for r in sorted(rows[ref], key=lambda r: (r["subscriber"], r["recipient_kind"])):
            click.echo(
                f"    {r['subscriber']:<20} {r['recipient_kind']:<18} {r['status']:<13} "
                f"sent {r['delivered_at'] or '-':<29} ack {r['ack'] or '-'} "
                f"{r['ack_at'] or ''}"
            )
        ok &= len(rows[ref]) == want[ref] and all(_settled(r) for r in rows[ref])
    click.echo(
        f"\nevery recipient of every rejection delivered (REST: acknowledged): "
        f"{'OK' if ok else 'MISSING'}"
    )
    return 0 if ok else 1


def _settled(row: dict) -> bool:  # type: ignore[type-arg]
    """REST rows must be acknowledged, the letter outbox delivered, Kafka readers' topics have it."""
    if row["subscriber"].startswith("gp-"):
        return row["status"] == "acknowledged"
    return row["status"] == ("delivered" if row["subscriber"] == "letters" else "published")


def _report_referrals(referrals: list[ReferralStep], received: list) -> int:  # type: ignore[type-arg]
    """Who was told what about each referral; 0 if exactly the expected deliveries arrived."""
    click.echo("\nWho was told about each referral (one message per recipient, no cc):")
    by_referral: dict[str, list] = defaultdict(list)  # type: ignore[type-arg]
    for record in received:
        ref_id = record.headers.get("stafet.referral_id")
        if ref_id:
            by_referral[ref_id.decode()].append(record)
    got = []
    for ref_id in sorted(by_referral):
        click.echo(f"\n  referral {ref_id}")
        for r in sorted(by_referral[ref_id], key=lambda r: r.headers["stafet.kind"]):
            kind, who = (
                r.headers["stafet.kind"].decode(),
                r.headers["stafet.recipient_kind"].decode(),
            )
            form = "PDF letter" if r.topic == "out.letter" else "CareCommunication"
            click.echo(f"    {kind:<10} → {who:<18} on {r.topic:<22} ({form})")
            got.append((r.topic, who, kind))
    want = sorted(e for ref in referrals for e in ref.expected)
    ok = sorted(got) == want
    click.echo(
        f"\n{len(got)} referral messages (expected {len(want)}): {'OK' if ok else 'MISMATCH'}"
    )
    return 0 if ok else 1


def _report(steps: list, received: list) -> int:  # type: ignore[type-arg]
    by_topic: dict[str, list] = defaultdict(list)  # type: ignore[type-arg]
    for record in received:
        by_topic[record.topic].append(record)
    names = municipalities()
    click.echo("\nWhat each municipality received (MedCom HospitalNotification, one topic each):")
    for topic in sorted(t for t in by_topic if t.startswith(OUT_MUNICIPALITY_PREFIX)):
        code = topic.removeprefix(OUT_MUNICIPALITY_PREFIX)
        m = names[code]
        notifications = [r for r in by_topic[topic] if H_EVENT_CODE in r.headers]
        if not notifications:
            continue
        click.echo(f"\n  {code} {m.name} ({m.region_name}) — topic {topic}")
        for record in notifications:
            s = summarize(record.json(), record.headers[H_EVENT_CODE].decode())
            dead = "  deceased" if s["deceased"] else ""
            click.echo(
                f"    {s['event']:<8} {s['patient']:<24} {s['cpr']}  {s['encounter']:<22}"
                f" message {s['message_id']}{dead}"
            )
    for dlq in DLQ_TOPICS:
        for record in by_topic.get(dlq, []):
            click.echo(f"\n  dead-letter ({dlq}): {record.headers.get(H_REASON, b'').decode()}")

    want = sorted(
        (f"{OUT_MUNICIPALITY_PREFIX}{s.municipality_code}", s.expected) for s in steps if s.expected
    )
    got = sorted(
        (r.topic, r.headers.get("stafet.event_code", b"").decode())
        for r in received
        if r.topic.startswith(OUT_MUNICIPALITY_PREFIX) and "stafet.event_code" in r.headers
    )
    rejected = sum(1 for s in steps if not s.expected)
    dead_letters = len(by_topic.get(DLQ_MLLP, []))
    unexpected = sum(len(by_topic.get(t, [])) for t in DLQ_TOPICS if t != DLQ_MLLP)
    ok = want == got and dead_letters == rejected and not unexpected
    click.echo(
        f"\n{len(got)} notifications to {len({t for t, _ in got})} municipalities "
        f"(expected {len(want)}), {dead_letters} dead-lettered (expected {rejected}): "
        f"{'OK' if ok else 'MISMATCH'}"
    )
    return 0 if ok else 1
