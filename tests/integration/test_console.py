"""The operator console in a real headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright) against a running ``stafet console`` process, the session's broker, worker and
listeners, and a ``stafet deliver`` with one REST subscriber (Hillerød) that acknowledges.

What is sent (synthetic MedCom test patients): in Aarhus (0751) Rikke is admitted and
discharged, then returns from a leave the hospital never announced (an A22 without its A21: a
dead letter on dlq.notify); in Hillerød (0219) Lars is admitted and has the same kind of dead
letter. The tests then look at every page (screenshots in docs/console/), fix the cause of
Rikke's dead letter (the hospital sends the missing A21) and resend it from the console — it
reaches out.municipality.0751 — discard Lars's with a reason, and show that Aarhus's user sees
nothing of Hillerød's resident, by page or by URL.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright import sync_api as playwright_api  # the test extra; never `playwright install`

from demo.hl7_builder import Hospital, adt, medcom_test_patients
from stafet.audit import AuditRecord
from stafet.config import PROJECT_ROOT
from stafet.console.auth import hash_password
from stafet.ids import patient_key
from stafet.kafka.client import as_admin, client_config
from stafet.kafka.reader import read_to_end
from stafet.kafka.topics import (
    AUDIT_ACCESS,
    AUDIT_DELIVERY,
    DLQ_NOTIFY,
    H_EVENT_CODE,
    municipality_topic,
)
from stafet.stack import Service, settings_env, wait_for_port

from .conftest import free_port
from .delivery_env import Rest, running_delivery
from .test_referral_flow import GUARDIANS, decision, referral

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = PROJECT_ROOT / "docs" / "console"
HOSPITAL = Hospital("Aarhus Universitetshospital (test)", "600000000000098")
PASSWORDS = {"ops-anna": "operator-pw-123", "aarhus-bo": "aarhus-pw-123", "hill-ida": "hill-pw-123"}
DAY = "20261203"


@dataclass
class Console:
    url: str
    stack: object
    rikke: object
    lars: object
    rikke_visit: str
    lars_visit: str
    referral_id: str
    log: Path


def _health_port(log: Path) -> int:
    ports = [
        json.loads(line)["port"]
        for line in log.read_text(errors="replace").splitlines()
        if '"health.listening"' in line
    ]
    assert ports, f"no health.listening in {log}"
    return int(ports[-1])


def _secret(stack) -> str:
    return stack.settings.patient_key_secret.get_secret_value()


def _send(stack, *messages: bytes) -> None:
    for m in messages:
        assert stack.send(m)["code"] == "AA"


def _adt(trigger: str, patient, visit: str, hhmm: str) -> bytes:
    return adt(
        trigger,
        patient,
        hospital=HOSPITAL,
        control_id=f"{visit}-{trigger}-{uuid.uuid4().hex[:4]}",
        visit=visit,
        event_time=f"{DAY}{hhmm}",
        admit_time=f"{DAY}0700",
        **({"discharge_time": f"{DAY}{hhmm}"} if trigger == "A03" else {}),
    )


@pytest.fixture(scope="module")
def console(stack, tmp_path_factory) -> Iterator[Console]:
    root = tmp_path_factory.mktemp("console")
    (root / "delivery").mkdir()
    patients = medcom_test_patients()
    rikke, lars = patients["RikkeBerggren"], patients["LarsBerggren"]  # 0751, 0219
    with running_delivery(stack, root / "delivery", {"hill": Rest(municipality="0219")}) as env:
        since = stack.marks()
        first, rikke_leave, lars_visit = (f"V-C{uuid.uuid4().hex[:8]}" for _ in range(3))
        _send(
            stack,
            _adt("A01", rikke, first, "0800"),
            _adt("A03", rikke, first, "0900"),
            _adt("A01", rikke, rikke_leave, "1000"),
            _adt("A22", rikke, rikke_leave, "1200"),  # a return from a leave never announced
            _adt("A01", lars, lars_visit, "0800"),
            _adt("A22", lars, lars_visit, "1200"),
        )
        got = stack.read(since, until=6)
        assert sum(r.topic == DLQ_NOTIFY for r in got) == 2, [r.topic for r in got]
        # and Rikke's referral to child psychiatry, rejected: the GP, Aarhus's three units and
        # both guardians are told (test_referral_flow's referral; its child is Rikke)
        referral_id = f"HEN-C{uuid.uuid4().hex[:6]}"
        since = stack.marks()
        _send(stack, referral(referral_id))
        assert stack.read(since, until=1)
        since = stack.marks()
        _send(stack, decision(referral_id, "R"))
        assert len(stack.read(since, until=6)) >= 6
        users = root / "users.toml"
        users.write_text(
            "\n".join(
                [
                    f'[[user]]\nname = "ops-anna"\nrole = "operator"\n'
                    f'password = "{hash_password(PASSWORDS["ops-anna"])}"\n',
                    f'[[user]]\nname = "aarhus-bo"\nrole = "municipality"\nmunicipality = "0751"\n'
                    f'password = "{hash_password(PASSWORDS["aarhus-bo"])}"\n',
                    f'[[user]]\nname = "hill-ida"\nrole = "municipality"\nmunicipality = "0219"\n'
                    f'password = "{hash_password(PASSWORDS["hill-ida"])}"\n',
                ]
            ),
            encoding="utf-8",
        )
        processes = ",".join(
            [
                *(
                    f"{name}=http://127.0.0.1:{_health_port(stack.log_dir / f'{name}.log')}"
                    for name in ("worker", "mllp", "fhir")
                ),
                f"deliver=http://127.0.0.1:{_health_port(root / 'delivery' / 'deliver.log')}",
            ]
        )
        port = free_port()
        settings = env.settings.model_copy(
            update={
                "console_port": port,
                "console_users_file": users,
                "console_processes": processes,
                "console_refresh_s": 30,
            }
        )
        service = Service(
            "console", ["console"], root / "logs" / "console.log", settings_env(as_admin(settings))
        )
        service.start()
        try:
            wait_for_port("127.0.0.1", port)
            yield Console(
                f"http://127.0.0.1:{port}",
                stack,
                rikke,
                lars,
                rikke_leave,
                lars_visit,
                referral_id,
                root / "logs" / "console.log",
            )
        finally:
            service.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    assert CHROMIUM.exists(), "Debian's chromium: make install (deploy/install-system-deps.sh)"
    with playwright_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="stafet-chromium-"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1360, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


def _page(browser, console: Console, user: str):
    """A fresh page logged in as ``user`` (its own cookies: the context is shared, so log out
    whoever was in first)."""
    browser.clear_cookies()
    page = browser.new_page()
    page.goto(f"{console.url}/flow")
    assert page.url.endswith("/login"), "not logged in: the login page"
    page.fill("#name", user)
    page.fill("#password", PASSWORDS[user])
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/flow$"))
    return page


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _no_cpr(page, *patients) -> None:
    html = page.content()
    for cpr in [p.cpr for p in patients] + [g[2] for g in GUARDIANS]:
        assert cpr not in html and f"{cpr[:6]}-{cpr[6:]}" not in html


def _read_audit(stack) -> list[AuditRecord]:
    return [
        AuditRecord.decode(m.value())
        for m in read_to_end(client_config(as_admin(stack.settings)), AUDIT_DELIVERY)
    ]


def _wait_for(page, selector: str, text: str, timeout_s: float = 30.0) -> None:
    """Reload until ``selector`` contains ``text`` (the console reads Kafka on each view)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if text in (page.text_content(selector) or ""):
            return
        assert time.monotonic() < deadline, f"{text!r} not in {selector}"
        time.sleep(1.0)
        page.reload()


