"""The subscriber registry: who receives which out.* messages, and how.

A TOML file (``STAFET_SUBSCRIBERS_FILE``, default ``deploy/subscribers.toml``) lists each party
that receives messages and its channel:

- ``kafka``: the party reads its own ``out.municipality.<code>`` topic with its own principal
  (stafet only audits that the message is there);
- ``rest``: stafet POSTs each FHIR message Bundle to ``url``, signed the Standard Webhooks way
  (``webhook-id``, ``webhook-timestamp``, ``webhook-signature: v1,…``; see
  :mod:`stafet.connectors.sinks.channels`) with the subscriber's ``whsec_`` secret, retries, and
  tracks MedCom Acknowledgements. ``secret_env`` names the secret: the environment variable of
  that name, else the file of that name in ``STAFET_SECRETS_DIR`` / ``$CREDENTIALS_DIRECTORY``
  (never the registry file itself); :func:`secret_key` is the one rule of what a secret is;
- ``letter``: stafet writes each PDF letter into ``outbox`` for the letter / Digital Post service.

A subscriber takes the records on ``topic`` (derived from ``municipality`` for municipalities)
whose ``stafet.recipient`` header is one of ``recipients`` (empty: all of them); ``entries``
names party directory entries instead (``gp/012345``, ``municipality/0751/ppr``), whose
recipient values are looked up in the directory when the registry is loaded. Municipalities
without an entry read their topic over Kafka when ``[defaults] municipalities = "kafka"``.
A record no subscriber takes is an *unrouted* message: an operator alert, never a silent drop.
"""

from __future__ import annotations

import base64
import binascii
import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from stafet.config import read_secret_file
from stafet.cpr import mask_cpr
from stafet.directory import Directory, DirectoryError, Unaddressable, load_directory
from stafet.errors import StafetError
from stafet.kafka.topics import (
    OUT_LETTER,
    OUT_MUNICIPALITY_PREFIX,
    OUT_REFERRER,
    municipality_topic,
)
from stafet.schemas.municipalities import municipalities
from stafet.systems import MUNICIPALITY_SYSTEM

Channel = Literal["kafka", "rest", "letter"]
PartyKind = Literal[
    "municipality", "ppr", "family-department", "referrer", "letter-service", "other"
]
SHARED_TOPICS = (OUT_REFERRER, OUT_LETTER)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: Standard Webhooks secrets: "whsec_" + base64 of at least 24 random bytes (the spec: 24 to 64)
SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24


def secret_key(secret: str) -> bytes:
    """The HMAC key of a webhook secret — what the signer signs with and what ``stafet
    subscribers check`` accepts, so the two cannot disagree. Only the Standard Webhooks format
    is taken (``whsec_`` + base64 of at least 24 bytes): the reference libraries read any other
    string differently, and a short key can be guessed. ValueError says what is wrong, never
    the secret."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(
            f"it is not a Standard Webhooks secret: it must start with "
            f"{SECRET_PREFIX} (followed by base64 of {MIN_SECRET_BYTES}-64 random "
            "bytes; `stafet subscribers new-secret` makes one)"
        )
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"the part after {SECRET_PREFIX} is not valid base64") from exc
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(
            f"it decodes to {len(key)} bytes; at least {MIN_SECRET_BYTES} are "
            "required (`stafet subscribers new-secret` makes one)"
        )
    return key


def new_secret() -> str:
    """A fresh webhook secret (32 random bytes) for a new REST subscriber."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(32)).decode()


class RegistryError(StafetError):
    """The subscriber registry is missing, unreadable or inconsistent."""


