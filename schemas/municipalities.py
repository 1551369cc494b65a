"""The 98 Danish municipalities (reference data from DK-core ``dk-core-municipality-codes``)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources


@dataclass(frozen=True, slots=True)
class Municipality:
    """A municipality of residence: the recipient of HospitalNotifications."""

    code: str  # 4 digits
    name: str
    region_code: str  # DK-81 … DK-85
    region_name: str
    sor: str | None = None
    gln: str | None = None

    @property
    def topic(self) -> str:
        """The Kafka topic this municipality reads its messages from."""
        return f"out.municipality.{self.code}"


@lru_cache(maxsize=1)
def municipalities() -> dict[str, Municipality]:
    """All municipalities by code, read once from the packaged CSV."""
    text = resources.files(__package__).joinpath("municipalities.csv").read_text("utf-8")
    return {
        row["municipality_code"]: Municipality(
            code=row["municipality_code"],
            name=row["name"],
            region_code=row["region_code"],
            region_name=row["region_name"],
        )
        for row in csv.DictReader(text.splitlines())
    }


def municipality(code: str) -> Municipality | None:
    """The municipality with this 4-digit code, or None."""
    return municipalities().get(code)
