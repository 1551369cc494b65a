"""The local cluster's layout and broker configs (no broker started: these run in every suite)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stafet.config import Settings
from stafet.kafka.local import KafkaToolingError, LocalKafka, LocalKafkaCluster, local_cluster


def _lines(node: LocalKafka) -> set[str]:
    return set(node.render_config().splitlines())


def test_three_nodes_share_one_quorum_with_their_own_ports_and_dirs(tmp_path: Path) -> None:
    settings = Settings(
        kafka_brokers=3,
        kafka_home=tmp_path,
        kafka_port=9092,
        kafka_controller_port=9093,
        kafka_security="plaintext",
    )
    cluster = LocalKafkaCluster.from_settings(settings)
    assert (
        LocalKafka.from_settings(settings).bootstrap == cluster.bootstrap
    )  # stafet up: the cluster
    assert settings.bootstrap == cluster.bootstrap == "127.0.0.1:9092,127.0.0.1:9094,127.0.0.1:9096"
    voters = "controller.quorum.voters=1@127.0.0.1:9093,2@127.0.0.1:9095,3@127.0.0.1:9097"
    for i, (port, controller) in enumerate([(9092, 9093), (9094, 9095), (9096, 9097)], start=1):
        node = cluster.node(i)
        assert (
            node.home == tmp_path / f"node-{i}" and node.data_dir == tmp_path / f"node-{i}" / "data"
        )
        lines = _lines(node)
        assert f"node.id={i}" in lines and voters in lines
        assert (
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}" in lines
        )
        assert f"log.dirs={node.data_dir}" in lines
        for key in (
            "default.replication.factor",
            "offsets.topic.replication.factor",
            "transaction.state.log.replication.factor",
        ):
            assert f"{key}=3" in lines
        assert {"transaction.state.log.min.isr=2", "min.insync.replicas=2"} <= lines
        assert node.settings.secrets_dir == tmp_path / "secrets"  # shared secrets and TLS


def test_one_node_is_the_single_broker_as_before(tmp_path: Path) -> None:
    settings = Settings(
        kafka_home=tmp_path, kafka_port=9092, kafka_controller_port=9093, kafka_security="plaintext"
    )
    single = LocalKafka.from_settings(settings)
    (node,) = LocalKafkaCluster.from_settings(settings).nodes
    assert node == single and node.home == tmp_path and node.data_dir == tmp_path / "data"
    assert settings.bootstrap == single.bootstrap == "127.0.0.1:9092"
    lines = _lines(single)
    assert {
        "node.id=1",
        "controller.quorum.voters=1@127.0.0.1:9093",
        "default.replication.factor=1",
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "min.insync.replicas=1",
    } <= lines


def test_overlapping_ports_are_refused(tmp_path: Path) -> None:
    settings = Settings(
        kafka_brokers=3, kafka_home=tmp_path, kafka_port=9092, kafka_controller_port=9094
    )
    with pytest.raises(KafkaToolingError, match="overlap"):
        LocalKafkaCluster.from_settings(settings)


def test_the_cli_finds_a_running_cluster_without_being_told(tmp_path: Path) -> None:
    import os

    settings = Settings(kafka_home=tmp_path)
    assert local_cluster(settings).size == 1
    for i in (1, 2, 3):
        (tmp_path / f"node-{i}").mkdir()
        (tmp_path / f"node-{i}" / "server.properties").write_text("")
    (tmp_path / "node-2" / "broker.pid").write_text(str(os.getpid()))  # "running"
    assert local_cluster(settings).size == 3
    assert local_cluster(settings, 1).size == 1
