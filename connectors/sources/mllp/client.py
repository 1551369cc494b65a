"""A small blocking MLLP client: send framed HL7 v2, read the framed ACK.

Used by ``stafet send``, the demo, the tests and the benchmark. python-hl7's own client reads a
single ``recv`` and can return half an ACK, so this one reads until the end block.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

START, END = b"\x0b", b"\x1c\x0d"


class MllpClient:
    """One TCP connection to an MLLP listener; usable as a context manager."""

    def __init__(
        self,
        host: str,
        port: int,
        timeout_s: float = 30.0,
        *,
        tls_ca: Path | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
    ) -> None:
        """``tls_ca``: speak TLS and trust this CA; ``tls_cert``/``tls_key``: present a client
        certificate (for a listener that requires mutual TLS)."""
        sock = socket.create_connection((host, port), timeout=timeout_s)
        if tls_ca is not None:
            context = ssl.create_default_context(cafile=str(tls_ca))
            if tls_cert is not None:
                context.load_cert_chain(tls_cert, tls_key)
            try:
                sock = context.wrap_socket(sock, server_hostname=host)
            except (ssl.SSLError, OSError):
                sock.close()
                raise
        self.sock = sock
        self._buffer = b""

    def __enter__(self) -> MllpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (no framing): for tests of broken frames."""
        self.sock.sendall(data)

    def send(self, message: bytes) -> bytes:
        """Frame and send one message; return its ACK (without framing)."""
        self.sock.sendall(START + message + END)
        return self.read_ack()

    def read_ack(self) -> bytes:
        """Read one framed response; ``ConnectionError`` if the peer closes first."""
        while END not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the listener closed the connection without an ACK")
            self._buffer += chunk
        frame, self._buffer = self._buffer.split(END, 1)
        return frame[frame.find(START) + 1 :]


def ack_fields(ack: bytes) -> dict[str, str]:
    """MSA-1, MSA-2 and the ERR details of an ACK (decoded in its MSH-18 charset, unescaped)."""
    from stafet.inbound.hl7v2 import CHARSETS

    first = ack.split(b"\r", 1)[0].split(b"|")
    declared = first[17].decode("latin-1").upper() if len(first) > 17 else ""
    text = ack.decode(CHARSETS.get(declared, "utf-8"), errors="replace")
    segments = {seg.split("|", 1)[0]: seg.split("|") for seg in text.split("\r") if seg}
    msa = segments.get("MSA", [])
    err = segments.get("ERR", [])
    return {
        "code": msa[1] if len(msa) > 1 else "",
        "control_id": msa[2] if len(msa) > 2 else "",  # as on the wire, like MSH-10
        "error_location": err[2] if len(err) > 2 else "",
        "error_code": err[3].split("^")[0] if len(err) > 3 else "",
        "error_text": _unescape(err[8]) if len(err) > 8 else "",
    }


def _unescape(value: str) -> str:
    """HL7 escape sequences for the default delimiters back to characters."""
    for seq, char in (
        ("\\F\\", "|"),
        ("\\S\\", "^"),
        ("\\T\\", "&"),
        ("\\R\\", "~"),
        ("\\E\\", "\\"),
    ):
        value = value.replace(seq, char)
    return value
