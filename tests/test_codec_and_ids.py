"""Avro round trip of the canonical event, deterministic ids, the municipality reference data and
the pure helpers of the notify stream (revision chain, leave start carried to SLOR)."""

from __future__ import annotations

import csv
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from stafet.ids import STAFET_NAMESPACE, patient_key, stable_uuid
from stafet.model import EncounterEvent, EncounterInfo, Organization, PatientInfo
from stafet.schemas.codec import FORMAT_VERSION, decode, encode
from stafet.schemas.municipalities import municipalities, municipality
from stafet.streams.notify import revision_of, with_known_leave

DOMAIN = Path(__file__).resolve().parents[2] / "shared" / "domain"
LARS = "0505159995"


def event(**encounter) -> EncounterEvent:
    """A STOR-shaped event for Lars Berggren (MedCom test patient) with every field filled."""
    info = dict(
        visit_number="V-1001",
        episode_of_care_id=stable_uuid("episode", "600000000000099", "V-1001"),
        class_code="IMP",
        status="onleave",
        start="2024-01-15T08:00:00+01:00",
        end=None,
        leave_start="2024-01-20T09:00:00+01:00",
        leave_end=None,
    )
    info.update(encounter)
    return EncounterEvent(
        event_id=stable_uuid("hl7v2", "EPJ", "BUC Test^600000000000099^SOR", "MSG0001"),
        source_message_id="MSG0001",
        source_system="EPJ^BUC Test^600000000000099^SOR",
        hl7_trigger="A21",
        notification_code="STOR",
        event_time="2024-01-20T09:00:00+01:00",
        patient_key=patient_key(LARS, "s"),
        sender=Organization(sor="600000000000099", name="BUC Århus", gln="5790000209354"),
        patient=PatientInfo(
            cpr=LARS,
            family="Berggren",
            given=("Lars", "Test"),
            birth_date="2015-05-05",
            gender="male",
            deceased=False,
            municipality_code="0219",
            region_code="DK-84",
        ),
        encounter=EncounterInfo(**info),
    )


def slor(**encounter) -> EncounterEvent:
    base = dict(status="in-progress", leave_start=None, leave_end="2024-01-22T18:00:00+01:00")
    return replace(
        event(),
        hl7_trigger="A22",
        notification_code="SLOR",
        encounter=replace(event().encounter, **{**base, **encounter}),
    )


@pytest.mark.parametrize(
    "original",
    [
        event(),
        slor(end=None),
        replace(
            event(),
            sender=Organization(sor="1"),
            patient=PatientInfo(cpr=LARS, municipality_code="0751"),
        ),
        replace(
            event(),
            patient=replace(event().patient, deceased=True, given=()),
            encounter=replace(
                event().encounter, status="finished", end="2024-02-01T10:00:00+01:00"
            ),
        ),
    ],
    ids=["full", "slor", "minimal", "deceased"],
)
def test_avro_round_trip(original):
    data = encode("encounter_event", original.to_record())
    assert data[:1] == FORMAT_VERSION == b"\x01"
    back = EncounterEvent.from_record(decode("encounter_event", data))
    assert back == original
    assert isinstance(back.patient.given, tuple)


def test_encoding_is_deterministic():
    assert encode("encounter_event", event().to_record()) == encode(
        "encounter_event", event().to_record()
    )


@pytest.mark.parametrize("prefix", [b"\x00", b"\x02", b"{"])
def test_decode_rejects_unknown_format_byte(prefix):
    data = encode("encounter_event", event().to_record())
    with pytest.raises(ValueError, match="format version"):
        decode("encounter_event", prefix + data[1:])


def test_decode_rejects_empty_input():
    with pytest.raises(ValueError):
        decode("encounter_event", b"")


@pytest.mark.parametrize(
    "path",
    [
        ("patient_key",),
        ("patient", "municipality_code"),
        ("encounter", "visit_number"),
        ("sender", "sor"),
    ],
)
def test_encode_rejects_a_record_missing_a_required_field(path):
    record = event().to_record()
    target = record
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    with pytest.raises(ValueError):
        encode("encounter_event", record)


def test_encode_rejects_an_unknown_encounter_class():
    record = event().to_record()
    record["encounter"]["class_code"] = "AMB"
    with pytest.raises(ValueError):
        encode("encounter_event", record)


def test_stable_uuid():
    a = stable_uuid("hl7v2", "EPJ", "BUC", "MSG0001")
    assert a == stable_uuid("hl7v2", "EPJ", "BUC", "MSG0001")
    assert uuid.UUID(a).version == 5
    assert a == str(uuid.uuid5(STAFET_NAMESPACE, "hl7v2|EPJ|BUC|MSG0001"))
    others = {
        stable_uuid("hl7v2", "EPJ", "BUC", "MSG0002"),
        stable_uuid("hl7v2", "BUC", "EPJ", "MSG0001"),
        stable_uuid("episode", "EPJ", "BUC", "MSG0001"),
        stable_uuid("hl7v2", "EPJ", "BUC"),
    }
    assert a not in others and len(others) == 4
    assert str(STAFET_NAMESPACE) == str(uuid.uuid5(uuid.NAMESPACE_URL, "https://stafet.dk/ns/ids"))


