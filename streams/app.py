"""The Faust app: one place that knows the broker, the state directory and the guarantees.

Agents live in their own modules (``normalize``, ``notify``) and register on import; the worker
(``stafet worker``) imports them through :func:`create_worker`.
"""

from __future__ import annotations

import faust

from stafet.config import get_settings
from stafet.kafka_client import client_config, faust_broker_kwargs
from stafet.logging import configure_logging
from stafet.streams.offset_guard import OffsetGuard

settings = get_settings()


def _broker_url(bootstrap: str) -> str:
    return "kafka://" + ";".join(bootstrap.split(","))


app = faust.App(
    settings.app_id,
    broker=_broker_url(settings.bootstrap),
    store="rocksdb://",
    datadir=str(settings.worker_data_dir),
    topic_partitions=settings.partitions,
    topic_replication_factor=1,
    processing_guarantee=settings.processing_guarantee,
    producer_acks=-1,
    web_enabled=False,
    web_port=settings.worker_web_port,
    consumer_auto_offset_reset="earliest",
    broker_commit_every=100,
    broker_commit_interval=0.5,
    stream_wait_empty=False,
    broker_session_timeout=settings.worker_session_timeout_s,
    broker_heartbeat_interval=min(3.0, settings.worker_session_timeout_s / 3),
    **faust_broker_kwargs(settings),  # SASL_SSL + SCRAM as this process's principal, if secure
)


#: every agent checks each record's offset against the group's commit (streams/offset_guard.py)
offset_guard = OffsetGuard(client_config(settings), settings.app_id)


class StafetWorker(faust.Worker):
    """A Faust worker whose logs go through stafet's CPR-masking JSON renderer."""

    def _setup_logging(self) -> None:
        configure_logging(settings.log_level, json=settings.log_json)
        self.spinner = None


def create_worker() -> StafetWorker:
    """The worker with every agent registered."""
    from stafet.streams import normalize, notify, referrals  # noqa: F401  (registers the agents)
    from stafet.streams.stall import StallWatchdog
    from stafet.topics import EVENTS_ENCOUNTER, EVENTS_REFERRAL, INGEST_FHIR, INGEST_HL7V2

    if settings.worker_stall_timeout_s > 0:  # a stalled input partition → exit 70 → restart
        StallWatchdog(client_config(settings), settings.app_id,
                      [INGEST_HL7V2, INGEST_FHIR, EVENTS_ENCOUNTER, EVENTS_REFERRAL],
                      settings.worker_stall_timeout_s).start()
    return StafetWorker(app, loglevel=settings.log_level.lower(), quiet=True,
                        redirect_stdouts=False)
