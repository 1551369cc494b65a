"""HL7 v2 ADT → EncounterEvent: the trigger mapping, CPR and municipality lookup, charsets,
separators, times, identifiers and every rejection (code, location, a reason without the CPR).

Only MedCom test CPRs (Lars Berggren 0505159995, Rikke Berggren 0505209996, Cæsar Østergård
2311143995) and numbers that cannot be CPRs appear here.
"""

from __future__ import annotations

import contextlib
import uuid
from zoneinfo import ZoneInfo

import pytest

from demo.hl7_builder import Hospital, adt, medcom_test_patients
from stafet.inbound.hl7v2 import Hl7Error, parse_adt, read_header, to_iso

LARS, LARS_DASH, RIKKE = "0505159995", "050515-9995", "0505209996"
SECRET = "test-secret"
CPH = ZoneInfo("Europe/Copenhagen")

# A complete, hand-written A01 for Lars Berggren (CR separated, UTF-8).
A01 = (
    "MSH|^~\\&|EPJ|BUC Test^600000000000099^SOR|STAFET|STAFET|20240115103000||ADT^A01^ADT_A01|"
    "MSG0001|P|2.5|||AL|NE|DK|UNICODE UTF-8\r"
    "EVN|A01|20240115103000\r"
    "PID|1||0505159995^^^CPR^NNDNK||Berggren^Lars^Test||20150505|M|||"
    "Testpark Allé 48^^Hillerød^^3400^DK^H^^0219\r"
    "PV1|1|I|600000000000099^^^BUC Test||||||||||||||||V-1001|||||||||||||||||||||||||"
    "20240115080000|\r"
)


def segment(name: str, fields: dict[int, str]) -> str:
    """One segment from {field number: value}; MSH numbering counts the field separator."""
    if name == "MSH":
        values = {2: "^~\\&", **fields}
        return "|".join(["MSH"] + [values.get(i, "") for i in range(2, max(values) + 1)])
    return "|".join([name] + [fields.get(i, "") for i in range(1, max(fields) + 1)])


def message(
    trigger: str = "A01",
    *,
    msh: dict | None = None,
    evn: dict | None = None,
    pid: dict | None = None,
    pv1: dict | None = None,
    order: str = "MSH EVN PID PV1",
    sep: str = "\r",
    encoding: str = "utf-8",
) -> bytes:
    parts = {
        "MSH": {
            3: "EPJ",
            4: "BUC Test^600000000000099^SOR",
            5: "STAFET",
            6: "STAFET",
            7: "20240115103000",
            9: f"ADT^{trigger}^ADT_{trigger}",
            10: "MSG0001",
            11: "P",
            12: "2.5",
            18: "UNICODE UTF-8",
            **(msh or {}),
        },
        "EVN": {1: trigger, 2: "20240115103000", **(evn or {})},
        "PID": {
            1: "1",
            3: f"{LARS}^^^CPR^NNDNK",
            5: "Berggren^Lars^Test",
            7: "20150505",
            8: "M",
            11: "Testpark Allé 48^^Hillerød^^3400^DK^H^^0219",
            **(pid or {}),
        },
        "PV1": {1: "1", 2: "I", 19: "V-1001", 44: "20240115080000", **(pv1 or {})},
    }
    return (sep.join(segment(n, parts[n]) for n in order.split()) + sep).encode(encoding)


def parse(raw: bytes, **kw) -> object:
    return parse_adt(raw, secret=SECRET, **kw)


def reject(raw: bytes, **kw) -> Hl7Error:
    with pytest.raises(Hl7Error) as info:
        parse(raw, **kw)
    return info.value


def test_literal_a01_is_normalised_completely():
    event = parse(A01.encode())
    assert (event.hl7_trigger, event.notification_code) == ("A01", "STIN")
    assert event.source_message_id == "MSG0001"
    assert event.source_system == "EPJ^BUC Test^600000000000099^SOR"
    assert event.event_time == "2024-01-15T10:30:00+01:00"
    assert (event.sender.sor, event.sender.name) == ("600000000000099", "BUC Test")
    p = event.patient
    assert (p.cpr, p.family, p.given) == (LARS, "Berggren", ("Lars", "Test"))
    assert (p.birth_date, p.gender, p.deceased) == ("2015-05-05", "male", False)
    assert (p.municipality_code, p.region_code) == ("0219", "DK-84")
    e = event.encounter
    assert (e.visit_number, e.class_code, e.status) == ("V-1001", "IMP", "in-progress")
    assert (e.start, e.end, e.leave_start, e.leave_end) == (
        "2024-01-15T08:00:00+01:00",
        None,
        None,
        None,
    )
    assert uuid.UUID(e.episode_of_care_id).version == 5


