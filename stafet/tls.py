"""TLS for the listeners (MLLP, FHIR HTTP) and the operator console: one way to build the context.

With a client CA, senders must present a certificate it signed (mutual TLS): that is how a
listener on a shared network knows who is talking to it.
"""

from __future__ import annotations

import ssl
from pathlib import Path


def server_context(
    cert: Path | None, key: Path | None = None, client_ca: Path | None = None
) -> ssl.SSLContext | None:
    """A TLS 1.2+ server context, or None when no certificate is configured (plain TCP)."""
    if cert is None:
        if client_ca is not None:
            raise ValueError("a client CA (mutual TLS) needs a server certificate too")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
