"""Synthetic, realistic load for the benchmark: HL7 v2 ADT in a national mix, HL7 v2 referrals
(REF^I12 then RRI^I12, about a third rejected) and FHIR referral bodies, for children living in
all 98 municipalities, with Danish names (æ, ø, å) and fictitious CPR numbers.

Fictitious CPR numbers
----------------------
stafet validates a CPR's shape and its date part (``stafet.cpr``: the first six digits must be a
real date in the century the 7th digit gives), so a benchmark CPR must carry a valid date; the
usual trick of adding 60 to the day would be rejected with AR 102. So every generated number is a
valid date **in the future**: DDMMYY with a year 27–36 and a serial 4000–9999 (7th digit 4–9,
which ``stafet.cpr.century`` and the CPR office read as 2027–2036; last digit even = girl, odd =
boy). Nobody is born yet on those dates, so no generated number can be a real person's (until
2027: ``FictitiousCprs`` refuses a first year that is not in the future). Children are "born"
2027–2031 and guardians 2032–2036 so the two never collide; the numbers only live in the
benchmark's temporary broker, which is deleted at the end of every run. Names and addresses are
random combinations ("Testvej"-style streets).

Mixes
-----
ADT (per message): A01 30 %, A03 30 %, A08 15 %, A21 5 % + A22 5 %, A04 10 %, cancellations 5 %
(A11 2 %, A13 1 %, A52 1 %, A53 1 %). A message whose precondition has no episode (a discharge
with nobody admitted, say) becomes an admission; the generator counts what it really emitted.
About 0.5 % of messages name an unknown municipality (0999): AR + ``dlq.mllp``, as in real life.
Referrals: ``referral_share`` of all messages are referral messages; each referral is REF^I12,
then (a few messages later, same connection) RRI^I12: rejected 1/3, accepted 55 %, forwarded 12 %.
Municipalities are weighted by approximate population, and the first 98 children cover all 98.
"""

from __future__ import annotations

import json
import random
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from demo.hl7_builder import (
    Hospital,
    Provider,
    SyntheticPatient,
    adt,
    referral_message,
)
from stafet.ids import stable_uuid
from stafet.schemas.municipalities import municipalities

# --- people ------------------------------------------------------------------------------

BOYS = [
    "Søren",
    "Bjørn",
    "Asbjørn",
    "Jørgen",
    "Jørn",
    "Mads",
    "Noah",
    "Oscar",
    "William",
    "Malthe",
    "Frederik",
    "Villads",
    "Aksel",
    "Anton",
    "Elias",
    "Carl",
    "Magnus",
    "Lauge",
    "Storm",
    "Bertram",
    "Ebbe",
    "Halfdan",
    "Åge",
    "Sølve",
    "Kåre",
    "Bøje",
]
GIRLS = [
    "Sofie",
    "Ida",
    "Freja",
    "Astrid",
    "Lærke",
    "Asta",
    "Clara",
    "Alma",
    "Ella",
    "Emma",
    "Karla",
    "Signe",
    "Mathilde",
    "Bjørk",
    "Åse",
    "Liv",
    "Nanna",
    "Maja",
    "Solvej",
    "Sørine",
    "Møllie",
    "Frøja",
    "Dagmar",
    "Tove",
    "Gry",
    "Ragnhild",
]
MIDDLE = ["Bøgh", "Kjær", "Lund", "Højer", "Dam", "Brønd", "Sø", "Skov", "Bæk", "Holm", "Ågård"]
FAMILY = [
    "Jørgensen",
    "Sørensen",
    "Møller",
    "Kjær",
    "Højgaard",
    "Østergaard",
    "Nørgaard",
    "Søndergaard",
    "Dalsgaard",
    "Bræstrup",
    "Mørch",
    "Brøndum",
    "Krøyer",
    "Lykkegård",
    "Skovgård",
    "Ågård",
    "Bøgh",
    "Frølund",
    "Lønborg",
    "Kjærgaard",
    "Bæk",
    "Dæhnfeldt",
    "Nielsen",
    "Hansen",
    "Pedersen",
    "Andersen",
    "Christensen",
    "Larsen",
    "Rasmussen",
    "Jensen",
    "Madsen",
    "Kristensen",
    "Olsen",
    "Thomsen",
    "Poulsen",
    "Johansen",
    "Knudsen",
    "Mortensen",
    "Holm",
    "Østergård",
]
STREETS = [
    "Søndergade",
    "Nørregade",
    "Østergade",
    "Vestergade",
    "Åboulevarden",
    "Kærvej",
    "Ågade",
    "Bøgevej",
    "Rønnebærvej",
    "Egebæksvej",
    "Møllevej",
    "Fælledvej",
    "Strandvænget",
    "Kløvervænget",
    "Æblehaven",
    "Præstegårdsvej",
    "Skovbrynet",
    "Højskolevej",
    "Tværgade",
    "Gåsebækvej",
]

