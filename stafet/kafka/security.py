"""Who may do what on Kafka: the ACL plan as data, and provisioning it (users + ACLs).

The plan is a pure function of the municipality codes and the worker's app id, so the unit
tests can read it like a table; :func:`provision` makes the broker match it and is safe to run
any number of times (SCRAM upserts and ACL creation are both idempotent on the broker).

Least access: a municipality reads its own ``out.municipality.<code>`` and commits offsets in
groups named ``municipality-<code>…``, nothing else; each service principal gets only the
operations its code performs (found by running each one against a broker that denies the rest).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from stafet.config import Settings
from stafet.errors import StafetError
from stafet.kafka.client import client_config, password_for

WORKER = "stafet-worker"
MLLP = "stafet-mllp"
FHIR = "stafet-fhir"
DELIVERY = "stafet-delivery"
CONSOLE = "stafet-console"
SERVICE_PRINCIPALS = (WORKER, MLLP, FHIR, DELIVERY, CONSOLE)
#: people, not services: the read-only operator (alerts, the audit trail, lag — no message
#: content) and the dead-letter operator (reads dead letters, resends them with `stafet dlq resend`)
OPERATOR = "stafet-operator"
DLQ_OPERATOR = "stafet-dlq-operator"
OPERATOR_PRINCIPALS = (OPERATOR, DLQ_OPERATOR)
MUNICIPALITY_PREFIX = "municipality-"
SCRAM_ITERATIONS = 8192

LITERAL, PREFIXED = "LITERAL", "PREFIXED"
#: Group ids of assign()-only readers (fresh uuid suffix each time): librdkafka still looks up
#: their coordinator, which takes DESCRIBE; joining or committing would take READ.
READER_GROUPS = ("stafet-referral-index-", "stafet-reader-")


@dataclass(frozen=True, order=True)
class Grant:
    """One ALLOW ACL: ``principal`` may ``operation`` on the ``resource`` named (or prefixed)
    ``name``, from any host."""

    principal: str
    resource: str  # TOPIC | GROUP | TRANSACTIONAL_ID | CLUSTER
    name: str
    pattern: str  # LITERAL | PREFIXED
    operation: str  # READ | WRITE | DESCRIBE | CREATE | …

    def binding(self) -> AclBinding:
        return AclBinding(
            ResourceType[self.resource],
            self.name,
            ResourcePatternType[self.pattern],
            f"User:{self.principal}",
            "*",
            AclOperation[self.operation],
            AclPermissionType.ALLOW,
        )


def municipality_principal(code: str) -> str:
    return f"{MUNICIPALITY_PREFIX}{code}"


def _grants(
    principal: str, resource: str, name: str, pattern: str, operations: Iterable[str]
) -> list[Grant]:
    return [Grant(principal, resource, name, pattern, op) for op in operations]


def municipality_grants(code: str) -> list[Grant]:
    """Read its own topic; consumer groups ``municipality-<code>…`` (codes are all 4 digits,
    so no municipality's prefix is a prefix of another's)."""
    who = municipality_principal(code)
    return [
        *_grants(who, "TOPIC", f"out.municipality.{code}", LITERAL, ("READ", "DESCRIBE")),
        *_grants(who, "GROUP", who, PREFIXED, ("READ",)),
    ]


def worker_grants(app_id: str) -> list[Grant]:
    """The stream stage (quixstreams, exactly-once): ingest → events → out/dlq/alerts, the
    referral timers, its own changelog topics ``changelog__<app id>--…`` (which it creates), its
    consumer group and its transactional ids ``<app id>-…``; DESCRIBE_CONFIGS because the engine
    checks each topic's configuration (partitions, max.message.bytes) before it starts."""
    w = WORKER
    look = ("DESCRIBE", "DESCRIBE_CONFIGS")
    return [
        *_grants(w, "TOPIC", "ingest.hl7v2", LITERAL, ("READ", *look)),
        *_grants(w, "TOPIC", "ingest.fhir", LITERAL, ("READ", *look)),
        *_grants(w, "TOPIC", "events.", PREFIXED, ("READ", "WRITE", *look)),
        *_grants(w, "TOPIC", "timers.", PREFIXED, ("READ", "WRITE", *look)),
        *_grants(w, "TOPIC", "index.", PREFIXED, ("WRITE", *look)),
        *_grants(w, "TOPIC", "out.", PREFIXED, ("WRITE", *look)),
        *_grants(w, "TOPIC", "dlq.", PREFIXED, ("WRITE", *look)),
        *_grants(w, "TOPIC", "alerts.operator", LITERAL, ("WRITE", *look)),
        *_grants(
            w, "TOPIC", f"changelog__{app_id}--", PREFIXED, ("READ", "WRITE", "CREATE", *look)
        ),
        *_grants(w, "GROUP", app_id, LITERAL, ("READ", "DESCRIBE")),
        *_grants(w, "GROUP", "stafet-reader-", PREFIXED, ("DESCRIBE",)),
        *_grants(w, "TRANSACTIONAL_ID", f"{app_id}-", PREFIXED, ("WRITE", "DESCRIBE")),
    ]


