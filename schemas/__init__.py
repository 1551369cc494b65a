"""Avro schemas of the canonical events and their codec; the reference data (municipalities)."""
