"""HL7 v2 ADT → canonical :class:`EncounterEvent`.

One function, :func:`parse_adt`, is used twice: by the MLLP connector to decide AA/AR before it
answers the sender, and by the normalize stream to build the canonical event. So a message the
connector accepted is one the stream can always normalise, and every rejection names the HL7
error code (table 0357), the location and the reason.

Mapping (DOMAIN.md §3): A01 (PV1-2 I) → STIN, A01 (PV1-2 E) / A04 → STAA, A21 → STOR,
A22 → SLOR, A03 → SLHJ or MORS (PID-30 = Y or PID-29 set), A08 → RE_<current state>,
A11 → AN_STIN/AN_STAA, A13 → AN_SLHJ, A52 → AN_STOR, A53 → AN_SLOR.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as fixed_offset
from zoneinfo import ZoneInfo

import hl7

from stafet.cpr import is_valid_cpr, mask_cpr
from stafet.ids import patient_key, stable_uuid
from stafet.model import EncounterEvent, EncounterInfo, Organization, PatientInfo
from stafet.schemas.municipalities import municipality

SUPPORTED_TRIGGERS = ("A01", "A03", "A04", "A08", "A11", "A13", "A21", "A22", "A52", "A53")

#: MSH-18 values → Python codecs. Empty MSH-18 uses the configured default.
CHARSETS = {
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "8859/1": "iso-8859-1",
    "8859/15": "iso-8859-15",
    "ASCII": "ascii",
}

_GENDERS = {"M": "male", "F": "female", "O": "other", "U": "unknown", "A": "other", "N": "unknown"}
_DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d+)?([+-]\d{4})?$")


# Not frozen/slotted: Python sets attributes on exceptions (contextlib assigns __traceback__,
# add_note sets __notes__), which a frozen slots dataclass turns into a TypeError on 3.11.
@dataclass(eq=False)
class Hl7Error(Exception):
    """A message stafet will not accept; ``code`` is from HL7 table 0357."""

    code: int
    text: str  # the table 0357 text, e.g. "Required field missing"
    location: str  # e.g. "PID^1^3" (segment^sequence^field), or "" for the whole message
    reason: str  # what exactly is wrong, for a human; never contains a CPR number
    ack_code: str = "AR"

    def __str__(self) -> str:
        where = f" at {self.location}" if self.location else ""
        return f"{self.code} {self.text}{where}: {self.reason}"


def _err(code: int, location: str, reason: str) -> Hl7Error:
    texts = {
        100: "Segment sequence error",
        101: "Required field missing",
        102: "Data type error",
        103: "Table value not found",
        200: "Unsupported message type",
        201: "Unsupported event code",
    }
    # A misplaced field (say a CPR in PID-12 or PV1-44) must not carry the CPR into an ACK,
    # a DLQ header or a log line: every reason is masked here, once.
    return Hl7Error(code, texts[code], location, mask_cpr(reason))


@dataclass(frozen=True, slots=True)
class RawHeader:
    """What can be read from MSH without trusting the rest of the message."""

    charset: str
    declared_charset: str  # MSH-18 as sent ("" when empty)
    control_id: str
    sending_application: str
    sending_facility: str
    message_type: str


def normalise_segments(raw: bytes) -> bytes:
    """HL7 separates segments with CR; accept CRLF and LF from lenient senders too."""
    return raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r").strip(b"\r")


def read_header(raw: bytes, default_charset: str = "utf-8", *, strict: bool = True) -> RawHeader:
    """Read MSH (ASCII-safe fields only) and resolve the character set from MSH-18.

    ``strict=False`` reads an unsupported MSH-18 as ASCII instead of raising, so the AR for it
    can still echo MSH-10 and address the sender."""
    if not raw.startswith(b"MSH") or len(raw) < 8:
        raise _err(100, "MSH", "the message does not start with an MSH segment")
    sep = raw[3:4]
    if not 0x21 <= raw[3] <= 0x7E or sep.isalnum():
        raise _err(
            102,
            "MSH^1^1",
            f"the field separator MSH-1 (byte 0x{raw[3]:02x}) must be a "
            "printable character that is not a letter or digit, usually '|'",
        )
    first = raw.split(b"\r", 1)[0].split(sep)
    encoding = first[1] if len(first) > 1 else b""
    if (
        not 4 <= len(encoding) <= 5
        or len(set(encoding)) < len(encoding)
        or sep in encoding
        or not all(0x21 <= c <= 0x7E and not chr(c).isalnum() for c in encoding)
    ):
        raise _err(
            102,
            "MSH^1^2",
            f"the encoding characters MSH-2 "
            f"'{encoding[:8].decode('latin-1')}' must be 4 (or 5) distinct printable "
            f"characters, not letters, digits or the field separator MSH-1 "
            f"'{sep.decode('latin-1')}', usually ^~\\&",
        )
    raw_field = lambda n: first[n - 1] if len(first) >= n else b""  # noqa: E731
    declared = raw_field(18).decode("latin-1").strip().split("~")[0].upper()
    if declared:
        if declared not in CHARSETS and strict:
            raise _err(103, "MSH^1^18", f"unsupported character set '{declared}' in MSH-18")
        charset = CHARSETS.get(declared, "ascii")
    else:
        charset = default_charset
    # MSH-3/MSH-4 may hold a hospital name with æøå: read them in the message's own charset
    field = lambda n: raw_field(n).decode(charset, errors="replace").strip()  # noqa: E731
    return RawHeader(charset, declared, field(10), field(3), field(4), field(9))


def message_event_id(raw: bytes, header: RawHeader) -> str:
    """The event id of an HL7 v2 message: sender + MSH-10 + a digest of everything after MSH.

    A retransmission (the same message again, even with a new MSH-7) gets the same id and is
    recognised downstream; a *different* message that reuses an MSH-10 (a sender's counter reset
    after a fail-over) gets its own id and is processed, instead of being taken for a duplicate
    and silently dropped.
    """
    body = normalise_segments(raw)
    rest = body.split(b"\r", 1)[1] if b"\r" in body else b""
    digest = hashlib.sha256(rest).hexdigest()[:32]
    return stable_uuid(
        "hl7v2", header.sending_application, header.sending_facility, header.control_id, digest
    )


def decode(raw: bytes, default_charset: str = "utf-8") -> tuple[str, RawHeader]:
    """Bytes → text, honouring MSH-18; a byte the charset cannot hold is an AR, not a guess."""
    raw = normalise_segments(raw)
    header = read_header(raw, default_charset)
    try:
        return raw.decode(header.charset), header
    except UnicodeDecodeError as exc:
        declared = (
            f"MSH-18 '{header.declared_charset}'" if header.declared_charset else "the default"
        )
        raise _err(
            102,
            "MSH^1^18",
            f"the message is not valid {header.charset} ({declared}): byte 0x{raw[exc.start]:02x}"
            f" at offset {exc.start}",
        ) from exc


def to_iso(value: str, tz: ZoneInfo, location: str) -> str:
    """HL7 DTM (YYYYMMDDHHMMSS[+ZZZZ]) → ISO 8601 with offset; local times get ``tz``."""
    match = _DTM.match(value.strip())
    if not match:
        raise _err(102, location, f"'{value}' is not an HL7 date/time (YYYYMMDDHHMM[SS][+ZZZZ])")
    y, mo, d, h, mi, s, off = match.groups()
    try:
        moment = datetime(int(y), int(mo or 1), int(d or 1), int(h or 0), int(mi or 0), int(s or 0))
    except ValueError as exc:
        raise _err(102, location, f"'{value}' is not a valid date/time: {exc}") from exc
    if off:
        sign = 1 if off[0] == "+" else -1
        if int(off[1:3]) > 23 or int(off[3:5]) > 59:
            raise _err(102, location, f"'{value}' has an invalid UTC offset '{off}'")
        minutes = sign * (int(off[1:3]) * 60 + int(off[3:5]))
        moment = moment.replace(tzinfo=fixed_offset(timedelta(minutes=minutes)))
    else:
        moment = moment.replace(tzinfo=tz)
    return moment.isoformat()


def _date(value: str) -> str | None:
    value = value.strip()
    if len(value) >= 8 and value[:8].isdigit():
        return f"{value[0:4]}-{value[4:6]}-{value[6:8]}"
    return None


class Segments:
    """Field access by (segment, field, repetition, component), with python-hl7's rules.

    Reading a field splits only the segment it is in (python-hl7 builds a container for every
    component of the whole message, about two thirds of the parse time of an ADT message); a
    value with an escape sequence, and iteration over whole segments (:attr:`message`), go to
    python-hl7's own parse of the message, made once when first needed."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = [line for line in text.split("\r") if line]
        self.field_sep = text[3:4] or "|"
        encoding = text[4:8] if len(text) >= 8 else "^~\\&"
        seps = (encoding + "^~\\&"[len(encoding) :])[:4]
        self.component_sep, self.repetition_sep = seps[0], seps[1]
        self.escape, self.subcomponent_sep = seps[2], seps[3]
        self.order = [line.split(self.field_sep, 1)[0] for line in self.lines]
        self._first = {name: i for i, name in reversed(list(enumerate(self.order)))}
        self._fields: dict[str, list[str]] = {}
        self._message: hl7.Message | None = None

    @property
    def message(self) -> hl7.Message:
        """The whole message as python-hl7 containers (parsed once, on first use)."""
        if self._message is None:
            try:
                self._message = hl7.parse(self.text)
            except Exception as exc:  # python-hl7 raises several types for broken input
                raise _err(102, "", f"the message cannot be parsed as HL7 v2: {exc}") from exc
        return self._message

    def _segment_fields(self, segment: str) -> list[str] | None:
        if segment not in self._fields:
            index = self._first.get(segment)
            if index is None:
                return None
            fields = self.lines[index].split(self.field_sep)
            if segment == "MSH":  # MSH-1 is the separator itself: MSH-n is at n - 1
                fields = ["MSH", self.field_sep, *fields[1:]]
            self._fields[segment] = fields
        return self._fields[segment]

    def get(self, segment: str, field: int, component: int = 1, repetition: int = 1) -> str:
        fields = self._segment_fields(segment)
        if fields is None or field >= len(fields):
            return ""
        value = fields[field]
        if segment == "MSH" and field in (1, 2):  # the separators themselves: one leaf
            return value.strip() if component == 1 and repetition == 1 else ""
        reps = value.split(self.repetition_sep)
        if repetition > len(reps):
            return ""
        components = reps[repetition - 1].split(self.component_sep)
        if component > len(components):
            return ""
        leaf = components[component - 1].split(self.subcomponent_sep)[0]
        if self.escape in leaf:  # python-hl7 unescapes (\F\, \S\, \X..\, …)
            return self._get_via_python_hl7(segment, field, component, repetition)
        return leaf.strip()

    def _get_via_python_hl7(self, segment: str, field: int, component: int, repetition: int) -> str:
        try:
            seg = self.message.segment(segment)
            return str(seg.extract_field(segment, field, repetition, component)).strip()
        except (KeyError, IndexError):
            return ""

    def repetitions(self, segment: str, field: int) -> list[list[str]]:
        """Each repetition of a field as its list of component strings (not unescaped)."""
        fields = self._segment_fields(segment)
        if fields is None or len(fields) <= field:
            return []
        if segment == "MSH" and field in (1, 2):
            return [[fields[field]]]
        return [rep.split(self.component_sep) for rep in fields[field].split(self.repetition_sep)]


