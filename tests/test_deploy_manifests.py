"""The deployment files against the plans the code runs on (no broker, no Kubernetes).

The Strimzi resources are generated in memory, printed as YAML, parsed back and compared with
the topic plan (TopicPlan / all_topics) and the ACL plan (kafka_security): what the operators
would create is what `stafet topics` and `stafet kafka provision` create. The committed
deploy/k8s/ must be what the generator prints now; the Dockerfile and compose file are checked
for what docs/deploy.md promises of them.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from stafet.config import PROJECT_ROOT, Settings
from stafet.deploy_manifests import Target, manifests, render
from stafet.kafka.security import (
    CONSOLE,
    DELIVERY,
    FHIR,
    MLLP,
    SERVICE_PRINCIPALS,
    WORKER,
    acl_plan,
    municipality_grants,
    municipality_principal,
)
from stafet.kafka.topics import CONTROL_DELIVERY, TopicPlan, all_topics, municipality_topic
from stafet.schemas.municipalities import municipalities

K8S_DIR = PROJECT_ROOT / "deploy" / "k8s"
REGENERATE = "`.venv/bin/stafet deploy strimzi --out deploy/k8s` (no STAFET_* variables set)"
#: Strimzi's vocabulary back to the plan's (written out here, independent of the generator)
RESOURCE = {
    "topic": "TOPIC",
    "group": "GROUP",
    "transactionalId": "TRANSACTIONAL_ID",
    "cluster": "CLUSTER",
}
PATTERN = {"literal": "LITERAL", "prefix": "PREFIXED"}
OPERATION = {
    "Read": "READ",
    "Write": "WRITE",
    "Create": "CREATE",
    "Delete": "DELETE",
    "Alter": "ALTER",
    "Describe": "DESCRIBE",
    "ClusterAction": "CLUSTER_ACTION",
    "AlterConfigs": "ALTER_CONFIGS",
    "DescribeConfigs": "DESCRIBE_CONFIGS",
    "IdempotentWrite": "IDEMPOTENT_WRITE",
    "All": "ALL",
}
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@pytest.fixture(scope="module")
def settings() -> Settings:
    """The settings' defaults, whatever this shell exports (the committed files use them)."""
    with pytest.MonkeyPatch.context() as mp:
        import os

        for name in [n for n in os.environ if n.startswith("STAFET_")]:
            mp.delenv(name)
        return Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.fixture(scope="module")
