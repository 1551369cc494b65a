"""The stafet workloads on Kubernetes, beside the Strimzi resources of :mod:`stafet.deploy_manifests`.

They run the image built by ``deploy/Dockerfile``: a StatefulSet for the stream worker (RocksDB
state on a volume of its own), Deployments for the listeners, delivery and the operator console,
probes on the health port (the console's on its own HTTPS port), secrets mounted as files.
Written out by ``stafet deploy strimzi`` into workloads.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stafet.config import Settings
from stafet.deploy_manifests import BROKERS, Resource, Target, meta
from stafet.kafka.security import CONSOLE, DELIVERY, FHIR, MLLP, WORKER
from stafet.kafka.topics import TopicPlan

HEALTH_PORT = 9180  # /healthz, /readyz, /metrics (STAFET_HEALTH_PORT)
UID = 10001  # the image's non-root user (deploy/Dockerfile)
MLLP_PORT, FHIR_PORT, CONSOLE_PORT = 2575, 8080, 9190

# where the pods find things (the image's defaults; deploy/Dockerfile sets the same)
KAFKA_SECRETS_DIR = "/var/run/secrets/stafet/kafka"  # STAFET_KAFKA_SECRETS_DIR
KAFKA_CA_DIR = "/var/run/secrets/stafet/kafka-ca"
APP_SECRET_DIR = "/var/run/secrets/stafet/app"  # STAFET_SECRETS_DIR: STAFET_PATIENT_KEY_SECRET
FHIR_TLS_DIR = "/var/run/secrets/stafet/fhir-tls"  # tls.crt, tls.key, ca.crt (mutual TLS)
FHIR_TLS_SECRET = "stafet-fhir-tls"  # a cert-manager Certificate's Secret has all three keys
CONFIG_DIR = "/etc/stafet/config"  # directory.toml, subscribers.toml (ConfigMap stafet-config)
WORKER_DATA_DIR = "/var/lib/stafet/worker"
OUTBOX_DIR = "/var/spool/stafet/outbox"
APP_SECRET, CONFIG_MAP, OUTBOX_CLAIM = "stafet-app", "stafet-config", "stafet-letter-outbox"
# the operator console's Secrets (docs/deploy.md says who makes them)
CONSOLE_TLS_DIR = "/var/run/secrets/stafet/console-tls"  # tls.crt, tls.key
CONSOLE_TLS_SECRET = "stafet-console-tls"  # a cert-manager Certificate's Secret, or the team's
CONSOLE_USERS_DIR = "/var/run/secrets/stafet/console-users"
CONSOLE_USERS_SECRET, CONSOLE_USERS_KEY = "stafet-console-users", "console-users.toml"
#: key STAFET_CONSOLE_SESSION_SECRET, projected beside the patient key into STAFET_SECRETS_DIR
CONSOLE_SESSION_SECRET = "stafet-console-session"
#: key STAFET_CONSOLE_OIDC_CLIENT_SECRET, projected too when it exists (OIDC login is optional)
CONSOLE_OIDC_SECRET = "stafet-console-oidc"


@dataclass(frozen=True)
class Workload:
    """One stafet process as Kubernetes runs it."""

    name: str  # the `stafet` sub-command
    principal: str
    replicas: int
    env: tuple[tuple[str, str], ...] = ()
    port: tuple[str, int] | None = None  # the service port (name, number)
    patient_key: bool = True  # needs STAFET_PATIENT_KEY_SECRET (from the app Secret)
    health_port: bool = True  # False: /healthz and /readyz on ``port``, over HTTPS (the console)


def service_workloads(settings: Settings) -> list[Workload]:
    """The five long-running processes. ``fhir`` runs once: its memory of received MedCom
    message ids is built at start, so a second replica would store a resend twice. ``deliver``
    runs twice: one active, one standby (control.delivery). The console runs once (a second
    would do: sessions are signed with a shared key) and off loopback serves HTTPS only."""
    return [
        Workload("worker", WORKER, 2, (("STAFET_WORKER_DATA_DIR", WORKER_DATA_DIR),)),
        Workload(
            "mllp",
            MLLP,
            2,
            (("STAFET_MLLP_HOST", "0.0.0.0"), ("STAFET_MLLP_PORT", str(MLLP_PORT))),
            ("mllp", MLLP_PORT),
        ),
        Workload(
            "fhir",
            FHIR,
            1,
            (
                ("STAFET_FHIR_HOST", "0.0.0.0"),
                ("STAFET_FHIR_PORT", str(FHIR_PORT)),
                # off loopback the listener needs mutual TLS (stafet/safety.py)
                ("STAFET_FHIR_TLS_CERT", f"{FHIR_TLS_DIR}/tls.crt"),
                ("STAFET_FHIR_TLS_KEY", f"{FHIR_TLS_DIR}/tls.key"),
                ("STAFET_FHIR_TLS_CLIENT_CA", f"{FHIR_TLS_DIR}/ca.crt"),
            ),
            ("https", FHIR_PORT),
        ),
        Workload("deliver", DELIVERY, 2, (("STAFET_OUTBOX_DIR", OUTBOX_DIR),), patient_key=False),
        Workload(
            "console",
            CONSOLE,
            1,
            (
                ("STAFET_CONSOLE_HOST", "0.0.0.0"),
                ("STAFET_CONSOLE_PORT", str(CONSOLE_PORT)),
                # off loopback the console needs TLS and a session secret (stafet/safety.py)
                ("STAFET_CONSOLE_TLS_CERT", f"{CONSOLE_TLS_DIR}/tls.crt"),
                ("STAFET_CONSOLE_TLS_KEY", f"{CONSOLE_TLS_DIR}/tls.key"),
                ("STAFET_CONSOLE_USERS_FILE", f"{CONSOLE_USERS_DIR}/{CONSOLE_USERS_KEY}"),
            ),
            ("https", CONSOLE_PORT),
            health_port=False,
        ),
    ]


def console_processes(settings: Settings, target: Target) -> str:
    """STAFET_CONSOLE_PROCESSES: the health endpoints the Flow page probes — each worker pod by
    its StatefulSet name, the other processes by their Service (one of the replicas answers)."""
    svc = f"{target.namespace}.svc:{HEALTH_PORT}"
    worker = next(w for w in service_workloads(settings) if w.name == "worker")
    pods = [
        f"worker-{i}=http://stafet-worker-{i}.stafet-worker.{svc}" for i in range(worker.replicas)
    ]
    return ",".join([*pods, *(f"{n}=http://stafet-{n}.{svc}" for n in ("mllp", "fhir", "deliver"))])


def _env(settings: Settings, target: Target, w: Workload) -> list[dict[str, str]]:
    common = {
        "STAFET_BOOTSTRAP_SERVERS": target.bootstrap,
        "STAFET_KAFKA_SECURITY": "sasl_ssl",
        "STAFET_KAFKA_USERNAME": w.principal,
        "STAFET_KAFKA_SECRETS_DIR": KAFKA_SECRETS_DIR,
        "STAFET_KAFKA_CA_FILE": f"{KAFKA_CA_DIR}/ca.crt",
        "STAFET_KAFKA_HOME": "/tmp/kafka",
        "STAFET_APP_ID": settings.app_id,
        "STAFET_PARTITIONS": str(settings.partitions),
        "STAFET_REPLICATION_FACTOR": str(TopicPlan.from_settings(settings).replication(BROKERS)[0]),
        "STAFET_HEALTH_HOST": "0.0.0.0",
        "STAFET_HEALTH_PORT": str(HEALTH_PORT),
        "STAFET_DIRECTORY_FILE": f"{CONFIG_DIR}/directory.toml",
        "STAFET_SUBSCRIBERS_FILE": f"{CONFIG_DIR}/subscribers.toml",
        "STAFET_LOG_JSON": "true",
    }
    if not w.health_port:  # the console: none of its own; it probes the others'
        del common["STAFET_HEALTH_HOST"], common["STAFET_HEALTH_PORT"]
        common["STAFET_CONSOLE_PROCESSES"] = console_processes(settings, target)
    if w.patient_key:  # one file per secret setting, named like its variable
        common["STAFET_SECRETS_DIR"] = APP_SECRET_DIR
    return [{"name": k, "value": v} for k, v in {**common, **dict(w.env)}.items()]


def _secret_volume(
    name: str, secret: str, key: str, path: str, *more: tuple[str, str]
) -> dict[str, Any]:
    # 0440 + the pod's fsGroup: readable by the non-root user, by nobody else
    items = [{"key": k, "path": p} for k, p in ((key, path), *more)]
    return {"name": name, "secret": {"secretName": secret, "defaultMode": 0o440, "items": items}}


def _volumes(target: Target, w: Workload) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts): the principal's password where ``password_for`` reads it
    (``<secrets dir>/<principal>.password``), the cluster CA, config, scratch space."""
    volumes: list[dict[str, Any]] = [
        _secret_volume("kafka-password", w.principal, "password", f"{w.principal}.password"),
        _secret_volume("kafka-ca", target.ca_secret, "ca.crt", "ca.crt"),
        {"name": "config", "configMap": {"name": CONFIG_MAP}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "kafka-password", "mountPath": KAFKA_SECRETS_DIR, "readOnly": True},
        {"name": "kafka-ca", "mountPath": KAFKA_CA_DIR, "readOnly": True},
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if w.name == "console":  # STAFET_SECRETS_DIR: the patient key and the session key
        volumes.append(
            {
                "name": "app-secret",
                "projected": {
                    "defaultMode": 0o440,
                    "sources": [
                        _projected(APP_SECRET, "STAFET_PATIENT_KEY_SECRET"),
                        _projected(CONSOLE_SESSION_SECRET, "STAFET_CONSOLE_SESSION_SECRET"),
                        _projected(
                            CONSOLE_OIDC_SECRET,
                            "STAFET_CONSOLE_OIDC_CLIENT_SECRET",
                            optional=True,
                        ),
                    ],
                },
            }
        )
        mounts.append({"name": "app-secret", "mountPath": APP_SECRET_DIR, "readOnly": True})
        volumes += [
            _secret_volume(
                "console-tls", CONSOLE_TLS_SECRET, "tls.crt", "tls.crt", ("tls.key", "tls.key")
            ),
            # a Secret volume is updated in place: a user added to it needs no restart
            _secret_volume(
                "console-users", CONSOLE_USERS_SECRET, CONSOLE_USERS_KEY, CONSOLE_USERS_KEY
            ),
        ]
        mounts += [
            {"name": "console-tls", "mountPath": CONSOLE_TLS_DIR, "readOnly": True},
            {"name": "console-users", "mountPath": CONSOLE_USERS_DIR, "readOnly": True},
        ]
    elif w.patient_key:  # STAFET_SECRETS_DIR: the file STAFET_PATIENT_KEY_SECRET
        volumes.append(
            _secret_volume(
                "app-secret", APP_SECRET, "STAFET_PATIENT_KEY_SECRET", "STAFET_PATIENT_KEY_SECRET"
            )
        )
        mounts.append({"name": "app-secret", "mountPath": APP_SECRET_DIR, "readOnly": True})
    if w.name == "fhir":
        volumes.append(
            _secret_volume(
                "fhir-tls",
                FHIR_TLS_SECRET,
                "tls.crt",
                "tls.crt",
                ("tls.key", "tls.key"),
                ("ca.crt", "ca.crt"),
            )
        )
        mounts.append({"name": "fhir-tls", "mountPath": FHIR_TLS_DIR, "readOnly": True})
    if w.name == "worker":
        mounts.append({"name": "worker-data", "mountPath": WORKER_DATA_DIR})
    if w.name == "deliver":  # shared by the active and the standby replica
        volumes.append({"name": "outbox", "persistentVolumeClaim": {"claimName": OUTBOX_CLAIM}})
        mounts.append({"name": "outbox", "mountPath": OUTBOX_DIR})
    return volumes, mounts


def _projected(secret: str, key: str, *, optional: bool = False) -> dict[str, Any]:
    source: dict[str, Any] = {"name": secret, "items": [{"key": key, "path": key}]}
    if optional:  # a missing Secret is no file, not a pod stuck in ContainerCreating
        source["optional"] = True
    return {"secret": source}


def _probe(w: Workload, path: str, period: int, failures: int) -> dict[str, Any]:
    get: dict[str, Any] = {"path": path, "port": "health"}
    if not w.health_port and w.port:  # the console's own port, which is HTTPS only
        get = {"path": path, "port": w.port[0], "scheme": "HTTPS"}
    return {
        "httpGet": get,
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def pod_template(settings: Settings, target: Target, w: Workload) -> dict[str, Any]:
    """Probes on /healthz and /readyz, Prometheus annotations, non-root, read-only root."""
    volumes, mounts = _volumes(target, w)
    ports = [{"name": "health", "containerPort": HEALTH_PORT}] if w.health_port else []
    if w.port:
        ports.append({"name": w.port[0], "containerPort": w.port[1]})
    container = {
        "name": w.name,
        "image": target.image,
        "args": [w.name],
        "ports": ports,
        "env": _env(settings, target, w),
        "volumeMounts": mounts,
        "startupProbe": _probe(w, "/healthz", 10, 30),  # state restore may take minutes
        "livenessProbe": _probe(w, "/healthz", 10, 3),
        "readinessProbe": _probe(w, "/readyz", 5, 2),
        "resources": {
            "requests": {"cpu": "250m", "memory": "512Mi" if w.name == "worker" else "256Mi"},
            # the console holds its index in memory: ≈ 1.6 KB per event (bench/console_index.py)
            "limits": {"memory": {"worker": "2Gi", "console": "1Gi"}.get(w.name, "512Mi")},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    scrape = {  # the console has no /metrics
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(HEALTH_PORT),
        "prometheus.io/path": "/metrics",
    }
    return {
        "metadata": {"labels": _labels(w), **({"annotations": scrape} if w.health_port else {})},
        "spec": {
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 45,  # SIGTERM: finish, commit, leave the group
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": UID,
                "runAsGroup": UID,
                "fsGroup": UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": _labels(w)},
                }
            ],
            "containers": [container],
            "volumes": volumes,
        },
    }


def _labels(w: Workload) -> dict[str, str]:
    return {"app.kubernetes.io/name": "stafet", "app.kubernetes.io/component": w.name}


def _controller(settings: Settings, target: Target, w: Workload) -> Resource:
    spec: dict[str, Any] = {
        "replicas": w.replicas,
        "selector": {"matchLabels": _labels(w)},
        "template": pod_template(settings, target, w),
    }
    if w.name == "worker":  # a stable hostname keeps the transactional id across restarts
        spec.update(
            serviceName=f"stafet-{w.name}",
            podManagementPolicy="Parallel",
            volumeClaimTemplates=[
                {
                    "metadata": {"name": "worker-data"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "10Gi"}},
                    },
                }
            ],
        )
        kind, api = "StatefulSet", "apps/v1"
    else:
        kind, api = "Deployment", "apps/v1"
        if w.name == "fhir":  # never two at once (see service_workloads)
            spec["strategy"] = {"type": "Recreate"}
    return {
        "apiVersion": api,
        "kind": kind,
        "metadata": meta(f"stafet-{w.name}", target, labels=_labels(w)),
        "spec": spec,
    }


