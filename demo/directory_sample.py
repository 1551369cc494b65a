"""The fictitious party directory shipped as ``deploy/directory.toml`` (demo, tests, bench).

Every number is made up and marked so: SOR codes ``6000000…`` and EAN location numbers in the
range ``57999…`` (valid GS1 check digits, not issued by MedCom). Regenerate with
``python -m demo.directory_sample > deploy/directory.toml``; a test keeps the two equal.
"""

from __future__ import annotations

from stafet.directory import gln_check_digit
from stafet.schemas.municipalities import municipalities

#: (SOR, name) of the sending units the demo, the tests and the bench use
HOSPITALS = [
    ("600000000000001", "BUC Aarhus (demo)"),
    ("600000000000002", "BUA Odense (demo)"),
    ("600000000000003", "BUC Hovedstaden (demo)"),
    ("600000000000004", "BUA Aalborg (demo)"),
    ("600000000000005", "BUA Roskilde (demo)"),
    ("600000000000096", "Bispebjerg og Frederiksberg Hospital (test)"),
    ("600000000000097", "Nordsjællands Hospital (test)"),
    ("600000000000098", "Børne- og Ungdomspsykiatri Århus (test)"),
    ("600000000000099", "BUC Test"),
]
BENCH_HOSPITALS = 21  # bench/load.py: 6000000001nnnnn, n = 1 … 21
#: (ydernummer, name)
GPS = [
    ("100001", "Lægerne i Vestergade (demo)"),
    ("100002", "Lægehuset ved Havnen (demo)"),
    ("123456", "Lægerne i Vestergade (test)"),
    ("099999", "Lægehuset Testvej (demo)"),
]
BENCH_GPS = 60  # bench/load.py: 9nnnnn, n = 1 … 60
#: Entries deliberately without an EAN: units not (yet) on MedCom's network. A message to one is
#: a dead letter with an operator alert (the tests and the demo show it).
NO_EAN_HOSPITAL = ("600000000000095", "BUP Sydhavn (fiktiv, ikke på MedCom-nettet)")
NO_EAN_GP = ("100009", "Lægehuset Uden Lokationsnummer (fiktiv)")
ROLES = {
    "central": ("0", "{name} Kommune, central digital postkasse (fiktiv)"),
    "ppr": ("1", "PPR {name} Kommune (fiktiv)"),
    "family-department": ("2", "Familieafdelingen, {name} Kommune (fiktiv)"),
}


def fictitious_ean(kind: str, number: str) -> str:
    """57999 + kind digit + 6 digits + GS1 check digit."""
    first12 = f"57999{kind}{int(number) % 1_000_000:06d}"
    return first12 + str(gln_check_digit(first12))


def municipal_sor(code: str, role: str) -> str:
    return f"60000000{code}001{ROLES[role][0]}"


def _entry(table: str, fields: dict[str, str | None]) -> str:
    lines = [f"[[{table}]]"] + [f'{k} = "{v}"' for k, v in fields.items() if v is not None]
    return "\n".join(lines) + "\n"


def sample_directory_toml() -> str:
    out = [
        __doc__.replace('"""', "").strip().replace("\n", "\n# ").join(["# ", "\n"]),
        "# Format: see stafet/directory.py and the README (Party directory).\n",
        "version = 1\n",
    ]
    for code, m in sorted(municipalities().items()):
        out.append(f'\n[[municipality]]\ncode = "{code}"\n')
        for role, (digit, name) in ROLES.items():
            out.append(
                _entry(
                    "municipality.unit",
                    {
                        "role": role,
                        "name": name.format(name=m.name),
                        "sor": municipal_sor(code, role),
                        "ean": fictitious_ean("1", f"{int(code):04d}{digit}"),
                    },
                )
            )
    out.append("\n# Hospital units (senders of notifications, receivers of referrals)\n")
    for sor, name in HOSPITALS + [
        (f"6000000001{n:05d}", f"Bench-afsender {n} (bench)") for n in range(1, BENCH_HOSPITALS + 1)
    ]:
        out.append(
            _entry("hospital", {"name": name, "sor": sor, "ean": fictitious_ean("2", sor[-6:])})
        )
    out.append(_entry("hospital", {"name": NO_EAN_HOSPITAL[1], "sor": NO_EAN_HOSPITAL[0]}))
    out.append("\n# General practices (referrers), by ydernummer\n")
    for yder, name in GPS + [
        (f"9{i:05d}", f"Lægehus {i} (bench)") for i in range(1, BENCH_GPS + 1)
    ]:
        out.append(
            _entry(
                "gp",
                {
                    "ydernummer": yder,
                    "name": name,
                    "sor": f"6000000002{yder}",
                    "ean": fictitious_ean("3", yder),
                },
            )
        )
    out.append(
        _entry(
            "gp",
            {"ydernummer": NO_EAN_GP[0], "name": NO_EAN_GP[1], "sor": f"6000000002{NO_EAN_GP[0]}"},
        )
    )
    return "".join(out)


if __name__ == "__main__":
    print(sample_directory_toml(), end="")
