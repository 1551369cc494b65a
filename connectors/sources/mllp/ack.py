"""HL7 v2 acknowledgements (original mode): AA, AE, AR with an ERR segment saying why.

MSA-2 always echoes the received MSH-10 (empty if the message had none we could read). The ACK
is encoded in the character set the sender used, so an ERR text survives the round trip. Free
text has its delimiters escaped, so a '|' or '^' in a reason cannot break the segment; fields
copied from the received MSH (MSH-3, MSH-4, MSH-10) are already HL7-encoded and go back as sent.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from stafet.inbound.hl7v2 import RawHeader

_ESCAPES = {
    "\\": "\\E\\",
    "|": "\\F\\",
    "^": "\\S\\",
    "&": "\\T\\",
    "~": "\\R\\",
    "\r": "\\.br\\",
    "\n": "\\.br\\",
}


def _esc(text: str) -> str:
    """Escape the HL7 delimiters in free text. Other characters stay as they are (python-hl7's
    escape turns æøå into \\Xhh\\ Latin-1 hex, which is wrong for a UTF-8 ACK)."""
    return "".join(_ESCAPES.get(c, c) for c in text)


def _as_sent(value: str) -> str:
    """A field copied from the received MSH: already encoded, only kept inside its field."""
    return value.replace("|", "\\F\\").replace("\r", "").replace("\n", "")


def build_ack(
    code: str,
    header: RawHeader | None,
    *,
    application: str = "STAFET",
    facility: str = "STAFET",
    error_code: int | None = None,
    error_text: str = "",
    location: str = "",
    reason: str = "",
) -> bytes:
    """An ACK for ``header`` (which may be None when MSH was unreadable), as bytes."""
    control_id = header.control_id if header else ""
    trigger = ""
    if header and "^" in header.message_type:
        trigger = header.message_type.split("^")[1]
    charset_field = header.declared_charset if header else ""
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
    segments = [
        "|".join(
            [
                "MSH",
                "^~\\&",
                _esc(application),
                _esc(facility),
                _as_sent(header.sending_application) if header else "",
                _as_sent(header.sending_facility) if header else "",
                now,
                "",
                f"ACK^{_esc(trigger)}^ACK" if trigger else "ACK",
                uuid.uuid4().hex[:20],
                "P",
                "2.5",
                "",
                "",
                "",
                "",
                "",
                charset_field,
            ]
        ),
        "|".join(["MSA", code, _as_sent(control_id)]),
    ]
    if error_code is not None:
        severity = "E"
        segments.append(
            "|".join(
                [
                    "ERR",
                    "",
                    location,
                    f"{error_code}^{_esc(error_text)}^HL70357",
                    severity,
                    "",
                    "",
                    "",
                    _esc(reason),
                ]
            )
        )
    text = "\r".join(segments) + "\r"
    encoding = header.charset if header else "ascii"
    return text.encode(encoding, errors="replace")
