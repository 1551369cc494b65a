"""Topic names (one place) and their creation.

Data flows one way: ``ingest.* → events.* → out.*``; each stage's rejects go to ``dlq.<stage>``.
Every topic is keyed by the pseudonymous patient key, so one child's events stay in order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from stafet.errors import StafetError
from stafet.kafka.client import KafkaTarget, resolve_config
from stafet.logging import get_logger
from stafet.schemas.municipalities import municipalities

log = get_logger(__name__)

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
#: every page a console user viewed and what it showed (who looked at whose data), kept
AUDIT_ACCESS = "audit.access"
ALERTS_OPERATOR = "alerts.operator"  # what a person must look at: unknown recipients, DLQ'd sends
DLQ_DELIVERY = "dlq.delivery"  # messages a subscriber could not be given within the budget
#: when each open referral next needs a tick (deadline, parked decision); compacted
TIMERS_REFERRAL = "timers.referral"
#: every referral the stream stage knows (key: referral id; value: its status), compacted and
#: written in the worker's transaction: the FHIR listener checks decisions against it
INDEX_REFERRAL = "index.referral"
#: never written: its one partition is held by the active ``stafet deliver`` (group membership);
#: a standby replica takes it over when the active one dies (connectors/sinks/standby.py)
CONTROL_DELIVERY = "control.delivery"
#: topics with a partition count of their own (every other topic: STAFET_PARTITIONS)
FIXED_PARTITIONS = {CONTROL_DELIVERY: 1}
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
H_SUBSCRIBER = "stafet.subscriber"  # on dlq.delivery: whom the dead letter was for
H_ORIGIN = "stafet.origin"  # topic/partition/offset of the record a DLQ entry came from
H_RECIPIENT = "stafet.recipient"  # "<identifier system>|<identifier>" of the addressee
H_RECIPIENT_EAN = "stafet.recipient_ean"  # the addressee's EAN location number (MedCom routing)
#: on a per-recipient dead letter of dlq.referral: "<kind>|<digest of the recipient>" — sent back
#: to events.referral it yields that one message (stafet.streams.referrals)
H_REDELIVER = "stafet.redeliver"
H_REFERRAL_ID = "stafet.referral_id"
H_KIND = "stafet.kind"
#: on acks.inbound: the sender's webhook-signature / webhook-timestamp / webhook-id (Standard
#: Webhooks), for the delivery tracker (which knows the subscribers' secrets) to check who
#: acknowledged; the webhook-id of an acknowledgement is its own MessageHeader.id
H_SIGNATURE = "stafet.signature"
H_SIGNATURE_TS = "stafet.signature_timestamp"
H_SIGNATURE_ID = "stafet.signature_id"


def index_key(referral_id: str, patient_key: str) -> bytes:
    """The key of a referral on ``index.referral``: referral ids are per sender, so two children
    may share one; the patient key keeps them apart (one tombstone never hides the other)."""
    return f"{referral_id}|{patient_key}".encode()


def municipality_topic(code: str) -> str:
    """``out.municipality.<code>``: the one topic a municipality reads."""
    return f"{OUT_MUNICIPALITY_PREFIX}{code}"


#: what the stream stage writes, besides each municipality's out.municipality.<code>
STREAM_OUTPUTS = (
    EVENTS_ENCOUNTER,
    EVENTS_REFERRAL,
    TIMERS_REFERRAL,
    INDEX_REFERRAL,
    OUT_REFERRER,
    OUT_LETTER,
    DLQ_NORMALIZE,
    DLQ_NOTIFY,
    DLQ_REFERRAL,
    ALERTS_OPERATOR,
)


def all_topics() -> list[str]:
    """Every topic stafet uses (what ``stafet topics`` creates and checks)."""
    named = (
        INGEST_HL7V2,
        INGEST_FHIR,
        *STREAM_OUTPUTS,
        ACKS_INBOUND,
        AUDIT_DELIVERY,
        AUDIT_ACCESS,
        *DLQ_TOPICS,
        CONTROL_DELIVERY,
    )
    return [
        *dict.fromkeys(named),  # the stream's DLQs are in both groups: once each
        *(municipality_topic(code) for code in municipalities()),
    ]


def partitions_of(topic: str, partitions: int) -> int:
    """A topic's partition count: ``partitions`` (STAFET_PARTITIONS) unless it has its own."""
    return FIXED_PARTITIONS.get(topic, partitions)


