"""The party directory: the SOR code and EAN location number of everyone stafet addresses.

MedCom routes a message on the receiver's EAN location number and names both ends by SOR
(MedComMessagingOrganization: ``identifier:SOR-ID`` and ``identifier:EAN-ID`` on sender and
receiver). Neither number is in an HL7 ADT message or a FHIR referral, so they come from here:
a TOML file (``STAFET_DIRECTORY_FILE``, default ``deploy/directory.toml``; a SOR registry
export becomes one with ``stafet directory import-sor``) with

- ``[[municipality]]`` — ``code`` and its receiving ``[[municipality.unit]]`` s, each with a
  ``role`` (``central``: the municipality's central digital mailbox, which receives hospital
  notifications; ``ppr``; ``family-department``), ``name``, ``sor`` and ``ean``;
- ``[[hospital]]`` — a hospital unit (sender of notifications, receiver of referrals): ``name``,
  ``sor``, ``ean``;
- ``[[gp]]`` — a general practice: ``ydernummer``, ``name``, ``sor``, ``ean``.

A unit may lack an EAN (not yet on MedCom's network): it stays in the directory, and a message
to it is a dead letter with that reason, never a Bundle nobody can route.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Final, Literal

from stafet.errors import StafetError
from stafet.logging import get_logger
from stafet.model import Party
from stafet.schemas.municipalities import municipalities
from stafet.systems import MUNICIPALITY_SYSTEM, SOR_SYSTEM, UNIT_SYSTEM, YDER_SYSTEM

log = get_logger(__name__)

Role = Literal["central", "ppr", "family-department", "hospital", "gp"]
MUNICIPAL_ROLES: Final = ("central", "ppr", "family-department")


class DirectoryError(StafetError):
    """The directory file is missing or wrong; the message names each entry and field."""


class Unaddressable(StafetError, ValueError):
    """A party stafet must send to is not in the directory, or has no EAN location number."""


def gln_check_digit(first12: str) -> int:
    """GS1 mod-10 check digit of a GLN/EAN-13's first 12 digits (weights 1, 3 from the left)."""
    total = sum(int(d) * (3 if n % 2 else 1) for n, d in enumerate(first12))
    return (10 - total % 10) % 10


def gln_problem(value: str) -> str | None:
    """Why ``value`` is not a GLN (EAN location number), or None."""
    if not re.fullmatch(r"[0-9]{13}", value):
        return f"{value!r} is not 13 digits"
    expected = gln_check_digit(value[:12])
    if int(value[12]) != expected:
        return f"{value!r} has a wrong check digit (expected {expected})"
    return None


@dataclass(frozen=True, slots=True)
class Addressee:
    """One directory entry: what a MedCom Organization and its routing need."""

    entry: str  # municipality/0751/ppr, hospital/<sor>, gp/<ydernummer>
    role: Role
    name: str
    sor: str
    ean: str | None
    municipality: str | None = None  # the code, for municipal units
    ydernummer: str | None = None

    @property
    def recipient(self) -> str:
        """The ``stafet.recipient`` header of messages to this party (subscribers match it)."""
        if self.role == "central":
            return f"{MUNICIPALITY_SYSTEM}|{self.municipality}"
        if self.role == "gp" and self.ydernummer:
            return f"{YDER_SYSTEM}|{self.ydernummer}"
        return f"{SOR_SYSTEM}|{self.sor}"

    def routable(self) -> Addressee:
        """This entry, or :class:`Unaddressable` if MedCom cannot route to it (no EAN)."""
        if not self.ean:
            raise Unaddressable(
                f"{self.entry} ({self.name}, SOR {self.sor}) has no EAN location "
                "number in the directory: MedCom cannot route a message to it"
            )
        return self


