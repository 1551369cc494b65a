"""A pytest plugin: at the end of the session, scan every log the suite's processes wrote for CPR
numbers, and fail the session on any (issue 11: "a scan of all logs of the whole suite: 0 CPR
numbers").

Scanned: every text file named ``*.log`` (or ``*.log.N``) under the session's temp directory —
the services' logs (worker, mllp, fhir, deliver, ``stafet up``-style children) and the brokers'
``broker.log`` — plus the logs under ``.stafet/logs`` written during the session (``stafet
demo``), and every test's captured stdout, stderr and log output (pytest's rendering of log
records is masked first, see :class:`MaskingFormatter`). Not scanned: Kafka's data
directories and RocksDB stores (their ``*.log`` segments hold the records, CPRs by design) and
binary files. A hit is a valid CPR number standing as a token (:func:`stafet.cpr.find_cprs`: a
real birth date, not part of a longer number or hex id), so offsets and timestamps in broker
logs do not count; it is reported as file:line with every CPR masked.

Loaded by ``tests/conftest.py``; ``-p tests.log_scan`` loads it into any other pytest run.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stafet.config import PROJECT_ROOT
from stafet.cpr import MASK, find_cprs, mask_cpr

LOG_NAME = re.compile(r"\.log(\.\d+)?$")
#: a directory holding one of these is a data store, not a log directory
STORE_MARKERS = ("meta.properties", "CURRENT")  # Kafka log.dirs, RocksDB
SHOWN_HITS = 50


@dataclass(frozen=True)
class Hit:
    where: str  # a file path, or "<test id> [captured <section>]"
    line: int
    text: str  # the line with every CPR masked

    def __str__(self) -> str:
        return f"{self.where}:{self.line}: {self.text}"


@dataclass
class Scan:
    """What was scanned and what was found."""

    files: int = 0
    lines: int = 0
    sections: int = 0
    section_lines: int = 0
    hits: list[Hit] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"CPR log scan: {self.files} log files, {self.lines} lines; {self.sections} "
            f"captured outputs, {self.section_lines} lines: {len(self.hits)} CPR numbers"
        )


def masked(line: str) -> str:
    """The line with every CPR-shaped number masked (the hits and anything like them)."""
    for start, end, _ in reversed(find_cprs(line)):
        line = line[:start] + MASK + line[end:]
    return mask_cpr(line)[:300]


def scan_text(text: str, where: str, scan: Scan) -> int:
    """Add ``text``'s hits to ``scan``; return its line count."""
    n = 0
    for n, line in enumerate(text.splitlines(), start=1):
        if find_cprs(line):
            scan.hits.append(Hit(where, n, masked(line)))
    return n


def log_files(roots: Iterable[Path], *, modified_since: float | None = None) -> Iterator[Path]:
    """The text log files under ``roots``, skipping data stores (see the module docstring)."""
    for root in roots:
        if not root.is_dir():
            continue
        stores = {marker.parent for name in STORE_MARKERS for marker in root.rglob(name)}
        for path in sorted(root.rglob("*")):
            if not (LOG_NAME.search(path.name) and path.is_file()):
                continue
            if any(parent in stores for parent in path.parents):
                continue
            if modified_since is not None and path.stat().st_mtime < modified_since:
                continue
            with open(path, "rb") as f:
                if b"\0" in f.read(65_536):  # binary: a segment or a write-ahead log
                    continue
            yield path


def scan_files(paths: Iterable[Path], scan: Scan | None = None) -> Scan:
    """Scan each file (UTF-8, undecodable bytes replaced) into ``scan``."""
    scan = scan or Scan()
    for path in paths:
        scan.files += 1
        scan.lines += scan_text(path.read_text(encoding="utf-8", errors="replace"), str(path), scan)
    return scan


class MaskingFormatter(logging.Formatter):
    """pytest's own log capture renders each record with its own formatter, never through
    stafet's masking one (stafet/logging.py), so a failing test's report would show the raw
    values of in-process log calls: mask what it renders too. stafet's own output (stderr,
    the services' files) is scanned as written."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return mask_cpr(self.inner.format(record))


# --- the plugin ------------------------------------------------------------------------------

_SCAN = Scan()
_ROOTS: set[Path] = set()
_STARTED = time.time()


@pytest.fixture(scope="session", autouse=True)
def _cpr_log_scan_roots(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Note the session's temp directory, where the suite's processes write their logs."""
    _ROOTS.add(tmp_path_factory.getbasetemp())


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """Mask pytest's captured and live log output (after its logging plugin has made them)."""
    plugin = config.pluginmanager.get_plugin("logging-plugin")
    for name in ("caplog_handler", "report_handler", "log_cli_handler", "log_file_handler"):
        handler = getattr(plugin, name, None)
        if handler is not None and handler.formatter is not None:
            handler.setFormatter(MaskingFormatter(handler.formatter))


def pytest_sessionstart(session: pytest.Session) -> None:
    global _STARTED
    _STARTED = time.time()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Scan what each test phase captured (stdout, stderr, log records, a failure's text)."""
    # a phase's report repeats the earlier phases' sections: take only its own
    outputs = [(title, text) for title, text in report.sections if title.endswith(report.when)]
    if report.failed and report.longreprtext:
        outputs.append(("failure", report.longreprtext))
    for title, text in outputs:
        _SCAN.sections += 1
        _SCAN.section_lines += scan_text(text, f"{report.nodeid} [{title}]", _SCAN)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After every fixture is torn down (the brokers and services stopped, logs complete)."""
    scan_files(log_files(_ROOTS), _SCAN)
    scan_files(log_files([PROJECT_ROOT / ".stafet" / "logs"], modified_since=_STARTED), _SCAN)
    if _SCAN.hits and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.write_sep("-", _SCAN.summary(), red=bool(_SCAN.hits), green=not _SCAN.hits)
    for hit in _SCAN.hits[:SHOWN_HITS]:
        terminalreporter.write_line(f"CPR in a log: {hit}")
    if len(_SCAN.hits) > SHOWN_HITS:
        terminalreporter.write_line(f"… and {len(_SCAN.hits) - SHOWN_HITS} more")
