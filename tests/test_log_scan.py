"""The session's CPR log scan (tests/log_scan.py) finds a CPR planted in a log or in captured
output, reports it as file:line masked, fails the session, and lets broker noise through."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from demo.hl7_builder import medcom_test_patients
from stafet.config import PROJECT_ROOT

from .log_scan import Scan, log_files, scan_files

CPR = medcom_test_patients()["Einer"].cpr  # a MedCom test patient
DASHED = f"{CPR[:6]}-{CPR[6:]}"
#: lines of the kind a broker or a service writes: offsets, epochs, ids, hashes, sizes
NOISE = [
    "[2026-12-03 14:04:46,138] INFO [LocalLog partition=ingest.fhir-3, dir=/tmp/k/data] Rolled "
    "new log segment at offset 1234567890 in 3 ms. (kafka.log.LocalLog)",
    '{"event": "fhir.accepted", "event_ids": ["0f3c1d2e3a0312851234b7"], "timestamp": '
    '"2026-12-03T14:04:46.138516Z", "ts_ms": 1764770686138, "epoch": 1764770686}',
    "producerId=4000 epoch=2 sessionId=1937482910 size 9999999999 uuid "
    "8c0a1b2c-0312-5012-3456-0a1b2c3d4e5f hash a0312851234b",
]


def _outside_basetemp() -> tempfile.TemporaryDirectory[str]:
    """A temp dir the session's own scan does not see (a planted CPR must not fail it)."""
    return tempfile.TemporaryDirectory(prefix="stafet-cpr-plant-")


def test_a_planted_cpr_is_reported_as_file_and_line_masked() -> None:
    with _outside_basetemp() as tmp:
        log = Path(tmp) / "logs" / "worker.log"
        log.parent.mkdir()
        log.write_text(
            "\n".join(
                [
                    *NOISE,
                    f'{{"event": "x", "patient": "{CPR}"}}',
                    *NOISE,
                    f"guardian urn:oid:1.2.208.176.1.2|{DASHED} notified",
                ]
            )
            + "\n"
        )
        scan = scan_files(log_files([Path(tmp)]))
    assert (scan.files, scan.lines) == (1, 2 * len(NOISE) + 2)
    assert [(h.where, h.line) for h in scan.hits] == [
        (str(log), len(NOISE) + 1),
        (str(log), 2 * len(NOISE) + 2),
    ]
    assert '"patient": "<cpr>"' in scan.hits[0].text and "|<cpr> notified" in scan.hits[1].text
    assert not any(CPR in str(h) or DASHED in str(h) or CPR[:6] in str(h) for h in scan.hits)
    assert "2 CPR numbers" in scan.summary() and "1 log files" in scan.summary()


def test_broker_noise_is_no_hit() -> None:
    scan = Scan()
    with _outside_basetemp() as tmp:
        (Path(tmp) / "broker.log").write_text("\n".join(NOISE * 50))
        scan_files(log_files([Path(tmp)]), scan)
    assert scan.lines == 50 * len(NOISE) and scan.hits == []


def test_data_stores_and_binary_files_are_not_logs() -> None:
    with _outside_basetemp() as tmp:
        root = Path(tmp)
        segment = root / "kafka" / "data" / "ingest.hl7v2-0" / "00000000000000000000.log"
        segment.parent.mkdir(parents=True)
        (root / "kafka" / "data" / "meta.properties").write_text("node.id=1\n")
        segment.write_text(f"PID|||{CPR}^^^CPR\n")  # the records: CPRs by design
        wal = root / "worker" / "state" / "000003.log"
        wal.parent.mkdir(parents=True)
        (wal.parent / "CURRENT").write_text("MANIFEST-000001\n")
        wal.write_text(CPR)
        (root / "blob.log").write_bytes(b"\0\x01" + CPR.encode())
        (root / "kafka" / "broker.log").write_text("started\n")
        (root / "notes.txt").write_text(CPR)  # not a log
        assert [p.relative_to(root) for p in log_files([root])] == [Path("kafka/broker.log")]


def _inner_session(tmp: Path, test_source: str) -> subprocess.CompletedProcess[str]:
    (tmp / "test_inner.py").write_text(test_source)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "tests.log_scan",
            f"--basetemp={tmp / 'base'}",
            "--rootdir",
            str(tmp),
            str(tmp / "test_inner.py"),
        ],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_scan_fails_a_session_whose_log_or_output_holds_a_cpr() -> None:
    with _outside_basetemp() as tmp:
        leak = _inner_session(
            Path(tmp),
            f'''
def test_a_service_logs_a_cpr(tmp_path):
    (tmp_path / "fhir.log").write_text("ok\\nrejected patient {DASHED}\\n")

def test_a_test_prints_one():
    print("patient", "{CPR}")
''',
        )
        clean = _inner_session(
            Path(tmp),
            """
def test_quiet(tmp_path):
    (tmp_path / "fhir.log").write_text("ok\\nstored at offset 1234567890\\n")
""",
        )
    out = leak.stdout + leak.stderr
    assert leak.returncode == 1, out  # every test passed: the scan failed the session
    assert "2 passed" in out and "1 log files, 2 lines" in out and ": 2 CPR numbers" in out
    assert "fhir.log:2: rejected patient <cpr>" in out
    assert "test_inner.py::test_a_test_prints_one [Captured stdout call]:1: patient <cpr>" in out
    assert CPR not in out and DASHED not in out
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "1 log files, 2 lines" in clean.stdout and ": 0 CPR numbers" in clean.stdout


def test_pytests_own_log_capture_is_masked_in_a_failure_report() -> None:
    """In-process log calls reach pytest's capture unformatted by stafet: masked there too."""
    with _outside_basetemp() as tmp:
        failing = _inner_session(
            Path(tmp),
            f'''
import logging

def test_fails_after_logging_a_cpr():
    cpr = "".join(["{CPR[:4]}", "{CPR[4:]}"])  # not in the source a traceback shows
    logging.getLogger("stafet.test").warning("rejected %s", {{"patient": cpr}})
    assert False
''',
        )
    out = failing.stdout + failing.stderr
    assert failing.returncode == 1 and "1 failed" in out
    assert "Captured log call" in out and "rejected {'patient': '<cpr>'}" in out
    assert CPR not in out and ": 0 CPR numbers" in out