def test_login_refuses_a_wrong_password_and_pages_need_a_login(console, browser):
    browser.clear_cookies()
    page = browser.new_page()
    response = page.goto(f"{console.url}/dead-letters")
    assert page.url.endswith("/login") and response is not None
    page.fill("#name", "ops-anna")
    page.fill("#password", "not-the-password")
    with page.expect_response(lambda r: r.url.endswith("/login")) as answer:
        page.click("button[type=submit]")
    assert answer.value.status == 401
    assert "Wrong name or password" in page.text_content(".error")
    _shot(page, "login")
    page.close()


def test_an_operator_sees_the_flow_dead_letters_and_resends_one_after_fixing_its_cause(
    console, browser
):
    stack, rikke = console.stack, console.rikke
    page = _page(browser, console, "ops-anna")
    _wait_for(page, "#processes", "deliver")
    processes = page.text_content("#processes")
    for name in ("worker", "mllp", "fhir", "deliver"):
        assert re.search(rf"{name}\s*up\s*ready", processes), processes
    topics = page.text_content("#topics")
    assert "out.municipality.0751" in topics and "out.municipality.0219" in topics
    assert "stafet_messages_in_total" in page.text_content("#series")
    cells = page.locator("#dlq tr:has-text('dlq.notify') td").all_inner_texts()
    assert int(cells[1]) >= 2, cells  # open dead letters on dlq.notify
    _shot(page, "flow")

    page.goto(f"{console.url}/dead-letters?topic={DLQ_NOTIFY}")
    table = page.text_content("#dead-letters")
    assert "end of leave" in table and "0751" in table and "0219" in table
    _shot(page, "dead-letters")
    row = page.locator("#dead-letters tr", has_text="0751").first
    row.locator("a", has_text="open").click()
    page.wait_for_selector("#body")
    assert "<cpr>" in page.text_content("#body"), "the message is shown, its CPR masked"
    _no_cpr(page, rikke)
    assert page.text_content("#status") == "open"
    _shot(page, "dead-letter")
    position = page.url.split("/dead-letters/")[1]

    # resending before the cause is fixed makes the same dead letter again; fix it first: the
    # hospital sends the A21 (start of leave) it had not sent
    since = stack.marks()
    _send(stack, _adt("A21", rikke, console.rikke_visit, "1100"))
    [stor] = [r for r in stack.read(since, until=1) if r.topic == municipality_topic("0751")]
    assert stor.headers[H_EVENT_CODE] == b"STOR"
    since = stack.marks()
    page.click("#resend")
    page.wait_for_selector("#note")
    assert "Sent back" in page.text_content("#note")
    assert page.text_content("#status") == "resent"
    assert "ops-anna" in page.text_content("#facts")
    arrived = stack.read(since, until=1)
    assert [(r.topic, r.headers[H_EVENT_CODE]) for r in arrived] == [
        (municipality_topic("0751"), b"SLOR")
    ], "the resent dead letter reached Aarhus as the return from leave"
    assert arrived[0].key == patient_key(rikke.cpr, _secret(stack)).encode()
    _shot(page, "dead-letter-resent")
    resent = [r for r in _read_audit(stack) if r.action == "dlq-resent"]
    assert [(r.message_id, r.actor) for r in resent] == [(position, "ops-anna")]
    assert resent[0].detail == "sent back to events.encounter"

    # Lars's dead letter: discarded, with the reason, audited with the operator's name
    page.goto(f"{console.url}/dead-letters?topic={DLQ_NOTIFY}")
    page.locator("#dead-letters tr", has_text="0219").first.locator("a").click()
    page.fill("#reason", "duplicate of a leave registered by phone")
    page.click("#discard")
    page.wait_for_selector("#note")
    assert page.text_content("#status") == "discarded"
    discarded = [r for r in _read_audit(stack) if r.action == "dlq-discarded"]
    assert [(r.actor, r.detail) for r in discarded] == [
        ("ops-anna", "duplicate of a leave registered by phone")
    ]
    page.goto(f"{console.url}/dead-letters?topic={DLQ_NOTIFY}")
    assert "0219" not in page.text_content("#dead-letters"), "closed ones are hidden by default"
    page.close()


