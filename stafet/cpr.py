"""CPR numbers: recognise, validate and mask them.

stafet validates the shape and the date part only: since 2007 CPR numbers need not satisfy the
modulus-11 check, so rejecting on it would turn real children away.
"""

from __future__ import annotations

import re
from datetime import date

#: A CPR number in running text: DDMMYY (or DD.MM.YY), an optional '-', ' ' or '.', 4 digits,
#: not inside a longer number.
CPR_IN_TEXT = re.compile(r"(?<!\d)([0-3]\d\.?[01]\d\.?\d\d)[-. ]?(\d{4})(?!\d)")
MASK = "<cpr>"
#: A CPR number as a token, for scans of logs and records where ids, offsets and hashes abound:
#: ten digits (an optional '-' after six) not inside a longer word, number or hex id.
CPR_TOKEN = re.compile(r"(?<![0-9A-Za-z])([0-9]{6})-?([0-9]{4})(?![0-9A-Za-z])")


def mask_cpr(text: str) -> str:
    """Replace every CPR-shaped number in ``text`` with ``<cpr>``."""
    return CPR_IN_TEXT.sub(MASK, text)


def century(year2: int, digit7: int) -> int:
    """The century of a CPR birth year from its 7th digit (CPR office rules)."""
    if digit7 <= 3:
        return 1900
    if digit7 in (4, 9):
        return 2000 if year2 <= 36 else 1900
    return 2000 if year2 <= 57 else 1800


def birth_date(cpr: str) -> date:
    """The birth date encoded in a CPR number; ``ValueError`` if it is not a valid one."""
    if not is_cpr_shape(cpr):
        raise ValueError("a CPR number is 10 digits")
    dd, mm, yy, d7 = int(cpr[0:2]), int(cpr[2:4]), int(cpr[4:6]), int(cpr[6])
    return date(century(yy, d7) + yy, mm, dd)


def is_cpr_shape(value: str) -> bool:
    return len(value) == 10 and value.isascii() and value.isdigit()


def is_valid_cpr(value: str) -> bool:
    """10 digits whose first six are a real date."""
    try:
        birth_date(value)
    except ValueError:
        return False
    return True


def find_cprs(text: str) -> list[tuple[int, int, str]]:
    """(start, end, CPR) of each valid CPR number (a real birth date) standing as a token in
    ``text``: what a leak scan reports; a 10-digit offset or timestamp is seldom a real date."""
    found = []
    for match in CPR_TOKEN.finditer(text):
        cpr = match.group(1) + match.group(2)
        if is_valid_cpr(cpr):
            found.append((match.start(), match.end(), cpr))
    return found


def shown_cpr(cpr: str) -> str:
    """A CPR number as a screen may show it to someone entitled to know whose record it is: the
    birth date, the rest hidden ("DDMMYY-****")."""
    return f"{cpr[:6]}-****" if len(cpr) == 10 else "****"
