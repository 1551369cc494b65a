"""Generated bad input for the MLLP and FHIR listeners, shared by the unit fuzz tests (driven by
hypothesis) and the integration test (a fixed corpus from a seeded ``random.Random``).

Every mutation here makes the input *certainly* invalid, and says how: the HL7 table-0357 codes
(or HTTP statuses) a correct answer may carry and a fragment the answer's text must contain.
Only MedCom test CPRs (``../shared/domain/test-patients.json``, via the demo builders) and
numbers that cannot be CPRs (day 32, month 13, …) appear.
"""

from __future__ import annotations

import copy
import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from demo import fhir_samples as fs
from demo.hl7_builder import (
    Hospital,
    Provider,
    adt,
    medcom_test_patients,
    referral_message,
)

HOSPITAL = Hospital("BUC Test", "600000000000099")
PATIENTS = medcom_test_patients()
CHILD = PATIENTS["RikkeBerggren"]
#: every CPR the corpus carries (the log scan looks for each): MedCom test patients and the
#: related persons (guardians) the FHIR samples name
CORPUS_CPRS = {p.cpr for p in PATIENTS.values()} | {
    cpr for name in PATIENTS for _, _, cpr in fs.guardians_of(name)
}
#: shaped like CPRs but impossible (day 32, month 13, day 00, 9 / 11 digits, letters)
IMPOSSIBLE_CPRS = (
    "3213159995",
    "0113209996",
    "0005159995",
    "050515999",
    "05051599950",
    "05O5159995",
    "0505-15-99",
)


@dataclass(frozen=True)
class Bad:
    """One bad input and the answer it must get."""

    kind: str  # the mutation's name
    data: bytes
    codes: tuple[str, ...]  # acceptable ERR-3 codes (HL7) or HTTP statuses (FHIR)
    text: str = ""  # a fragment the ERR-8 / an issue's diagnostics must contain (case-insensitive)
    path: str = "/fhir"  # FHIR only
    content_type: str = "application/fhir+json"  # FHIR only


# --- HL7 v2 ------------------------------------------------------------------------------------


def good_adt(control_id: str | None = None, trigger: str = "A01", **kw: Any) -> bytes:
    control_id = control_id or f"FZ-{uuid.uuid4().hex[:12]}"
    return adt(
        trigger,
        CHILD,
        hospital=HOSPITAL,
        control_id=control_id,
        visit=f"V-{control_id}",
        event_time="202611231000",
        admit_time="202611230800",
        **kw,
    )


PROVIDERS = [
    Provider("RP", "Lægehuset Testvej", "099999", "YDER"),
    Provider("RT", "BUC Aarhus", "600000000000001"),
]


def good_ref(control_id: str = "FZ-REF-1", trigger: str = "REF^I12", **kw: Any) -> bytes:
    return referral_message(
        trigger,
        CHILD,
        referral_id=kw.pop("referral_id", "FZ-HEN-1"),
        control_id=control_id,
        event_time="202611231000",
        providers=kw.pop("providers", PROVIDERS),
        **kw,
    )


def segments(message: bytes) -> list[bytes]:
    return message.strip(b"\r").split(b"\r")


def join(segs: list[bytes]) -> bytes:
    return b"\r".join(segs) + b"\r"


def set_field(message: bytes, name: bytes, field: int, value: bytes) -> bytes:
    """Replace field ``field`` of the first ``name`` segment (MSH numbering counts MSH-1)."""
    segs = segments(message)
    for i, seg in enumerate(segs):
        if seg.split(b"|", 1)[0] == name:
            parts = seg.split(b"|")
            index = field - 1 if name == b"MSH" else field
            parts += [b""] * (index + 1 - len(parts))
            parts[index] = value
            segs[i] = b"|".join(parts)
            break
    return join(segs)


def _junk(rng: random.Random, n: int, alphabet: bytes | None = None) -> bytes:
    if alphabet is None:
        return bytes(rng.randrange(256) for _ in range(n))
    return bytes(rng.choice(alphabet) for _ in range(n))


