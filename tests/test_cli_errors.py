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
