"""Turn a SOR registry export into a party directory file (``stafet directory import-sor``).

Integration teams get SOR codes and EAN location numbers from the SOR registry (Sundhedsdata-
styrelsen's SOR browser exports units as CSV). The columns read, by heading (``;`` or ``,``
separated, UTF-8 or ISO-8859-1, other columns ignored):

``SOR-kode`` (required), ``Enhedsnavn`` (required), ``EAN-lokationsnummer`` (may be empty: the
unit is kept, and a message to it is dead-lettered), ``Kommunekode`` (municipal units),
``Ydernummer`` (general practices) and ``Rolle`` — ``central``, ``ppr``, ``family-department``,
``hospital`` or ``gp``. Without ``Rolle`` a row with a ydernummer is a GP, a row with a
municipality code is that municipality's ``central`` unit when its name says "central" or
"postkasse", ``ppr`` when it says "PPR" or "Pædagogisk Psykologisk", ``family-department`` when
it says "Familie"; anything else is a hospital unit. The result is validated like any directory
before it is written.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from stafet.directory import DirectoryError, parse_directory

COLUMNS = {
    "sor": "SOR-kode",
    "name": "Enhedsnavn",
    "ean": "EAN-lokationsnummer",
    "municipality": "Kommunekode",
    "ydernummer": "Ydernummer",
    "role": "Rolle",
}


def _role(row: dict[str, str]) -> str:
    if row.get("role"):
        return row["role"].strip().lower()
    name = row["name"].lower()
    if row.get("ydernummer"):
        return "gp"
    if row.get("municipality"):
        if "ppr" in name or "pædagogisk psykologisk" in name:
            return "ppr"
        if "familie" in name:
            return "family-department"
        if "central" in name or "postkasse" in name:
            return "central"
    return "hospital"


def read_sor_csv(data: bytes) -> list[dict[str, str]]:
    """The export's rows under our field names; a missing required column is an error."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    dialect = csv.Sniffer().sniff(text.splitlines()[0] if text else ",", delimiters=";,")
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    headings = {h.strip(): h for h in reader.fieldnames or []}
    missing = [COLUMNS[k] for k in ("sor", "name") if COLUMNS[k] not in headings]
    if missing:
        raise DirectoryError(
            f"SOR export: no column {', '.join(missing)} (columns found: "
            f"{', '.join(headings) or 'none'})"
        )
    return [
        {
            ours: (row.get(headings[theirs]) or "").strip()
            for ours, theirs in COLUMNS.items()
            if theirs in headings
        }
        for row in reader
    ]


def sor_export_to_toml(data: bytes, *, source: str = "SOR export") -> str:
    """A directory file with every row of the export, validated."""
    municipal: dict[str, list[dict[str, str]]] = {}
    hospitals, gps = [], []
    for n, row in enumerate(read_sor_csv(data), start=2):
        role = _role(row)
        if role in ("central", "ppr", "family-department"):
            if not row.get("municipality"):
                raise DirectoryError(
                    f"{source} line {n}: {role} unit {row['name']!r} has no Kommunekode"
                )
            municipal.setdefault(row["municipality"].zfill(4), []).append({**row, "role": role})
        elif role == "gp":
            gps.append(row)
        elif role == "hospital":
            hospitals.append(row)
        else:
            raise DirectoryError(
                f"{source} line {n}: Rolle {role!r} is not central, ppr, "
                "family-department, hospital or gp"
            )
    out = [f"# Party directory imported from {source}\nversion = 1\n"]
    for code, units in sorted(municipal.items()):
        out.append(f'\n[[municipality]]\ncode = "{code}"\n')
        out += [
            _table(
                "municipality.unit",
                {"role": u["role"], "name": u["name"], "sor": u["sor"], "ean": u.get("ean")},
            )
            for u in units
        ]
    out += [
        _table("hospital", {"name": h["name"], "sor": h["sor"], "ean": h.get("ean")})
        for h in hospitals
    ]
    out += [
        _table(
            "gp",
            {
                "ydernummer": g["ydernummer"],
                "name": g["name"],
                "sor": g["sor"],
                "ean": g.get("ean"),
            },
        )
        for g in gps
    ]
    toml = "".join(out)
    import tomllib

    parse_directory(tomllib.loads(toml), source=source)  # raises, naming every bad entry
    return toml


def _table(name: str, fields: dict[str, str | None]) -> str:
    body = "".join(f'{k} = "{_escape(v)}"\n' for k, v in fields.items() if v)
    return f"[[{name}]]\n{body}"


def _escape(value: str) -> str:
    """A TOML basic string's content: backslash and quote escaped, control characters (a line
    break inside a unit's name) as spaces."""
    return re.sub(r"[\x00-\x1f\x7f]", " ", value.replace("\\", "\\\\").replace('"', '\\"'))


def import_sor(path: Path) -> str:
    try:
        return sor_export_to_toml(path.read_bytes(), source=str(path))
    except FileNotFoundError as exc:
        raise DirectoryError(f"{path} does not exist") from exc
