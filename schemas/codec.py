"""Avro encoding of the canonical events (schemaless binary framing, schema from ``*.avsc``).

Records are written with fastavro's schemaless writer behind a one-byte format version, so a
later schema can be told apart from this one without a registry. When a schema changes, its
version goes up and the old schema is kept as ``<name>.v<version>.avsc``: a record written
before (a backlog at an upgrade, a dead letter sent back, a replay) is read with the schema it was
written with and resolved to the current one (new fields take their defaults).
"""

from __future__ import annotations

import io
import json
from functools import cache
from importlib import resources
from typing import Any, cast

import fastavro

#: the format version each schema is written with now (1 unless it changed since)
VERSIONS: dict[str, int] = {"encounter_event": 1, "referral_event": 2}  # 2: kind contact, contact
FORMAT_VERSION = b"\x01"  # encounter_event's, kept for callers that frame by hand


#: Schemas that reuse named types of another (e.g. PatientInfo) list it here.
DEPENDS_ON = {"referral_event": ("encounter_event",)}
_named_types: dict[str, Any] = {}


@cache
def load_schema(name: str) -> Any:
    """The parsed Avro schema ``schemas/<name>.avsc`` (its dependencies parsed first)."""
    for dependency in DEPENDS_ON.get(name, ()):
        load_schema(dependency)
    text = resources.files(__package__).joinpath(f"{name}.avsc").read_text("utf-8")
    return fastavro.parse_schema(json.loads(text), named_schemas=_named_types)


@cache
def _archived(name: str, version: int) -> Any:
    """An earlier version of schema ``name`` (its own named types, apart from the current)."""
    named: dict[str, Any] = {}
    for dependency in DEPENDS_ON.get(name, ()):
        text = resources.files(__package__).joinpath(f"{dependency}.avsc").read_text("utf-8")
        fastavro.parse_schema(json.loads(text), named_schemas=named)
    text = resources.files(__package__).joinpath(f"{name}.v{version}.avsc").read_text("utf-8")
    return fastavro.parse_schema(json.loads(text), named_schemas=named)


def encode(name: str, record: dict[str, Any]) -> bytes:
    """Avro-encode ``record`` with schema ``name`` (raises ValueError if it does not fit)."""
    buffer = io.BytesIO()
    buffer.write(bytes([VERSIONS.get(name, 1)]))
    fastavro.schemaless_writer(buffer, load_schema(name), record)
    return buffer.getvalue()


def decode(name: str, data: bytes) -> dict[str, Any]:
    """Decode bytes written by :func:`encode`, with this schema version or an earlier one."""
    current = VERSIONS.get(name, 1)
    version = data[0] if data else None
    if version == current:
        return cast(
            dict[str, Any],
            fastavro.schemaless_reader(io.BytesIO(data[1:]), load_schema(name), None),
        )
    if version is not None and 1 <= version < current:
        try:
            writer = _archived(name, version)
        except FileNotFoundError:
            raise ValueError(f"{name} format version {version} is no longer readable") from None
        return cast(
            dict[str, Any],
            fastavro.schemaless_reader(io.BytesIO(data[1:]), writer, load_schema(name)),
        )
    raise ValueError(f"unknown {name} format version {data[:1]!r}")
