"""Topic names (one place) and their creation.

Data flows one way: ``ingest.* → events.* → out.*``; each stage's rejects go to ``dlq.<stage>``.
Every topic is keyed by the pseudonymous patient key, so one child's events stay in order.
"""

from __future__ import annotations

import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from stafet.errors import StafetError
from stafet.kafka_client import KafkaTarget, resolve_config
from stafet.schemas.municipalities import municipalities

INGEST_HL7V2 = "ingest.hl7v2"
INGEST_FHIR = "ingest.fhir"
EVENTS_ENCOUNTER = "events.encounter"
EVENTS_REFERRAL = "events.referral"
DLQ_MLLP = "dlq.mllp"
DLQ_FHIR = "dlq.fhir"
DLQ_NORMALIZE = "dlq.normalize"
DLQ_NOTIFY = "dlq.notify"
DLQ_REFERRAL = "dlq.referral"
OUT_MUNICIPALITY_PREFIX = "out.municipality."
OUT_REFERRER = "out.referrer"  # CareCommunication to referrers with a FHIR endpoint (GP systems)
OUT_LETTER = "out.letter"  # PDF letters for guardians and referrers without a FHIR endpoint
ACKS_INBOUND = "acks.inbound"  # MedCom Acknowledgements from receivers, keyed by acknowledged id
AUDIT_DELIVERY = "audit.delivery"  # every delivery attempt, acknowledgement and failure
ALERTS_OPERATOR = "alerts.operator"  # what a person must look at: unknown recipients, DLQ'd sends
DLQ_DELIVERY = "dlq.delivery"  # messages a subscriber could not be given within the budget
#: when each open referral next needs a tick (deadline, parked decision); compacted
TIMERS_REFERRAL = "timers.referral"
DLQ_TOPICS = (DLQ_MLLP, DLQ_FHIR, DLQ_NORMALIZE, DLQ_NOTIFY, DLQ_REFERRAL, DLQ_DELIVERY)

#: Headers stafet puts on records (values are UTF-8 bytes).
H_REASON = "stafet.reason"
H_STAGE = "stafet.stage"
H_CHARSET = "stafet.charset"
H_RECEIVED_AT = "stafet.received_at"
H_SOURCE = "stafet.source"
H_EVENT_ID = "stafet.event_id"
H_MESSAGE_ID = "stafet.message_id"
H_BUNDLE_ID = "stafet.bundle_id"
H_EVENT_CODE = "stafet.event_code"
H_ORIGIN = "stafet.origin"  # topic/partition/offset of the record a DLQ entry came from
H_RECIPIENT = "stafet.recipient"  # "<identifier system>|<identifier>" of the addressee
H_REFERRAL_ID = "stafet.referral_id"
H_KIND = "stafet.kind"
#: on acks.inbound: the sender's X-Stafet-Signature / X-Stafet-Timestamp, for the delivery
#: tracker (which knows the subscribers' secrets) to check who acknowledged
H_SIGNATURE = "stafet.signature"
H_SIGNATURE_TS = "stafet.signature_timestamp"


def municipality_topic(code: str) -> str:
    """``out.municipality.<code>``: the one topic a municipality reads."""
    return f"{OUT_MUNICIPALITY_PREFIX}{code}"


def all_topics() -> list[str]:
    return [INGEST_HL7V2, INGEST_FHIR, EVENTS_ENCOUNTER, EVENTS_REFERRAL, TIMERS_REFERRAL,
            OUT_REFERRER, OUT_LETTER,
            ACKS_INBOUND, AUDIT_DELIVERY, ALERTS_OPERATOR, *DLQ_TOPICS,
            *(municipality_topic(code) for code in municipalities())]


def ensure_topics(kafka: KafkaTarget, partitions: int, timeout: float = 30.0) -> list[str]:
    """Create every stafet topic that does not exist yet; return the ones created. (The stream
    stage's changelog topics, ``changelog__<app id>--…``, are created by the worker itself.)

    ``kafka``: settings (this process's principal), a client config or a bootstrap string. With
    ACLs a principal sees only the topics it may describe and creates only its own (the worker:
    its changelogs); the others are the provisioner's (`stafet topics` as admin), so a denied
    create is skipped here, not an error.
    """
    config = resolve_config(kafka, log_level=2)  # tools: no retry noise
    admin = AdminClient(config)
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise StafetError(f"cannot reach Kafka at {config['bootstrap.servers']}: {exc}") from exc
    wanted: dict[str, tuple[int | None, dict[str, str]]] = {t: (None, {}) for t in all_topics()}
    wanted[AUDIT_DELIVERY] = (None, {"retention.ms": "-1"})  # the record of who got what: kept
    # the latest due time per referral, for as long as the referral is open
    wanted[TIMERS_REFERRAL] = (None, {"cleanup.policy": "compact"})
    missing = [name for name in wanted if name not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=wanted[name][0] or partitions, replication_factor=1,
                  config=wanted[name][1]) for name in missing],
        operation_timeout=timeout,
    )
    denied = set()
    for name, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            if "AUTHORIZATION_FAILED" in str(exc):
                denied.add(name)
            elif "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise StafetError(f"creating topic {name} failed: {exc}") from exc
    created = [name for name in missing if name not in denied]
    _wait_for_leaders(admin, created, timeout)
    return created


def _wait_for_leaders(admin: AdminClient, names: list[str], timeout: float) -> None:
    """A new topic answers 'not leader' until its partitions have leaders: wait for that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        topics = admin.list_topics(timeout=timeout).topics
        if all(name in topics and topics[name].partitions and not topics[name].error
               and all(p.leader >= 0 for p in topics[name].partitions.values()) for name in names):
            return
        time.sleep(0.2)
    raise StafetError(f"topics have no leader after {timeout:.0f}s")
