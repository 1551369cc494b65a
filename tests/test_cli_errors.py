"""A StafetError that reaches the top of a command is the user's to act on: one line with what
to do, exit 1, no traceback (stafet/cli/commands.py ``_Commands``)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_a_stafet_error_ends_the_command_with_its_message_not_a_traceback(tmp_path):
    env = {
        **os.environ,
        "STAFET_KAFKA_SECURITY": "plaintext",
        "STAFET_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "STAFET_KAFKA_HOME": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "stafet.cli", "kafka", "provision"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "Error: provisioning needs STAFET_KAFKA_SECURITY=sasl_ssl" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_audit_access_needs_a_patient_or_a_user_and_user_needs_access():
    from click.testing import CliRunner

    from stafet.cli import main

    runner = CliRunner()
    alone = runner.invoke(main, ["audit", "--access"])
    assert alone.exit_code == 2 and "with --access give --patient or --user" in alone.output
    stray = runner.invoke(main, ["audit", "--user", "anna"])
    assert stray.exit_code == 2 and "--user goes with --access" in stray.output
