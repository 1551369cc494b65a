"""Client configuration for every Kafka client stafet creates (confluent-kafka and Faust).

One place decides how a process reaches the broker, so that security settings (SASL/SCRAM, TLS)
apply to every producer, consumer and admin client alike.
"""

from __future__ import annotations

from typing import Any

from stafet.config import Settings


def client_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """confluent-kafka configuration for this process's principal, plus ``extra``."""
    return {"bootstrap.servers": settings.bootstrap, **extra}
