"""A subscriber's system in miniature, for the demo and the tests: a real HTTP endpoint that
checks stafet's Standard Webhooks signature (``webhook-id``, ``webhook-timestamp``,
``webhook-signature``, with stafet's own verifier), records every POST, can be down (not listening), and answers
each message with a MedCom Acknowledgement POSTed to stafet's ``/fhir/$process-message``, the
way a receiving system does. What a municipality or GP integration must do, in 100 lines."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from stafet.medcom.acknowledgement import build_ack, message_ids
from stafet.webhooks import SignatureError, signed_headers, verify_headers


@dataclass
class Received:
    at: float
    bundle: dict[str, Any]
    signed: bool
    attempt: str

    @property
    def header_id(self) -> str:
        return self.bundle["entry"][0]["resource"]["id"]

    @property
    def bundle_id(self) -> str:
        return self.bundle["id"]

    def activity(self) -> str:
        for e in self.bundle["entry"]:
            r = e["resource"]
            if r["resourceType"] == "Provenance" and r["target"][0]["reference"].endswith(
                self.header_id
            ):
                return r["activity"]["coding"][0]["code"]
        return ""

    def patient_cpr(self) -> str:
        for e in self.bundle["entry"]:
            if e["resource"]["resourceType"] == "Patient":
                return e["resource"]["identifier"][0]["value"]
        return ""


@dataclass
class Receiver:
    """One subscriber endpoint on 127.0.0.1:``port``."""

    port: int
    secret: str
    ack_to: str | None  # stafet's $process-message URL, or None: never acknowledge
    ack_delay_s: float = 0.0  # a receiving system that acknowledges a while later
    received: list[Received] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir/$process-message"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify_headers(self.secret, request.headers, body)  # 300 s window both ways
            signed, why = True, ""
        except SignatureError as exc:
            signed, why = False, exc.reason
        bundle = json.loads(body)
        self.received.append(
            Received(time.time(), bundle, signed, request.headers.get("X-Stafet-Attempt", ""))
        )
        if not signed:
            return web.Response(status=401, text=f"bad signature: {why}")
        if self.ack_to:
            asyncio.get_running_loop().run_in_executor(None, self._acknowledge, bundle)
        return web.Response(status=200, text="ok")

    def _acknowledge(self, bundle: dict[str, Any]) -> None:
        """POST the Acknowledgement; a real system retries while stafet is unreachable."""
        time.sleep(self.ack_delay_s)
        ack = build_ack(
            message_ids(bundle),
            "ok",
            sender_endpoint=self.url,
            receiver_endpoint="https://stafet.dk/fhir",
        )
        data = json.dumps(ack).encode()
        ack_id = ack["entry"][0]["resource"]["id"]  # webhook-id: its own MessageHeader.id
        for _ in range(30):
            request = urllib.request.Request(
                self.ack_to or "",
                data=data,
                headers={  # signed now
                    "Content-Type": "application/fhir+json",
                    **signed_headers(self.secret, ack_id, data),
                },
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    response.read()
                    return
            except OSError:  # URLError / HTTPError 503 while Kafka restarts
                time.sleep(1.0)

    def start(self) -> None:
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_post("/fhir/$process-message", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            self._loop.run_until_complete(site.start())
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        assert ready.wait(10), "receiver did not start"

    def stop(self) -> None:
        """Down: nothing listens on the port any more (connection refused)."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = self._thread = None

    def wait_for(self, header_ids: set[str], timeout_s: float = 60.0) -> list[Received]:
        """Block until every MessageHeader.id in ``header_ids`` has arrived at least once."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = {r.header_id for r in list(self.received)}
            if header_ids <= got:
                return [r for r in list(self.received) if r.header_id in header_ids]
            time.sleep(0.2)
        missing = header_ids - {r.header_id for r in self.received}
        raise AssertionError(f"{len(missing)} of {len(header_ids)} messages never arrived")
