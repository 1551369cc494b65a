"""The party directory: what a bad file is told, lookups, the SOR import, the shipped sample,
and subscribers that refer to entries."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from demo.directory_sample import sample_directory_toml
from stafet.cli import main
from stafet.directory import (
    DirectoryError,
    Unaddressable,
    gln_problem,
    load_directory,
    parse_directory,
)
from stafet.medcom.addressing import organization_problems
from stafet.model import Party
from stafet.sor_import import sor_export_to_toml
from stafet.subscribers import RegistryError, parse_registry
from stafet.systems import SOR_SYSTEM, YDER_SYSTEM

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT.parent / "shared" / "domain" / "medcom-examples"
GOOD = """
[[municipality]]
code = "0751"
[[municipality.unit]]
role = "central"
name = "Aarhus Kommune (test)"
sor = "6000000007510010"
ean = "5799910075103"
[[municipality.unit]]
role = "ppr"
name = "PPR Aarhus (test)"
sor = "6000000007510011"
ean = "5799910075110"

[[hospital]]
name = "BUC Test"
sor = "600000000000099"
ean = "5799920000997"

[[gp]]
ydernummer = "100009"
name = "Lægehuset Uden EAN (test)"
sor = "6000000002100009"
"""


def parse(text: str):  # type: ignore[no-untyped-def]
    return parse_directory(tomllib.loads(text), source="test.toml")


def test_gln_check_digit_against_medcoms_own_numbers() -> None:
    for ean in ("5790001348120", "5790000209354", "5790000121526", "5790001382445"):
        assert gln_problem(ean) is None
    assert "check digit (expected 0)" in (gln_problem("5790001348121") or "")
    assert "13 digits" in (gln_problem("579000134812") or "")


def test_a_good_directory_answers_every_lookup() -> None:
    d = parse(GOOD)
    assert d.municipal_unit("0751").ean == "5799910075103"
    assert d.municipal_unit("0751", "ppr").entry == "municipality/0751/ppr"
    assert d.by_sor("600000000000099").name == "BUC Test"
    party = Party(kind="gp", identifier_system=YDER_SYSTEM, identifier="100009")
    with pytest.raises(Unaddressable, match="gp/100009 .* has no EAN"):
        d.resolve(party)
    with pytest.raises(Unaddressable, match="SOR 6999 is not in test.toml"):
        d.resolve(Party(kind="ppr", identifier_system=SOR_SYSTEM, identifier="6999"))
    unit = Party(
        kind="ppr",
        identifier_system="https://stafet.dk/fhir/NamingSystem/municipal-unit",
        identifier="0751/ppr",
    )  # a FHIR referral's unit without SOR
    assert d.resolve(unit).sor == "6000000007510011"
    with pytest.raises(Unaddressable, match="municipality 0101 has no central unit"):
        d.municipal_unit("0101")
    with pytest.raises(Unaddressable, match="guardian"):
        d.resolve(
            Party(
                kind="guardian",
                identifier_system="urn:oid:1.2.208.176.1.2",
                identifier="0505209996",
            )
        )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("5799910075110", "5799910075103"),
            "duplicate EAN 5799910075103: municipality/0751/central and municipality/0751/ppr",
        ),
        (
            ('ean = "5799920000997"', 'ean = "5799920000998"'),
            "hospital 600000000000099: ean '5799920000998' has a wrong check digit (expected 7)",
        ),
        (
            ('code = "0751"', 'code = "0999"'),
            "municipality 0999: code '0999' is not one of the 98 municipality codes",
        ),
        (
            ('role = "central"', 'role = "family-department"'),
            "municipality 0751: missing unit: no central unit",
        ),
        (
            ('role = "ppr"', 'role = "school"'),
            "municipality 0751: unit role 'school' is not one of",
        ),
        (
            ('sor = "600000000000099"', 'sor = "6000"'),
            "hospital 6000: sor '6000' is not a SOR code (11-18 digits",
        ),
        (
            ('ydernummer = "100009"', 'ydernummer = "1X"'),
            "gp 1X: ydernummer '1X' is not 5-6 digits",
        ),
        (
            ('name = "BUC Test"', 'name = "BUC Test"\nfax = "1"'),
            "hospital 600000000000099: unknown field 'fax'",
        ),
        (
            ('sor = "6000000002100009"', 'sor = "600000000000099"'),
            "duplicate SOR 600000000000099: hospital/600000000000099 and gp/100009",
        ),
    ],
)
def test_bad_input_is_named_by_entry_and_field(change: tuple[str, str], message: str) -> None:
    with pytest.raises(DirectoryError) as caught:
        parse(GOOD.replace(*change))
    assert message in str(caught.value)
    assert str(caught.value).startswith("test.toml: ")


def test_every_problem_is_reported_at_once() -> None:
    bad = GOOD.replace('ean = "5799920000997"', 'ean = "1"').replace(
        'code = "0751"', 'code = "0998"'
    )
    text = str(pytest.raises(DirectoryError, parse, bad).value)
    assert "not 13 digits" in text and "0998" in text


def test_the_shipped_sample_is_the_generators_output_and_valid() -> None:
    shipped = (ROOT / "deploy" / "directory.toml").read_text("utf-8")
    assert shipped == sample_directory_toml(), "regenerate: python -m demo.directory_sample"
    d = load_directory(ROOT / "deploy" / "directory.toml")
    assert {d.municipal_unit(code).municipality for code in ("0101", "0751", "0860")} == {
        "0101",
        "0751",
        "0860",
    }
    assert len([e for e in d.entries.values() if e.role == "central"]) == 98
    assert sorted(e.entry for e in d.entries.values() if not e.ean) == [
        "gp/100009",
        "hospital/600000000000095",
    ]


def test_sor_export_import_round_trip() -> None:
    data = (ROOT / "examples" / "sor-export.csv").read_bytes()
    d = parse(sor_export_to_toml(data))
    assert d.municipal_unit("0751", "family-department").sor == "6000000007510012"
    assert (
        d.resolve(Party(kind="gp", identifier_system=YDER_SYSTEM, identifier="100001")).ean
        == "5799931000016"
    )
    assert d.by_sor("600000000000095").ean is None  # kept, and dead-lettered when addressed
    latin1 = data.decode("utf-8").encode("latin-1")  # æøå in ISO-8859-1
    assert len(parse(sor_export_to_toml(latin1))) == len(d)


def test_sor_import_names_what_is_wrong() -> None:
    with pytest.raises(DirectoryError, match="no column SOR-kode"):
        sor_export_to_toml(b"Navn;EAN\nx;y\n")
    bad = b"SOR-kode;Enhedsnavn;EAN-lokationsnummer\n600000000000001;BUC;5799920000011\n"
    with pytest.raises(DirectoryError, match="hospital 600000000000001: ean .* check digit"):
        sor_export_to_toml(bad)


def test_cli_check_and_show() -> None:
    runner = CliRunner()
    ok = runner.invoke(main, ["directory", "check"])
    assert ok.exit_code == 0 and "390 entries" in ok.output and "2 without EAN" in ok.output
    shown = runner.invoke(main, ["directory", "show", "municipality/0751/ppr"])
    assert "5799910075110" in shown.output
    missing = runner.invoke(main, ["directory", "show", "gp/000000"])
    assert missing.exit_code == 1 and "no entry 'gp/000000'" in missing.output


def test_cli_check_fails_on_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "d.toml"
    bad.write_text(GOOD.replace("5799910075110", "5799910075111"), encoding="utf-8")
    result = CliRunner().invoke(main, ["directory", "check", "--file", str(bad)])
    assert result.exit_code == 1 and "municipality 0751 unit ppr: ean" in result.output


def test_subscribers_refer_to_directory_entries() -> None:
    d = parse(GOOD)
    registry = parse_registry(
        {
            "subscriber": [
                {
                    "id": "ppr-aarhus",
                    "name": "PPR Aarhus",
                    "party": "ppr",
                    "municipality": "0751",
                    "delivery": "rest",
                    "url": "https://ppr.example/fhir",
                    "secret_env": "S",
                    "entries": ["municipality/0751/ppr"],
                }
            ]
        },
        directory=d,
    )
    [sub] = registry.subscribers
    assert sub.takes("out.municipality.0751", f"{SOR_SYSTEM}|6000000007510011")
    assert not sub.takes(
        "out.municipality.0751",
        "http://hl7.dk/fhir/core/CodeSystem/dk-core-municipality-codes|0751",
    )
    with pytest.raises(RegistryError, match="ppr-aarhus: entries: no entry 'gp/1'"):
        parse_registry(
            {"subscriber": [{**sub.model_dump(exclude={"recipients"}), "entries": ["gp/1"]}]},
            directory=d,
        )


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*/*.json")), ids=lambda p: p.name[7:15])
def test_medcoms_own_examples_pass_the_organization_rules(path: Path) -> None:
    assert organization_problems(json.loads(path.read_text("utf-8"))) == []


def test_every_topic_has_an_explicit_retention_or_compaction() -> None:
    from stafet.config import Settings
    from stafet.kafka.topics import INDEX_REFERRAL, INGEST_FHIR, TopicPlan, all_topics

    configs = TopicPlan.from_settings(Settings(ingest_retention_days=45)).configs()
    assert set(configs) == set(all_topics())
    assert all(
        "retention.ms" in c or c.get("cleanup.policy") == "compact" for c in configs.values()
    )
    assert configs[INGEST_FHIR]["retention.ms"] == str(45 * 86_400_000)  # > 30 days of triage
    assert configs[INDEX_REFERRAL] == {"cleanup.policy": "compact", "min.insync.replicas": "1"}
    assert configs["audit.delivery"] == {"retention.ms": "-1", "min.insync.replicas": "1"}


def test_replication_follows_the_cluster_and_refuses_what_it_cannot_have() -> None:
    import pytest as _pytest

    from stafet.errors import StafetError
    from stafet.kafka.topics import TopicPlan

    assert TopicPlan().replication(1) == (1, 1)  # a development broker
    assert TopicPlan().replication(3) == (3, 2)  # a region's cluster: acks=all survives one loss
    assert TopicPlan().replication(5) == (3, 2)
    assert TopicPlan(replication_factor=2).replication(3) == (2, 1)  # logged as a warning
    with _pytest.raises(StafetError, match="replication factor 3 needs 3 brokers"):
        TopicPlan(replication_factor=3).replication(1)
    with _pytest.raises(StafetError, match="exceeds the replication factor"):
        TopicPlan(min_insync_replicas=2).replication(1)
    assert {c["min.insync.replicas"] for c in TopicPlan().configs(2).values()} == {"2"}