#: Rough populations (thousands) to weight where children live; every other municipality 45.
#: Only a load shape, not reference data.
POPULATION_K = {
    "0101": 660,
    "0147": 105,
    "0751": 370,
    "0461": 210,
    "0851": 222,
    "0561": 116,
    "0630": 121,
    "0730": 100,
    "0621": 95,
    "0615": 99,
    "0740": 100,
    "0657": 90,
    "0265": 90,
    "0370": 84,
    "0791": 98,
    "0330": 80,
    "0157": 75,
    "0316": 73,
    "0540": 73,
    "0860": 64,
    "0159": 70,
    "0217": 64,
    "0376": 60,
    "0813": 59,
    "0259": 63,
    "0479": 59,
    "0746": 64,
    "0661": 59,
    "0580": 58,
    "0760": 56,
    "0510": 55,
    "0219": 53,
    "0607": 52,
    "0492": 6,
    "0741": 4,
    "0563": 3.5,
    "0825": 1.8,
    "0411": 0.1,
}
#: Postal-code ranges per region (PID-11.5; stafet routes on the municipality code, not these).
POSTAL = {
    "DK-84": (1050, 3699),
    "DK-85": (4000, 4990),
    "DK-83": (5000, 6990),
    "DK-82": (7000, 8990),
    "DK-81": (9000, 9990),
}
REGION_HOSPITALS = {
    "DK-84": [
        "BUC Region Hovedstaden Glostrup",
        "BUC Bispebjerg",
        "Nordsjællands Hospital Hillerød",
        "Herlev og Gentofte Hospital",
        "Amager og Hvidovre Hospital",
    ],
    "DK-85": [
        "BUP Region Sjælland Roskilde",
        "Næstved Sygehus",
        "Holbæk Sygehus",
        "Nykøbing Falster Sygehus",
    ],
    "DK-83": [
        "BUP Odense Universitetshospital",
        "Sygehus Lillebælt Kolding",
        "Sydvestjysk Sygehus Esbjerg",
        "Sygehus Sønderjylland Aabenraa",
    ],
    "DK-82": [
        "BUC Aarhus Universitetshospital",
        "Regionshospitalet Gødstrup",
        "Regionshospitalet Randers",
        "Hospitalsenhed Midt Viborg",
        "Regionshospitalet Horsens",
    ],
    "DK-81": [
        "BUP Aalborg Universitetshospital",
        "Sygehus Vendsyssel Hjørring",
        "Regionshospital Nordjylland Thisted",
    ],
}
#: Share of sending units whose EHR sends ISO-8859-1 (MSH-18 8859/1) instead of UTF-8.
LATIN1_SHARE = 0.15

ADT_MIX = {
    "A01": 30,
    "A03": 30,
    "A08": 15,
    "A21": 5,
    "A22": 5,
    "A04": 10,
    "A11": 2,
    "A13": 1,
    "A52": 1,
    "A53": 1,
}
DECISION_MIX = {"R": 1 / 3, "A": 0.55, "P": 1 - 1 / 3 - 0.55}
REJECT_REASONS = [
    ("missing-ppv", "Der mangler en pædagogisk-psykologisk vurdering (PPV)"),
    ("outside-target-group", "Barnet er ikke i børne- og ungdomspsykiatriens målgruppe"),
    ("missing-information", "Henvisningen mangler oplysninger om skolegang og trivsel"),
    ("other", "Andet: barnet er allerede i forløb på en anden afdeling"),
]
ADMISSION_REASONS = [
    "Mistrivsel, angst og skolefravær",
    "Spiseforstyrrelse; vægttab over tre måneder",
    "Selvskade og søvnbesvær",
    "Mistanke om ADHD; uro i børnehaven",
    "Tvangstanker og -handlinger gennem et halvt år",
]