T, LATER = "2024-01-15T10:30:00+01:00", "2024-01-16T12:00:00+01:00"
MAPPING = [  # trigger, PV1-2, PID overrides, PV1 overrides, code, status, class
    ("A01", "I", {}, {}, "STIN", "in-progress", "IMP"),
    ("A01", "E", {}, {}, "STAA", "in-progress", "EMER"),
    ("A04", "E", {}, {}, "STAA", "in-progress", "EMER"),
    ("A04", "I", {}, {}, "STAA", "in-progress", "EMER"),  # A04 is always the acute ambulant start
    ("A21", "I", {}, {}, "STOR", "onleave", "IMP"),
    ("A22", "I", {}, {}, "SLOR", "in-progress", "IMP"),
    ("A03", "I", {}, {}, "SLHJ", "finished", "IMP"),
    ("A03", "I", {30: "Y"}, {}, "MORS", "finished", "IMP"),
    ("A03", "I", {29: "20240115100000"}, {}, "MORS", "finished", "IMP"),
    ("A08", "I", {}, {}, "RE_STIN", "in-progress", "IMP"),
    ("A08", "E", {}, {}, "RE_STAA", "in-progress", "EMER"),
    ("A08", "I", {}, {45: "20240116120000"}, "RE_SLHJ", "finished", "IMP"),
    ("A08", "I", {30: "Y"}, {45: "20240116120000"}, "RE_MORS", "finished", "IMP"),
    ("A11", "I", {}, {}, "AN_STIN", "entered-in-error", "IMP"),
    ("A11", "E", {}, {}, "AN_STAA", "entered-in-error", "EMER"),
    ("A13", "I", {}, {}, "AN_SLHJ", "in-progress", "IMP"),
    ("A52", "I", {}, {}, "AN_STOR", "in-progress", "IMP"),
    ("A53", "I", {}, {}, "AN_SLOR", "onleave", "IMP"),
]


@pytest.mark.parametrize(
    ("trigger", "klass", "pid", "pv1", "code", "status", "enc_class"),
    MAPPING,
    ids=[f"{m[0]}-{m[4]}" for m in MAPPING],
)
def test_trigger_mapping(trigger, klass, pid, pv1, code, status, enc_class):
    event = parse(message(trigger, pid=pid, pv1={2: klass, **pv1}))
    enc = event.encounter
    assert (event.hl7_trigger, event.notification_code) == (trigger, code)
    assert (enc.status, enc.class_code) == (status, enc_class)
    assert event.patient.deceased == code.endswith("MORS")
    assert enc.end == ((LATER if pv1.get(45) else T) if status == "finished" else None)
    assert enc.leave_start == (T if code in ("STOR", "AN_STOR") else None)
    assert enc.leave_end == (T if code == "SLOR" else None)  # AN_SLOR: back on leave, no end


@pytest.mark.parametrize(
    "pid3",
    [
        f"{LARS}^^^CPR",
        f"{LARS}^^^^NNDNK",
        LARS,
        f"{LARS_DASH}^^^CPR",
        LARS_DASH,
        f"1234567890^^^LOCAL~{LARS}^^^CPR",  # tagged beats an earlier untagged 10-digit id
        f"1234567890^^^LOCAL~{LARS}^^^CPR&1.2.208.176.1.2&ISO",  # CX.4 as a full HD
    ],
    ids=["cx4", "cx5", "untagged", "dash", "untagged-dash", "tagged-first", "cx4-hd"],
)
def test_cpr_is_found(pid3):
    assert parse(message(pid={3: pid3})).patient.cpr == LARS


@pytest.mark.parametrize(
    ("pid11", "pid12", "code", "region"),
    [
        ("Postboks 7^^^^8000^DK^M^^0751~Testpark Allé 48^^^^3400^DK^H^^0219", "", "0219", "DK-84"),
        ("Testjulianevej 3^^^^8000^DK^H^^751", "", "0751", "DK-82"),
        ("Testjulianevej 3^^^^8000^DK^H", "751", "0751", "DK-82"),
        ("", "0101", "0101", "DK-84"),
    ],
    ids=["home-of-two", "zero-pad", "pid12-padded", "pid12-only"],
)
def test_municipality(pid11, pid12, code, region):
    patient = parse(message(pid={11: pid11, 12: pid12})).patient
    assert (patient.municipality_code, patient.region_code) == (code, region)