def test_search_by_cpr_leads_to_the_childs_trail_and_subscribers_show_delivery_state(
    console, browser
):
    stack, rikke = console.stack, console.rikke
    page = _page(browser, console, "ops-anna")
    page.goto(f"{console.url}/search")
    page.fill("#cpr", rikke.cpr)
    page.click("#search")
    page.wait_for_selector("#patients")
    _no_cpr(page, rikke)
    key = patient_key(rikke.cpr, _secret(stack))
    assert page.locator(f"#patients a[href='/trail/{key}']").count() == 1
    assert "published" in page.text_content("#results")
    _shot(page, "search")
    page.click(f"#patients a[href='/trail/{key}']")
    page.wait_for_selector("#trail")
    _wait_for(page, "#trail", "dlq-resent")
    trail = page.text_content("#trail")
    for step in (
        "A01: admission (inpatient)",
        "A03: discharge",
        "A22: end of leave",
        "A21: start of leave",
        "hospital-notification STIN",
        "hospital-notification SLOR",
        "published",
        "dead letter on dlq.notify",
        "dlq-resent",
        "referral submitted",
        "referral decision: rejected",
        "rejection",  # the messages about it: to the GP, Aarhus's units, the guardians
        "family-department",
        "guardian",
    ):
        assert step in trail, step
    _no_cpr(page, rikke)
    _shot(page, "trail")

    page.goto(f"{console.url}/search")  # by referral id: who was told, and how it went
    page.fill("#referral_id", console.referral_id)
    page.click("#search")
    page.wait_for_selector("#results")
    results = page.text_content("#results")
    assert "municipality-0751" in results and "letters" in results, results
    assert page.locator(f"#patients a[href='/trail/{key}']").count() == 1

    page.goto(f"{console.url}/subscribers")
    _wait_for(page, "#subscribers", "hill")
    row = page.text_content("#subscribers tr:has-text('hill')")
    assert "rest" in row and "out.municipality.0219" in row
    _wait_for(page, "#subscribers tr:has-text('hill')", "ok")
    _shot(page, "subscribers")
    page.close()


