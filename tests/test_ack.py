"""HL7 v2 ACKs: MSA/ERR content, escaping of free text, swapped sender/receiver, the sender's
character set, and an ACK for a message whose MSH could not be read."""

from __future__ import annotations

import hl7
import pytest

from stafet.connectors.sources.mllp.ack import build_ack
from stafet.connectors.sources.mllp.client import ack_fields
from stafet.inbound.hl7v2 import Hl7Error, decode, parse_adt

MESSAGE = (
    "MSH|^~\\&|EPJ|BUC Test^600000000000099^SOR|STAFET|STAFET|20240115103000||ADT^A01^ADT_A01|"
    "MSG0001|P|2.5|||AL|NE|DK|{charset}\r"
    "EVN|A01|20240115103000\r"
    "PID|1||0505159995^^^CPR^NNDNK||Berggren^Lars^Test||20150505|M|||"
    "Testpark Allé 48^^^^3400^DK^H^^0219\r"
    "PV1|1|I|600000000000099^^^BUC Test||||||||||||||||V-1001\r"
)
NASTY = "bad | field ^ comp & sub ~ rep \\ esc"


def header(charset: str = "UNICODE UTF-8", control_id: str = "MSG0001"):
    encoding = "iso-8859-1" if charset == "8859/1" else "utf-8"
    raw = MESSAGE.format(charset=charset).replace("MSG0001", control_id).encode(encoding)
    return decode(raw)[1]


def parsed(ack: bytes, encoding: str = "utf-8") -> hl7.Message:
    text = ack.decode(encoding)
    assert text.endswith("\r") and "\n" not in text
    return hl7.parse(text)


def field(message: hl7.Message, segment: str, n: int, component: int = 1) -> str:
    return message.extract_field(segment, 1, n, 1, component)


@pytest.mark.parametrize("code", ["AA", "AE", "AR"])
def test_msa_echoes_code_and_control_id(code):
    ack = parsed(build_ack(code, header(), application="STAFET-MLLP", facility="REGION"))
    assert [str(s[0]) for s in ack] == ["MSH", "MSA"]  # no ERR without an error code
    assert (field(ack, "MSA", 1), field(ack, "MSA", 2)) == (code, "MSG0001")
    assert (field(ack, "MSH", 3), field(ack, "MSH", 4)) == ("STAFET-MLLP", "REGION")
    assert str(ack.segment("MSH")[9]) == "ACK^A01^ACK"
    assert field(ack, "MSH", 12) == "2.5"
    assert ack_fields(build_ack(code, header()))["code"] == code


def test_sender_and_receiver_are_swapped_with_components_intact():
    ack = parsed(build_ack("AA", header()))
    assert field(ack, "MSH", 5) == "EPJ"
    assert [field(ack, "MSH", 6, c) for c in (1, 2, 3)] == ["BUC Test", "600000000000099", "SOR"]


def test_control_ids_are_fresh_and_msa2_is_msh10_as_sent():
    first, second = (parsed(build_ack("AA", header())) for _ in range(2))
    assert field(first, "MSH", 10) and field(first, "MSH", 10) != field(second, "MSH", 10)
    raw = build_ack("AA", header(control_id="A\\T\\B"))  # MSH-10 carrying an escape sequence
    assert b"MSA|AA|A\\T\\B\r" in raw
    assert ack_fields(raw)["control_id"] == "A\\T\\B"


def test_err_segment_for_ar():
    raw = build_ack(
        "AR",
        header(),
        error_code=101,
        error_text="Required field missing",
        location="PID^1^3",
        reason="no CPR number in PID-3",
    )
    ack = parsed(raw)
    err = ack.segment("ERR")
    assert str(err[2]) == "PID^1^3"
    assert str(err[3]) == "101^Required field missing^HL70357"
    assert field(ack, "ERR", 4) == "E"
    assert field(ack, "ERR", 8) == "no CPR number in PID-3"
    assert ack_fields(raw) == {
        "code": "AR",
        "control_id": "MSG0001",
        "error_location": "PID^1^3",
        "error_code": "101",
        "error_text": "no CPR number in PID-3",
    }


