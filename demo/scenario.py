"""A scripted synthetic day in child and adolescent psychiatry, across all five regions.

Only MedCom test patients. Each step says what should reach the municipality, so the demo can
check itself: ``expected`` is the notification code, or None for a message that must be rejected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from demo.hl7_builder import Hospital, Provider, adt, medcom_test_patients, referral_message

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

    def add(
        desc: str,
        trigger: str,
        patient_id: str,
        hospital: Hospital,
        visit: str,
        time: str,
        expected: str | None,
        **kw: Any,
    ) -> None:
        patient = p[patient_id]
        message = adt(
            trigger,
            patient,
            hospital=hospital,
            control_id=f"{run_id}-{len(steps) + 1:03d}",
            visit=f"{run_id}-{visit}",
            event_time=f"{day}{time}",
            **kw,
        )  # type: ignore[arg-type]
        code = kw.get("municipality_code", patient.municipality_code)
        steps.append(Step(desc, message, expected, code))  # type: ignore[arg-type]

    # Morning admissions in five regions.
    add(
        "Gitte admitted (eating disorder), Hovedstaden",
        "A01",
        "GitteNancy",
        BUC_HOVEDSTADEN,
        "V1",
        "0750",
        "STIN",
        admit_time=f"{day}0745",
    )
    add(
        "Rikke admitted, Midtjylland",
        "A01",
        "RikkeBerggren",
        BUC_AARHUS,
        "V2",
        "0805",
        "STIN",
        admit_time=f"{day}0800",
    )
    add(
        "Bo seen acutely (ambulant), Nordjylland",
        "A04",
        "BoVestergaard",
        BUA_AALBORG,
        "V3",
        "0840",
        "STAA",
        admit_time=f"{day}0835",
        patient_class="E",
    )
    add(
        "Ali admitted, Sjælland",
        "A01",
        "AliJensen",
        BUA_ROSKILDE,
        "V4",
        "0910",
        "STIN",
        admit_time=f"{day}0905",
    )
    add(
        "Pia admitted, Syddanmark (ISO-8859-1 sender)",
        "A01",
        "PiaBerggren",
        BUC_ODENSE,
        "V5",
        "0930",
        "STIN",
        admit_time=f"{day}0925",
        charset="8859/1",
    )
    add(
        "Juliane admitted by mistake, Syddanmark",
        "A01",
        "JulianeJoergensen",
        BUC_ODENSE,
        "V6",
        "1000",
        "STIN",
        admit_time=f"{day}0955",
        charset="8859/1",
    )
    add(
        "… and the admission cancelled",
        "A11",
        "JulianeJoergensen",
        BUC_ODENSE,
        "V6",
        "1020",
        "AN_STIN",
        admit_time=f"{day}0955",
        charset="8859/1",
    )
    add(
        "Gitte's admission corrected",
        "A08",
        "GitteNancy",
        BUC_HOVEDSTADEN,
        "V1",
        "1100",
        "RE_STIN",
        admit_time=f"{day}0745",
    )
    add(
        "Bo goes home from the acute visit",
        "A03",
        "BoVestergaard",
        BUA_AALBORG,
        "V3",
        "1200",
        "SLHJ",
        admit_time=f"{day}0835",
        discharge_time=f"{day}1200",
        patient_class="E",
    )
    add(
        "Pia on leave for the afternoon",
        "A21",
        "PiaBerggren",
        BUC_ODENSE,
        "V5",
        "1300",
        "STOR",
        admit_time=f"{day}0925",
        charset="8859/1",
    )
    add(
        "Muhammed (admitted last week) has died",
        "A03",
        "MuhammedAbdul",
        BUC_ODENSE,
        "V7",
        "1410",
        "MORS",
        admit_time="202611160630",
        discharge_time=f"{day}1410",
        deceased=True,
    )
    add(
        "Gitte discharged home",
        "A03",
        "GitteNancy",
        BUC_HOVEDSTADEN,
        "V1",
        "1530",
        "SLHJ",
        admit_time=f"{day}0745",
        discharge_time=f"{day}1530",
    )
    add(
        "Lars admitted, Hovedstaden",
        "A01",
        "LarsBerggren",
        BUC_HOVEDSTADEN,
        "V8",
        "1600",
        "STIN",
        admit_time=f"{day}1555",
    )
    add(
        "a message without a municipality we know: rejected (AR), to the DLQ",
        "A01",
        "AyaBerggren",
        BUC_HOVEDSTADEN,
        "V9",
        "1615",
        None,
        admit_time=f"{day}1610",
        municipality_code="0999",
    )
    add(
        "Pia back from leave",
        "A22",
        "PiaBerggren",
        BUC_ODENSE,
        "V5",
        "1800",
        "SLOR",
        admit_time=f"{day}0925",
        charset="8859/1",
    )
    return steps


# --- referrals to child and adolescent psychiatry -----------------------------------------------

GP_VESTERGADE = Provider("RP", "Lægerne i Vestergade (demo)", "100001", "YDER")
GP_HAVNEN = Provider("RP", "Lægehuset ved Havnen (demo)", "100002", "YDER")
BUC_AARHUS_RT = Provider("RT", BUC_AARHUS.name, BUC_AARHUS.sor)
BUA_ROSKILDE_RT = Provider("RT", BUA_ROSKILDE.name, BUA_ROSKILDE.sor)
BUC_HOVEDSTADEN_RT = Provider("RT", BUC_HOVEDSTADEN.name, BUC_HOVEDSTADEN.sor)
PPR_AARHUS = Provider("PPR", "PPR Aarhus Kommune (demo)", "6000000007510011")
FAM_AARHUS = Provider("FAM", "Familieafdelingen Aarhus Kommune (demo)", "6000000007510012")
PPR_NAESTVED = Provider("PPR", "PPR Næstved Kommune (demo)", "6000000003700011")
CONTACT = ("Holm", "Hanne", "00 00 00 01")


@dataclass(frozen=True, slots=True)
class ReferralStep:
    """One referral message and the deliveries it should cause: (topic suffix, recipient kind)."""

    description: str
    message: bytes
    expected: tuple[tuple[str, str, str], ...]  # (topic, recipient kind, letter kind)
    referral_id: str = ""

    @property
    def rejections(self) -> int:
        """How many rejection alerts this step should cause (one per recipient)."""
        return sum(1 for e in self.expected if e[2] == "rejection")


def referral_day(run_id: str, day: str = "20261123") -> list[ReferralStep]:
    """Six referrals: two rejected (a third), three accepted, one forwarded."""
    p = medcom_test_patients()
    steps: list[ReferralStep] = []
    mun = lambda code: f"out.municipality.{code}"  # noqa: E731

    def ref(desc, child_id, ref_no, gp, unit, units, guardians, time, expected):  # type: ignore[no-untyped-def]
        msg = referral_message(
            "REF^I12",
            p[child_id],
            referral_id=f"{run_id}-HEN{ref_no}",
            control_id=f"{run_id}-R{ref_no}",
            event_time=f"{day}{time}",
            providers=[gp, unit, *units],
            guardians=guardians,
            notes={"NOTE": "Mistrivsel, angst og skolefravær"},
        )
        steps.append(ReferralStep(desc, msg, expected, f"{run_id}-HEN{ref_no}"))

    def rri(
        desc,
        child_id,
        ref_no,
        unit,
        status,
        time,
        expected,
        reason=None,
        alt=None,  # type: ignore[no-untyped-def]
        resp=None,
        forward_to=None,
    ):
        providers = [unit] + ([forward_to] if forward_to else [])
        notes = {
            k: v
            for k, v in (
                ("NOTE", "Vurderet på visitationskonference"),
                ("ALT", alt),
                ("RESP", resp),
            )
            if v
        }
        msg = referral_message(
            "RRI^I12",
            p[child_id],
            referral_id=f"{run_id}-HEN{ref_no}",
            control_id=f"{run_id}-D{ref_no}",
            event_time=f"{day}{time}",
            providers=providers,
            status=status,
            reason=reason,
            notes=notes,
            contact=CONTACT,
        )
        steps.append(ReferralStep(desc, msg, expected, f"{run_id}-HEN{ref_no}"))

    rikke_guardians = [("GUARD", None, "1502779995"), ("MTH", None, "2911829996")]
    receipt = (("out.referrer", "gp", "receipt"),)
    status = (("out.referrer", "gp", "status"),)
    ref(
        "GP refers Rikke (Aarhus) to BUC Aarhus",
        "RikkeBerggren",
        1,
        GP_VESTERGADE,
        BUC_AARHUS_RT,
        [PPR_AARHUS, FAM_AARHUS],
        rikke_guardians,
        "0900",
        receipt,
    )
    ref(
        "GP refers Ali (Næstved) to BUA Roskilde",
        "AliJensen",
        2,
        GP_HAVNEN,
        BUA_ROSKILDE_RT,
        [PPR_NAESTVED],
        [("FTH", None, "3103979995")],
        "0915",
        receipt,
    )
    ref(
        "GP refers Lars (Hillerød) to BUC Hovedstaden",
        "LarsBerggren",
        3,
        GP_HAVNEN,
        BUC_HOVEDSTADEN_RT,
        [],
        [("MTH", None, "2911829996")],
        "0930",
        receipt,
    )
    ref(
        "GP refers Gitte (Hillerød) to BUC Hovedstaden",
        "GitteNancy",
        4,
        GP_VESTERGADE,
        BUC_HOVEDSTADEN_RT,
        [],
        [("MTH", None, "2911829996")],
        "0945",
        receipt,
    )
    ref(
        "GP refers Pia (Odense) to BUC Aarhus",
        "PiaBerggren",
        5,
        GP_VESTERGADE,
        BUC_AARHUS_RT,
        [],
        [("MTH", None, "2911829996")],
        "1000",
        receipt,
    )
    ref(
        "GP refers Aya (Hillerød) to BUC Hovedstaden",
        "AyaBerggren",
        6,
        GP_HAVNEN,
        BUC_HOVEDSTADEN_RT,
        [],
        [("MTH", None, "2911829996")],
        "1015",
        receipt,
    )
    rri(
        "BUC Aarhus REJECTS Rikke's referral: no PPV",
        "RikkeBerggren",
        1,
        BUC_AARHUS_RT,
        "R",
        "1400",
        (
            ("out.referrer", "gp", "rejection"),
            (mun("0751"), "municipality", "rejection"),
            (mun("0751"), "ppr", "rejection"),
            (mun("0751"), "family-department", "rejection"),
            ("out.letter", "guardian", "rejection"),
            ("out.letter", "guardian", "rejection"),
        ),
        reason=("missing-ppv", "Der mangler en pædagogisk-psykologisk vurdering (PPV)"),
        alt="PPR i Aarhus Kommune udarbejder en PPV; henvis derefter igen",
        resp="Aarhus Kommune, PPR",
    )
    rri(
        "BUA Roskilde REJECTS Ali's referral: outside the target group",
        "AliJensen",
        2,
        BUA_ROSKILDE_RT,
        "R",
        "1410",
        (
            ("out.referrer", "gp", "rejection"),
            (mun("0370"), "municipality", "rejection"),
            (mun("0370"), "ppr", "rejection"),
            # not named in the referral: the party directory knows Næstved's family department
            (mun("0370"), "family-department", "rejection"),
            ("out.letter", "guardian", "rejection"),
        ),
        reason=("outside-target-group", "Barnet er ikke i børne- og ungdomspsykiatriens målgruppe"),
        alt="Familieafdelingen i Næstved Kommune vurderer støtte efter serviceloven",
        resp="Næstved Kommune, Familieafdelingen",
    )
    rri("BUC Hovedstaden accepts Lars", "LarsBerggren", 3, BUC_HOVEDSTADEN_RT, "A", "1420", status)
    rri("BUC Hovedstaden accepts Gitte", "GitteNancy", 4, BUC_HOVEDSTADEN_RT, "A", "1430", status)
    rri(
        "BUC Aarhus forwards Pia to BUA Odense",
        "PiaBerggren",
        5,
        BUC_AARHUS_RT,
        "P",
        "1440",
        (*status, ("out.referrer", "hospital-unit", "forward")),  # the new unit is told too
        forward_to=Provider("RT", BUC_ODENSE.name, BUC_ODENSE.sor),
    )
    rri("BUC Hovedstaden accepts Aya", "AyaBerggren", 6, BUC_HOVEDSTADEN_RT, "A", "1450", status)
    return steps