PRINTABLE = (
    bytes(range(0x21, 0x7F))
    .replace(b"|", b"")
    .replace(b"^", b"")
    .replace(b"~", b"")
    .replace(b"\\", b"")
    .replace(b"&", b"")
)


NO_BLOCKS = bytes(b for b in range(256) if b not in (0x0B, 0x1C))


def _hl7(rng: random.Random) -> list[Bad]:
    """One of each kind, with random details."""
    cid = f"FZ-{rng.getrandbits(48):012x}"
    base = good_adt(cid)
    segs = segments(base)
    out: list[Bad] = []

    def add(kind: str, data: bytes, codes: tuple[str, ...], text: str = "") -> None:
        out.append(Bad(kind, data, codes, text))

    add("no MSH", join(segs[1:]), ("100",), "MSH")
    add(
        "no MSH, garbage first",
        _junk(rng, rng.randrange(1, 40), PRINTABLE) + b"\r" + join(segs[1:]),
        ("100",),
        "MSH",
    )
    letter = bytes([rng.choice(b"ABCXYZ0123456789 ")])
    add("field separator alphanumeric", b"MSH" + letter + base[4:], ("102",), "MSH^1^1")
    other = rng.choice([b"#", b"!", b"*", b"$"])
    add(
        "field separator differs from the rest",
        b"MSH" + other + base[4:],
        ("102",),
        "field separator",
    )
    encoding = rng.choice([b"^^\\&", b"abcd", b"", b"^", b"^~\\&^~", b"^|\\&", b"1234"])
    add("bad encoding characters", set_field(base, b"MSH", 2, encoding), ("102",), "MSH^1^2")
    # truncated: the message ends somewhere before PV1 (a required segment is then missing)
    pv1_at = base.index(b"\rPV1") + 1
    cut = rng.randrange(9, pv1_at)
    add("truncated before PV1", base[:cut], ("100", "101", "102", "103", "200", "201"))
    add("truncated inside PID", base[: base.index(b"\rPID") + rng.randrange(4, 12)], ("100", "101"))
    add("MSH-9 empty", set_field(base, b"MSH", 9, b""), ("101",), "MSH^1^9")
    add("MSH-10 empty", set_field(base, b"MSH", 10, b""), ("101",), "MSH^1^10")
    event = rng.choice([b"A02", b"A05", b"A99", b"Z01", _junk(rng, 3, PRINTABLE)])
    add(
        "unknown ADT event",
        set_field(base, b"MSH", 9, b"ADT^" + event + b"^ADT_A01"),
        ("201",),
        "not supported",
    )
    mtype = rng.choice([b"ORU^R01", b"ORM^O01", b"SIU^S12", b"XYZ^A01", b"ACK"])
    add("unknown message type", set_field(base, b"MSH", 9, mtype), ("200", "201"), "not supported")
    bad_cpr = rng.choice(IMPOSSIBLE_CPRS).encode()
    add(
        "impossible CPR", set_field(base, b"PID", 3, bad_cpr + b"^^^CPR^NNDNK"), ("102",), "PID^1^3"
    )
    add(
        "no CPR",
        set_field(base, b"PID", 3, rng.choice([b"", b"^^^CPR", b"12345^^^MR"])),
        ("101", "102"),
        "PID^1^3",
    )
    stamp = rng.choice(
        [
            b"20261345",
            b"2026-11-23",
            b"yesterday",
            b"202611231000+9999",
            b"20260230",
            b"202611232561",
            _junk(rng, 8, PRINTABLE),
        ]
    )
    add("bad event time", set_field(base, b"EVN", 2, stamp), ("102",), "EVN")
    add("bad admission time", set_field(base, b"PV1", 44, stamp), ("102",), "PV1")
    charset = rng.choice([b"KLINGON", b"8859/99", b"UTF-16", b"EBCDIC", _junk(rng, 6, PRINTABLE)])
    add("unsupported MSH-18", set_field(base, b"MSH", 18, charset), ("103",), "MSH^1^18")
    undecodable = rng.choice([b"\xff", b"\xc3\x28", b"\xe6\xf8\xe5", b"\x80"])
    add(
        "bytes not valid UTF-8",
        base.replace(b"Berggren", b"Berg" + undecodable),
        ("102",),
        "not valid utf-8",
    )
    ascii_msg = set_field(base, b"MSH", 18, b"ASCII").replace(b"Berggren", "Bergrøn".encode())
    add("bytes not valid ASCII", ascii_msg, ("102",), "not valid ascii")
    add("start block inside", base.replace(b"\rPID", b"\r\x0bPID"), ("100",), "0x0B")
    add("two messages in one frame", base + b"\x0b" + good_adt(), ("100",), "0x0B")
    add("end block byte inside", base.replace(b"Berggren", b"Berg\x1cgren"), ("100",), "0x1C")
    add("empty", rng.choice([b"", b"\r", b"\r\n\r\n", b"   "]), ("100",), "MSH")
    # (0x0B and 0x1C are the kinds above; here they would split the frame on the wire)
    add(
        "binary garbage",
        _junk(rng, rng.randrange(1, 400), NO_BLOCKS).replace(b"MSH", b"MSX"),
        ("100",),
        "",
    )
    add(
        "MSH then garbage",
        b"MSH|^~\\&|" + _junk(rng, rng.randrange(1, 200), NO_BLOCKS),
        ("100", "101", "102", "103", "200", "201"),
    )
    add(
        "municipality outside the 98",
        set_field(
            base,
            b"PID",
            11,
            b"Testvej 1^^By^^3400^DK^H^^" + rng.choice([b"0999", b"1234", b"ABCD"]),
        ),
        ("103",),
        "municipality",
    )
    # referrals
    ref = good_ref(cid)
    rsegs = segments(ref)
    drop = rng.choice([b"RF1", b"PRD", b"PID"])
    add(
        "REF without a required segment",
        join([s for s in rsegs if not s.startswith(drop)]),
        ("100",),
        drop.decode(),
    )
    add(
        "REF without RP/RT",
        join([s for s in rsegs if not s.startswith(b"PRD|RT")]),
        ("101",),
        "PRD",
    )
    add("REF RF1-6 empty", set_field(ref, b"RF1", 6, b""), ("101",), "RF1^1^6")
    add(
        "REF unknown role",
        set_field(ref, b"PRD", 1, rng.choice([b"XX", b"GP", b"ZZZ"])),
        ("103",),
        "role",
    )
    add("REF PRD-7 empty", set_field(ref, b"PRD", 7, b""), ("101",), "PRD^1^7")
    add(
        "REF guardian with impossible CPR",
        good_ref(cid, guardians=[("MTH", None, rng.choice(IMPOSSIBLE_CPRS))]),
        ("102",),
        "NK1^1^33",
    )
    add(
        "REF unknown trigger",
        set_field(ref, b"MSH", 9, rng.choice([b"REF^I15", b"RRI^I13"])),
        ("201",),
        "not supported",
    )
    rri = good_ref(cid, trigger="RRI^I12", status="R")
    add("RRI rejection without reason", rri, ("101",), "RF1^1^10")
    add(
        "RRI unknown status",
        set_field(rri, b"RF1", 1, rng.choice([b"X", b"Q", b"9"])),
        ("103",),
        "RF1^1^1",
    )
    add(
        "RRI unknown reason",
        good_ref(cid, trigger="RRI^I12", status="R", reason=("no-such-reason", "?")),
        ("103",),
        "reason",
    )
    add(
        "RRI contact change without CTD",
        good_ref(cid, trigger="RRI^I12", status="C"),
        ("101",),
        "CTD",
    )
    add("REF without family name", set_field(ref, b"PID", 5, b"^Rikke"), ("101",), "PID^1^5")
    return out