def test_iso_8859_1_keeps_danish_letters():
    caesar = medcom_test_patients()["CaesarOestergaard"]
    raw = adt(
        "A01",
        caesar,
        hospital=Hospital("Børnepsykiatri Århus", "600000000000098"),
        control_id="L1",
        visit="V-æøå",
        event_time="202401151030",
        charset="8859/1",
    )
    assert "Østergård".encode("latin-1") in raw
    event = parse(raw)
    assert (event.patient.family, event.patient.given) == ("Østergård", ("Cæsar", "Test"))
    assert event.encounter.visit_number == "V-æøå"
    assert event.sender.name == "Børnepsykiatri Århus"
    assert "Børnepsykiatri Århus" in event.source_system


def test_utf8_header_fields_are_not_read_as_latin1():
    raw = message(msh={4: "Børnepsykiatri Århus^600000000000098^SOR"})
    assert read_header(raw).sending_facility == "Børnepsykiatri Århus^600000000000098^SOR"
    assert parse(raw).source_system == "EPJ^Børnepsykiatri Århus^600000000000098^SOR"


def test_empty_msh18_uses_the_configured_default():
    raw = message(msh={18: ""}, pid={5: "Østergård^Cæsar"}, encoding="iso-8859-1")
    assert parse(raw, default_charset="iso-8859-1").patient.family == "Østergård"
    err = reject(raw)  # the same bytes are not UTF-8
    assert (err.code, err.location) == (102, "MSH^1^18")


def test_unsupported_or_lying_charset_is_rejected():
    err = reject(message(msh={18: "8859/2"}))
    assert (err.code, err.location) == (103, "MSH^1^18")
    err = reject(message(pid={5: "Østergård"}, encoding="iso-8859-1"))  # says UTF-8, is Latin-1
    assert (err.code, err.location) == (102, "MSH^1^18")


@pytest.mark.parametrize("sep", ["\n", "\r\n"], ids=["LF", "CRLF"])
def test_lenient_segment_separators(sep):
    assert parse(A01.replace("\r", sep).encode()) == parse(A01.encode())
    assert parse(message(sep=sep)) == parse(message())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20240115103000", "2024-01-15T10:30:00+01:00"),  # winter: CET
        ("20240715103000", "2024-07-15T10:30:00+02:00"),  # summer: CEST
        ("202407151030", "2024-07-15T10:30:00+02:00"),
        ("20240115103000.1234+0100", "2024-01-15T10:30:00+01:00"),
        ("20240715103000+0000", "2024-07-15T10:30:00+00:00"),
        ("20240715103000-0530", "2024-07-15T10:30:00-05:30"),
    ],
)
def test_hl7_times(value, expected):
    assert to_iso(value, CPH, "EVN^1^2") == expected


def test_event_and_admission_times_through_parse():
    event = parse(message(evn={2: "20240715103000"}, pv1={44: "20240714220000+0000"}))
    assert event.event_time == "2024-07-15T10:30:00+02:00"
    assert event.encounter.start == "2024-07-14T22:00:00+00:00"
    assert parse(message(pv1={44: ""})).encounter.start == "2024-01-15T10:30:00+01:00"  # A01: EVN-2
    assert parse(message(), timezone="UTC").event_time == "2024-01-15T10:30:00+00:00"


@pytest.mark.parametrize(
    "value",
    ["2024-01-15", "20241315103000", "20240230", "20240115103000+2500", "20240115103000+0175", "x"],
)
def test_bad_times_are_data_type_errors(value):
    with pytest.raises(Hl7Error) as info:
        to_iso(value, CPH, "PV1^1^44")
    assert (info.value.code, info.value.location) == (102, "PV1^1^44")


def test_event_id_is_deterministic_per_source_message():
    first = parse(message())
    assert parse(message()).event_id == first.event_id
    # a retransmission (same message, new MSH-7) is the same event
    assert parse(message(msh={7: "20240115113000"})).event_id == first.event_id
    assert uuid.UUID(first.event_id).version == 5
    others = [
        message(msh={10: "MSG0002"}),
        message(msh={3: "SP"}),
        message(msh={4: "BUC Test^600000000000098^SOR"}),
    ]
    ids = {first.event_id, *(parse(m).event_id for m in others)}
    assert len(ids) == 4


def test_a_reused_msh10_with_other_content_is_a_new_event():
    """A sender whose counter restarted after a fail-over reuses MSH-10 for a new message: it
    must not be taken for a retransmission (and dropped as a duplicate downstream)."""
    admitted = parse(message("A01"))
    discharged = parse(message("A03", pv1={45: "20240120100000"}))
    assert admitted.source_message_id == discharged.source_message_id
    assert admitted.event_id != discharged.event_id
    assert parse(message(evn={2: "20240115110000"})).event_id != admitted.event_id