@dataclass(frozen=True, slots=True)
class TopicPlan:
    """How every stafet topic is made: its retention (days, instead of the broker's default of 7)
    or compaction, its replication factor and ``min.insync.replicas``.

    ``replication_factor`` None: 3 on a cluster of three or more brokers, else as many as there
    are (a single development broker: 1); ``min_insync_replicas`` None: 2 at RF 3 or more, else 1
    — so an ``acks=all`` write survives the loss of any one broker. Asking for more replicas than
    the cluster has is an error, and fewer than 3 on a cluster of 3+ is logged as a warning.
    """

    ingest_days: float = 60.0  # ingest.*, events.*: longer than a referral can wait for triage
    out_days: float = 30.0  # out.*: a municipality reading Kafka has this long to catch up
    dlq_days: float = 30.0  # dlq.*, alerts.operator, acks.inbound: for an operator to act on
    replication_factor: int | None = None
    min_insync_replicas: int | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> TopicPlan:
        return cls(
            settings.ingest_retention_days,
            settings.out_retention_days,
            settings.dlq_retention_days,
            settings.replication_factor,
            settings.min_insync_replicas,
        )

    def replication(self, brokers: int) -> tuple[int, int]:
        """(replication factor, min.insync.replicas) on a cluster of ``brokers``."""
        rf = self.replication_factor or min(3, max(brokers, 1))
        if rf > brokers:
            raise StafetError(
                f"replication factor {rf} needs {rf} brokers; the cluster has "
                f"{brokers} (STAFET_REPLICATION_FACTOR)"
            )
        if brokers >= 3 and rf < 3:
            log.warning(
                "topics.low_replication",
                replication_factor=rf,
                brokers=brokers,
                hint="one broker lost can lose acknowledged records",
            )
        isr = self.min_insync_replicas or (2 if rf >= 3 else 1)
        if isr > rf:
            raise StafetError(f"min.insync.replicas {isr} exceeds the replication factor {rf}")
        return rf, isr

    def configs(self, min_insync: int = 1) -> dict[str, dict[str, str]]:
        """The config of every topic: retention.ms or compaction, and min.insync.replicas."""
        ms = lambda days: {"retention.ms": str(int(days * 86_400_000))}  # noqa: E731
        out: dict[str, dict[str, str]] = {}
        for topic in all_topics():
            if topic in (TIMERS_REFERRAL, INDEX_REFERRAL):  # the latest value per key, kept
                config = {"cleanup.policy": "compact"}
            elif topic in (AUDIT_DELIVERY, AUDIT_ACCESS):  # who got what, who saw what: kept
                config = {"retention.ms": "-1"}
            elif topic.startswith(("ingest.", "events.")):
                config = ms(self.ingest_days)
            elif topic.startswith("out."):
                config = ms(self.out_days)
            else:  # dlq.*, alerts.operator, acks.inbound
                config = ms(self.dlq_days)
            out[topic] = {**config, "min.insync.replicas": str(min_insync)}
        return out


def ensure_topics(
    kafka: KafkaTarget, partitions: int, timeout: float = 30.0, *, plan: TopicPlan = TopicPlan()
) -> list[str]:
    """Create every stafet topic that does not exist yet as ``plan`` says; return the ones
    created. (The stream stage's changelog topics, ``changelog__<app id>--…``, are created by
    the worker itself, with the replication of its input topics.) An existing topic is left as
    it is: ``stafet topics --check`` reports where it differs.

    ``kafka``: settings (this process's principal), a client config or a bootstrap string. With
    ACLs a principal sees only the topics it may describe and creates only its own (the worker:
    its changelogs); the others are the provisioner's (`stafet topics` as admin), so a denied
    create is skipped here, not an error.
    """
    config = resolve_config(kafka, log_level=2)  # tools: no retry noise
    admin = AdminClient(config)
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise StafetError(f"cannot reach Kafka at {config['bootstrap.servers']}: {exc}") from exc
    missing = [name for name in all_topics() if name not in metadata.topics]
    if not missing:
        return []
    rf, isr = plan.replication(len(metadata.brokers))
    configs = plan.configs(isr)
    futures = admin.create_topics(
        [
            NewTopic(
                name,
                num_partitions=partitions_of(name, partitions),
                replication_factor=rf,
                config=configs[name],
            )
            for name in missing
        ],
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


def topic_drift(
    kafka: KafkaTarget, partitions: int, plan: TopicPlan = TopicPlan(), timeout: float = 30.0
) -> list[str]:
    """Where the cluster's stafet topics differ from ``plan``: missing topics, partitions,
    replication factor, and every planned config (retention, compaction, min.insync.replicas)."""
    admin = AdminClient(resolve_config(kafka, log_level=2))
    try:
        metadata = admin.list_topics(timeout=timeout)
        rf, isr = plan.replication(len(metadata.brokers))
        wanted = plan.configs(isr)
        present = [t for t in wanted if t in metadata.topics]
        futures = admin.describe_configs(
            [ConfigResource("TOPIC", t) for t in present], request_timeout=timeout
        )
        actual = {
            resource.name: {k: v.value for k, v in future.result().items()}
            for resource, future in futures.items()
        }
    except KafkaException as exc:
        raise StafetError(f"cannot describe the topics: {exc}") from exc
    drift = [f"{t}: missing" for t in wanted if t not in metadata.topics]
    for topic in present:
        meta = metadata.topics[topic]
        if len(meta.partitions) != partitions_of(topic, partitions):
            drift.append(
                f"{topic}: {len(meta.partitions)} partitions, plan "
                f"{partitions_of(topic, partitions)}"
            )
        replicas = {len(p.replicas) for p in meta.partitions.values()}
        if replicas != {rf}:
            drift.append(f"{topic}: replication factor {sorted(replicas)}, plan {rf}")
        for key, value in wanted[topic].items():
            if actual[topic].get(key) != value:
                drift.append(f"{topic}: {key} = {actual[topic].get(key)}, plan {value}")
    return drift


def _wait_for_leaders(admin: AdminClient, names: list[str], timeout: float) -> None:
    """A new topic answers 'not leader' until its partitions have leaders: wait for that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        topics = admin.list_topics(timeout=timeout).topics
        if all(
            name in topics
            and topics[name].partitions
            and not topics[name].error
            and all(p.leader >= 0 for p in topics[name].partitions.values())
            for name in names
        ):
            return
        time.sleep(0.2)
    raise StafetError(f"topics have no leader after {timeout:.0f}s")