class FictitiousCprs:
    """CPR numbers that cannot belong to anyone: valid dates in the future (see the docstring)."""

    def __init__(self, rng: random.Random, first_year: int, last_year: int) -> None:
        if date(first_year, 1, 1) <= date.today():
            raise ValueError("fictitious CPRs need birth years after today")
        self.rng, self.first, self.days = (
            rng,
            date(first_year, 1, 1),
            (date(last_year, 12, 31) - date(first_year, 1, 1)).days + 1,
        )
        self.issued: set[str] = set()

    def new(self, female: bool) -> tuple[str, date] | None:
        """A number not handed out before (the space has ~10 million per sex and year)."""
        for _ in range(1000):
            born = self.first + timedelta(days=self.rng.randrange(self.days))
            # 7th digit 4..9 with a year <= 36 reads as 20yy (stafet.cpr.century): born 2027+
            serial = self.rng.randrange(4000, 10000) // 2 * 2 + (0 if female else 1)
            cpr = f"{born:%d%m%y}{serial:04d}"
            if cpr not in self.issued:
                self.issued.add(cpr)
                return cpr, born
        return None


@dataclass(eq=False)  # identity: pools are searched by object, never by value
class Episode:
    """One stay (visit) of one child at one unit, and where it is in its lifecycle."""

    patient: SyntheticPatient
    hospital: Hospital
    visit: str
    klass: str  # "I" or "E"
    admit_time: str
    charset: str
    state: str = "admitted"  # admitted | onleave | discharged
    history: list[str] = field(default_factory=list)
    discharge_time: str | None = None


@dataclass(frozen=True, slots=True)
class Item:
    """One message to send: which child (routing: one child → one connection, in order)."""

    kind: str  # adt | ref | rri | invalid
    label: str  # A01 …, REF, RRI-R, RRI-A, RRI-P, INVALID
    message: bytes
    cpr: str
    charset: str  # the Python codec (header stafet.charset, as the listener writes it)