def test_ae_carries_a_transient_error():
    raw = build_ack(
        "AE",
        header(),
        error_code=207,
        error_text="Application internal error",
        reason="not stored, please retry",
    )
    fields = ack_fields(raw)
    assert (fields["code"], fields["error_code"]) == ("AE", "207")
    assert "please retry" in fields["error_text"]


def test_delimiters_in_reason_do_not_break_the_segment():
    raw = build_ack(
        "AR",
        header(),
        error_code=102,
        error_text="Data type error",
        location="EVN^1^2",
        reason=NASTY + "\rnext line",
    )
    text = raw.decode("utf-8")
    assert text.count("\r") == 3  # MSH, MSA, ERR: the CR in the reason did not split a segment
    ack = parsed(raw)
    err = ack.segment("ERR")
    assert len(err) == 9  # ERR + ERR-1 … ERR-8, nothing spilled into extra fields
    assert field(ack, "ERR", 8) == NASTY + "\rnext line"  # python-hl7 unescapes it back
    assert str(err[3]) == "102^Data type error^HL70357"
    assert ack_fields(raw)["error_code"] == "102"


def test_ack_uses_the_senders_charset_8859_1():
    h = header("8859/1")
    assert h.charset == "iso-8859-1"
    raw = build_ack(
        "AR",
        h,
        error_code=103,
        error_text="Table value not found",
        location="PID^1^11^1^9",
        reason="ukendt kommune for Allé, Ærø og Århus",
    )
    assert "Ærø og Århus".encode("latin-1") in raw
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    ack = parsed(raw, "iso-8859-1")
    assert field(ack, "MSH", 18) == "8859/1"
    assert field(ack, "ERR", 8) == "ukendt kommune for Allé, Ærø og Århus"


def test_ack_uses_the_senders_charset_utf8():
    raw = build_ack(
        "AR", header(), error_code=103, error_text="Table value not found", reason="Ærø"
    )
    assert "Ærø".encode() in raw
    assert field(parsed(raw), "MSH", 18) == "UNICODE UTF-8"


def test_sender_name_with_danish_letters_is_echoed_in_its_charset():
    for charset, encoding in (("8859/1", "iso-8859-1"), ("UNICODE UTF-8", "utf-8")):
        raw_msg = (
            MESSAGE.format(charset=charset).replace("BUC Test^", "BUC Århus^").encode(encoding)
        )
        ack = parsed(build_ack("AA", decode(raw_msg)[1]), encoding)
        assert field(ack, "MSH", 6) == "BUC Århus"


def test_ack_without_a_readable_header():
    raw = build_ack(
        "AR",
        None,
        error_code=100,
        error_text="Segment sequence error",
        reason="the message does not start with an MSH segment (æ)",
    )
    raw.decode("ascii")  # no header, no charset: plain ASCII, non-ASCII replaced
    ack = parsed(raw, "ascii")
    assert str(ack.segment("MSH")[9]) == "ACK"
    assert [field(ack, "MSH", n) for n in (5, 6, 18)] == ["", "", ""]
    assert field(ack, "ERR", 8) == "the message does not start with an MSH segment (?)"
    fields = ack_fields(raw)
    assert (fields["code"], fields["control_id"], fields["error_code"]) == ("AR", "", "100")


def test_ack_from_a_real_rejection_names_code_location_and_reason():
    raw = MESSAGE.format(charset="UNICODE UTF-8").replace("ADT^A01^ADT_A01", "ADT^A02^ADT_A02")
    with pytest.raises(Hl7Error) as info:
        parse_adt(raw.encode(), secret="s")
    exc = info.value
    ack = build_ack(
        "AR",
        header(),
        error_code=exc.code,
        error_text=exc.text,
        location=exc.location,
        reason=exc.reason,
    )
    fields = ack_fields(ack)
    assert (fields["error_code"], fields["error_location"]) == ("201", "MSH^1^9")
    assert "ADT event 'A02' is not supported" in fields["error_text"]
    assert "0505159995" not in ack.decode("utf-8")