def _service(target: Target, w: Workload) -> Resource:
    if w.port is None:  # the worker's headless Service (the StatefulSet's pod names)
        spec: dict[str, Any] = {
            "clusterIP": "None",
            "ports": [{"name": "health", "port": HEALTH_PORT}],
        }
    else:
        ports = [{"name": w.port[0], "port": w.port[1], "targetPort": w.port[0], "protocol": "TCP"}]
        if w.health_port:  # for the console's Flow page (STAFET_CONSOLE_PROCESSES)
            ports.append(
                {"name": "health", "port": HEALTH_PORT, "targetPort": "health", "protocol": "TCP"}
            )
        spec = {"type": "ClusterIP", "ports": ports}
    spec["selector"] = _labels(w)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(f"stafet-{w.name}", target, labels=_labels(w)),
        "spec": spec,
    }


def workloads(settings: Settings, target: Target) -> list[Resource]:
    """StatefulSet / Deployments, their Services, a PodDisruptionBudget each (at most one pod
    down by a voluntary disruption), and the letter outbox claim (ReadWriteMany)."""
    out: list[Resource] = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": meta(OUTBOX_CLAIM, target),
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": "5Gi"}},
            },
        }
    ]
    for w in service_workloads(settings):
        out += [
            _controller(settings, target, w),
            _service(target, w),
            {
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": meta(f"stafet-{w.name}", target, labels=_labels(w)),
                "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _labels(w)}},
            },
        ]
    return out
