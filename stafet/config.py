"""One settings object for every stafet process, read from ``STAFET_*`` environment variables.

Secrets are ``SecretStr`` so they never reach a log line or a repr, and may come from files:
``STAFET_SECRETS_DIR`` (or systemd's ``$CREDENTIALS_DIRECTORY``) names a directory with one file
per setting, named like its variable (``STAFET_PATIENT_KEY_SECRET``) — a mounted Kubernetes
Secret or ``LoadCredential=`` works as it is, and no secret needs to be in an environment. A REST
subscriber's webhook secret may be a file there too (:func:`read_secret_file`).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: the directory of secret files (one per setting); systemd's credentials directory otherwise
SECRETS_DIR_ENV, CREDENTIALS_DIR_ENV = "STAFET_SECRETS_DIR", "CREDENTIALS_DIRECTORY"
#: the built-in patient-key secret: fine on loopback, refused next to a real network
DEVELOPMENT_PATIENT_KEY_SECRET = "stafet-local-development-only"


def settings_secrets_dir() -> Path | None:
    """Where this process reads secret files from (None: nowhere)."""
    directory = os.environ.get(SECRETS_DIR_ENV) or os.environ.get(CREDENTIALS_DIR_ENV)
    return Path(directory) if directory else None


def read_secret_file(name: str) -> str | None:
    """The secret file ``name`` in :func:`settings_secrets_dir`, found and read as the settings'
    own secret files are (pydantic's lookup, UTF-8, stripped), for the secrets that are not
    settings (a REST subscriber's webhook secret); None when there is none."""
    directory = settings_secrets_dir()
    if directory is None or not directory.is_dir():
        return None
    path = SecretsSettingsSource.find_case_path(directory, name, case_sensitive=False)
    if path is None or not path.is_file():
        return None
    return path.read_text(encoding="utf-8").strip() or None


class Settings(BaseSettings):
    """Configuration for the broker tooling, the connectors and the stream worker."""

    model_config = SettingsConfigDict(env_prefix="STAFET_", env_file=".env", extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment, then ``.env``, then the secret files (looked up
        when the settings are made, so a test or a child can point elsewhere)."""
        directory = settings_secrets_dir()
        files = (
            SecretsSettingsSource(settings_cls, secrets_dir=directory)
            if directory is not None and directory.is_dir()
            else file_secret_settings
        )
        return init_settings, env_settings, dotenv_settings, files

    # --- Kafka ---------------------------------------------------------------------------
    bootstrap_servers: str = Field(
        "", description="Kafka bootstrap servers; empty means the local broker on kafka_port"
    )
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    kafka_brokers: int = Field(
        1,
        ge=1,
        description="nodes of the local Kafka (`stafet kafka start`): 1, or 3 for a "
        "KRaft cluster whose node i listens on kafka_port + 2(i-1), its controller on "
        "kafka_controller_port + 2(i-1)",
    )
    kafka_home: Path = Field(PROJECT_ROOT / ".stafet" / "kafka", description="config, data, log")
    kafka_libs: Path = Field(
        PROJECT_ROOT / ".stafet" / "kafka-libs", description="broker jars from Maven Central"
    )
    kafka_heap: str = "512m"
    partitions: int = Field(
        12,
        ge=1,
        description="partitions of every stafet topic: the unit of scale-out (workers "
        "beyond this number idle); one patient always stays on one partition",
    )
    replication_factor: int | None = Field(
        None,
        ge=1,
        description="of every stafet topic; unset: 3 on a cluster of 3+ brokers, else "
        "the broker count (a development broker: 1)",
    )
    min_insync_replicas: int | None = Field(
        None,
        ge=1,
        description="unset: 2 at replication factor 3+, else 1 (with acks=all a write "
        "survives one lost broker)",
    )
    ingest_retention_days: float = Field(
        60.0, description="ingest.* and events.*: must outlast a referral's wait for triage"
    )
    out_retention_days: float = Field(30.0, description="out.*: how long subscribers may lag")
    dlq_retention_days: float = Field(
        30.0, description="dlq.*, alerts.operator, acks.inbound: time for an operator to act"
    )
    kafka_security: Literal["plaintext", "sasl_ssl"] = Field(
        "plaintext",
        description="sasl_ssl: SCRAM-SHA-512 over TLS and ACLs (see README, Access "
        "control); the local broker is started in the same mode",
    )
    allow_plaintext_kafka: bool = Field(
        False,
        description="let plaintext Kafka with bootstrap servers off loopback start (a "
        "closed pilot network only, e.g. deploy/compose.yaml); refused otherwise",
    )
    kafka_username: str = Field(
        "admin",
        description="this process's SCRAM principal (sasl_ssl); `stafet up` gives each "
        "service its own",
    )
    kafka_password: SecretStr | None = Field(
        None,
        description="its password; unset: read from kafka_secrets_dir/<username>.password",
    )
    kafka_admin_password: SecretStr | None = Field(
        None,
        description="the local broker's super user 'admin'; unset: generated once into "
        "kafka_secrets_dir/admin.password",
    )
    kafka_ca_file: Path | None = Field(
        None,
        description="CA that signed the broker's certificate; unset: the local broker's CA",
    )
    kafka_secrets_dir: Path | None = Field(
        None,
        description="generated passwords (mode 0600); unset: <kafka_home>/secrets",
    )

    # --- MLLP source connector -----------------------------------------------------------
    mllp_host: str = "127.0.0.1"
    mllp_port: int = 2575
    mllp_max_message_bytes: int = Field(1_048_576, description="larger frames are rejected (AR)")
    mllp_default_charset: str = Field(
        "utf-8", description="charset when MSH-18 is empty (UTF-8 fails loudly on Latin-1 bytes)"
    )
    mllp_produce_timeout_s: float = Field(
        10.0, description="wait this long for the broker's ack before answering AE"
    )
    mllp_tls_cert: Path | None = Field(
        None, description="PEM certificate chain (and key, unless mllp_tls_key): MLLP over TLS"
    )
    mllp_tls_key: Path | None = Field(None, description="PEM private key of mllp_tls_cert")
    mllp_tls_client_ca: Path | None = Field(
        None, description="require client certificates signed by this CA (mutual TLS)"
    )
    receiving_application: str = "STAFET"
    receiving_facility: str = "STAFET"

    # --- FHIR HTTP source connector -------------------------------------------------------
    fhir_host: str = "127.0.0.1"
    fhir_port: int = 8080
    fhir_max_body_bytes: int = Field(1_048_576, description="larger bodies get 413")
    fhir_produce_timeout_s: float = Field(10.0, description="then 503, the client retries")
    fhir_unknown_referral_wait_s: float = Field(
        5.0,
        description="how long a decision for a referral not yet in index.referral waits for "
        "the stream stage to index it (an HL7 v2 REF^I12 a moment ago) before it gets 422",
    )
    fhir_tls_cert: Path | None = Field(None, description="PEM certificate chain (+ key): HTTPS")
    fhir_tls_key: Path | None = Field(None, description="PEM private key of fhir_tls_cert")
    fhir_tls_client_ca: Path | None = Field(
        None, description="require client certificates signed by this CA (mutual TLS)"
    )

    # --- stream worker -------------------------------------------------------------------
    app_id: str = Field(
        "stafet",
        description="the stream stage's consumer group and "
        "transactional-id prefix; workers with the same id share the partitions",
    )
    worker_data_dir: Path = Field(PROJECT_ROOT / ".stafet" / "worker", description="RocksDB state")
    processing_guarantee: Literal["exactly-once", "at-least-once"] = Field(
        "exactly-once",
        description="exactly-once: outputs, state and input offsets in one Kafka transaction "
        "(see docs/decisions.md); at-least-once only for measurements",
    )
    worker_commit_interval_s: float = Field(
        0.5,
        description="how often the stream stage commits its transaction: a downstream "
        "read_committed consumer sees outputs after at most about this long",
    )
    worker_session_timeout_s: float = Field(
        15.0, description="a crashed worker's partitions move to the others after this long"
    )
    worker_transaction_timeout_s: float = Field(
        30.0,
        description="a crashed worker's open transaction is aborted by the broker after "
        "this long; until then read_committed consumers wait at it (keep it well above the "
        "commit interval)",
    )
    worker_stall_exit_s: float = Field(
        60.0,
        gt=0,
        description="the worker exits (code 70) when its main loop has not come "
        "round for this long — a Kafka call blocked for good (librdkafka #5511) — so its "
        "supervisor starts a fresh one; its open transaction is fenced, nothing is lost",
    )
    state_retention_days: float = Field(
        90.0,
        description="state of a finished stay or a closed referral is kept this long "
        "(late corrections find what they revise), then pruned",
    )
    validate_every: int = Field(
        20,
        ge=0,
        description="full fhir.resources validation of 1 HospitalNotification in N "
        "(deterministic sample; 1 = every one, 0 = none); MedCom's invariants are checked on "
        "every message by the builder, and every Bundle kind is validated by the tests",
    )
    referral_decision_deadline_days: float = Field(
        30.0, description="alert referrer and municipality when a referral has no decision by then"
    )
    referral_timer_interval_s: float = Field(
        30.0, description="how often deadlines and parked decisions are checked"
    )
    pending_decision_max_age_s: float = Field(
        3600.0,
        description="a decision whose referral never arrives goes to dlq.referral after this",
    )
    unit_contact_name: str = Field(
        "Visitationssekretariatet",
        description="contact in receipts/deadline letters when the "
        "event names none (MedCom requires one)",
    )
    unit_contact_phone: str = Field("00 00 00 00", description="set the unit's real number")
    default_timezone: str = Field(
        "Europe/Copenhagen", description="for HL7 times without an offset"
    )
    directory_file: Path = Field(
        PROJECT_ROOT / "deploy" / "directory.toml",
        description="the party directory: SOR + EAN of every municipality unit, hospital unit "
        "and GP stafet addresses (see README, Party directory)",
    )

    # --- delivery to subscribers (connectors/sinks/delivery.py) ------------------------------------
    subscribers_file: Path = Field(
        PROJECT_ROOT / "deploy" / "subscribers.toml",
        description="the subscriber registry: who receives what, and how (see README)",
    )
    outbox_dir: Path = Field(PROJECT_ROOT / ".stafet" / "outbox", description="letter outbox root")
    delivery_timeout_s: float = Field(10.0, description="one HTTP POST to a subscriber")
    delivery_backoff_initial_s: float = Field(1.0, description="first retry after about this long")
    delivery_backoff_max_s: float = Field(300.0, description="retries are at most this far apart")
    delivery_retry_budget_s: float = Field(
        86400.0, description="keep retrying a message this long, then dlq.delivery + alert"
    )
    ack_timeout_s: float = Field(
        1800.0,
        description="resend when no MedCom Acknowledgement came in this long (MedCom: 30 min)",
    )
    ack_max_resends: int = Field(2, ge=0, description="then dlq.delivery + alert (MedCom: 2)")
    ack_check_interval_s: float = Field(
        5.0, description="how often overdue acknowledgements are checked"
    )
    webhook_tolerance_s: float = Field(
        300.0,
        gt=0,
        description="a signed acknowledgement whose webhook-timestamp is more than "
        "this far in the past or the future is refused (a replay, or a clock that is off)",
    )

    # --- identity and secrets -------------------------------------------------------------
    patient_key_secret: SecretStr = Field(
        SecretStr(DEVELOPMENT_PATIENT_KEY_SECRET),
        description="HMAC secret for pseudonymous patient keys; the built-in one is refused "
        "off loopback (stafet/safety.py) — set a real one, best as a file in STAFET_SECRETS_DIR",
    )

    addressee_key: SecretStr | None = Field(
        None,
        description="Fernet key sealing a person's CPR in stafet.recipient headers and "
        "outbox envelopes (stafet/addressee.py; `stafet letters new-key`); unset: derived from "
        "patient_key_secret. The letter service needs it, not the patient-key secret",
    )

    # --- health and metrics (stafet/observability.py) ---------------------------------------
    health_host: str = Field(
        "127.0.0.1",
        description="where /healthz, /readyz and /metrics "
        "listen (0.0.0.0 in a container, for the probes and Prometheus)",
    )
    health_port: int = Field(
        9180,
        ge=-1,
        description="their port (0: any free port, logged; -1: none). `stafet up` "
        "gives its children 9180 worker, 9181 mllp, 9182 fhir, 9183 deliver (from this base)",
    )
    delivery_session_timeout_s: float = Field(
        6.0,
        description="a standby `stafet deliver` takes over this long after the active one "
        "died (Kafka group membership; the broker's minimum is 6 s)",
    )

    # --- operator console (stafet/console/) ------------------------------------------------
    console_host: str = Field(
        "127.0.0.1",
        description="where `stafet console` listens; off loopback it needs console_tls_cert "
        "and console_session_secret, or it refuses to start (stafet/safety.py)",
    )
    console_port: int = Field(9190, ge=0, description="its port (0: any free port, logged)")
    console_tls_cert: Path | None = Field(
        None,
        description="PEM certificate chain (+ key): the console serves HTTPS only, and its "
        "session cookie is Secure",
    )
    console_tls_key: Path | None = Field(None, description="PEM private key of console_tls_cert")
    console_users_file: Path = Field(
        PROJECT_ROOT / ".stafet" / "console-users.toml",
        description="the console's users: name, role (operator | municipality), municipality "
        "code, scrypt password hash (`stafet console add-user` prints an entry); re-read when "
        "it changes",
    )
    console_session_secret: SecretStr | None = Field(
        None,
        description="HMAC key of the console's session cookies, the same on every replica; "
        "unset: a random one per process (everyone logs in again after a restart), refused off "
        "loopback",
    )
    console_session_max_age_s: float = Field(8 * 3600.0, description="a login lasts this long")
    console_processes: str = Field(
        "",
        description="name=url of each process's health endpoint base the Flow page probes, "
        "comma-separated (e.g. worker=http://127.0.0.1:9180); unset: the ports `stafet up` "
        "gives its children on STAFET_HEALTH_HOST",
    )
    console_refresh_s: int = Field(10, ge=0, description="the Flow page reloads itself (0: no)")
    console_oidc_issuer: str = Field(
        "",
        description="OpenID Connect provider the console may log people in through (its "
        "issuer URL, e.g. https://login.microsoftonline.com/<tenant>/v2.0); unset: the users "
        "file only. Off loopback it must be https (stafet/safety.py)",
    )
    console_oidc_client_id: str = Field(
        "", description="the console's client id at the provider (the ID token's audience)"
    )
    console_oidc_client_secret: SecretStr | None = Field(
        None,
        description="its client secret (best as the file STAFET_CONSOLE_OIDC_CLIENT_SECRET in "
        "STAFET_SECRETS_DIR); unset: a public client, PKCE only",
    )
    console_oidc_redirect_url: str = Field(
        "",
        description="the console's external URL + /oidc/callback, as registered at the "
        "provider; unset: derived from the request (fine on loopback only)",
    )
    console_oidc_scopes: str = Field("openid profile", description="scopes asked for")
    console_oidc_role_claim: str = Field(
        "stafet_role",
        description="the ID token claim with the stafet role: operator | municipality",
    )
    console_oidc_municipality_claim: str = Field(
        "stafet_municipality",
        description="the ID token claim with a municipality user's 4-digit municipality code",
    )

    # --- logging ---------------------------------------------------------------------------
    log_level: str = "INFO"
    log_json: bool = True

    @property
    def bootstrap(self) -> str:
        """The bootstrap servers to use (the local broker, or every node of the local cluster,
        when none are configured)."""
        return self.bootstrap_servers or ",".join(
            f"127.0.0.1:{self.kafka_port + 2 * i}" for i in range(self.kafka_brokers)
        )

    @property
    def secrets_dir(self) -> Path:
        """Where generated SCRAM passwords live (0600 files, never in the repository)."""
        return self.kafka_secrets_dir or self.kafka_home / "secrets"

    @property
    def tls_dir(self) -> Path:
        """The local broker's CA and certificate."""
        return self.kafka_home / "tls"

    @property
    def ca_file(self) -> Path:
        """The CA file clients trust in sasl_ssl mode."""
        return self.kafka_ca_file or self.tls_dir / "ca.pem"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once from the environment). With STAFET_KAFKA_SECURITY
    unset and the local broker as bootstrap, in the mode the local storage was formatted in
    (``stafet.local_mode``): a command next to ``stafet up`` reaches the broker it started."""
    from stafet.local_mode import for_clients

    return for_clients(Settings())
