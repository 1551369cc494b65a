"""Avro encoding of the canonical events (schemaless binary framing, schema from ``*.avsc``).

Records are written with fastavro's schemaless writer behind a one-byte format version, so a
later schema can be told apart from this one without a registry.
"""

from __future__ import annotations

import io
import json
from functools import lru_cache
from importlib import resources
from typing import Any

import fastavro

FORMAT_VERSION = b"\x01"


#: Schemas that reuse named types of another (e.g. PatientInfo) list it here.
DEPENDS_ON = {"referral_event": ("encounter_event",)}
_named_types: dict[str, Any] = {}


@lru_cache(maxsize=None)
def load_schema(name: str) -> Any:
    """The parsed Avro schema ``schemas/<name>.avsc`` (its dependencies parsed first)."""
    for dependency in DEPENDS_ON.get(name, ()):
        load_schema(dependency)
    text = resources.files(__package__).joinpath(f"{name}.avsc").read_text("utf-8")
    return fastavro.parse_schema(json.loads(text), named_schemas=_named_types)


def encode(name: str, record: dict[str, Any]) -> bytes:
    """Avro-encode ``record`` with schema ``name`` (raises ValueError if it does not fit)."""
    buffer = io.BytesIO()
    buffer.write(FORMAT_VERSION)
    fastavro.schemaless_writer(buffer, load_schema(name), record)
    return buffer.getvalue()


def decode(name: str, data: bytes) -> dict[str, Any]:
    """Decode bytes written by :func:`encode` with the same schema."""
    if data[:1] != FORMAT_VERSION:
        raise ValueError(f"unknown {name} format version {data[:1]!r}")
    return fastavro.schemaless_reader(io.BytesIO(data[1:]), load_schema(name), None)
