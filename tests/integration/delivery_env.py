"""A ``stafet deliver`` process with its own registry and real HTTP receivers, for tests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demo.receiver import Receiver
from stafet.config import Settings
from stafet.connectors.sinks.replay import rewind_group
from stafet.kafka.client import as_admin
from stafet.kafka.security import DELIVERY
from stafet.stack import Service, service_env, settings_env
from stafet.subscribers import load_registry, new_secret

from .conftest import free_port

GP_RECIPIENT = "urn:oid:1.2.208.176.1.4|123456"


@dataclass(frozen=True)
class Rest:
    """A REST subscriber to run: a municipality (code) or a GP (ydernummer recipient)."""

    municipality: str | None = None
    recipient: str | None = None
    acknowledges: bool = True
    starts_down: bool = False


@dataclass
class DeliveryEnv:
    settings: Settings
    receivers: dict[str, Receiver]
    service: Service
    env: dict[str, str]  # for `stafet` commands an operator runs (the admin principal)
    root: Path


def _env_name(sid: str) -> str:
    return f"STAFET_SECRET_{sid.upper().replace('-', '_')}"


def _registry_toml(rest: dict[str, Rest], receivers: dict[str, Receiver], outbox: Path) -> str:
    parts = ['[defaults]\nmunicipalities = "kafka"\n']
    for sid, spec in rest.items():
        where = (
            f'party = "municipality"\nmunicipality = "{spec.municipality}"\n'
            if spec.municipality
            else f'party = "referrer"\ntopic = "out.referrer"\nrecipients = ["{spec.recipient}"]\n'
        )
        parts.append(
            f'[[subscriber]]\nid = "{sid}"\nname = "{sid}"\n{where}delivery = "rest"\n'
            f'url = "{receivers[sid].url}"\nsecret_env = "{_env_name(sid)}"\n'
        )
    parts.append(
        f'[[subscriber]]\nid = "letters"\nname = "Brevservice"\nparty = "letter-service"\n'
        f'delivery = "letter"\ntopic = "out.letter"\noutbox = "{outbox}"\n'
    )
    return "\n".join(parts)


@contextmanager
def running_delivery(
    stack: Any, root: Path, rest: dict[str, Rest], **overrides: Any
) -> Iterator[DeliveryEnv]:
    """Receivers + registry + ``stafet deliver``; each subscriber starts at the topics' end."""
    ack_url = f"http://127.0.0.1:{stack.settings.fhir_port}/fhir/$process-message"
    receivers = {
        sid: Receiver(free_port(), new_secret(), ack_url if spec.acknowledges else None)
        for sid, spec in rest.items()
    }
    registry_file = root / "subscribers.toml"
    registry_file.write_text(_registry_toml(rest, receivers, root / "outbox"), encoding="utf-8")
    settings = stack.settings.model_copy(
        update={
            "subscribers_file": registry_file,
            "outbox_dir": root / "outbox",
            "delivery_backoff_initial_s": 0.3,
            "delivery_backoff_max_s": 2.0,
            "delivery_retry_budget_s": 300.0,
            "ack_check_interval_s": 0.5,
            **overrides,
        }
    )
    now_ms = int(time.time() * 1000)
    for s in load_registry(registry_file).pushed():  # from now on, not the session's history
        rewind_group(as_admin(settings), s, s.group_id, now_ms)
    secrets = {_env_name(sid): r.secret for sid, r in receivers.items()}
    env = {**settings_env(as_admin(settings)), **secrets}
    for sid, r in receivers.items():
        if not rest[sid].starts_down:
            r.start()
    service = Service(
        "deliver",
        ["deliver"],
        root / "deliver.log",
        {**service_env(settings, DELIVERY, health_port=overrides.get("health_port", 0)), **secrets},
    )
    service.start()
    deadline = time.monotonic() + 60  # it replays the audit trail, then starts its parts
    while time.monotonic() < deadline and service.alive():
        log = (
            (root / "deliver.log").read_text(errors="replace")
            if (root / "deliver.log").exists()
            else ""
        )
        if '"delivery.started"' in log:
            break
        time.sleep(0.2)
    assert service.alive() and '"delivery.started"' in log, log[-3000:]
    try:
        yield DeliveryEnv(settings, receivers, service, env, root)
    finally:
        service.stop()
        for r in receivers.values():
            r.stop()