class Population:
    """Children, their guardians, municipalities and hospitals."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.children = FictitiousCprs(rng, 2027, 2031)
        self.made: list[SyntheticPatient] = []
        self.adults = FictitiousCprs(rng, 2032, 2036)
        self.munis = list(municipalities().values())
        self.weights = [POPULATION_K.get(m.code, 45.0) for m in self.munis]
        self._unseen = list(self.munis)
        rng.shuffle(self._unseen)
        self.hospitals: dict[str, list[Hospital]] = {}
        self.latin1: set[str] = set()
        n = 0
        for region, names in REGION_HOSPITALS.items():
            for name in names:
                n += 1
                h = Hospital(f"{name} (bench)", f"6000000001{n:05d}", "EPJ")
                self.hospitals.setdefault(region, []).append(h)
                if rng.random() < LATIN1_SHARE:
                    self.latin1.add(h.sor)
        self.gps = [
            Provider("RP", f"Lægehuset {rng.choice(STREETS)} {i} (bench)", f"9{i:05d}", "YDER")
            for i in range(1, 61)
        ]

    def municipality(self):  # type: ignore[no-untyped-def]
        if self._unseen:  # the first 98 children cover every municipality
            return self._unseen.pop()
        return self.rng.choices(self.munis, self.weights)[0]

    def child(self) -> SyntheticPatient:
        female = self.rng.random() < 0.5
        got = self.children.new(female) or self.children.new(not female)
        if got is None:  # ~130,000 children made: from now on the same children come back
            return self.rng.choice(self.made)
        female = got[0][-1] in "02468"
        cpr, born = got
        m = self.municipality()
        lo, hi = POSTAL[m.region_code]
        given = (self.rng.choice(GIRLS if female else BOYS),) + (
            (self.rng.choice(MIDDLE),) if self.rng.random() < 0.4 else ()
        )
        child = SyntheticPatient(
            id=cpr,
            cpr=cpr,
            family=self.rng.choice(FAMILY),
            given=given,
            gender="female" if female else "male",
            birth_date=born.isoformat(),
            address_line=f"{self.rng.choice(STREETS)} {self.rng.randint(1, 120)}",
            postal_code=str(self.rng.randint(lo, hi)),
            municipality_code=m.code,
            region_code=m.region_code,
        )
        self.made.append(child)
        return child

    def guardian(self) -> tuple[str, str]:
        female = self.rng.random() < 0.5
        got = self.adults.new(female)
        if got is None:
            self.adults = FictitiousCprs(self.rng, 2032, 2036)  # parents of several children
            got = self.adults.new(female)
        return ("MTH" if female else "FTH"), got[0]

    def hospital_for(self, patient: SyntheticPatient) -> Hospital:
        # mostly the child's own region; 5 % are treated elsewhere (highly specialised units)
        region = patient.region_code or "DK-84"
        if self.rng.random() < 0.05:
            region = self.rng.choice(list(self.hospitals))
        return self.rng.choice(self.hospitals[region])

    def charset_of(self, hospital: Hospital) -> str:
        return "8859/1" if hospital.sor in self.latin1 else "UNICODE UTF-8"


def _codec(charset: str) -> str:
    return "iso-8859-1" if charset == "8859/1" else "utf-8"


class LoadGenerator:
    """An endless, stateful stream of :class:`Item` in the national mix (deterministic per seed).

    ``referral_share``: fraction of messages that are referral messages (REF/RRI).
    ``invalid_share``: fraction with an unknown municipality (answered AR).
    ``max_active``: when this many stays are open, admissions give way to discharges (a steady
    state, so memory in the pipeline's tables grows with patients, not without bound).
    """

    def __init__(
        self,
        seed: int = 5,
        run_id: str = "B",
        *,
        referral_share: float = 0.05,
        invalid_share: float = 0.005,
        max_active: int = 20_000,
        start: datetime | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.run_id = run_id
        self.pop = Population(self.rng)
        self.referral_share = referral_share
        self.invalid_share = invalid_share
        self.max_active = max_active
        self.clock = start or datetime(2026, 11, 23, 0, 0, 0)
        self.seq = 0
        self.emitted: Counter[str] = Counter()
        self.admitted: list[Episode] = []  # not on leave
        self.onleave: list[Episode] = []
        self.recent_discharged: deque[Episode] = deque(maxlen=500)
        self.recent_returned: deque[Episode] = deque(maxlen=500)
        self.readmit: deque[SyntheticPatient] = deque(maxlen=5000)
        self.active_cprs: set[str] = set()
        self.pending_decisions: deque[tuple[int, Item]] = deque()
        self._triggers = list(ADT_MIX)
        self._trigger_w = [ADT_MIX[t] for t in self._triggers]

    # --- helpers --------------------------------------------------------------------------

    def _tick(self) -> str:
        self.clock += timedelta(milliseconds=self.rng.randint(50, 900))
        return f"{self.clock:%Y%m%d%H%M%S}"

    def _control_id(self) -> str:
        self.seq += 1
        return f"{self.run_id}{self.seq:09d}"

    def _pop(self, pool: list[Episode]) -> Episode:
        i = self.rng.randrange(len(pool))
        pool[i], pool[-1] = pool[-1], pool[i]
        return pool.pop()

    @staticmethod
    def _remove(pool: list[Episode], ep: Episode) -> None:
        """Remove ``ep`` (usually near the end of ``pool``) in place."""
        for i in range(len(pool) - 1, -1, -1):
            if pool[i] is ep:
                del pool[i]
                return

    def _new_patient(self) -> SyntheticPatient:
        if self.readmit and self.rng.random() < 0.3:
            p = self.readmit.popleft()
            if p.cpr not in self.active_cprs:
                return p
        for _ in range(20):  # once every number is used, children come back: not one in a stay
            p = self.pop.child()
            if p.cpr not in self.active_cprs:
                return p
        return p

    def _adt(self, trigger: str, ep: Episode, now: str, **kw: Any) -> Item:
        msg = adt(
            trigger,
            ep.patient,
            hospital=ep.hospital,
            control_id=self._control_id(),
            visit=ep.visit,
            event_time=now,
            admit_time=ep.admit_time,
            patient_class=ep.klass,
            charset=ep.charset,
            **kw,
        )
        ep.history.append(trigger)
        self.emitted[trigger] += 1
        return Item("adt", trigger, msg, ep.patient.cpr, _codec(ep.charset))

    # --- ADT ----------------------------------------------------------------------------

    def _admit(self, trigger: str, now: str) -> Item:
        patient = self._new_patient()
        hospital = self.pop.hospital_for(patient)
        klass = "E" if trigger == "A04" or self.rng.random() < 0.1 else "I"
        ep = Episode(
            patient,
            hospital,
            f"{self.run_id}V{self.seq + 1:09d}",
            klass,
            now,
            self.pop.charset_of(hospital),
        )
        self.active_cprs.add(patient.cpr)
        self.admitted.append(ep)
        return self._adt(trigger, ep, now)

    def _close(self, ep: Episode) -> None:
        self.active_cprs.discard(ep.patient.cpr)
        self.readmit.append(ep.patient)

    def next_adt(self) -> Item:
        now = self._tick()
        trigger = self.rng.choices(self._triggers, self._trigger_w)[0]
        if trigger in ("A01", "A04") and len(self.admitted) + len(self.onleave) >= self.max_active:
            trigger = "A03"
        if trigger == "A03" and self.admitted:
            ep = self._pop(self.admitted)
            deceased = self.rng.random() < 0.003
            ep.state, ep.discharge_time = "discharged", now
            if not deceased:
                self.recent_discharged.append(ep)
            else:
                self._close(ep)
            return self._adt("A03", ep, now, discharge_time=now, deceased=deceased)
        if trigger == "A08" and self.admitted:
            ep = self.rng.choice(self.admitted)
            return self._adt("A08", ep, now)
        if trigger == "A21":
            inpatients = [e for e in self.admitted[-200:] if e.klass == "I"]
            if inpatients:
                ep = self.rng.choice(inpatients)
                self._remove(self.admitted, ep)
                ep.state = "onleave"
                self.onleave.append(ep)
                return self._adt("A21", ep, now)
        if trigger == "A22" and self.onleave:
            ep = self._pop(self.onleave)
            ep.state = "admitted"
            self.admitted.append(ep)
            self.recent_returned.append(ep)
            return self._adt("A22", ep, now)
        if trigger == "A11":
            fresh = [e for e in self.admitted[-200:] if e.history in (["A01"], ["A04"])]
            if fresh:
                ep = self.rng.choice(fresh)
                self._remove(self.admitted, ep)
                self._close(ep)
                return self._adt("A11", ep, now)
        if trigger == "A13":
            while self.recent_discharged:
                ep = self.recent_discharged.pop()
                if ep.state == "discharged" and ep.patient.cpr in self.active_cprs:
                    ep.state, ep.discharge_time = "admitted", None
                    self.admitted.append(ep)
                    return self._adt("A13", ep, now)
        if trigger == "A52" and self.onleave:
            ep = self._pop(self.onleave)
            ep.state = "admitted"
            self.admitted.append(ep)
            return self._adt("A52", ep, now)
        if trigger == "A53":
            while self.recent_returned:
                ep = self.recent_returned.pop()
                if ep.state == "admitted" and ep.history and ep.history[-1] == "A22":
                    self._remove(self.admitted, ep)
                    ep.state = "onleave"
                    self.onleave.append(ep)
                    return self._adt("A53", ep, now)
        return self._admit("A04" if trigger == "A04" else "A01", now)

    def _release_discharged(self) -> None:
        # a discharged stay that was not cancelled within a while is over: the child may return
        while len(self.recent_discharged) > 400:
            ep = self.recent_discharged.popleft()
            if ep.state == "discharged":
                self._close(ep)

    # --- referrals -------------------------------------------------------------------------

    def next_referral(self) -> Item:
        child = self._new_patient()
        hospital = self.pop.hospital_for(child)
        unit = Provider("RT", hospital.name, hospital.sor)
        gp = self.rng.choice(self.pop.gps)
        code = child.municipality_code
        units = []
        if self.rng.random() < 0.7:
            units.append(Provider("PPR", f"PPR Kommune {code} (bench)", f"60000000{code}0011"))
        if self.rng.random() < 0.5:
            units.append(
                Provider("FAM", f"Familieafdelingen Kommune {code} (bench)", f"60000000{code}0012")
            )
        guardians = [
            (rel, None, cpr)
            for rel, cpr in (self.pop.guardian() for _ in range(self.rng.choice((1, 2, 2))))
        ]
        ref_id = f"{self.run_id}H{self.seq + 1:09d}"
        now = self._tick()
        msg = referral_message(
            "REF^I12",
            child,
            referral_id=ref_id,
            control_id=self._control_id(),
            event_time=now,
            providers=[gp, unit, *units],
            guardians=guardians,
            notes={"NOTE": self.rng.choice(ADMISSION_REASONS)},
        )
        self.emitted["REF"] += 1
        # the decision follows a few dozen messages later, for the same child (same connection)
        status = self.rng.choices(list(DECISION_MIX), list(DECISION_MIX.values()))[0]
        providers = [unit]
        kw: dict[str, Any] = {}
        if status == "R":
            kw["reason"] = self.rng.choice(REJECT_REASONS)
            kw["notes"] = {
                "NOTE": "Vurderet på visitationskonference",
                "ALT": f"PPR i kommune {code} udarbejder en PPV; henvis derefter igen",
                "RESP": f"Kommune {code}, PPR",
            }
        elif status == "P":
            other = self.rng.choice([h for hs in self.pop.hospitals.values() for h in hs])
            providers.append(Provider("RT", other.name, other.sor))
            kw["notes"] = {"NOTE": "Sendt videre til rette afdeling"}
        else:
            kw["notes"] = {"NOTE": "Optaget til udredning"}
        decision = referral_message(
            "RRI^I12",
            child,
            referral_id=ref_id,
            control_id=f"{self.run_id}D{self.seq:09d}",
            event_time=f"{self.clock + timedelta(days=self.rng.randint(3, 20)):%Y%m%d%H%M%S}",
            providers=providers,
            status=status,
            contact=(self.rng.choice(FAMILY), self.rng.choice(GIRLS), "00 00 00 00"),
            **kw,
        )
        self.pending_decisions.append(
            (
                self.seq + self.rng.randint(20, 60),
                Item("rri", f"RRI-{status}", decision, child.cpr, "utf-8"),
            )
        )
        self.readmit.append(child)
        return Item("ref", "REF", msg, child.cpr, "utf-8")

    def invalid(self) -> Item:
        ep = Episode(
            self.pop.child(),
            self.rng.choice(self.pop.hospitals["DK-84"]),
            f"{self.run_id}X{self.seq + 1:09d}",
            "I",
            self._tick(),
            "UNICODE UTF-8",
        )
        msg = adt(
            "A01",
            ep.patient,
            hospital=ep.hospital,
            control_id=self._control_id(),
            visit=ep.visit,
            event_time=ep.admit_time,
            admit_time=ep.admit_time,
            municipality_code="0999",
        )
        self.emitted["INVALID"] += 1
        return Item("invalid", "INVALID", msg, ep.patient.cpr, "utf-8")

    # --- the stream --------------------------------------------------------------------------

    def __iter__(self) -> LoadGenerator:
        return self

    def __next__(self) -> Item:
        self._release_discharged()
        if self.pending_decisions and self.pending_decisions[0][0] <= self.seq:
            item = self.pending_decisions.popleft()[1]
            self.seq += 1
            self.emitted[item.label] += 1
            return item
        r = self.rng.random()
        if r < self.invalid_share:
            return self.invalid()
        if r < self.invalid_share + self.referral_share / 2:  # each referral is two messages
            return self.next_referral()
        return self.next_adt()

    def mix(self) -> dict[str, float]:
        """The share of each message label emitted so far."""
        total = sum(self.emitted.values()) or 1
        return {k: round(v / total, 4) for k, v in sorted(self.emitted.items())}


# --- FHIR referral bodies (the FHIR HTTP connector) -------------------------------------------


class FhirLoad:
    """ServiceRequest bodies (a GP's referral) followed by a Task (the decision), 1/3 rejected."""

    def __init__(self, seed: int = 7, run_id: str = "F") -> None:
        from demo import fhir_samples as s

        self.s = s
        self.rng = random.Random(seed)
        self.pop = Population(self.rng)
        self.run_id = run_id
        self.n = 0

    def _service_request(self, child: SyntheticPatient, referral_id: str) -> dict[str, Any]:
        s = self.s
        address = {
            "use": "home",
            "line": [child.address_line],
            "postalCode": child.postal_code,
            "country": "DK",
            "extension": [
                {
                    "url": s.MUNICIPALITY_EXT,
                    "valueCodeableConcept": {
                        "coding": [
                            {"system": s.MUNICIPALITY_SYSTEM, "code": child.municipality_code}
                        ]
                    },
                }
            ],
        }
        contained: list[dict[str, Any]] = [
            {
                "resourceType": "Patient",
                "id": "child",
                "identifier": [{"system": s.CPR_SYSTEM, "value": child.cpr}],
                "name": [{"use": "official", "family": child.family, "given": list(child.given)}],
                "gender": child.gender,
                "birthDate": child.birth_date,
                "address": [address],
            }
        ]
        supporting = []
        for n in range(1, self.rng.choice((1, 2, 2)) + 1):
            rel, cpr = self.pop.guardian()
            contained.append(
                {
                    "resourceType": "RelatedPerson",
                    "id": f"guardian{n}",
                    "patient": {"reference": "#child"},
                    "identifier": [{"system": s.CPR_SYSTEM, "value": cpr}],
                    "relationship": [{"coding": [{"system": s.ROLE_CODE_SYSTEM, "code": rel}]}],
                    "name": [
                        {
                            "family": self.rng.choice(FAMILY),
                            "given": [self.rng.choice(GIRLS + BOYS)],
                        }
                    ],
                }
            )
            supporting.append({"reference": f"#guardian{n}"})
        hospital = self.pop.hospital_for(child)
        return {
            "resourceType": "ServiceRequest",
            "id": stable_uuid("bench-sr", referral_id),
            "contained": contained,
            "identifier": [{"system": s.REFERRAL_ID_SYSTEM, "value": referral_id}],
            "status": "active",
            "intent": "order",
            "code": {"text": "Henvisning til børne- og ungdomspsykiatrisk udredning"},
            "subject": {"reference": "#child"},
            "authoredOn": "2026-11-23T09:30:00+01:00",
            "requester": s.GP.ref(),
            "performer": [s.Org(hospital.sor, hospital.name).ref()],
            "reasonCode": [{"text": self.rng.choice(ADMISSION_REASONS)}],
            "supportingInfo": supporting,
        }

    def referral(self) -> tuple[bytes, bytes, str]:
        """(ServiceRequest body, its decision Task body, the Task's label). POST the Task only
        after the ServiceRequest got 202: the connector answers 422 for an unknown referral."""
        self.n += 1
        child = self.pop.child()
        referral_id = f"{self.run_id}-FHEN{self.n:09d}"
        body = json.dumps(self._service_request(child, referral_id), ensure_ascii=False).encode()
        r = self.rng.random()
        if r < 1 / 3:
            task, label = self.s.rejection_task(referral_id, cpr=child.cpr), "Task-rejected"
        elif r < 0.88:
            task, label = self.s.acceptance_task(referral_id, cpr=child.cpr), "Task-accepted"
        else:
            task, label = self.s.forward_task(referral_id, cpr=child.cpr), "Task-forwarded"
        return body, json.dumps(task, ensure_ascii=False).encode(), label


if __name__ == "__main__":  # a peek at the load: python -m bench.load
    gen = LoadGenerator()
    for item in [next(gen) for _ in range(5000)][:3]:
        print(item.label, item.message.decode(item.charset).replace("\r", "\n"))
    print(gen.mix())