def mllp_grants() -> list[Grant]:
    """The MLLP listener only writes (idempotent producer: WRITE suffices on Kafka ≥ 3)."""
    return [
        *_grants(MLLP, "TOPIC", "ingest.hl7v2", LITERAL, ("WRITE", "DESCRIBE")),
        *_grants(MLLP, "TOPIC", "dlq.mllp", LITERAL, ("WRITE", "DESCRIBE")),
        *_grants(MLLP, "TOPIC", "index.referral", LITERAL, ("WRITE", "DESCRIBE")),
    ]


def fhir_grants() -> list[Grant]:
    """The FHIR listener writes its topics and reads, by assign() (no group membership, no
    commits), index.referral (referral ids, never an HL7 message) to check decisions against,
    and acks.inbound + ingest.fhir for its memory of inbound MedCom message ids."""
    return [
        *_grants(FHIR, "TOPIC", "ingest.fhir", LITERAL, ("READ", "WRITE", "DESCRIBE")),
        *_grants(FHIR, "TOPIC", "index.referral", LITERAL, ("READ", "DESCRIBE")),
        *_grants(FHIR, "TOPIC", "dlq.fhir", LITERAL, ("WRITE", "DESCRIBE")),
        *_grants(FHIR, "TOPIC", "acks.inbound", LITERAL, ("READ", "WRITE", "DESCRIBE")),
        *(
            g
            for prefix in READER_GROUPS
            for g in _grants(FHIR, "GROUP", prefix, PREFIXED, ("DESCRIBE",))
        ),
    ]


def delivery_grants() -> list[Grant]:
    """The delivery sinks: read what is addressed to receivers and their acknowledgements, keep
    the audit trail, dead-letter and alert; consumer groups ``stafet-delivery…``."""
    d = DELIVERY
    return [
        *_grants(d, "TOPIC", "out.municipality.", PREFIXED, ("READ", "DESCRIBE")),
        *_grants(d, "TOPIC", "out.referrer", LITERAL, ("READ", "DESCRIBE")),
        *_grants(d, "TOPIC", "out.letter", LITERAL, ("READ", "DESCRIBE")),
        *_grants(d, "TOPIC", "acks.inbound", LITERAL, ("READ", "DESCRIBE")),
        *_grants(d, "TOPIC", "audit.delivery", LITERAL, ("READ", "WRITE", "DESCRIBE")),
        *_grants(d, "TOPIC", "dlq.delivery", LITERAL, ("WRITE", "DESCRIBE")),
        *_grants(d, "TOPIC", "alerts.operator", LITERAL, ("WRITE", "DESCRIBE")),
        # the active/standby lease: membership of the group on its one partition
        *_grants(d, "TOPIC", "control.delivery", LITERAL, ("READ", "DESCRIBE")),
        *_grants(d, "GROUP", "stafet-delivery", PREFIXED, ("READ",)),
        *_grants(d, "GROUP", "stafet-reader-", PREFIXED, ("DESCRIBE",)),
    ]


def operator_grants() -> list[Grant]:
    """Read-only: the operator alerts and the delivery audit trail (recipients masked, keyed by
    patient key); DESCRIBE on every topic and group, for partitions, ends and committed offsets
    (consumer lag) — and no READ of any topic that holds a message."""
    o = OPERATOR
    return [
        *_grants(o, "TOPIC", "alerts.operator", LITERAL, ("READ",)),
        *_grants(o, "TOPIC", "audit.delivery", LITERAL, ("READ",)),
        *_grants(o, "TOPIC", "audit.access", LITERAL, ("READ",)),
        *_grants(o, "TOPIC", "*", LITERAL, ("DESCRIBE", "DESCRIBE_CONFIGS")),
        *_grants(o, "GROUP", "*", LITERAL, ("DESCRIBE",)),
    ]


def dlq_operator_grants() -> list[Grant]:
    """Reads the dead-letter topics (which hold the rejected messages, CPRs included: the reason
    this is a principal of its own) and writes a fixed one back to where ``stafet dlq resend``
    sends it — the ingest and event topics — without reading those."""
    d = DLQ_OPERATOR
    return [
        *_grants(d, "TOPIC", "dlq.", PREFIXED, ("READ", "DESCRIBE")),
        *_grants(d, "TOPIC", "ingest.", PREFIXED, ("WRITE", "DESCRIBE")),
        *_grants(d, "TOPIC", "events.", PREFIXED, ("WRITE", "DESCRIBE")),
        *_grants(d, "GROUP", "stafet-reader-", PREFIXED, ("DESCRIBE",)),
    ]


