"""Each supported ADT event over a real MLLP socket → AA → exactly one HospitalNotification on
the child's municipality topic, and nothing anywhere else."""

from __future__ import annotations

import uuid

import pytest

from demo.hl7_builder import Hospital, adt, medcom_test_patients
from stafet.config import PROJECT_ROOT
from stafet.directory import load_directory
from stafet.inbound.hl7v2 import parse_adt
from stafet.kafka.topics import H_EVENT_ID, municipality_topic

HOSPITAL = Hospital("BUC Test", "600000000000099")
DIRECTORY = PROJECT_ROOT / "deploy" / "directory.toml"
DAY = "20261123"

# trigger, extra builder args, code, Encounter status, class, Provenance activity
CASES = [
    ("A01", {}, "STIN", "in-progress", "IMP", "admit-inpatient"),
    ("A01", {"patient_class": "E"}, "STAA", "in-progress", "EMER", "admit-emergency"),
    ("A04", {"patient_class": "E"}, "STAA", "in-progress", "EMER", "admit-emergency"),
    ("A21", {}, "STOR", "onleave", "IMP", "start-leave-inpatient"),
    ("A22", {"before": ["A21"]}, "SLOR", "in-progress", "IMP", "end-leave-inpatient"),
    (
        "A03",
        {"discharge_time": f"{DAY}1500"},
        "SLHJ",
        "finished",
        "IMP",
        "discharge-inpatient-home",
    ),
    (
        "A03",
        {"discharge_time": f"{DAY}1500", "deceased": True},
        "MORS",
        "finished",
        "IMP",
        "admit-inpatient",
    ),
    ("A08", {}, "RE_STIN", "in-progress", "IMP", "revise-admit-inpatient"),
    ("A11", {}, "AN_STIN", "entered-in-error", "IMP", "cancel-admit-inpatient"),
    ("A13", {}, "AN_SLHJ", "in-progress", "IMP", "cancel-discharge-inpatient-home"),
    ("A52", {}, "AN_STOR", "in-progress", "IMP", "cancel-start-leave-inpatient"),
    ("A53", {"before": ["A21", "A22"]}, "AN_SLOR", "onleave", "IMP", "cancel-end-leave-inpatient"),
]
CHILDREN = [
    "RikkeBerggren",
    "BoVestergaard",
    "AliJensen",
    "PiaBerggren",
    "JulianeJoergensen",
    "GitteNancy",
    "MuhammedAbdul",
    "LarsBerggren",
]


def _resources(bundle: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for entry in bundle["entry"]:
        out.setdefault(entry["resource"]["resourceType"], []).append(entry["resource"])
    return out


@pytest.mark.parametrize(
    ("trigger", "extra", "code", "status", "klass", "activity"),
    CASES,
    ids=[f"{c[0]}-{c[2]}" for c in CASES],
)
def test_adt_event_becomes_one_notification_on_the_right_topic(
    stack,
    trigger,
    extra,
    code,
    status,
    klass,
    activity,
):
    index = [c[:3] for c in CASES].index((trigger, extra, code))
    patient = medcom_test_patients()[CHILDREN[index % len(CHILDREN)]]
    control_id = f"T-{uuid.uuid4().hex[:12]}"
    extra = dict(extra)
    for n, earlier in enumerate(extra.pop("before", [])):  # e.g. the leave a return ends
        since = stack.marks()
        assert (
            stack.send(
                adt(
                    earlier,
                    patient,
                    hospital=HOSPITAL,
                    control_id=f"{control_id}-{n}",
                    visit=f"V-{control_id}",
                    event_time=f"{DAY}09{n}0",
                    admit_time=f"{DAY}0800",
                )
            )["code"]
            == "AA"
        )
        assert stack.read(since, until=1), f"no notification for the preceding {earlier}"
    message = adt(
        trigger,
        patient,
        hospital=HOSPITAL,
        control_id=control_id,
        visit=f"V-{control_id}",
        event_time=f"{DAY}1000",
        admit_time=f"{DAY}0800",
        **extra,
    )
    event_id = parse_adt(
        message, secret=stack.settings.patient_key_secret.get_secret_value()
    ).event_id
    since = stack.marks()

    ack = stack.send(message)
    assert ack["code"] == "AA", ack
    assert ack["control_id"] == control_id

    assert stack.read(since, until=1), "no notification arrived"
    records = stack.read(since, idle_s=1.5, timeout_s=20)  # all since, after a quiet moment
    mine = [r for r in records if r.headers.get(H_EVENT_ID, b"").decode() == event_id]
    assert len(mine) == 1, [(r.topic, r.headers) for r in mine]
    record = mine[0]
    assert record.topic == municipality_topic(patient.municipality_code)
    assert record.headers["stafet.event_code"].decode() == code

    bundle = record.json()
    res = _resources(bundle)
    assert bundle["type"] == "message"
    assert bundle["entry"][0]["resource"]["resourceType"] == "MessageHeader"
    encounter = res["Encounter"][0]
    assert encounter["status"] == status
    assert encounter["class"]["code"] == klass
    cprs = [
        i["value"]
        for i in res["Patient"][0]["identifier"]
        if i["system"] == "urn:oid:1.2.208.176.1.2"
    ]
    assert cprs == [patient.cpr]
    assert res["Patient"][0].get("deceasedBoolean", False) is (code == "MORS")
    activities = [c["code"] for p in res["Provenance"] for c in p["activity"]["coding"]]
    assert activities == [activity]
    header = res["MessageHeader"][0]
    receiver_ref = header["destination"][0]["receiver"]["reference"]
    receiver = next(o for o in res["Organization"] if receiver_ref.endswith(o["id"]))
    # the municipality's central unit in the party directory, by SOR + EAN
    unit = load_directory(DIRECTORY).municipal_unit(patient.municipality_code)
    assert [i["value"] for i in receiver["identifier"]] == [unit.ean, unit.sor]
    assert header["destination"][0]["endpoint"] == f"https://sor2.sum.dsdn.dk/#id={unit.sor}"
