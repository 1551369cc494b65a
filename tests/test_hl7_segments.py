"""The split-on-demand field reader (:class:`stafet.inbound.hl7v2.Segments`) gives exactly what
python-hl7's parse of the whole message gives, field by field, on realistic traffic."""

from __future__ import annotations

import hl7
import pytest

from bench.load import LoadGenerator
from stafet.inbound.hl7v2 import Segments, decode


def reference_get(
    message: hl7.Message, segment: str, field: int, component: int, repetition: int
) -> str:
    """The reader as it was: python-hl7's extract_field on the fully parsed message."""
    try:
        return str(
            message.segment(segment).extract_field(segment, field, repetition, component)
        ).strip()
    except (KeyError, IndexError):
        return ""


def reference_repetitions(message: hl7.Message, segment: str, field: int) -> list[list[str]]:
    try:
        seg = message.segment(segment)
    except KeyError:
        return []
    if len(seg) <= field:
        return []
    value = seg[field]
    return [
        [str(c) for c in rep] if isinstance(rep, hl7.Repetition) else [str(rep)]
        for rep in (value if isinstance(value, hl7.Field) else [value])
    ]


def corpus() -> list[str]:
    gen = LoadGenerator(seed=5, run_id="SEG", referral_share=0.2, invalid_share=0.05)
    texts = []
    for _ in range(300):
        item = next(gen)
        try:
            texts.append(decode(item.message, item.charset)[0])
        except Exception:  # noqa: BLE001 — an undecodable message never reaches the reader
            continue
    # escapes, subcomponents, repetitions, empty trailing fields
    texts.append(
        "MSH|^~\\&|EPJ|Hosp^600000000000099^SOR|||20261201||ADT^A01|X1|P|2.5\r"
        "EVN|A01|20261201\rPID|1||0101011234^^^CPR^NNDNK~X&Y^^^LOCAL||Hansen\\T\\Co"
        "^Ann\\S\\Marie||||||Vej 1^^By^^8000^^H^^0751~Alt 2^^^^^^C||\r"
        "PV1|1|I|||||||||||||||||V1|||"
    )
    return texts


@pytest.mark.parametrize("text", corpus())
def test_every_field_reads_as_python_hl7_reads_it(text: str) -> None:
    fast, message = Segments(text), hl7.parse(text)
    assert fast.order == [str(s[0]) for s in message]
    for name in dict.fromkeys(fast.order):
        width = len(message.segment(name)) + 2
        for field in range(1, width):
            assert fast.repetitions(name, field) == reference_repetitions(message, name, field), (
                name,
                field,
            )
            for repetition in (1, 2):
                for component in range(1, 7):
                    assert fast.get(name, field, component, repetition) == reference_get(
                        message, name, field, component, repetition
                    ), (name, field, component, repetition)