class Subscriber(BaseModel):
    """One receiving party and its channel."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")
    name: str
    party: PartyKind
    delivery: Channel
    municipality: str | None = Field(None, pattern=r"^\d{4}$")
    topic: str | None = None
    recipients: tuple[str, ...] = ()
    entries: tuple[str, ...] = ()  # party directory entries; resolved into recipients on load
    url: str | None = Field(None, pattern=r"^https?://")
    secret_env: str | None = Field(None, pattern=r"^[A-Z_][A-Z0-9_]*$")
    outbox: Path | None = None
    expects_ack: bool | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Subscriber:
        if self.municipality is not None and self.municipality not in municipalities():
            raise ValueError(f"municipality {self.municipality} is not one of the 98 codes")
        if self.topic is None and self.municipality is None:
            raise ValueError("give municipality (its topic is derived) or topic")
        topic = self.out_topic
        if not topic.startswith("out."):
            raise ValueError(f"topic {topic} is not an out.* topic")
        if self.delivery == "kafka" and not topic.startswith(OUT_MUNICIPALITY_PREFIX):
            raise ValueError(
                f"{topic} is shared by many parties: a subscriber reads only its own "
                "out.municipality.<code> topic over Kafka; use rest or letter"
            )
        if self.delivery == "rest" and (self.url is None or self.secret_env is None):
            raise ValueError("a rest subscriber needs url and secret_env")
        if (
            self.url is not None
            and self.url.startswith("http://")
            and urlsplit(self.url).hostname not in LOOPBACK
        ):
            raise ValueError(
                f"{self.url}: messages carry CPR numbers; use https:// (plain "
                "http only on loopback)"
            )
        if self.delivery == "letter" and topic != OUT_LETTER:
            raise ValueError(f"letters are on {OUT_LETTER}, not {topic}")
        if self.delivery != "rest" and self.expects_ack:
            raise ValueError("only rest subscribers are tracked for acknowledgements")
        for recipient in self.recipients:
            if "|" not in recipient:
                raise ValueError(f"recipient {recipient!r} must be '<identifier system>|<id>'")
        return self

    @property
    def out_topic(self) -> str:
        return self.topic or municipality_topic(self.municipality or "")

    @property
    def tracks_acks(self) -> bool:
        """REST subscribers acknowledge every message (MedCom) unless configured otherwise."""
        return self.delivery == "rest" and self.expects_ack is not False

    @property
    def group_id(self) -> str:
        """The consumer group that holds this subscriber's delivery progress."""
        return f"stafet-delivery-{self.id}"

    def takes(self, topic: str, recipient: str | None) -> bool:
        if topic != self.out_topic:
            return False
        return not self.recipients or recipient in self.recipients

    def secret(self) -> SecretStr:
        """The webhook secret, read when needed (never stored in the registry file): the
        environment variable ``secret_env``, else the secret file of that name. RegistryError
        names the subscriber and what is wrong (unset, or not a valid secret)."""
        if self.secret_env is None:
            raise RegistryError(f"subscriber {self.id} has no secret_env")
        value, where = os.environ.get(self.secret_env), f"environment variable {self.secret_env}"
        if not value:
            value, where = read_secret_file(self.secret_env), f"secret file {self.secret_env}"
        if not value:
            raise RegistryError(
                f"subscriber {self.id}: its webhook secret {self.secret_env} is "
                "not set (neither an environment variable nor a file in "
                "STAFET_SECRETS_DIR / $CREDENTIALS_DIRECTORY)"
            )
        try:
            secret_key(value)
        except ValueError as exc:
            raise RegistryError(
                f"subscriber {self.id}: the webhook secret in {where}: {exc}"
            ) from None
        return SecretStr(value)


class Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    municipalities: Literal["kafka", "none"] = "kafka"


@dataclass(frozen=True)
class Registry:
    """The validated registry."""

    subscribers: tuple[Subscriber, ...]
    defaults: Defaults

    def __post_init__(self) -> None:
        ids = [s.id for s in self.subscribers]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise RegistryError(f"subscriber ids used twice: {', '.join(dupes)}")
        pushed = [s for s in self.subscribers if s.delivery != "kafka"]
        for n, a in enumerate(pushed):  # one pushed subscriber per record: one delivery state
            for b in pushed[n + 1 :]:
                if a.out_topic == b.out_topic and (
                    not a.recipients or not b.recipients or set(a.recipients) & set(b.recipients)
                ):
                    raise RegistryError(
                        f"subscribers {a.id} and {b.id} would both be sent the "
                        f"same records of {a.out_topic}; give them disjoint "
                        "recipients"
                    )

    def all(self) -> list[Subscriber]:
        """Every subscriber, including the implicit Kafka readers of unlisted municipalities."""
        listed = list(self.subscribers)
        if self.defaults.municipalities == "kafka":
            covered = {s.municipality for s in listed if s.party == "municipality"}
            listed += [
                Subscriber(
                    id=f"municipality-{code}",
                    name=m.name,
                    party="municipality",
                    delivery="kafka",
                    municipality=code,
                )
                for code, m in sorted(municipalities().items())
                if code not in covered
            ]
        return listed

    def by_id(self, subscriber_id: str) -> Subscriber:
        for s in self.all():
            if s.id == subscriber_id:
                return s
        raise RegistryError(f"no subscriber {subscriber_id!r} in the registry")

    def takers(self, topic: str, recipient: str | None) -> list[Subscriber]:
        """The subscribers that take a record on ``topic`` addressed to ``recipient``."""
        return [s for s in self.all() if s.takes(topic, recipient)]

    def pushed(self) -> list[Subscriber]:
        """Subscribers stafet delivers to itself (rest and letter)."""
        return [s for s in self.all() if s.delivery != "kafka"]

    def problems(self) -> list[str]:
        """What an operator must fix before delivery can work (REST secrets missing or not
        valid webhook secrets)."""
        found = []
        for s in self.pushed():
            if s.delivery == "rest":
                try:
                    s.secret()
                except RegistryError as exc:
                    found.append(str(exc))
        return found


