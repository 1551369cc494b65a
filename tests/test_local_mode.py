"""The local Kafka's security mode when STAFET_KAFKA_SECURITY is not set (stafet/local_mode.py):
the commands that start the local broker run it SASL_SSL, every other command follows the mode
the local storage was formatted in, and a storage formatted in the other mode is neither
reused nor wiped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from stafet.config import Settings, get_settings
from stafet.kafka.local import KafkaToolingError, LocalKafka
from stafet.local_mode import (
    LocalModeMismatch,
    for_clients,
    for_local_stack,
    local_storage_mode,
    mode_was_set,
    storage_mode,
)


@pytest.fixture(autouse=True)
def _no_mode_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """`STAFET_KAFKA_SECURITY=sasl_ssl make test` must not decide these tests."""
    for name in [n for n in os.environ if n.startswith("STAFET_")]:
        monkeypatch.delenv(name)


def _settings(home: Path, **values: object) -> Settings:
    return Settings(
        _env_file=None, kafka_home=home, worker_data_dir=home.parent / "worker", **values
    )


def _format(home: Path, mode: str | None) -> None:
    """A formatted node storage as LocalKafka.format_storage leaves it (mode None: as stafet
    left it before it wrote the mode down)."""
    (home / "data").mkdir(parents=True)
    (home / "data" / "meta.properties").write_text("cluster.id=abc\nnode.id=1\n")
    if mode is not None:
        (home / "security-mode").write_text(mode)


def test_the_mode_a_storage_was_formatted_for(tmp_path: Path) -> None:
    assert storage_mode(tmp_path / "none") is None
    _format(tmp_path / "old", None)
    assert storage_mode(tmp_path / "old") == "plaintext"  # formatted by an earlier stafet
    _format(tmp_path / "secure", "sasl_ssl")
    assert storage_mode(tmp_path / "secure") == "sasl_ssl"


def test_only_a_value_the_user_gave_counts_as_chosen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not mode_was_set(_settings(tmp_path))
    assert mode_was_set(_settings(tmp_path, kafka_security="plaintext"))
    monkeypatch.setenv("STAFET_KAFKA_SECURITY", "plaintext")
    assert mode_was_set(Settings(_env_file=None))
    monkeypatch.delenv("STAFET_KAFKA_SECURITY")
    env_file = tmp_path / ".env"
    env_file.write_text("STAFET_KAFKA_SECURITY=plaintext\n")
    assert mode_was_set(Settings(_env_file=env_file))


def test_the_local_stack_is_sasl_ssl_unless_the_user_says_plaintext(tmp_path: Path) -> None:
    home = tmp_path / "kafka"
    assert for_local_stack(_settings(home)).kafka_security == "sasl_ssl"  # a fresh machine
    _format(home, "sasl_ssl")
    assert for_local_stack(_settings(home)).kafka_security == "sasl_ssl"  # the second run
    chosen = _settings(home, kafka_security="plaintext")
    assert for_local_stack(chosen).kafka_security == "plaintext"  # LocalKafka.start refuses it


def test_a_storage_formatted_plaintext_is_kept_and_the_error_says_what_to_do(
    tmp_path: Path,
) -> None:
    home = tmp_path / "kafka"
    _format(home, None)
    before = sorted(p.relative_to(home) for p in home.rglob("*"))
    with pytest.raises(LocalModeMismatch) as refused:
        for_local_stack(_settings(home))
    message = str(refused.value)
    assert f"{home} was formatted for plaintext" in message
    assert "STAFET_KAFKA_SECURITY=plaintext make demo" in message
    assert f"delete {home}" in message  # not the default home: no `make clean` advice
    assert sorted(p.relative_to(home) for p in home.rglob("*")) == before
    # with the mode chosen it is used as it is
    assert (
        for_local_stack(_settings(home, kafka_security="plaintext")).kafka_security == "plaintext"
    )


def test_the_default_home_points_at_make_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stafet import local_mode

    home = tmp_path / "kafka"
    _format(home, "plaintext")
    monkeypatch.setattr(local_mode, "_default_home", lambda: home)
    with pytest.raises(LocalModeMismatch, match="`make clean`"):
        local_mode.for_local_stack(_settings(home))


def test_other_commands_follow_the_local_storage(tmp_path: Path) -> None:
    home = tmp_path / "kafka"
    assert for_clients(_settings(home)).kafka_security == "plaintext"  # nothing local: default
    _format(home, "sasl_ssl")
    assert for_clients(_settings(home)).kafka_security == "sasl_ssl"
    # what the user set wins; a remote cluster is none of the local storage's business
    assert for_clients(_settings(home, kafka_security="plaintext")).kafka_security == "plaintext"
    remote = _settings(home, bootstrap_servers="kafka-1.example:9093")
    assert for_clients(remote).kafka_security == "plaintext"


def test_a_local_cluster_is_found_by_its_nodes(tmp_path: Path) -> None:
    home = tmp_path / "kafka"
    for i in (1, 2, 3):
        _format(home / f"node-{i}", "sasl_ssl")
    assert local_storage_mode(_settings(home)) == "sasl_ssl"  # `stafet kafka status` after
    assert for_clients(_settings(home, kafka_brokers=3)).kafka_security == "sasl_ssl"
    assert for_local_stack(_settings(home), brokers=3).kafka_security == "sasl_ssl"
    _format(home, "plaintext")  # the single node, formatted earlier, not running
    assert local_storage_mode(_settings(home), brokers=3) == "sasl_ssl"
    (home / "node-1" / "broker.pid").write_text(str(os.getpid()))  # the cluster runs
    assert for_clients(_settings(home)).kafka_security == "sasl_ssl"
    (home / "node-1" / "broker.pid").unlink()
    assert for_clients(_settings(home)).kafka_security == "plaintext"  # the single node's


def test_the_broker_refuses_the_other_mode_before_it_writes_anything(tmp_path: Path) -> None:
    home = tmp_path / "kafka"
    _format(home, "plaintext")
    broker = LocalKafka.single(_settings(home, kafka_security="sasl_ssl"))
    with pytest.raises(KafkaToolingError, match="STAFET_KAFKA_SECURITY=plaintext to use it"):
        broker.start()
    assert not broker.config_file.exists() and not (home / "secrets").exists()


def test_stafet_demo_on_an_old_plaintext_storage_stops_before_it_starts_anything(
    tmp_path: Path,
) -> None:
    from stafet.cli import main

    home = tmp_path / "kafka"
    _format(home, None)
    env = {"STAFET_KAFKA_HOME": str(home), "STAFET_WORKER_DATA_DIR": str(tmp_path / "worker")}
    get_settings.cache_clear()
    try:
        for command in (["demo"], ["up"], ["kafka", "start"]):
            result = CliRunner().invoke(main, command, env=env)
            assert result.exit_code == 1, result.output
            assert "formatted for plaintext" in result.output
            assert "STAFET_KAFKA_SECURITY=plaintext make demo" in result.output
        assert sorted(p.name for p in home.iterdir()) == ["data"]
    finally:
        get_settings.cache_clear()


def test_a_secure_broker_never_formatted_here_does_not_answer_rather_than_fail(
    tmp_path: Path,
) -> None:
    """`stafet kafka start --brokers 3` on a fresh machine asks first whether the cluster runs;
    with no admin password yet the answer is no, not an error."""
    from stafet.kafka.local import LocalKafkaCluster

    settings = _settings(
        tmp_path / "kafka", kafka_security="sasl_ssl", kafka_port=1, kafka_controller_port=11
    )
    assert LocalKafka.single(settings).answers(timeout=0.1) is False
    assert LocalKafkaCluster.from_settings(settings, 3).brokers_listed(timeout=0.1) == 0
    assert not (tmp_path / "kafka" / "secrets").exists()


def test_kafka_start_with_the_other_mode_chosen_says_what_to_do_without_a_traceback(
    tmp_path: Path,
) -> None:
    from stafet.cli import main

    home = tmp_path / "kafka"
    _format(home, "sasl_ssl")
    env = {"STAFET_KAFKA_HOME": str(home), "STAFET_KAFKA_SECURITY": "plaintext"}
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["kafka", "start"], env=env)
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1 and result.exception.__class__ is SystemExit
    assert "formatted for sasl_ssl, not plaintext" in result.output
    assert "STAFET_KAFKA_SECURITY=sasl_ssl to use it as it is" in result.output
    assert not (home / "server.properties").exists()
