"""A scripted synthetic day in child and adolescent psychiatry, across all five regions.

Only MedCom test patients. Each step says what should reach the municipality, so the demo can
check itself: ``expected`` is the notification code, or None for a message that must be rejected.
"""

from __future__ import annotations

from dataclasses import dataclass

from stafet.demo.hl7_builder import Hospital, adt, medcom_test_patients

BUC_AARHUS = Hospital("BUC Aarhus (demo)", "600000000000001")
BUC_ODENSE = Hospital("BUA Odense (demo)", "600000000000002")
BUC_HOVEDSTADEN = Hospital("BUC Hovedstaden (demo)", "600000000000003")
BUA_AALBORG = Hospital("BUA Aalborg (demo)", "600000000000004")
BUA_ROSKILDE = Hospital("BUA Roskilde (demo)", "600000000000005")


@dataclass(frozen=True, slots=True)
class Step:
    """One message of the day and what it should become."""

    description: str
    message: bytes
    expected: str | None  # notification code, or None: rejected with AR
    municipality_code: str | None


def synthetic_day(run_id: str, day: str = "20261123") -> list[Step]:
    """The day's messages in send order; ``run_id`` makes control ids unique per run."""
    p = medcom_test_patients()
    steps: list[Step] = []

    def add(desc: str, trigger: str, patient_id: str, hospital: Hospital, visit: str, time: str,
            expected: str | None, **kw: object) -> None:
        patient = p[patient_id]
        message = adt(trigger, patient, hospital=hospital, control_id=f"{run_id}-{len(steps) + 1:03d}",
                      visit=f"{run_id}-{visit}", event_time=f"{day}{time}", **kw)  # type: ignore[arg-type]
        code = kw.get("municipality_code", patient.municipality_code)
        steps.append(Step(desc, message, expected, code))  # type: ignore[arg-type]

    # Morning admissions in five regions.
    add("Gitte admitted (eating disorder), Hovedstaden", "A01", "GitteNancy", BUC_HOVEDSTADEN, "V1",
        "0750", "STIN", admit_time=f"{day}0745")
    add("Rikke admitted, Midtjylland", "A01", "RikkeBerggren", BUC_AARHUS, "V2", "0805", "STIN",
        admit_time=f"{day}0800")
    add("Bo seen acutely (ambulant), Nordjylland", "A04", "BoVestergaard", BUA_AALBORG, "V3",
        "0840", "STAA", admit_time=f"{day}0835", patient_class="E")
    add("Ali admitted, Sjælland", "A01", "AliJensen", BUA_ROSKILDE, "V4", "0910", "STIN",
        admit_time=f"{day}0905")
    add("Pia admitted, Syddanmark (ISO-8859-1 sender)", "A01", "PiaBerggren", BUC_ODENSE, "V5",
        "0930", "STIN", admit_time=f"{day}0925", charset="8859/1")
    add("Juliane admitted by mistake, Syddanmark", "A01", "JulianeJoergensen", BUC_ODENSE, "V6",
        "1000", "STIN", admit_time=f"{day}0955", charset="8859/1")
    add("… and the admission cancelled", "A11", "JulianeJoergensen", BUC_ODENSE, "V6", "1020",
        "AN_STIN", admit_time=f"{day}0955", charset="8859/1")
    add("Gitte's admission corrected", "A08", "GitteNancy", BUC_HOVEDSTADEN, "V1", "1100",
        "RE_STIN", admit_time=f"{day}0745")
    add("Bo goes home from the acute visit", "A03", "BoVestergaard", BUA_AALBORG, "V3", "1200",
        "SLHJ", admit_time=f"{day}0835", discharge_time=f"{day}1200", patient_class="E")
    add("Pia on leave for the afternoon", "A21", "PiaBerggren", BUC_ODENSE, "V5", "1300", "STOR",
        admit_time=f"{day}0925", charset="8859/1")
    add("Muhammed (admitted last week) has died", "A03", "MuhammedAbdul", BUC_ODENSE, "V7",
        "1410", "MORS", admit_time="202611160630", discharge_time=f"{day}1410", deceased=True)
    add("Gitte discharged home", "A03", "GitteNancy", BUC_HOVEDSTADEN, "V1", "1530", "SLHJ",
        admit_time=f"{day}0745", discharge_time=f"{day}1530")
    add("Lars admitted, Hovedstaden", "A01", "LarsBerggren", BUC_HOVEDSTADEN, "V8", "1600", "STIN",
        admit_time=f"{day}1555")
    add("a message without a municipality we know: rejected (AR), to the DLQ", "A01",
        "AyaBerggren", BUC_HOVEDSTADEN, "V9", "1615", None, admit_time=f"{day}1610",
        municipality_code="0999")
    add("Pia back from leave", "A22", "PiaBerggren", BUC_ODENSE, "V5", "1800", "SLOR",
        admit_time=f"{day}0925", charset="8859/1")
    return steps