def test_patient_key():
    key = patient_key(LARS, "secret")
    assert key == patient_key(LARS, "secret") and len(key) == 32 and int(key, 16) >= 0
    assert key != patient_key(LARS, "other") and key != patient_key("0505209996", "secret")
    assert LARS not in key


REGIONS = {"DK-81": 11, "DK-82": 19, "DK-83": 22, "DK-84": 29, "DK-85": 17}


def test_municipalities_reference_data():
    all_ = municipalities()
    assert len(all_) == 98
    assert all(len(code) == 4 and code.isdigit() and m.code == code for code, m in all_.items())
    counts: dict[str, int] = {}
    for m in all_.values():
        counts[m.region_code] = counts.get(m.region_code, 0) + 1
    assert counts == REGIONS
    names = {m.region_code: m.region_name for m in all_.values()}
    assert names["DK-82"] == "Region Midtjylland" and names["DK-84"] == "Region Hovedstaden"


def test_municipalities_match_the_domain_csv():
    with (DOMAIN / "municipalities.csv").open(encoding="utf-8") as f:
        rows = {r["municipality_code"]: (r["name"], r["region_code"]) for r in csv.DictReader(f)}
    assert {c: (m.name, m.region_code) for c, m in municipalities().items()} == rows


def test_municipality_lookup():
    aarhus = municipality("0751")
    assert aarhus is not None and (aarhus.name, aarhus.region_code) == ("Aarhus", "DK-82")
    assert aarhus.topic == "out.municipality.0751"
    assert municipality("0101").name == "København"
    assert municipality("751") is None  # callers pad; the lookup itself is exact
    assert municipality("0411") is None  # Christiansø belongs to no region
    assert municipality("0999") is None


def test_revision_of():
    assert revision_of([], "m1") == (None, False)
    assert revision_of(["m1"], "m2") == ("m1", False)
    assert revision_of(["m1", "m2"], "m3") == ("m2", False)
    assert revision_of(["m1", "m2", "m3"], "m1") == (None, True)  # a replay of the first
    assert revision_of(["m1", "m2", "m3"], "m2") == ("m1", True)  # same predecessor as before


def test_with_known_leave_fills_slor_leave_start():
    known = "2024-01-20T09:00:00+01:00"
    filled = with_known_leave(slor(), known)
    assert filled.encounter.leave_start == known
    assert filled.encounter.leave_end == slor().encounter.leave_end
    assert replace(filled, encounter=replace(filled.encounter, leave_start=None)) == slor()


def test_with_known_leave_leaves_other_events_alone():
    known = "2024-01-19T09:00:00+01:00"
    own = slor(leave_start="2024-01-18T09:00:00+01:00")
    assert with_known_leave(own, known) is own  # the event's own leave start wins
    assert with_known_leave(slor(), None) == slor()
    assert with_known_leave(slor(), "") == slor()
    stin = replace(
        event(), encounter=replace(event().encounter, leave_start=None, status="in-progress")
    )
    assert with_known_leave(stin, known) is stin  # not a return from leave


def test_kafka_cluster_ids_never_start_with_a_dash(monkeypatch):
    """The storage tool's parser reads '-abc…' as an option: 1 in 64 fresh formats failed."""
    import uuid as uuid_module

    from stafet.kafka import local as kafka_local

    dash_first = uuid_module.UUID(bytes=bytes([0xFB]) + bytes(15))  # base64url starts with '-'
    ids = iter([dash_first, uuid_module.UUID(int=1)])
    monkeypatch.setattr(kafka_local.uuid, "uuid4", lambda: next(ids))
    cluster_id = kafka_local.new_cluster_id()
    assert not cluster_id.startswith("-") and len(cluster_id) == 22


def test_a_referral_event_written_by_the_previous_schema_is_still_read():
    """Format version 1 (before kind 'contact' and the contact field): a backlog at an upgrade,
    a dead letter sent back or a replay is read with the schema it was written with."""
    import io

    import fastavro

    from stafet.schemas.codec import _archived

    from .test_carecommunication import event as referral_event

    record = referral_event("rejection").to_record()
    old = {k: v for k, v in record.items() if k != "contact"}
    buffer = io.BytesIO()
    buffer.write(b"\x01")
    fastavro.schemaless_writer(buffer, _archived("referral_event", 1), old)
    back = decode("referral_event", buffer.getvalue())
    assert back["contact"] is None and back["referral_id"] == record["referral_id"]
    assert back["decision"]["reason_code"] == "missing-ppv"
    assert encode("referral_event", record)[:1] == b"\x02"
    with pytest.raises(ValueError, match="unknown referral_event format version"):
        decode("referral_event", b"\x07" + buffer.getvalue()[1:])