def check_structure(
    seg: Segments, required: tuple[str, ...] = ("MSH", "EVN", "PID", "PV1")
) -> None:
    """The required segments are present, MSH first, and in this order."""
    for name in required:
        if name not in seg.order:
            other = next(
                (
                    line
                    for line in seg.lines
                    if line[:3] == name and line[3:4] not in ("", seg.field_sep)
                ),
                None,
            )
            if other is not None:  # e.g. MSH-1 '#' while the other segments use '|'
                raise _err(
                    102,
                    name,
                    f"segment {name} is not separated by the field separator "
                    f"'{seg.field_sep}' of MSH-1 (it uses {other[3]!r})",
                )
            raise _err(100, name, f"required segment {name} is missing")
    positions = [seg.order.index(name) for name in required]
    if positions != sorted(positions) or positions[0] != 0:
        found = " ".join(s for s in seg.order if s in required)
        raise _err(100, "", f"segments must come in the order {' '.join(required)}; found {found}")


def patient_cpr(seg: Segments) -> str:
    """The CPR in PID-3 (validated)."""
    reps = seg.repetitions("PID", 3)
    # CX.4 is an HD and may come with subcomponents (CPR&1.2.208.176.1.2&ISO): compare its first
    tagged = [
        r
        for r in reps
        if any(t.split("&")[0] in ("CPR", "NNDNK") for t in (r + ["", "", "", "", ""])[3:5])
    ]
    candidates = tagged or [r for r in reps if r and len(r[0].replace("-", "")) == 10]
    if not candidates or not candidates[0][0]:
        raise _err(101, "PID^1^3", "no CPR number in PID-3 (CX.4 = CPR or CX.5 = NNDNK, 10 digits)")
    value = candidates[0][0].replace("-", "").strip()
    if not is_valid_cpr(value):
        raise _err(
            102, "PID^1^3", "the CPR number in PID-3 is not 10 digits starting with a valid date"
        )
    return value