HL7_KINDS = [b.kind for b in _hl7(random.Random(0))]


def hl7_bad(rng: random.Random, kind: str | None = None) -> Bad:
    """One bad HL7 v2 message (of ``kind``, else a random kind)."""
    corpus = _hl7(rng)
    if kind is None:
        return rng.choice(corpus)
    return next(b for b in corpus if b.kind == kind)


# --- FHIR --------------------------------------------------------------------------------------


def _nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"url": "https://example.org/x", "valueString": "x"}
    for _ in range(depth):
        node = {"url": "https://example.org/x", "extension": [node]}
    return node


def _fhir(rng: random.Random) -> list[Bad]:
    out: list[Bad] = []

    def add(
        kind: str,
        body: Any,
        codes: tuple[str, ...],
        text: str = "",
        *,
        path: str = "/fhir",
        content_type: str = "application/fhir+json",
    ) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
        out.append(Bad(kind, data, codes, text, path, content_type))

    rid = f"FZ-HEN-{rng.getrandbits(32):08x}"
    sr = fs.referral(rid)
    good = json.dumps(sr).encode()
    add(
        "not JSON",
        rng.choice(
            [
                b"<ServiceRequest/>",
                b"{",
                b"resourceType=Task",
                b"\xff\xfe",
                good[: rng.randrange(1, len(good) - 1)],
            ]
        ),
        ("400",),
        "not JSON",
    )
    add(
        "JSON not an object",
        rng.choice([[], [sr], 42, "ServiceRequest", None, True]),
        ("400",),
        "JSON object",
    )
    add(
        "unsupported resourceType",
        {**sr, "resourceType": rng.choice(["Patient", "Observation", "MedicationRequest"])},
        ("400",),
        "resourceType",
    )
    add(
        "unknown resourceType",
        {**sr, "resourceType": rng.choice(["Foo", "servicerequest", "", "X" * 5000])},
        ("400",),
        "resourceType",
    )
    add(
        "resourceType not a string",
        {**sr, "resourceType": rng.choice([1, None, ["Task"], {}])},
        ("400",),
        "resourceType",
    )
    add(
        "no resourceType",
        {k: v for k, v in sr.items() if k != "resourceType"},
        ("400",),
        "resourceType",
    )
    add(
        "Task posted to /fhir/ServiceRequest",
        fs.acceptance_task(rid),
        ("400",),
        "Task",
        path="/fhir/ServiceRequest",
    )
    add(
        "ServiceRequest without identifier",
        {k: v for k, v in sr.items() if k != "identifier"},
        ("400",),
        "identifier",
    )
    add("invalid id", {**sr, "id": rng.choice(["bad id!", "x" * 100, "ä/ö", ""])}, ("400",), "id")
    wrong = copy.deepcopy(sr)
    field, value = rng.choice(
        [
            ("status", 123),
            ("subject", "Patient/1"),
            ("identifier", {}),
            ("performer", "BUC"),
            ("authoredOn", 20261123),
            ("contained", "nope"),
            ("supportingInfo", [1, 2]),
        ]
    )
    wrong[field] = value
    add("wrong type in a field", wrong, ("400",), field)
    # found by fuzzing: fhir.resources (lax) lets a number through as a dateTime -> was a 500
    when_field, resource = rng.choice(
        [("authoredOn", sr), ("lastModified", fs.acceptance_task(rid))]
    )
    add(
        "event time a number",
        {**resource, when_field: rng.choice([20261123, 1.5e9])},
        ("400",),
        when_field,
    )
    add(
        "deeply nested (beyond the JSON parser)",
        b'{"resourceType":"Task","a":' + b"[" * 200_000 + b"]" * 200_000 + b"}",
        ("400",),
        "nested",
    )
    deep = copy.deepcopy(sr)
    deep["extension"] = [_nested(rng.randrange(40, 400))]
    add("deeply nested extensions", deep, ("400",), "nested")
    bad_cpr = copy.deepcopy(sr)
    bad_cpr["contained"][0]["identifier"][0]["value"] = rng.choice(IMPOSSIBLE_CPRS)
    add("impossible CPR", bad_cpr, ("400",), "CPR")
    bad_guardian = copy.deepcopy(sr)
    for c in bad_guardian["contained"]:
        if c["resourceType"] == "RelatedPerson":
            c["identifier"][0]["value"] = rng.choice(IMPOSSIBLE_CPRS)
            break
    add("guardian with impossible CPR", bad_guardian, ("400",), "CPR")
    no_cpr = copy.deepcopy(sr)
    no_cpr["contained"][0]["identifier"] = [{"system": "urn:oid:1.2.208.176.1.2"}]
    add("CPR identifier without value", no_cpr, ("400",), "CPR")
    huge = copy.deepcopy(sr)
    huge["contained"][0]["identifier"][0]["value"] = "9" * rng.randrange(10_000, 200_000)
    add("huge CPR string", huge, ("400",), "CPR")
    add(
        "huge body",
        {**sr, "text": {"status": "generated", "div": "x" * (1_048_576 + rng.randrange(1, 1000))}},
        ("413",),
        "maximum",
    )
    rejection = fs.rejection_task(rid)
    rejection.pop("statusReason", None)
    add("rejection without reason", rejection, ("400",), "statusReason")
    add("unknown task status", {**fs.acceptance_task(rid), "status": "on-hold"}, ("400",), "status")
    add(
        "bad dateTime",
        {**sr, "authoredOn": rng.choice(["yesterday", "2026-13-01", "2026-11-23T09:30:00"])},
        ("400",),
        "authoredOn",
    )
    add("unknown municipality", fs.referral(rid, municipality_as="none"), ("400",), "municipality")
    add("empty Bundle", {"resourceType": "Bundle", "type": "collection"}, ("400",), "entr")
    add(
        "Bundle of unsupported type",
        {**fs.bundle(sr), "type": rng.choice(["searchset", "document", 7])},
        ("400",),
        "Bundle.type",
    )
    add(
        "Bundle entry without resource",
        {"resourceType": "Bundle", "type": "collection", "entry": [{"fullUrl": "urn:uuid:x"}]},
        ("400",),
        "resource",
    )
    add(
        "Bundle entries not objects",
        {"resourceType": "Bundle", "type": "collection", "entry": rng.choice([[1, 2], "x", {}])},
        ("400",),
        "entr",
    )
    # $process-message
    msg = fs.bundle(sr, type_="message")
    add(
        "message without MessageHeader",
        {**msg, "id": str(uuid.UUID(int=rng.getrandbits(128)))},
        ("400",),
        "MessageHeader",
        path="/fhir/$process-message",
    )
    add("message without Bundle.id", msg, ("400",), "Bundle.id", path="/fhir/$process-message")
    add("message not a Bundle", sr, ("400",), "Bundle", path="/fhir/$process-message")
    add("message not JSON", b"\x00garbage", ("400",), "JSON", path="/fhir/$process-message")
    add(
        "message nested too deeply",
        b"[" * 200_000 + b"]" * 200_000,
        ("400",),
        "nested",
        path="/fhir/$process-message",
    )
    add(
        "message not an object",
        rng.choice([b"[]", b"1", b'"x"', b"null"]),
        ("400",),
        "Bundle",
        path="/fhir/$process-message",
    )
    # content types
    add(
        "wrong content type",
        good,
        ("415",),
        "Content-Type",
        content_type=rng.choice(
            [
                "text/plain",
                "application/xml",
                "application/fhir+xml",
                "multipart/form-data",
                "application/x-www-form-urlencoded",
            ]
        ),
    )
    add(
        "wrong charset",
        good,
        ("415",),
        "UTF-8",
        content_type="application/fhir+json; charset=" + rng.choice(["latin-1", "utf-16", "ascii"]),
    )
    return out


FHIR_KINDS = [b.kind for b in _fhir(random.Random(0))]


def fhir_bad(rng: random.Random, kind: str | None = None) -> Bad:
    corpus = _fhir(rng)
    if kind is None:
        return rng.choice(corpus)
    return next(b for b in corpus if b.kind == kind)


def corpus(seed: int, rounds: int) -> tuple[list[Bad], list[Bad]]:
    """(HL7 v2, FHIR) bad inputs: every kind ``rounds`` times with details from ``seed``."""
    rng = random.Random(seed)
    hl7: list[Bad] = []
    fhir: list[Bad] = []
    for _ in range(rounds):
        hl7 += _hl7(rng)
        fhir += _fhir(rng)
    return hl7, fhir


Maker = Callable[[random.Random], Bad]
