"""The layout keeps data flowing one way (connectors → ingest → streams → out → connectors): a
module may import what comes before it on the path and the shared parts, never what comes
after it. Read from the source with ast, so a new import against the flow fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"stafet": "stafet", "streams": "stafet.streams", "connectors": "stafet.connectors"}

#: package → what it must never import (prefixes of module names)
FORBIDDEN = {
    # the shared parts know nothing of the processes built on them
    "stafet.inbound": ("stafet.streams", "stafet.connectors", "stafet.cli"),
    "stafet.medcom": (
        "stafet.streams",
        "stafet.connectors",
        "stafet.cli",
        "stafet.kafka",
        "stafet.inbound",
    ),
    "stafet.kafka": ("stafet.streams", "stafet.connectors", "stafet.cli", "stafet.console"),
    # the stream stage reads topics, never a connector
    "stafet.streams": ("stafet.connectors", "stafet.cli", "stafet.console"),
    # sources write ingest topics, sinks read out topics: neither reaches into the other
    "stafet.connectors.sources": (
        "stafet.connectors.sinks",
        "stafet.streams",
        "stafet.cli",
        "stafet.console",
    ),
    "stafet.connectors.sinks": (
        "stafet.connectors.sources",
        "stafet.streams",
        "stafet.cli",
        "stafet.console",
    ),
    # the console reads topics (and asks the processes over HTTP): no process module, and
    # nothing but the command line imports it
    "stafet.console": ("stafet.streams", "stafet.connectors", "stafet.cli"),
}
#: what only a checkout has: nothing installed imports it, but for `stafet demo`, which runs the
#: checkout's demo/ (and says so when there is none)
CHECKOUT_ONLY = ("demo", "bench", "tests")
ALLOWED = {("stafet.cli.commands", "demo.run")}


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_the_tree_is_read() -> None:
    found = modules()
    assert "stafet.streams.app" in found and "stafet.connectors.sources.mllp.listener" in found
    assert "stafet.medcom.hospitalnotification" in found and "stafet.kafka.reader" in found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_nothing_imports_against_the_flow(package: str) -> None:
    wrong = sorted(
        f"{name} imports {target}"
        for name, path in modules().items()
        if name == package or name.startswith(package + ".")
        for target in imports(path)
        if target.startswith(FORBIDDEN[package])
    )
    assert not wrong, wrong


def test_the_installed_package_needs_no_checkout() -> None:
    wrong = sorted(
        f"{name} imports {target}"
        for name, path in modules().items()
        for target in imports(path)
        if target.split(".")[0] in CHECKOUT_ONLY
        and not any(name == a and target.startswith(b) for a, b in ALLOWED)
    )
    assert not wrong, wrong


def test_the_rule_would_catch_a_stream_importing_a_connector(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from stafet.connectors.sinks.delivery import DeliveryService\n")
    assert any(t.startswith(FORBIDDEN["stafet.streams"]) for t in imports(bad))


def test_only_the_cli_starts_processes() -> None:
    users = sorted(
        name
        for name, path in modules().items()
        if not name.startswith("stafet.cli")
        and any(t.startswith("stafet.cli") for t in imports(path))
    )
    assert not users, users