class Directory:
    """Lookups by what a message knows of a party: municipality code, SOR, ydernummer."""

    def __init__(self, entries: list[Addressee], source: str = "directory") -> None:
        self.source = source
        self.entries = {e.entry: e for e in entries}
        self._by_sor = {e.sor: e for e in entries}
        self._by_yder = {e.ydernummer: e for e in entries if e.ydernummer}

    def __len__(self) -> int:
        return len(self.entries)

    def entry(self, entry_id: str) -> Addressee:
        try:
            return self.entries[entry_id]
        except KeyError:
            raise Unaddressable(f"no entry {entry_id!r} in {self.source}") from None

    def municipal_unit(self, code: str, role: str = "central") -> Addressee:
        """A municipality's unit; the central mailbox receives hospital notifications."""
        found = self.entries.get(f"municipality/{code}/{role}")
        if found is None:
            raise Unaddressable(f"municipality {code} has no {role} unit in {self.source}")
        return found

    def municipal_units(self, code: str) -> list[Addressee]:
        return [
            e
            for role in MUNICIPAL_ROLES
            if (e := self.entries.get(f"municipality/{code}/{role}")) is not None
        ]

    def by_sor(self, sor: str) -> Addressee:
        found = self._by_sor.get(sor)
        if found is None:
            raise Unaddressable(f"SOR {sor} is not in {self.source}")
        return found

    def resolve(self, party: Party) -> Addressee:
        """The entry of a referral party (by its identifier system), routable or Unaddressable."""
        if party.identifier_system == MUNICIPALITY_SYSTEM:
            return self.municipal_unit(party.identifier, "central").routable()
        if party.identifier_system == SOR_SYSTEM:
            return self.by_sor(party.identifier).routable()
        if party.identifier_system == UNIT_SYSTEM and "/" in party.identifier:
            code, role = party.identifier.split("/", 1)  # a unit named by municipality + kind
            return self.municipal_unit(code, role).routable()
        if party.identifier_system == YDER_SYSTEM:
            found = self._by_yder.get(party.identifier)
            if found is None:
                raise Unaddressable(f"GP ydernummer {party.identifier} is not in {self.source}")
            return found.routable()
        raise Unaddressable(
            f"a {party.kind} identified by {party.identifier_system} cannot be "
            "looked up in the directory"
        )


# --- the file ----------------------------------------------------------------------------------

_FIELDS: Final = {
    "municipality": {"code", "name", "unit"},
    "unit": {"role", "name", "sor", "ean"},
    "hospital": {"name", "sor", "ean"},
    "gp": {"ydernummer", "name", "sor", "ean"},
}


def parse_directory(data: dict, *, source: str = "directory") -> Directory:  # type: ignore[type-arg]
    """Validate the parsed TOML; every problem is named (entry and field) in one error."""
    errors: list[str] = []
    entries: list[Addressee] = []
    unknown = set(data) - {"version", "municipality", "hospital", "gp"}
    if unknown:
        errors.append(
            f"unknown sections {sorted(unknown)}; expected [[municipality]], "
            "[[hospital]] and [[gp]]"
        )
    known = municipalities()
    seen_codes: set[str] = set()

    def tables(container: dict, key: str, where: str) -> list[dict]:  # type: ignore[type-arg]
        """An array of tables ([[key]]), or an error naming what it is instead."""
        value = container.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            errors.append(
                f"{where}{key} must be an array of tables ([[{key}]]), not {type(value).__name__}"
            )
            return []
        return value

    def text(item: dict, key: str, where: str, *, required: bool = True) -> str | None:  # type: ignore[type-arg]
        value = item.get(key)
        if value is None or value == "":
            if required:
                errors.append(f"{where}: {key} is missing")
            return None
        if not isinstance(value, str):
            errors.append(f"{where}: {key} must be a string (quote numbers: leading zeros)")
            return None
        return value.strip()

    def unit(item: dict, where: str, entry: str, role: Role, **extra: str | None) -> None:  # type: ignore[type-arg]
        fields = _FIELDS["unit" if role in MUNICIPAL_ROLES else role]
        for key in sorted(set(item) - fields):
            errors.append(f"{where}: unknown field {key!r}")
        name, sor = text(item, "name", where), text(item, "sor", where)
        ean = text(item, "ean", where, required=False)
        if sor is not None and not re.fullmatch(r"[0-9]{11,18}", sor):
            errors.append(
                f"{where}: sor {sor!r} is not a SOR code (11-18 digits, DK-core min-digits-sor)"
            )
        if ean is not None and (problem := gln_problem(ean)):
            errors.append(f"{where}: ean {problem}")
        if name and sor:
            entries.append(Addressee(entry=entry, role=role, name=name, sor=sor, ean=ean, **extra))

    for n, m in enumerate(tables(data, "municipality", ""), start=1):
        code = text(m, "code", f"municipality #{n}") or ""
        where = f"municipality {code or '#' + str(n)}"
        if code and code not in known:
            errors.append(f"{where}: code {code!r} is not one of the 98 municipality codes")
        elif code in seen_codes:
            errors.append(f"{where}: listed twice")
        seen_codes.add(code)
        for key in sorted(set(m) - _FIELDS["municipality"]):
            errors.append(f"{where}: unknown field {key!r}")
        roles = []
        for unit_item in tables(m, "unit", f"{where}: "):
            role = unit_item.get("role")
            if role not in MUNICIPAL_ROLES:
                errors.append(
                    f"{where}: unit role {role!r} is not one of {', '.join(MUNICIPAL_ROLES)}"
                )
                continue
            if role in roles:
                errors.append(f"{where}: two {role} units")
                continue
            roles.append(role)
            unit(
                unit_item,
                f"{where} unit {role}",
                f"municipality/{code}/{role}",
                role,
                municipality=code,
            )
        if "central" not in roles:
            errors.append(
                f'{where}: missing unit: no central unit (role = "central"), which '
                "receives the municipality's hospital notifications"
            )
    for n, h in enumerate(tables(data, "hospital", ""), start=1):
        sor = h["sor"].strip() if isinstance(h.get("sor"), str) else f"#{n}"
        unit(h, f"hospital {sor}", f"hospital/{sor}", "hospital")
    for n, g in enumerate(tables(data, "gp", ""), start=1):
        yder = text(g, "ydernummer", f"gp #{n}")
        if yder is not None and not re.fullmatch(r"[0-9]{5,6}", yder):
            errors.append(f"gp {yder}: ydernummer {yder!r} is not 5-6 digits")
        unit(g, f"gp {yder or '#' + str(n)}", f"gp/{yder}", "gp", ydernummer=yder)

    for attribute in ("sor", "ean"):
        holders: dict[str, list[str]] = {}
        for e in entries:
            if value := getattr(e, attribute):
                holders.setdefault(value, []).append(e.entry)
        errors += [
            f"duplicate {attribute.upper()} {value}: {' and '.join(names)} (one "
            f"{attribute.upper()} names one receiver)"
            for value, names in holders.items()
            if len(names) > 1
        ]
    yders = [e.ydernummer for e in entries if e.ydernummer]
    errors += [f"gp {y}: listed twice" for y in sorted({y for y in yders if yders.count(y) > 1})]
    if errors:
        raise DirectoryError(f"{source}: " + "; ".join(errors))
    return Directory(entries, source)