def load_registry(path: Path, directory: Directory | None = None) -> Registry:
    """Read and validate the registry file; every problem is named in the error. ``entries``
    are resolved in ``directory`` (default: the configured party directory)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise RegistryError(f"subscriber registry {path} does not exist") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RegistryError(f"subscriber registry {path} is not valid TOML: {exc}") from exc
    return parse_registry(data, source=str(path), directory=directory)


def parse_registry(
    data: dict,
    *,
    source: str = "registry",  # type: ignore[type-arg]
    directory: Directory | None = None,
) -> Registry:
    unknown = set(data) - {"defaults", "subscriber"}
    if unknown:
        raise RegistryError(
            f"{source}: unknown sections {sorted(unknown)}; expected [defaults] and [[subscriber]]"
        )
    errors: list[str] = []
    subscribers = []
    for n, entry in enumerate(data.get("subscriber", []), start=1):
        try:
            subscribers.append(Subscriber.model_validate(entry))
        except ValidationError as exc:
            name = entry.get("id", f"#{n}") if isinstance(entry, dict) else f"#{n}"
            errors += [
                f"subscriber {name}: {'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}"
                for e in exc.errors()
            ]
    try:
        defaults = Defaults.model_validate(data.get("defaults", {}))
    except ValidationError as exc:
        errors += [f"defaults: {e['msg']}" for e in exc.errors()]
        defaults = Defaults()
    if any(s.entries for s in subscribers) and not errors:
        subscribers = [_resolve_entries(s, directory, errors) for s in subscribers]
    if errors:
        raise RegistryError(f"{source}: " + "; ".join(errors))
    return Registry(tuple(subscribers), defaults)


def _resolve_entries(
    subscriber: Subscriber, directory: Directory | None, errors: list[str]
) -> Subscriber:
    if not subscriber.entries:
        return subscriber
    if directory is None:
        from stafet.config import get_settings

        try:
            directory = load_directory(get_settings().directory_file)
        except DirectoryError as exc:
            errors.append(f"subscriber {subscriber.id}: entries need the party directory: {exc}")
            return subscriber
    resolved = list(subscriber.recipients)
    for entry in subscriber.entries:
        try:
            resolved.append(directory.entry(entry).recipient)
        except Unaddressable as exc:
            errors.append(f"subscriber {subscriber.id}: entries: {exc}")
    return subscriber.model_copy(update={"recipients": tuple(dict.fromkeys(resolved))})


def municipality_recipient(code: str) -> str:
    """The ``stafet.recipient`` value of a municipality's hospital notifications."""
    return f"{MUNICIPALITY_SYSTEM}|{code}"


def describe(subscribers: Iterable[Subscriber]) -> list[dict[str, str]]:
    """One row per subscriber for ``stafet subscribers list`` (no secrets, only their names)."""
    rows = []
    for s in subscribers:
        target = {
            "kafka": f"reads {s.out_topic}",
            "rest": f"POST {s.url}",
            "letter": f"outbox {s.outbox or '(default)'}",
        }[s.delivery]
        rows.append(
            {
                "id": s.id,
                "party": s.party,
                "delivery": s.delivery,
                "topic": s.out_topic,
                "recipients": ",".join(mask_cpr(r) for r in s.recipients) or "*",
                "target": target,
            }
        )
    return rows