def files(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    """Every file as generated, printed and parsed back."""
    return {
        name: list(yaml.safe_load_all(render(resources)))
        for name, resources in manifests(settings).items()
    }


def of_kind(files: dict[str, list[dict[str, Any]]], kind: str) -> list[dict[str, Any]]:
    return [r for docs in files.values() for r in docs if r and r["kind"] == kind]


def test_one_kafka_topic_per_planned_topic(files: dict, settings: Settings) -> None:
    topics = of_kind(files, "KafkaTopic")
    names = [t["spec"]["topicName"] for t in topics]
    assert Counter(names) == Counter(all_topics())
    assert {municipality_topic(c) for c in municipalities()} <= set(names)  # all 98
    plan = TopicPlan.from_settings(settings)
    rf, isr = plan.replication(3)
    assert (rf, isr) == (3, 2)
    configs = plan.configs(isr)
    for t in topics:
        topic, spec = t["spec"]["topicName"], t["spec"]
        assert spec["replicas"] == rf, topic
        assert spec["config"] == configs[topic], topic
        assert spec["partitions"] == (1 if topic == CONTROL_DELIVERY else settings.partitions)
        assert DNS_1123_LABEL.match(t["metadata"]["name"]), t["metadata"]["name"]
        assert t["metadata"]["labels"]["strimzi.io/cluster"] == "stafet"
    by_name = {t["spec"]["topicName"]: t["spec"]["config"] for t in topics}
    assert by_name["audit.delivery"]["retention.ms"] == "-1"
    assert by_name["index.referral"]["cleanup.policy"] == "compact"
    assert by_name["ingest.hl7v2"]["retention.ms"] == str(60 * 86_400_000)
    assert len({t["metadata"]["name"] for t in topics}) == len(topics)


def acl_set(user: dict[str, Any]) -> set[tuple[str, str, str, str, str]]:
    """A KafkaUser's ACLs as (principal, resource, name, pattern, operation) tuples."""
    out = set()
    principal = user["metadata"]["name"]
    for rule in user["spec"]["authorization"]["acls"]:
        res = rule["resource"]
        assert rule["host"] == "*"
        for op in rule["operations"]:
            out.add(
                (
                    principal,
                    RESOURCE[res["type"]],
                    res.get("name", "kafka-cluster"),
                    PATTERN[res.get("patternType", "literal")],
                    OPERATION[op],
                )
            )
    return out


def test_one_kafka_user_per_principal_with_exactly_its_grants(
    files: dict, settings: Settings
) -> None:
    users = {u["metadata"]["name"]: u for u in of_kind(files, "KafkaUser")}
    codes = list(municipalities())
    assert set(users) == {
        *SERVICE_PRINCIPALS,
        "stafet-operator",
        "stafet-dlq-operator",
        *(municipality_principal(c) for c in codes),
    }
    plan = {
        (g.principal, g.resource, g.name, g.pattern, g.operation)
        for g in acl_plan(codes, settings.app_id)
    }
    for name, user in users.items():
        assert user["spec"]["authentication"] == {"type": "scram-sha-512"}
        assert user["spec"]["authorization"]["type"] == "simple"
        assert acl_set(user) == {p for p in plan if p[0] == name}, name
    # spot checks of what the plan means, so a plan and generator both wrong cannot pass
    assert acl_set(users["municipality-0751"]) == {
        (g.principal, g.resource, g.name, g.pattern, g.operation)
        for g in municipality_grants("0751")
    }
    assert (
        "stafet-worker",
        "TRANSACTIONAL_ID",
        f"{settings.app_id}-",
        "PREFIXED",
        "WRITE",
    ) in acl_set(users[WORKER])
    assert not any(
        p[1] == "TOPIC" and p[2] == "out.municipality.0101"
        for p in acl_set(users["municipality-0751"])
    )


def test_kafka_cluster_is_kraft_with_scram_tls_and_the_plans_defaults(files: dict) -> None:
    (pool,) = of_kind(files, "KafkaNodePool")
    (kafka,) = of_kind(files, "Kafka")
    assert pool["spec"]["replicas"] == 3
    assert set(pool["spec"]["roles"]) == {"controller", "broker"}
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    spec = kafka["spec"]["kafka"]
    (listener,) = spec["listeners"]
    assert listener["tls"] is True and listener["authentication"]["type"] == "scram-sha-512"
    assert spec["authorization"]["type"] == "simple"
    assert spec["config"]["default.replication.factor"] == 3
    assert spec["config"]["min.insync.replicas"] == 2
    assert spec["config"]["transaction.state.log.min.isr"] == 2
    assert {
        r["apiVersion"]
        for r in [pool, kafka, *of_kind(files, "KafkaTopic"), *of_kind(files, "KafkaUser")]
    } == {"kafka.strimzi.io/v1beta2"}


def pods(files: dict) -> dict[str, dict[str, Any]]:
    return {
        r["metadata"]["name"]: r
        for r in files["workloads.yaml"]
        if r["kind"] in ("Deployment", "StatefulSet")
    }


def test_workloads_probe_run_as_non_root_and_mount_their_secrets(files: dict) -> None:
    controllers = pods(files)
    assert {n: c["kind"] for n, c in controllers.items()} == {
        "stafet-worker": "StatefulSet",
        "stafet-mllp": "Deployment",
        "stafet-fhir": "Deployment",
        "stafet-deliver": "Deployment",
        "stafet-console": "Deployment",
    }
    assert controllers["stafet-deliver"]["spec"]["replicas"] == 2
    principal = {
        "stafet-worker": WORKER,
        "stafet-mllp": MLLP,
        "stafet-fhir": FHIR,
        "stafet-deliver": DELIVERY,
        "stafet-console": CONSOLE,
    }
    for name, controller in controllers.items():
        pod = controller["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        env = {e["name"]: e for e in c["env"]}
        if name != "stafet-console":  # its probes are on its own port (the next test)
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                assert c[probe]["httpGet"] == {"path": path, "port": "health"}, (name, probe)
            assert {"name": "health", "containerPort": 9180} in c["ports"]
            annotations = controller["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/port"] == "9180"
            assert annotations["prometheus.io/path"] == "/metrics"
            assert env["STAFET_HEALTH_PORT"]["value"] == "9180"
        assert all(set(e) == {"name", "value"} for e in c["env"]), "a secret in the environment"
        assert not any(
            "PASSWORD" in n
            or ("SECRET" in n and n not in ("STAFET_KAFKA_SECRETS_DIR", "STAFET_SECRETS_DIR"))
            for n in env
        ), name
        assert env["STAFET_KAFKA_USERNAME"]["value"] == principal[name]
        assert env["STAFET_KAFKA_SECURITY"]["value"] == "sasl_ssl"
        assert env["STAFET_BOOTSTRAP_SERVERS"]["value"] == "stafet-kafka-bootstrap.stafet.svc:9093"
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        # the password where password_for() reads it: <secrets dir>/<principal>.password,
        # from the Secret the User Operator makes for the KafkaUser (key "password")
        secret = volumes["kafka-password"]["secret"]
        assert secret["secretName"] == principal[name]
        assert secret["items"] == [{"key": "password", "path": f"{principal[name]}.password"}]
        assert mounts["kafka-password"] == env["STAFET_KAFKA_SECRETS_DIR"]["value"]
        ca = volumes["kafka-ca"]["secret"]
        assert ca["secretName"] == "stafet-cluster-ca-cert"
        ca_file = f"{mounts['kafka-ca']}/{ca['items'][0]['path']}"
        assert env["STAFET_KAFKA_CA_FILE"]["value"] == ca_file
        if "app-secret" in volumes:  # the patient key as a file in STAFET_SECRETS_DIR
            assert env["STAFET_SECRETS_DIR"]["value"] == mounts["app-secret"]
            app_secret = volumes["app-secret"]
            sources = (  # the console's also holds its session key (the next test)
                [s["secret"] for s in app_secret["projected"]["sources"]]
                if "projected" in app_secret
                else [{"name": app_secret["secret"]["secretName"], **app_secret["secret"]}]
            )
            assert sources[0]["name"] == "stafet-app"
            assert sources[0]["items"] == [
                {"key": "STAFET_PATIENT_KEY_SECRET", "path": "STAFET_PATIENT_KEY_SECRET"}
            ]
        assert ("app-secret" in volumes) == (name != "stafet-deliver")
    # the FHIR listener binds 0.0.0.0, so it must have mutual TLS or it refuses to start
    (fhir,) = controllers["stafet-fhir"]["spec"]["template"]["spec"]["containers"]
    fhir_env = {e["name"]: e["value"] for e in fhir["env"]}
    fhir_mounts = {m["name"]: m["mountPath"] for m in fhir["volumeMounts"]}
    assert {fhir_env[f"STAFET_FHIR_TLS_{k}"] for k in ("CERT", "KEY", "CLIENT_CA")} == {
        f"{fhir_mounts['fhir-tls']}/{f}" for f in ("tls.crt", "tls.key", "ca.crt")
    }
    from stafet.safety import problems

    as_deployed = Settings(
        _env_file=None,
        patient_key_secret="from-the-secret-file",
        **{
            k[7:].lower(): v
            for k, v in fhir_env.items()
            if k.startswith("STAFET_") and k != "STAFET_SECRETS_DIR"
        },
    )
    assert problems(as_deployed, "fhir") == []
    worker = controllers["stafet-worker"]
    (claim,) = worker["spec"]["volumeClaimTemplates"]
    (c,) = worker["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert {"name": claim["metadata"]["name"], "mountPath": env["STAFET_WORKER_DATA_DIR"]} in c[
        "volumeMounts"
    ]


def test_the_console_serves_https_with_its_secrets_and_would_start(files: dict) -> None:
    console = pods(files)["stafet-console"]
    assert console["kind"] == "Deployment" and console["spec"]["replicas"] == 1
    pod = console["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["args"] == ["console"] and c["ports"] == [{"name": "https", "containerPort": 9190}]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert c[probe]["httpGet"] == {"path": path, "port": "https", "scheme": "HTTPS"}
    assert "annotations" not in console["spec"]["template"]["metadata"]  # no /metrics
    env = {e["name"]: e["value"] for e in c["env"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert env["STAFET_CONSOLE_HOST"] == "0.0.0.0" and env["STAFET_CONSOLE_PORT"] == "9190"
    assert "STAFET_HEALTH_PORT" not in env  # it has none; its probes are on 9190
    tls = volumes["console-tls"]["secret"]
    assert tls["secretName"] == "stafet-console-tls"
    assert (env["STAFET_CONSOLE_TLS_CERT"], env["STAFET_CONSOLE_TLS_KEY"]) == tuple(
        f"{mounts['console-tls']}/{i['path']}" for i in tls["items"]
    )
    users = volumes["console-users"]["secret"]
    assert users["secretName"] == "stafet-console-users"
    assert (
        env["STAFET_CONSOLE_USERS_FILE"] == f"{mounts['console-users']}/{users['items'][0]['path']}"
    )
    # the session key is a file in STAFET_SECRETS_DIR, from a Secret of its own
    sources = {
        s["secret"]["name"]: s["secret"]["items"]
        for s in volumes["app-secret"]["projected"]["sources"]
    }
    assert sources["stafet-console-session"] == [
        {"key": "STAFET_CONSOLE_SESSION_SECRET", "path": "STAFET_CONSOLE_SESSION_SECRET"}
    ]
    # the OIDC client secret too, when a team creates it: optional, so no Secret is no file
    (oidc,) = [
        s["secret"]
        for s in volumes["app-secret"]["projected"]["sources"]
        if s["secret"]["name"] == "stafet-console-oidc"
    ]
    assert oidc["optional"] is True
    assert oidc["items"] == [
        {"key": "STAFET_CONSOLE_OIDC_CLIENT_SECRET", "path": "STAFET_CONSOLE_OIDC_CLIENT_SECRET"}
    ]
    assert "optional" not in volumes["app-secret"]["projected"]["sources"][0]["secret"]
    assert mounts["app-secret"] == env["STAFET_SECRETS_DIR"]
    # as deployed (with its secret files) it passes stafet/safety.py; without them it would not
    from stafet.safety import problems

    from_env = {
        k[7:].lower(): v
        for k, v in env.items()
        if k.startswith("STAFET_") and k != "STAFET_SECRETS_DIR"
    }
    as_deployed = Settings(
        _env_file=None,
        patient_key_secret="from-the-secret-file",
        console_session_secret="from-the-secret-file",
        **from_env,
    )
    assert problems(as_deployed, "console") == []
    without_files = Settings(_env_file=None, patient_key_secret="x", **from_env)
    (refused,) = problems(without_files, "console")
    assert "STAFET_CONSOLE_SESSION_SECRET" in refused
    # a ClusterIP Service on 9190, and every process the Flow page probes has a health port
    services = {
        r["metadata"]["name"]: r["spec"] for r in files["workloads.yaml"] if r["kind"] == "Service"
    }
    assert services["stafet-console"]["type"] == "ClusterIP"
    assert services["stafet-console"]["ports"] == [
        {"name": "https", "port": 9190, "targetPort": "https", "protocol": "TCP"}
    ]
    probed = dict(p.split("=", 1) for p in env["STAFET_CONSOLE_PROCESSES"].split(","))
    assert set(probed) == {"worker-0", "worker-1", "mllp", "fhir", "deliver"}
    for name, url in probed.items():
        host, port = url.removeprefix("http://").rsplit(":", 1)
        service = host.split(".")[-3]  # <pod>.<service>.<namespace>.svc or <service>.<ns>.svc
        assert host.endswith(".stafet.svc") and port == "9180", url
        assert {"health": 9180}.items() <= {
            p["name"]: p["port"] for p in services[service]["ports"]
        }.items(), name


def test_services_and_disruption_budgets(files: dict) -> None:
    docs = files["workloads.yaml"]
    services = {r["metadata"]["name"]: r["spec"] for r in docs if r["kind"] == "Service"}
    assert services["stafet-mllp"]["ports"][0]["port"] == 2575
    assert services["stafet-fhir"]["ports"][0]["port"] == 8080
    budgets = {r["metadata"]["name"]: r["spec"] for r in docs if r["kind"] == "PodDisruptionBudget"}
    for name, controller in pods(files).items():
        selector = controller["spec"]["selector"]["matchLabels"]
        assert budgets[name]["selector"]["matchLabels"] == selector
        assert (
            controller["spec"]["template"]["metadata"]["labels"].items()
            >= controller["spec"]["selector"]["matchLabels"].items()
        )
    for r in docs:
        assert DNS_1123_LABEL.match(r["metadata"]["name"]), r["metadata"]["name"]


def test_committed_manifests_are_what_the_generator_prints(settings: Settings) -> None:
    for name, resources in manifests(settings).items():
        path = K8S_DIR / name
        assert path.exists(), f"{path} missing: run {REGENERATE}"
        assert path.read_text(encoding="utf-8") == render(resources), (
            f"{path} differs from the topic / ACL plan: run {REGENERATE} and commit it"
        )
    assert sorted(p.name for p in K8S_DIR.glob("*.yaml")) == sorted(manifests(settings))


def test_cli_writes_the_files_and_stdout(tmp_path: Path, settings: Settings) -> None:
    from stafet.cli import main

    env = {"STAFET_LOG_JSON": "false"}
    result = CliRunner().invoke(
        main,
        [
            "deploy",
            "strimzi",
            "--out",
            str(tmp_path),
            "--namespace",
            "pilot",
            "--image",
            "reg/stafet:1",
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    workloads = list(yaml.safe_load_all((tmp_path / "workloads.yaml").read_text()))
    assert {r["metadata"]["namespace"] for r in workloads if r} == {"pilot"}
    images = {
        c["image"]
        for r in workloads
        if r and r["kind"] in ("Deployment", "StatefulSet")
        for c in r["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"reg/stafet:1"}
    stdout = CliRunner().invoke(main, ["deploy", "strimzi", "--out", "-"], env=env)
    assert stdout.exit_code == 0
    kinds = Counter(r["kind"] for r in yaml.safe_load_all(stdout.output) if r)
    assert kinds["KafkaTopic"] == len(all_topics()) and kinds["Kafka"] == 1
    assert Target(namespace="pilot").bootstrap == "stafet-kafka-bootstrap.pilot.svc:9093"


def test_dockerfile_is_multi_stage_and_runs_as_non_root() -> None:
    lines = (PROJECT_ROOT / "deploy" / "Dockerfile").read_text().splitlines()
    froms = [line for line in lines if line.startswith("FROM ")]
    assert len(froms) >= 2 and all("python:3.12-slim" in f for f in froms)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert any(line.startswith("ENTRYPOINT") and '"stafet"' in line for line in lines)
    ignored = (PROJECT_ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".stafet", ".git"} <= set(ignored)


def test_compose_has_three_kraft_brokers_and_the_services() -> None:
    compose = yaml.safe_load((PROJECT_ROOT / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    brokers = {n: s for n, s in services.items() if s.get("image") == "apache/kafka:4.1.1"}
    assert len(brokers) == 3
    node_ids = {s["environment"]["KAFKA_NODE_ID"] for s in brokers.values()}
    assert node_ids == {1, 2, 3}
    voters = {s["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"] for s in brokers.values()}
    assert voters == {"1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"}
    assert all(
        s["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller" for s in brokers.values()
    )
    assert len({s["volumes"][0] for s in brokers.values()}) == 3
    stafet = {n: s for n, s in services.items() if n not in brokers}
    assert {n: s["command"] for n, s in stafet.items()} == {
        "topics": ["topics"],
        "worker": ["worker"],
        "mllp": ["mllp"],
        "fhir": ["fhir"],
        "deliver-a": ["deliver"],
        "deliver-b": ["deliver"],
    }
    for name, s in stafet.items():
        assert str(s["environment"]["STAFET_REPLICATION_FACTOR"]) == "3"
        if name != "topics":
            assert "/healthz" in " ".join(s["healthcheck"]["test"])
            assert s["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert all(
        services["topics"]["depends_on"][b]["condition"] == "service_healthy" for b in brokers
    )
    # every service as configured would start (stafet/safety.py), given its secret files
    from stafet.safety import problems

    for name, s in stafet.items():
        mounted = {m["target"].rsplit("/", 1)[-1] for m in s.get("secrets", [])}
        assert "STAFET_PATIENT_KEY_SECRET" in mounted, name
        env = {
            k[7:].lower(): str(v)
            for k, v in s["environment"].items()
            if k.startswith("STAFET_") and k != "STAFET_SECRETS_DIR"
        }
        as_run = Settings(_env_file=None, patient_key_secret="from-the-secret-file", **env)
        process = "deliver" if name.startswith("deliver") else name
        if process != "topics":
            assert problems(as_run, process) == [], name
