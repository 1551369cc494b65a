"""CPR masking: every log line (structlog, stdlib, tracebacks, nested values) carries ``<cpr>``,
never the number. The CPRs are MedCom test patients (Lars and Rikke Berggren)."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest
import structlog
from structlog.testing import capture_logs

from stafet.cpr import MASK, mask_cpr
from stafet.logging import configure_logging, get_logger, mask_cpr_processor

LARS, LARS_DASH, RIKKE = "0505159995", "050515-9995", "0505209996"


@pytest.fixture
def restore_logging():
    """Put the root logger and structlog back as they were, whatever the test configured."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    saved = structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()
    structlog.configure(**saved)


@pytest.fixture
def stream(monkeypatch, restore_logging) -> io.StringIO:
    """configure_logging() writing its JSON lines into a StringIO instead of stderr."""
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    configure_logging("DEBUG")
    return buffer


def lines(buffer: io.StringIO) -> list[dict]:
    text = buffer.getvalue()
    assert LARS not in text and LARS_DASH not in text and RIKKE not in text, text
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_structlog_logger_masks_cpr_in_event_and_fields(stream):
    get_logger("stafet.test").info(
        f"admitted {LARS}", cpr=LARS, note=f"child {LARS_DASH}", visit="V-1001", count=3
    )
    [line] = lines(stream)
    assert line["event"] == f"admitted {MASK}"
    assert (line["cpr"], line["note"]) == (MASK, f"child {MASK}")
    assert (line["visit"], line["count"], line["level"]) == ("V-1001", 3, "info")
    assert line["logger"] == "stafet.test" and "timestamp" in line


def test_stdlib_logger_is_masked_too(stream):
    logging.getLogger("aiokafka.consumer").warning("key %s for %s failed", LARS, RIKKE)
    [line] = lines(stream)
    assert line["event"] == f"key {MASK} for {MASK} failed"
    assert (line["logger"], line["level"]) == ("aiokafka.consumer", "warning")


def test_exception_message_with_cpr_is_masked(stream):
    log = get_logger("stafet.test")
    try:
        raise ValueError(f"patient {LARS} not found")
    except ValueError:
        log.exception("lookup failed")
        logging.getLogger("faust").exception("worker crashed for %s", LARS_DASH)
    structured, stdlib = lines(stream)
    assert "ValueError" in structured["exception"] and f"patient {MASK}" in structured["exception"]
    assert stdlib["event"] == f"worker crashed for {MASK}"
    assert f"patient {MASK} not found" in stdlib["exception"]


def test_exception_object_as_a_value_is_masked(stream):
    get_logger("stafet.test").warning("rejected", error=KeyError(LARS))
    [line] = lines(stream)
    assert MASK in line["error"] and "KeyError" in line["error"]


def test_nested_values_are_masked(stream):
    get_logger("stafet.test").info(
        "nested",
        patient={"ids": [LARS, {"deep": f"x {LARS_DASH} y"}], "pair": (RIKKE, "V-1")},
        raw=b"PID|1||0505159995^^^CPR",
    )
    [line] = lines(stream)
    assert line["patient"]["ids"] == [MASK, {"deep": f"x {MASK} y"}]
    assert line["patient"]["pair"] == [MASK, "V-1"]
    assert line["raw"] == f"PID|1||{MASK}^^^CPR"


def test_a_cpr_as_a_dict_key_is_masked_by_the_last_line_of_defence(stream):
    get_logger("stafet.test").info("by key", index={LARS: "V-1001"})
    [line] = lines(stream)
    assert line["index"] == {MASK: "V-1001"}


def test_level_is_applied(monkeypatch, restore_logging):
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    configure_logging("warning")
    get_logger("stafet.test").info("quiet")
    logging.getLogger("aiokafka").info("quiet")
    get_logger("stafet.test").warning("loud")
    assert [line["event"] for line in lines(buffer)] == ["loud"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (LARS, MASK),
        (LARS_DASH, MASK),
        (f"cpr={LARS},next", f"cpr={MASK},next"),
        (f"{LARS} og {RIKKE}", f"{MASK} og {MASK}"),
        (f"PID|1||{LARS}^^^CPR^NNDNK", f"PID|1||{MASK}^^^CPR^NNDNK"),
        (f"abc{LARS}def", f"abc{MASK}def"),
    ],
)
def test_mask_cpr_masks(text, expected):
    assert mask_cpr(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "5790000209354",  # GLN, 13 digits
        "265161000016000",  # SOR, 15 digits
        "600000000000000099",  # 18 digits
        "05051599951",  # 11 digits: a CPR prefix is not a CPR
        "105051599950",
        "050515999",  # 9 digits
        "050515-99951",
        "20240115103000",  # HL7 timestamp
        "2024-01-15T10:30:00+01:00",
        "phone 12345678",
    ],
)
def test_mask_cpr_leaves_other_numbers(text):
    assert mask_cpr(text) == text


def test_processor_masks_event_dicts_with_capture_logs(restore_logging):
    with capture_logs(processors=[mask_cpr_processor]) as logs:
        structlog.get_logger("t").info(
            "seen", cpr=LARS, nested={"list": [LARS_DASH], "n": 7}, gln="5790000209354"
        )
    assert logs == [
        {
            "event": "seen",
            "cpr": MASK,
            "nested": {"list": [MASK], "n": 7},
            "gln": "5790000209354",
            "log_level": "info",
        }
    ]


def test_processor_keeps_types_and_does_not_mutate_input():
    event = {"event": "x", "t": (LARS, 1), "l": [LARS], "n": None, "b": bytearray(LARS.encode())}
    masked = mask_cpr_processor(None, "info", event)
    assert masked["t"] == (MASK, 1) and isinstance(masked["t"], tuple)
    assert masked["l"] == [MASK] and masked["n"] is None and masked["b"] == MASK
    assert event["l"] == [LARS]  # the caller's dict is untouched