def residence(seg: Segments) -> tuple[str, str]:
    """Municipality of residence from PID-11.9 (county/parish) of the home address, else PID-12."""
    addresses = seg.repetitions("PID", 11)
    home = [a for a in addresses if len(a) > 6 and a[6] in ("H", "HP")] or addresses
    code = home[0][8].strip() if home and len(home[0]) > 8 else ""
    location = "PID^1^11^1^9"
    if not code:
        code, location = seg.get("PID", 12), "PID^1^12"
    if not code:
        raise _err(101, "PID^1^11^1^9", "no municipality code in PID-11.9 (home address) or PID-12")
    if code.isdigit() and len(code) < 4:
        code = code.zfill(4)
    found = municipality(code)
    if found is None:
        raise _err(103, location, f"unknown municipality code '{code}' (not one of the 98)")
    return found.code, found.region_code


def sender(seg: Segments) -> Organization:
    """The sending unit from MSH-4."""
    namespace, universal, kind = (seg.get("MSH", 4, c) for c in (1, 2, 3))
    if universal and kind.upper() == "SOR":
        return Organization(sor=universal, name=namespace or None)
    if namespace.isdigit():
        return Organization(sor=namespace, name=None)
    raise _err(
        101,
        "MSH^1^4",
        "MSH-4 must carry the sender's SOR code (MSH-4.2 with MSH-4.3 = SOR, or a numeric MSH-4.1)",
    )