def test_a_municipality_sees_only_its_own_residents_by_page_and_by_url(console, browser):
    stack, rikke, lars = console.stack, console.rikke, console.lars
    lars_key = patient_key(lars.cpr, _secret(stack))
    rikke_key = patient_key(rikke.cpr, _secret(stack))
    page = _page(browser, console, "aarhus-bo")
    topics = page.text_content("#topics")
    assert "out.municipality.0751" in topics and "out.municipality.0219" not in topics
    assert page.locator("#alerts").count() == 0
    page.goto(f"{console.url}/dead-letters?all=1")
    table = page.text_content("#dead-letters")
    assert "0751" in table and "0219" not in table
    assert page.locator("#resend, #discard").count() == 0
    _shot(page, "dead-letters-municipality")
    # Hillerød's dead letter by URL: as if it did not exist
    hill_dead = [
        m
        for m in read_to_end(client_config(as_admin(stack.settings)), DLQ_NOTIFY)
        if (m.key() or b"").decode() == lars_key
    ]
    assert hill_dead
    for m in hill_dead:
        answer = page.goto(f"{console.url}/dead-letters/{DLQ_NOTIFY}/{m.partition()}/{m.offset()}")
        assert answer is not None and answer.status == 404
    answer = page.goto(f"{console.url}/trail/{lars_key}")
    assert answer is not None and answer.status == 404
    assert "Berggren" not in page.content()
    # its own resident's trail is there
    answer = page.goto(f"{console.url}/trail/{rikke_key}")
    assert answer is not None and answer.status == 200
    assert "hospital-notification SLOR" in page.text_content("#trail")
    # searching Hillerød's child by CPR finds nothing
    page.goto(f"{console.url}/search")
    page.fill("#cpr", lars.cpr)
    page.click("#search")
    page.wait_for_selector("#patients")
    assert page.locator("#patients a").count() == 0
    assert "no messages" in page.text_content("#results")
    _no_cpr(page, lars)
    # the subscribers page: not Hillerød's REST subscriber
    page.goto(f"{console.url}/subscribers")
    subscribers = page.text_content("#subscribers")
    assert "municipality-0751" in subscribers and "hill" not in subscribers
    # an action by a municipality user is refused even with a valid form token
    page.goto(f"{console.url}/dead-letters?all=1")
    mine = page.locator("#dead-letters a", has_text="open").first.get_attribute("href")
    page.goto(f"{console.url}{mine}")
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    answer = page.request.post(f"{console.url}{mine}/resend", form={"csrf": csrf})
    assert answer.status == 403
    page.close()

    page = _page(browser, console, "hill-ida")  # and the other way round
    answer = page.goto(f"{console.url}/trail/{rikke_key}")
    assert answer is not None and answer.status == 404
    page.close()


def test_the_console_log_names_who_viewed_what_and_holds_no_cpr(console):
    text = console.log.read_text(errors="replace")
    views = [json.loads(line) for line in text.splitlines() if '"console.view"' in line]
    assert {(v["user"], v["page"]) for v in views} >= {
        ("ops-anna", "flow"),
        ("ops-anna", "dead-letter"),
        ("ops-anna", "trail"),
        ("aarhus-bo", "dead-letters"),
    }
    assert any('"console.action"' in line and '"resend"' in line for line in text.splitlines())
    for p in (console.rikke, console.lars):
        assert p.cpr not in text


def test_every_view_of_a_childs_data_is_on_the_access_log_keyed_by_the_child(console):
    """audit.access: who viewed which page about whom (for the family's right to know who
    looked), stored before the page was sent — read back here as the admin (the console
    itself may only write it)."""
    key = patient_key(console.rikke.cpr, _secret(console.stack))
    lines = [
        (m.key().decode(), json.loads(m.value()))
        for m in read_to_end(client_config(as_admin(console.stack.settings)), AUDIT_ACCESS)
    ]
    about_rikke = {(line["user"], line["page"]) for k, line in lines if k == key}
    assert {("ops-anna", "trail"), ("ops-anna", "search"), ("aarhus-bo", "trail")} <= about_rikke
    assert all(line["patient_key"] == key for k, line in lines if k == key)
    assert ("hill-ida", "trail") not in about_rikke, "a 404 shows nothing, so it is no view"
    assert any(k == "ops-anna" and line["page"] == "flow" for k, line in lines)
    assert all(line["at"] and line["role"] in ("operator", "municipality") for _, line in lines)
    for p in (console.rikke, console.lars):
        assert p.cpr not in str(lines)
    # the family asks who looked: `stafet audit --access --patient`, the CPR on stdin
    answer = subprocess.run(
        [sys.executable, "-m", "stafet.cli", "audit", "--access", "--patient", "--json"],
        env={**os.environ, **settings_env(as_admin(console.stack.settings))},
        input=console.rikke.cpr + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert answer.returncode == 0, answer.stderr
    told = [json.loads(line) for line in answer.stdout.splitlines()]
    assert {(t["user"], t["page"]) for t in told} == about_rikke
    assert [t["at"] for t in told] == sorted(t["at"] for t in told)
    assert console.rikke.cpr not in answer.stdout + answer.stderr