def console_grants() -> list[Grant]:
    """The operator console (``stafet console``): reads what its pages show — the dead letters,
    the audit trail, the alerts, the event and out topics (a child's trail; a municipality's
    residents) — and writes a resent dead letter back where it came from (ingest / events) and
    each action's audit line, and a line on ``audit.access`` for each page a person viewed;
    DESCRIBE everywhere for record counts and consumer lag. Its users'
    roles decide what a person sees; this principal is what the process may read."""
    c = CONSOLE
    return [
        *_grants(c, "TOPIC", "dlq.", PREFIXED, ("READ", "DESCRIBE")),
        *_grants(c, "TOPIC", "events.", PREFIXED, ("READ", "WRITE", "DESCRIBE")),
        *_grants(c, "TOPIC", "out.", PREFIXED, ("READ", "DESCRIBE")),
        *_grants(c, "TOPIC", "ingest.", PREFIXED, ("WRITE", "DESCRIBE")),
        *_grants(c, "TOPIC", "audit.delivery", LITERAL, ("READ", "WRITE", "DESCRIBE")),
        # each page view, before the page is sent (write only: the console never reads it back)
        *_grants(c, "TOPIC", "audit.access", LITERAL, ("WRITE", "DESCRIBE")),
        *_grants(c, "TOPIC", "alerts.operator", LITERAL, ("READ", "DESCRIBE")),
        *_grants(c, "TOPIC", "*", LITERAL, ("DESCRIBE", "DESCRIBE_CONFIGS")),
        *_grants(c, "GROUP", "*", LITERAL, ("DESCRIBE",)),
    ]


def acl_plan(municipality_codes: Iterable[str], app_id: str) -> list[Grant]:
    """Every ACL stafet needs, sorted (pure: same input, same plan)."""
    grants = [
        *worker_grants(app_id),
        *mllp_grants(),
        *fhir_grants(),
        *delivery_grants(),
        *console_grants(),
        *operator_grants(),
        *dlq_operator_grants(),
    ]
    for code in municipality_codes:
        grants += municipality_grants(code)
    return sorted(set(grants))


def principals(municipality_codes: Iterable[str]) -> list[str]:
    """Every SCRAM user stafet creates (besides the bootstrap super user)."""
    return [
        *SERVICE_PRINCIPALS,
        *OPERATOR_PRINCIPALS,
        *(municipality_principal(c) for c in municipality_codes),
    ]


@dataclass(frozen=True)
class ProvisionReport:
    """What provisioning did; names and counts only, never a password."""

    users: list[str]
    acls_created: int
    acls_existing: int


def _existing(admin: AdminClient, timeout: float) -> set[Grant]:
    """The ALLOW ACLs on the broker, as grants (to report what was new)."""
    any_filter = AclBindingFilter(
        ResourceType.ANY,
        None,
        ResourcePatternType.ANY,
        None,
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    found = set()
    for b in admin.describe_acls(any_filter, request_timeout=timeout).result():
        if b.permission_type == AclPermissionType.ALLOW and b.principal.startswith("User:"):
            found.add(
                Grant(
                    b.principal[5:],
                    b.restype.name,
                    b.name,
                    b.resource_pattern_type.name,
                    b.operation.name,
                )
            )
    return found


def _wait_until_enforced(admin: AdminClient, plan: set[Grant], timeout: float) -> None:
    """The controller has the new ACLs once create_acls returns; the broker's authorizer applies
    them a moment later. Return when it lists them all, so that a service started right after
    provisioning (and a second provisioning run) sees them."""
    deadline = time.monotonic() + timeout
    while not plan <= _existing(admin, timeout):
        if time.monotonic() > deadline:
            raise StafetError(f"the broker does not list the new ACLs after {timeout:.0f}s")
        time.sleep(0.2)


def provision(
    settings: Settings, municipality_codes: Sequence[str], *, timeout: float = 30.0
) -> ProvisionReport:
    """Create or update the SCRAM users and create the ACLs (run as a super user).

    Passwords come from the settings or the generated 0600 files under the secrets directory,
    so a second run keeps every client's password and adds nothing new.
    """
    if settings.kafka_security != "sasl_ssl":
        raise StafetError("provisioning needs STAFET_KAFKA_SECURITY=sasl_ssl")
    admin = AdminClient(client_config(settings, log_level=2))
    users = principals(municipality_codes)
    upserts = [
        UserScramCredentialUpsertion(
            user,
            ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS),
            password_for(settings, user, create=True).get_secret_value().encode(),
        )
        for user in users
    ]
    try:
        for future in admin.alter_user_scram_credentials(upserts, request_timeout=timeout).values():
            future.result()
        plan = acl_plan(municipality_codes, settings.app_id)
        before = _existing(admin, timeout)
        new = [g for g in plan if g not in before]
        if new:
            for future in admin.create_acls(
                [g.binding() for g in new], request_timeout=timeout
            ).values():
                future.result()
            _wait_until_enforced(admin, set(plan), timeout)
    except KafkaException as exc:
        raise StafetError(f"provisioning Kafka users and ACLs failed: {exc}") from exc
    return ProvisionReport(users=users, acls_created=len(new), acls_existing=len(plan) - len(new))
