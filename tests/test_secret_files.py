"""Secrets from files, never on a command line or in a child's environment (issue 11, item 4)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from stafet.config import Settings
from stafet.errors import StafetError
from stafet.kafka.credentials import stored_password
from stafet.kafka.local import LocalKafka
from stafet.stack import SECRET_VARIABLES, inherited_environment, service_env

SECRET = "9f3b1c5e7a2d4068b1e3f5a7c9d0e2f4"


def test_settings_read_secret_files_from_the_secrets_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "STAFET_PATIENT_KEY_SECRET").write_text(SECRET + "\n")  # as a mounted Secret
    monkeypatch.delenv("STAFET_PATIENT_KEY_SECRET", raising=False)
    monkeypatch.setenv("STAFET_SECRETS_DIR", str(tmp_path))
    assert Settings(_env_file=None).patient_key_secret.get_secret_value() == SECRET
    monkeypatch.setenv("STAFET_PATIENT_KEY_SECRET", "from-the-environment")  # env wins
    assert Settings(_env_file=None).patient_key_secret.get_secret_value() == "from-the-environment"
    monkeypatch.delenv("STAFET_PATIENT_KEY_SECRET")
    monkeypatch.delenv("STAFET_SECRETS_DIR")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))  # systemd LoadCredential=
    assert Settings(_env_file=None).patient_key_secret.get_secret_value() == SECRET


def test_a_child_gets_its_secrets_as_files_and_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(_env_file=None, kafka_home=tmp_path / "kafka", patient_key_secret=SECRET)
    env = service_env(settings, "stafet-worker")
    assert SECRET not in env.values() and not SECRET_VARIABLES & set(env)
    secret_dir = Path(env["STAFET_SECRETS_DIR"])
    assert secret_dir.parent == settings.secrets_dir
    assert (secret_dir / "STAFET_PATIENT_KEY_SECRET").stat().st_mode & 0o777 == 0o600
    assert service_env(settings, "stafet-worker") == env  # the same directory, nothing added
    # what the parent's environment holds is not passed on: the child reads the files
    monkeypatch.setenv("STAFET_PATIENT_KEY_SECRET", "the-parents-own")
    assert "STAFET_PATIENT_KEY_SECRET" not in inherited_environment()
    code = (
        "from stafet.config import Settings; import os; "
        f"print(Settings().patient_key_secret.get_secret_value() == {SECRET!r}, "
        "'STAFET_PATIENT_KEY_SECRET' in os.environ)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**inherited_environment(), **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.stdout.split() == ["True", "False"], out.stderr


def test_an_unknown_principal_gets_an_error_not_a_new_password(tmp_path: Path) -> None:
    with pytest.raises(
        StafetError, match="no password for Kafka principal 'stafet-mlp'.*provision"
    ):
        stored_password(tmp_path, "stafet-mlp")
    assert not (tmp_path / "stafet-mlp.password").exists()
    settings = Settings(_env_file=None, kafka_security="sasl_ssl", kafka_home=tmp_path / "k")
    with pytest.raises(StafetError, match="no password for Kafka principal 'stafet-worker'"):
        service_env(settings, "stafet-worker")  # in the parent, before a child fails to log in


def test_the_storage_tool_gets_the_admin_password_from_an_argfile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(
        _env_file=None,
        kafka_security="sasl_ssl",
        kafka_home=tmp_path,
        kafka_port=19092,
        kafka_controller_port=19093,
    )
    broker = LocalKafka.from_settings(settings)
    broker.write_config()
    seen: list[tuple[list[str], str]] = []

    def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        argfile = Path(cmd[-1][1:])
        seen.append((cmd, argfile.read_text()))
        assert argfile.stat().st_mode & 0o777 == 0o600
        (broker.data_dir).mkdir(parents=True, exist_ok=True)
        (broker.data_dir / "meta.properties").write_text("cluster.id=x\n")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", run)
    broker.format_storage()
    ((cmd, args),) = seen
    password = stored_password(settings.secrets_dir, "admin").get_secret_value()
    assert password not in " ".join(cmd) and cmd[-1].startswith("@")
    assert args.startswith("kafka.tools.StorageTool format -t ")
    assert f"SCRAM-SHA-512=[name=admin,password={password}]" in args
    assert not Path(cmd[-1][1:]).exists()  # removed after the run


def test_audit_takes_the_cpr_from_stdin_never_from_the_command_line(tmp_path: Path) -> None:
    from stafet.cli import main

    runner = CliRunner()
    refused = runner.invoke(main, ["audit", "--patient", "0101012222"])
    assert refused.exit_code == 2 and "Got unexpected extra argument" in refused.output
    bad = runner.invoke(main, ["audit", "--patient"], input="12345\n")
    assert bad.exit_code == 2 and "not a CPR number" in bad.output and "12345" not in bad.output
    help_text = runner.invoke(main, ["audit", "--help"]).output
    assert "never taken from the command line" in help_text


def test_no_secret_setting_is_missing_from_the_list() -> None:
    assert SECRET_VARIABLES == {
        "STAFET_PATIENT_KEY_SECRET",
        "STAFET_KAFKA_PASSWORD",
        "STAFET_KAFKA_ADMIN_PASSWORD",
        "STAFET_ADDRESSEE_KEY",
        "STAFET_CONSOLE_SESSION_SECRET",
        "STAFET_CONSOLE_OIDC_CLIENT_SECRET",
    }


def test_a_rest_subscribers_secret_reaches_the_deliver_child_as_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stafet.stack import subscriber_secret_files
    from stafet.subscribers import load_registry, new_secret

    webhook_secret = new_secret()
    ours = tmp_path / "secrets"
    ours.mkdir()
    (ours / "STAFET_SECRET_GP_T").write_text(webhook_secret + "\n")
    registry = tmp_path / "subscribers.toml"
    registry.write_text(
        '[[subscriber]]\nid = "gp-t"\nname = "GP"\nparty = "referrer"\n'
        'topic = "out.referrer"\ndelivery = "rest"\nurl = "https://gp.example/"\n'
        'secret_env = "STAFET_SECRET_GP_T"\n'
    )
    monkeypatch.delenv("STAFET_SECRET_GP_T", raising=False)
    monkeypatch.setenv("STAFET_SECRETS_DIR", str(ours))
    settings = Settings(_env_file=None, kafka_home=tmp_path / "kafka", subscribers_file=registry)
    files = subscriber_secret_files(settings)
    assert files == {"STAFET_SECRET_GP_T": webhook_secret}
    env = service_env(settings, "stafet-delivery", extra_secrets=files)
    assert webhook_secret not in env.values(), "a file, not the child's environment"
    child_dir = Path(env["STAFET_SECRETS_DIR"])
    assert child_dir != ours
    monkeypatch.setenv("STAFET_SECRETS_DIR", str(child_dir))  # as the child sees it
    assert load_registry(registry).by_id("gp-t").secret().get_secret_value() == webhook_secret
    # in our environment: a file all the same, and the child does not inherit the variable
    monkeypatch.setenv("STAFET_SECRETS_DIR", str(ours))
    (ours / "STAFET_SECRET_GP_T").unlink()
    monkeypatch.setenv("STAFET_SECRET_GP_T", webhook_secret)
    assert subscriber_secret_files(settings) == {"STAFET_SECRET_GP_T": webhook_secret}
    assert "STAFET_SECRET_GP_T" not in inherited_environment(frozenset(files))
    assert inherited_environment()["STAFET_SECRET_GP_T"] == webhook_secret  # others: as before
