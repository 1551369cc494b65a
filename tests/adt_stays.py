"""The stays the load tests send: per stay an admission (A01), a correction (A08) and a discharge
(A03) of one of MedCom's test children, to one municipality, with ids unique to the run."""

from __future__ import annotations

from collections.abc import Iterator

from demo.hl7_builder import Hospital, adt, medcom_test_patients

HOSPITAL = Hospital("Bispebjerg og Frederiksberg Hospital (test)", "600000000000096")
CHILDREN = ["Einer", "Lonni", "Magnus", "Rasmus", "Sverre", "Torre", "OddHaugen", "KnutOdvar"]


def stay_messages(visit_prefix: str, code: str) -> Iterator[bytes]:
    """A01, A08, A03 of stay after stay, without end; control ids ``<prefix>-<n>-<trigger>``."""
    patients = medcom_test_patients()
    v = 0
    while True:
        child = patients[CHILDREN[v % len(CHILDREN)]]
        visit = f"{visit_prefix}-{v}"
        day = v % 28 + 1
        for i, trigger in enumerate(("A01", "A08", "A03")):
            extra = {"discharge_time": f"202612{day:02d}1500"} if trigger == "A03" else {}
            yield adt(
                trigger,
                child,
                hospital=HOSPITAL,
                control_id=f"{visit}-{trigger}",
                visit=visit,
                event_time=f"202612{day:02d}1{i}00",
                admit_time=f"202612{day:02d}0800",
                municipality_code=code,
                **extra,
            )
        v += 1