class DirectoryFile:
    """The directory a long-running process uses: read (and validated) at start — a missing or
    bad file stops the start with the reason — and read again when the file changes. A changed
    file that does not validate is logged as an error and the last good directory stays in use
    (a half-saved edit must not dead-letter every message)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._good = load_directory(path)  # raises DirectoryError: refuse to start
        self._stamp = _stamp(path)

    def get(self) -> Directory:
        stamp = _stamp(self.path)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._good = load_directory(self.path)
                log.info("directory.reloaded", path=str(self.path), entries=len(self._good))
            except DirectoryError as exc:
                log.error(
                    "directory.reload_failed",
                    error=str(exc)[:2000],
                    kept=f"the previous directory ({len(self._good)} entries)",
                )
        return self._good


@lru_cache(maxsize=4)
def directory_file(path: Path) -> DirectoryFile:
    """The process's :class:`DirectoryFile` for ``path`` (one per file)."""
    return DirectoryFile(path)


def _stamp(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def load_directory(path: Path) -> Directory:
    """Read and validate a directory file (cached per path and modification time)."""
    try:
        stamp = path.stat().st_mtime_ns
    except FileNotFoundError as exc:
        raise DirectoryError(
            f"party directory {path} does not exist (STAFET_DIRECTORY_FILE); "
            "see deploy/directory.toml for the format"
        ) from exc
    return _load(path, stamp)


@lru_cache(maxsize=4)
def _load(path: Path, _stamp: int) -> Directory:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DirectoryError(f"party directory {path} is not valid TOML: {exc}") from exc
    return parse_directory(data, source=str(path))


def describe(directory: Directory, *, municipality: str | None = None) -> list[dict[str, str]]:
    """Rows for ``stafet directory show``."""
    return [
        {
            "entry": e.entry,
            "name": e.name,
            "sor": e.sor,
            "ean": e.ean or "(none)",
            "recipient": e.recipient,
        }
        for e in directory.entries.values()
        if municipality is None or e.municipality == municipality
    ]