def _code(trigger: str, klass: str, deceased: bool, discharged: bool) -> tuple[str, str]:
    """(MedCom notification code, Encounter.status) for a trigger event."""
    admit = "STAA" if klass == "EMER" else "STIN"
    if trigger in ("A01", "A04"):
        return admit, "in-progress"
    if trigger == "A21":
        return "STOR", "onleave"
    if trigger == "A22":
        return "SLOR", "in-progress"
    if trigger == "A03":
        return ("MORS" if deceased else "SLHJ"), "finished"
    if trigger == "A08":
        if deceased:
            return "RE_MORS", "finished"
        if discharged:
            return "RE_SLHJ", "finished"
        return f"RE_{admit}", "in-progress"
    if trigger == "A11":
        return f"AN_{admit}", "entered-in-error"
    if trigger == "A13":
        return "AN_SLHJ", "in-progress"
    if trigger == "A52":
        return "AN_STOR", "in-progress"
    return "AN_SLOR", "onleave"  # A53


def parse_segments(raw: bytes, default_charset: str = "utf-8") -> tuple[Segments, RawHeader]:
    """Decode (MSH-18) and parse into segments; any failure is an :class:`Hl7Error`."""
    text, header = decode(raw, default_charset)
    return Segments(text), header


def parse_adt(
    raw: bytes, *, secret: str, default_charset: str = "utf-8", timezone: str = "Europe/Copenhagen"
) -> EncounterEvent:
    """Validate and normalise one HL7 v2 ADT message; raise :class:`Hl7Error` if it is unusable."""
    seg, header = parse_segments(raw, default_charset)
    check_structure(seg)

    msg_type, trigger = seg.get("MSH", 9, 1), seg.get("MSH", 9, 2)
    if not msg_type:
        raise _err(101, "MSH^1^9", "MSH-9 message type is empty")
    if msg_type != "ADT":
        raise _err(200, "MSH^1^9", f"message type '{msg_type}' is not supported here (ADT only)")
    if trigger not in SUPPORTED_TRIGGERS:
        raise _err(
            201,
            "MSH^1^9",
            f"ADT event '{trigger}' is not supported; supported: " + ", ".join(SUPPORTED_TRIGGERS),
        )
    control_id = seg.get("MSH", 10)
    if not control_id:
        raise _err(101, "MSH^1^10", "MSH-10 message control id is empty")

    tz = ZoneInfo(timezone)
    cpr = patient_cpr(seg)
    municipality_code, region_code = residence(seg)
    sending_unit = sender(seg)

    patient_class = seg.get("PV1", 2).upper()
    if trigger == "A04" or patient_class == "E":
        klass = "EMER"
    elif patient_class == "I":
        klass = "IMP"
    else:
        raise _err(103, "PV1^1^2", f"patient class '{patient_class}' is not notified (I or E)")
    visit = seg.get("PV1", 19) or seg.get("PID", 18)
    if not visit:
        raise _err(101, "PV1^1^19", "no visit number in PV1-19 (or account number in PID-18)")

    msh7 = seg.get("MSH", 7)
    evn2 = seg.get("EVN", 2) or seg.get("EVN", 6)
    if not (evn2 or msh7):
        raise _err(101, "EVN^1^2", "neither EVN-2 nor MSH-7 gives the event time")
    event_time = to_iso(evn2, tz, "EVN^1^2") if evn2 else to_iso(msh7, tz, "MSH^1^7")
    admit = seg.get("PV1", 44)
    if admit:
        start = to_iso(admit, tz, "PV1^1^44")
    elif trigger in ("A01", "A04"):
        start = event_time
    else:
        raise _err(101, "PV1^1^44", f"{trigger} needs the admission time in PV1-44")
    discharge = seg.get("PV1", 45)
    end = to_iso(discharge, tz, "PV1^1^45") if discharge else None
    deceased = seg.get("PID", 30).upper() == "Y" or bool(seg.get("PID", 29))
    if trigger == "A03" and end is None:
        end = event_time
    code, status = _code(trigger, klass, deceased, end is not None)

    leave_start = event_time if code in ("STOR", "AN_STOR") else None
    leave_end = event_time if code == "SLOR" else None  # AN_SLOR: back on leave, no end
    source_system = f"{header.sending_application}^{header.sending_facility}"
    return EncounterEvent(
        event_id=message_event_id(raw, header),
        source_message_id=control_id,
        source_system=source_system,
        hl7_trigger=trigger,
        notification_code=code,  # type: ignore[arg-type]
        event_time=event_time,
        patient_key=patient_key(cpr, secret),
        sender=sending_unit,
        patient=PatientInfo(
            cpr=cpr,
            family=seg.get("PID", 5, 1) or None,
            given=tuple(g for g in (seg.get("PID", 5, 2), seg.get("PID", 5, 3)) if g),
            birth_date=_date(seg.get("PID", 7)),
            gender=_GENDERS.get(seg.get("PID", 8).upper()),
            deceased=deceased,
            municipality_code=municipality_code,
            region_code=region_code,
        ),
        encounter=EncounterInfo(
            visit_number=visit,
            episode_of_care_id=stable_uuid("episode", sending_unit.sor, visit),
            class_code=klass,  # type: ignore[arg-type]
            status=status,  # type: ignore[arg-type]
            start=start,
            end=end if status == "finished" else None,
            leave_start=leave_start,
            leave_end=leave_end,
        ),
    )
