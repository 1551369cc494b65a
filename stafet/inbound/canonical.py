"""The canonical event of an HL7 v2 message, encoded once — where the message is first parsed.

The MLLP listener parses every message to decide AA or AR. It puts the result, Avro-encoded, in
headers of the ingest record beside the raw bytes (which stay the record's value, the faithful
copy for replay). The stream's normalize step uses that event instead of parsing the message a
second time — but only if it was made by the same mapping code: :data:`CANONICAL_VERSION` is a
hash of the parser's, the model's and the schemas' sources, so after any change to them (a
replay with a newer stafet) the raw bytes are parsed again.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

from stafet import cpr, ids, model
from stafet.inbound import hl7v2, hl7v2_referral
from stafet.kafka.topics import EVENTS_ENCOUNTER, EVENTS_REFERRAL
from stafet.model import EncounterEvent, ReferralEvent
from stafet.schemas import codec, municipalities
from stafet.schemas.codec import encode

#: ingest headers: the encoded event, the events topic it belongs on, the mapping's version
H_CANONICAL = "stafet.inbound.canonical"
H_CANONICAL_TOPIC = "stafet.canonical_topic"
H_CANONICAL_VERSION = "stafet.canonical_version"


def _version() -> str:
    digest = hashlib.sha256()
    for module in (cpr, hl7v2, hl7v2_referral, ids, model, codec, municipalities):
        digest.update(Path(module.__file__).read_bytes())  # type: ignore[arg-type]
    schemas = resources.files("stafet.schemas")
    for name in sorted(p.name for p in schemas.iterdir() if p.name.endswith((".avsc", ".csv"))):
        digest.update(schemas.joinpath(name).read_bytes())
    return digest.hexdigest()[:16]


CANONICAL_VERSION = _version()


def encoded(event: EncounterEvent | ReferralEvent) -> tuple[str, bytes]:
    """(events topic, Avro bytes) of a canonical event."""
    if isinstance(event, EncounterEvent):
        return EVENTS_ENCOUNTER, encode("encounter_event", event.to_record())
    return EVENTS_REFERRAL, encode("referral_event", event.to_record())


def carry(event: EncounterEvent | ReferralEvent) -> list[tuple[str, bytes]]:
    """The ingest headers that carry ``event`` to the stream."""
    topic, value = encoded(event)
    return [
        (H_CANONICAL, value),
        (H_CANONICAL_TOPIC, topic.encode()),
        (H_CANONICAL_VERSION, CANONICAL_VERSION.encode()),
    ]


def carried(headers: dict[str, bytes]) -> tuple[str, bytes] | None:
    """(events topic, Avro bytes) from ingest headers made by this same mapping, else None."""
    value, topic = headers.get(H_CANONICAL), headers.get(H_CANONICAL_TOPIC, b"").decode()
    if (
        not value
        or topic not in (EVENTS_ENCOUNTER, EVENTS_REFERRAL)
        or headers.get(H_CANONICAL_VERSION) != CANONICAL_VERSION.encode()
    ):
        return None
    return topic, value
