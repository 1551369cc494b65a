"""Client configuration for every Kafka client stafet creates (confluent-kafka, quixstreams).

One place decides how a process reaches the broker, so that security settings (SASL/SCRAM, TLS)
apply to every producer, consumer and admin client alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from stafet.config import Settings
from stafet.kafka.credentials import stored_password

#: Every producer partitions keys the way the stream engine (quixstreams) and Java clients do, so
#: one patient's records land on the same partition number whichever stafet process wrote them
#: (a referral's timer tick must meet the referral's state).
PARTITIONER = "murmur2_random"

#: The local broker's super user (bootstrapped at storage-format time; provisions the rest).
ADMIN = "admin"
SCRAM_MECHANISM = "SCRAM-SHA-512"

#: What a helper accepts as "the Kafka to talk to": settings (this process's principal), a
#: ready client_config() dict, or a bare bootstrap string (plaintext only).
KafkaTarget = Settings | Mapping[str, Any] | str


def password_for(settings: Settings, principal: str, *, create: bool = False) -> SecretStr:
    """``principal``'s SCRAM password: from the settings when given, else the generated file
    (made only with ``create``: by the tooling that creates the principal)."""
    if principal == ADMIN and settings.kafka_admin_password is not None:
        return settings.kafka_admin_password
    if principal == settings.kafka_username and settings.kafka_password is not None:
        return settings.kafka_password
    return stored_password(settings.secrets_dir, principal, create=create)


def ca_location(settings: Settings) -> str | None:
    """The CA file to trust: the configured one, else the local broker's CA once it exists,
    else None (the system trust store: a broker with a publicly signed certificate)."""
    if settings.kafka_ca_file is not None:
        return str(settings.kafka_ca_file)
    return str(settings.ca_file) if settings.ca_file.exists() else None


def client_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """confluent-kafka configuration for this process's principal, plus ``extra``."""
    config: dict[str, Any] = {"bootstrap.servers": settings.bootstrap}
    if settings.kafka_security == "sasl_ssl":
        config.update(
            {
                "security.protocol": "SASL_SSL",
                "sasl.mechanisms": SCRAM_MECHANISM,
                "sasl.username": settings.kafka_username,
                "sasl.password": password_for(settings, settings.kafka_username).get_secret_value(),
            }
        )
        if (ca := ca_location(settings)) is not None:
            config["ssl.ca.location"] = ca
    return {**config, **extra}


def as_admin(settings: Settings) -> Settings:
    """The same settings as the local broker's super user (tooling: start, provision, topics);
    plaintext settings are returned as they are."""
    if settings.kafka_security != "sasl_ssl":
        return settings
    return settings.model_copy(
        update={"kafka_username": ADMIN, "kafka_password": password_for(settings, ADMIN)}
    )


def as_principal(settings: Settings, principal: str) -> Settings:
    """The same settings as another principal (``stafet up`` gives each service its own)."""
    return settings.model_copy(
        update={"kafka_username": principal, "kafka_password": password_for(settings, principal)}
    )


def resolve_config(target: KafkaTarget, **extra: Any) -> dict[str, Any]:
    """A confluent-kafka config from settings, a config dict or a plaintext bootstrap string."""
    if isinstance(target, Settings):
        return client_config(target, **extra)
    if isinstance(target, str):
        return {"bootstrap.servers": target, **extra}
    return {**target, **extra}
