"""Which security mode the local Kafka runs in when ``STAFET_KAFKA_SECURITY`` is not set.

The ``Settings`` default stays ``plaintext`` (what a bare ``Settings()`` in the tests and the
library means), but the commands a user runs on one machine choose for themselves:

- the commands that start the local broker — ``stafet up``, ``stafet demo``, ``stafet kafka
  start`` (``make up``, ``make demo``) — run it **SASL_SSL** (SCRAM-SHA-512 over TLS + ACLs). A
  storage formatted plaintext (by an earlier stafet, or with ``STAFET_KAFKA_SECURITY=plaintext``)
  is never reformatted or wiped: they stop with an error that says how to keep it
  (``STAFET_KAFKA_SECURITY=plaintext``) or start afresh (``make clean``);
- every other command (``stafet kafka status``, ``topics``, ``audit``, ``dlq``, ``inbox``, a
  ``stafet worker`` of your own …) talks to the local broker in the mode its storage was
  formatted in, so it reaches what ``stafet up`` started; with no local storage, plaintext.

Only when the bootstrap servers are the local broker's (``STAFET_BOOTSTRAP_SERVERS`` unset): a
remote cluster's mode is whatever the settings say. Whether the user set the mode is pydantic's
``model_fields_set`` (the environment, ``.env`` and secret files all count). The children of
``stafet up`` get every setting explicitly, so they never guess.

Reads a few small files under ``STAFET_KAFKA_HOME``; imports nothing heavy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from stafet.config import Settings
from stafet.errors import StafetError

Mode = Literal["plaintext", "sasl_ssl"]
#: the default of the commands that start the local broker
STACK_DEFAULT: Mode = "sasl_ssl"
#: under a node's home: the mode its storage was formatted for (written by format_storage)
MODE_FILE = "security-mode"


class LocalModeMismatch(StafetError):
    """The local storage was formatted in the other mode; the message says what to do."""


def storage_mode(home: Path) -> Mode | None:
    """The mode the node storage under ``home`` was formatted for; None: not formatted. A
    storage formatted before stafet wrote the mode down is plaintext (the only mode then)."""
    if not (home / "data" / "meta.properties").exists():
        return None
    try:
        mode = (home / MODE_FILE).read_text().strip()
    except FileNotFoundError:
        return "plaintext"
    return "sasl_ssl" if mode == "sasl_ssl" else "plaintext"


def _runs(home: Path) -> bool:
    try:
        os.kill(int((home / "broker.pid").read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


def _node_homes(settings: Settings, brokers: int | None) -> list[Path]:
    """The homes of the local broker's nodes: ``kafka_home`` for the single node,
    ``kafka_home/node-<i>`` for a cluster; with ``brokers`` unknown (a client command) both, a
    running one first."""
    home = settings.kafka_home
    n = brokers if brokers is not None else settings.kafka_brokers
    if n > 1:
        return [home / f"node-{i}" for i in range(1, n + 1)]
    if brokers is not None:
        return [home]
    nodes = sorted(home.glob("node-*"), key=lambda p: p.name)
    return sorted([home, *nodes], key=lambda h: not _runs(h))  # stable: single node first


def local_storage_mode(settings: Settings, brokers: int | None = None) -> Mode | None:
    """The mode the local broker's storage was formatted for (None: never formatted)."""
    for home in _node_homes(settings, brokers):
        if (mode := storage_mode(home)) is not None:
            return mode
    return None


def mode_was_set(settings: Settings) -> bool:
    """True when STAFET_KAFKA_SECURITY (environment, .env, secret file or an argument) chose."""
    return "kafka_security" in settings.model_fields_set


def _manages_local_broker(settings: Settings) -> bool:
    return not settings.bootstrap_servers and not mode_was_set(settings)


def for_clients(settings: Settings) -> Settings:
    """A command that connects to Kafka: the local storage's mode unless the user chose one."""
    if not _manages_local_broker(settings):
        return settings
    mode = local_storage_mode(settings)
    if mode is None or mode == settings.kafka_security:
        return settings
    return settings.model_copy(update={"kafka_security": mode})


def for_local_stack(settings: Settings, brokers: int | None = None) -> Settings:
    """A command that starts the local broker (``brokers`` nodes; None: the settings'): SASL_SSL
    unless the user chose; a storage formatted plaintext stops it with what to do."""
    if mode_was_set(settings):
        return settings
    formatted = local_storage_mode(
        settings, brokers if brokers is not None else settings.kafka_brokers
    )
    if formatted not in (None, STACK_DEFAULT):
        raise LocalModeMismatch(
            f"the local Kafka storage in {settings.kafka_home} was formatted for {formatted} (by "
            f"an earlier stafet, or with STAFET_KAFKA_SECURITY={formatted}); the local stack now "
            f"runs {STACK_DEFAULT} by default, and a storage is not reused in the other mode. "
            "Nothing was changed. Either\n"
            f"  - keep it {formatted}: STAFET_KAFKA_SECURITY={formatted} make demo (or make up; "
            f"or the line STAFET_KAFKA_SECURITY={formatted} in .env), or\n"
            f"  - start afresh, secured: {_fresh_start(settings)}; then make demo"
        )
    return settings.model_copy(update={"kafka_security": STACK_DEFAULT})


def for_local_stack_from_environment(brokers: int | None = None) -> Settings:
    """The settings of ``stafet up | demo | kafka start``: the environment's, :func:`for_local_stack`."""
    return for_local_stack(Settings(), brokers)


def _default_home() -> Path:
    return Settings.model_fields["kafka_home"].default  # type: ignore[no-any-return]


def _fresh_start(settings: Settings) -> str:
    """How to drop a local storage: nothing here deletes data by itself."""
    if settings.kafka_home == _default_home():
        return (
            "`make clean` (stops the broker and deletes .stafet/ — the local topics and "
            "their messages, the worker state, the letter outbox, the logs)"
        )
    return (
        f"`stafet kafka stop`, then delete {settings.kafka_home} and the worker state "
        f"{settings.worker_data_dir}"
    )
