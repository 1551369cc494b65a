"""A failure that is not the record's fault must stop the worker (exit 70) rather than let Faust
acknowledge the record and move on; a clean block must not."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import asyncio
from stafet.streams.dead_letter import stop_on_failure

async def main(fail):
    async with stop_on_failure("test"):
        if fail:
            raise RuntimeError("the broker never confirmed the send")
    print("went on")

asyncio.run(main({fail}))
"""


def run(fail: bool) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT.format(fail=fail)], capture_output=True,
                          text=True, timeout=60)


def test_an_escaping_failure_exits_with_70_for_a_replay():
    result = run(True)
    assert result.returncode == 70
    assert "went on" not in result.stdout


def test_a_clean_record_goes_on():
    result = run(False)
    assert result.returncode == 0
    assert "went on" in result.stdout