def test_patient_key_is_stable_and_pseudonymous():
    lars = parse(message()).patient_key
    assert parse(message("A03", msh={10: "X"}, pid={3: LARS_DASH})).patient_key == lars
    assert (
        parse(
            message(pid={3: f"{RIKKE}^^^CPR", 11: "Testjulianevej 3^^^^8000^DK^H^^0751"})
        ).patient_key
        != lars
    )
    assert parse_adt(message(), secret="other").patient_key != lars
    assert len(lars) == 32 and int(lars, 16) >= 0
    assert LARS not in lars and LARS[:6] not in lars


def test_sender_variants():
    assert parse(message(msh={4: "600000000000099"})).sender.sor == "600000000000099"
    assert parse(message(pid={18: "ACC-7"}, pv1={19: ""})).encounter.visit_number == "ACC-7"


A01_EVN_PID_SWAPPED = A01.split("\r")
ERRORS = [  # name, raw message, code, location
    ("no MSH", "\r".join(A01.split("\r")[1:]).encode(), 100, "MSH"),
    ("no EVN", message(order="MSH PID PV1"), 100, "EVN"),
    ("no PID", message(order="MSH EVN PV1"), 100, "PID"),
    ("no PV1", message(order="MSH EVN PID"), 100, "PV1"),
    ("wrong order", "\r".join([A01_EVN_PID_SWAPPED[i] for i in (0, 2, 1, 3)]).encode(), 100, ""),
    ("not ADT", message(msh={9: "ORM^O01^ORM_O01"}), 200, "MSH^1^9"),
    ("A02", message("A02"), 201, "MSH^1^9"),
    ("empty MSH-10", message(msh={10: ""}), 101, "MSH^1^10"),
    ("no CPR", message(pid={3: "12345^^^LOCAL"}), 101, "PID^1^3"),
    ("empty PID-3", message(pid={3: ""}), 101, "PID^1^3"),
    ("CPR day 32", message(pid={3: "3205159995^^^CPR"}), 102, "PID^1^3"),
    ("CPR 9 digits", message(pid={3: "050515999^^^CPR"}), 102, "PID^1^3"),
    ("unknown municipality", message(pid={11: "Vej 1^^^^3400^DK^H^^0999"}), 103, "PID^1^11^1^9"),
    ("unknown PID-12", message(pid={11: "", 12: "0411"}), 103, "PID^1^12"),
    ("no municipality", message(pid={11: "Vej 1^^^^3400^DK^H"}), 101, "PID^1^11^1^9"),
    ("MSH-4 no SOR", message(msh={4: "BUC Test"}), 101, "MSH^1^4"),
    ("MSH-4 GLN", message(msh={4: "BUC Test^5790000209354^GLN"}), 101, "MSH^1^4"),
    ("class O", message(pv1={2: "O"}), 103, "PV1^1^2"),
    ("no visit", message(pv1={19: ""}), 101, "PV1^1^19"),
    ("bad EVN-2", message(evn={2: "15-01-2024"}), 102, "EVN^1^2"),
    ("bad PV1-44", message(pv1={44: "20241301"}), 102, "PV1^1^44"),
    ("bad offset", message(evn={2: "20240115103000+2500"}), 102, "EVN^1^2"),
    ("A03 no PV1-44", message("A03", pv1={44: ""}), 101, "PV1^1^44"),
    ("A21 no PV1-44", message("A21", pv1={44: ""}), 101, "PV1^1^44"),
]


@pytest.mark.parametrize(
    ("raw", "code", "location"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_rejections(raw, code, location):
    err = reject(raw)
    assert (err.code, err.location, err.ack_code) == (code, location, "AR")
    assert str(err).startswith(f"{code} {err.text}")
    assert err.reason and LARS not in err.reason and LARS not in str(err)


CPR_IN_WRONG_FIELD = [
    message(msh={9: f"{LARS}^A01"}),
    message(msh={9: f"ADT^{LARS}"}),
    message(msh={18: LARS}),
    message(pv1={2: LARS}),
    message(pid={11: "", 12: LARS}),
    message(pid={11: "", 12: LARS_DASH}),
    message(evn={2: LARS}),
    message(pv1={44: LARS_DASH}),
    message(pid={3: f"{LARS}1^^^CPR"}),
]


@pytest.mark.parametrize("raw", CPR_IN_WRONG_FIELD)
def test_reason_never_contains_the_cpr(raw):
    err = reject(raw)
    for text in (err.reason, str(err), repr(err)):
        assert LARS not in text and LARS_DASH not in text


def test_hl7error_survives_context_managers_and_notes():
    @contextlib.contextmanager
    def passthrough():
        yield

    with pytest.raises(Hl7Error) as info:  # contextlib assigns exc.__traceback__ on the way out
        with passthrough():
            parse(message(pv1={2: "O"}))
    info.value.add_note("seen by the connector")
    assert info.value.__notes__ == ["seen by the connector"] and info.value.code == 103
