"""A scan of every header and value on every topic of the session broker, after the flows that
ran before it (ADT, referrals over HL7 v2 and FHIR, rejections with letters to guardians,
delivery, dead letters): no CPR number in any header, and none in the values of the topics whose
readers are not entitled to one. Printed: per topic, records read and records whose value holds a
CPR (the raw input, the canonical events, the MedCom Bundles and the letters do, by design).

Runs after the flow tests (file order) and before the disruptive ones (tests/conftest.py).
"""

from __future__ import annotations

from collections import Counter

from confluent_kafka.admin import AdminClient

from stafet.cpr import find_cprs
from stafet.kafka.client import as_admin, client_config
from stafet.kafka.reader import read_topics

#: values no CPR may be in: operators, acknowledgements, indexes, timers, the lease, the audit
#: the one header allowed a CPR: the parsed form (Avro) of the raw message in the same record's
#: value, on the ingest topics only the worker reads (stafet/inbound/canonical.py)
CARRIED = ("stafet.inbound.canonical",)
NO_CPR_VALUES = (
    "alerts.operator",
    "acks.inbound",
    "index.referral",
    "control.delivery",
    "audit.delivery",
    "timers.",
)


def cprs_in(data: bytes) -> set[str]:
    """Valid CPR numbers standing as tokens (stafet.cpr.find_cprs, the log scan's rule too)."""
    return {cpr for _, _, cpr in find_cprs(data.decode("latin-1"))}


def test_no_cpr_in_any_header_nor_in_values_nobody_is_entitled_to(stack) -> None:
    admin_settings = as_admin(stack.settings)
    admin = AdminClient(client_config(admin_settings, log_level=0))
    metadata = admin.list_topics(timeout=10)
    start = {
        (t, p): 0
        for t, meta in metadata.topics.items()
        if not t.startswith("__")
        for p in meta.partitions
    }
    records = read_topics(admin_settings, start, idle_s=2.0, timeout_s=120)
    assert records, "the flow tests left nothing to scan"

    in_headers: list[tuple[str, str]] = []
    in_values: Counter[str] = Counter()
    read: Counter[str] = Counter()
    carried = 0
    for r in records:
        family = r.topic if not r.topic.startswith("out.municipality.") else "out.municipality.*"
        read[family] += 1
        for name, value in r.headers.items():
            if value and cprs_in(value):
                if r.topic.startswith("ingest.") and name in CARRIED:
                    carried += 1
                else:
                    in_headers.append((r.topic, name))
        if cprs_in(r.value or b""):
            in_values[family] += 1

    print(
        f"\nscanned {len(records)} records on {len({t for t, _ in start})} topics; "
        f"headers with a CPR: {len(in_headers)} (besides {carried} stafet.inbound.canonical on ingest.*, "
        "the parsed form of the raw message beside it)"
    )
    for family in sorted(read):
        print(
            f"  {family:<40} {read[family]:>6} records, {in_values[family]:>5} with a CPR "
            "in the value"
        )
    assert in_headers == [], f"CPR numbers in headers: {Counter(in_headers).most_common(5)}"
    leaked = {t: n for t, n in in_values.items() if t.startswith(NO_CPR_VALUES)}
    assert leaked == {}, f"CPR numbers in values nobody there is entitled to: {leaked}"
    # the scan can see a CPR where there is one: in the raw input it must find them
    assert in_values["ingest.hl7v2"] > 0
