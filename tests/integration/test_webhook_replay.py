"""The replay window on inbound acknowledgements, end to end: real broker, MLLP and FHIR
listener, a real ``stafet deliver`` with ``STAFET_WEBHOOK_TOLERANCE_S`` shrunk to seconds, and a
REST subscriber that does not acknowledge by itself — the test signs and POSTs its
acknowledgements (Standard Webhooks headers) the way the subscriber's system would.

A signed acknowledgement captured and replayed after the window is refused (audited as
``ack-unverified`` with the reason, the message stays pending), while a fresh one counts; one
that is far outside the window is already refused at the listener's door (401, not stored)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from demo.hl7_builder import medcom_test_patients
from stafet.audit import AuditRecord
from stafet.kafka.client import as_admin, client_config
from stafet.kafka.reader import read_to_end
from stafet.kafka.topics import AUDIT_DELIVERY
from stafet.medcom.acknowledgement import build_ack, message_ids
from stafet.webhooks import signed_headers

from .delivery_env import Rest, running_delivery
from .test_delivery import _admission_then_discharge

WINDOW_S = 8.0  # the delivery tracker's tolerance in this test (the listener keeps 300 s)
SID = "window-0813"


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/fhir+json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _ack_of(bundle: dict, receiver_url: str) -> tuple[bytes, str]:
    ack = build_ack(
        message_ids(bundle),
        "ok",
        sender_endpoint=receiver_url,
        receiver_endpoint="https://stafet.dk/fhir",
    )
    return json.dumps(ack).encode(), ack["entry"][0]["resource"]["id"]


def _audit_lines(settings, message_ids_: set[str]) -> list[AuditRecord]:
    lines = [
        AuditRecord.decode(m.value())
        for m in read_to_end(client_config(as_admin(settings)), AUDIT_DELIVERY)
    ]
    return [r for r in lines if r.message_id in message_ids_]


def test_an_acknowledgement_replayed_after_the_window_is_refused_a_fresh_one_counts(
    stack, tmp_path
):
    with running_delivery(
        stack,
        tmp_path,
        {SID: Rest(municipality="0813", acknowledges=False)},
        webhook_tolerance_s=WINDOW_S,
    ) as env:
        receiver = env.receivers[SID]
        child = medcom_test_patients()["BoVestergaard"]  # 0813
        messages, ids = _admission_then_discharge(child, 4)
        for m in messages[:2]:
            assert stack.send(m)["code"] == "AA"
        got = {r.header_id: r for r in receiver.wait_for(set(ids[:2]), timeout_s=60)}
        assert all(r.signed for r in got.values()), "our POSTs verify with stafet's verifier"
        replayed_id, fresh_id = ids[:2]
        ack_url = f"http://127.0.0.1:{stack.settings.fhir_port}/fhir/$process-message"

        # captured on the wire when it was sent, replayed after the window
        replayed_body, replayed_ack_id = _ack_of(got[replayed_id].bundle, receiver.url)
        captured = signed_headers(receiver.secret, replayed_ack_id, replayed_body)
        far_outside = signed_headers(
            receiver.secret, replayed_ack_id, replayed_body, now=time.time() - 400
        )
        assert _post(ack_url, replayed_body, far_outside) == 401, "refused at the door"
        time.sleep(WINDOW_S + 3)
        assert _post(ack_url, replayed_body, captured) == 200  # the listener's 300 s: stored

        fresh_body, fresh_ack_id = _ack_of(got[fresh_id].bundle, receiver.url)
        assert (
            _post(ack_url, fresh_body, signed_headers(receiver.secret, fresh_ack_id, fresh_body))
            == 200
        )

        deadline = time.monotonic() + 60
        lines: list[AuditRecord] = []
        while time.monotonic() < deadline:
            lines = _audit_lines(env.settings, {replayed_id, fresh_id})
            actions = {(r.message_id, r.action) for r in lines}
            if {(replayed_id, "ack-unverified"), (fresh_id, "ack-ok")} <= actions:
                break
            time.sleep(0.5)
        by_id = {mid: [r for r in lines if r.message_id == mid] for mid in (replayed_id, fresh_id)}
        assert [r.action for r in by_id[fresh_id]][-1] == "ack-ok", by_id[fresh_id]
        refused = [r for r in by_id[replayed_id] if r.action.startswith("ack-")]
        assert [r.action for r in refused] == ["ack-unverified"], refused  # once, at the tracker
        assert "too-old" in refused[0].detail and "changes nothing" in refused[0].detail
        log = (env.root / "deliver.log").read_text(errors="replace")
        assert '"delivery.ack_refused"' in log and child.cpr not in log
