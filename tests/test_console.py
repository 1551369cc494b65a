"""The operator console without a broker: password hashing, the users file, session cookies,
role scoping, CPR masking, the CLI that makes users — and the web application itself over real
HTTP (aiohttp's test server on loopback) with canned data instead of Kafka."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner

from demo.hl7_builder import Hospital, adt, medcom_test_patients
from stafet.audit import AuditRecord
from stafet.cli import main
from stafet.config import Settings
from stafet.console.app import make_app
from stafet.console.auth import (
    Sessions,
    User,
    UsersFileError,
    UserStore,
    hash_password,
    parse_users,
    user_entry,
    verify_password,
)
from stafet.console.data import ConsoleData
from stafet.console.records import DeadLetter, decode_record, masked
from stafet.console.scope import Scope
from stafet.cpr import find_cprs
from stafet.errors import KafkaWriteError
from stafet.ids import patient_key

PATIENTS = medcom_test_patients()
RIKKE, LARS = PATIENTS["RikkeBerggren"], PATIENTS["LarsBerggren"]  # 0751, 0219
SECRET = "stafet-local-development-only"
RIKKE_KEY, LARS_KEY = patient_key(RIKKE.cpr, SECRET), patient_key(LARS.cpr, SECRET)
OPERATOR = User("ops", "operator")
AARHUS = User("aarhus", "municipality", municipality="0751")


# --- passwords ------------------------------------------------------------------------------


def test_a_password_hash_is_salted_scrypt_and_verifies_only_the_password():
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first.startswith("scrypt$16384$8$1$") and len(first.split("$")) == 6
    assert first != second, "a fresh salt per hash"
    assert "correct horse" not in first
    assert verify_password("correct horse", first) and verify_password("correct horse", second)
    assert not verify_password("correct horsE", first)
    assert not verify_password("", first)


@pytest.mark.parametrize(
    "stored", ["", "plain-text", "scrypt$16384$8$1$salt", "bcrypt$1$2$3$4$5", "scrypt$x$8$1$a$b"]
)
def test_a_malformed_hash_never_matches(stored):
    assert not verify_password("anything", stored)


# --- the users file -------------------------------------------------------------------------


def _entry(name="ops", role="operator", code=None, password=None):
    return user_entry(name, role, password or hash_password("pw-1234567"), code)


def test_the_users_file_gives_each_user_its_role_and_municipality():
    users = parse_users(_entry() + "\n" + _entry("aarhus", "municipality", "0751"))
    assert users["ops"].is_operator and users["ops"].municipality is None
    assert users["aarhus"].role == "municipality" and users["aarhus"].municipality == "0751"
    assert verify_password("pw-1234567", users["aarhus"].password_hash)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[[user]]\nname = "a"\nrole = "operator"\npassword = "hunter2"\n', "never the password"),
        ('[[user]]\nname = "a"\nrole = "municipality"\npassword = "scrypt$1$2$3$4$5"\n', "98"),
        (
            '[[user]]\nname = "a"\nrole = "municipality"\nmunicipality = "9999"\n'
            'password = "scrypt$1$2$3$4$5"\n',
            "98",
        ),
        (
            '[[user]]\nname = "a"\nrole = "operator"\nmunicipality = "0751"\n'
            'password = "scrypt$1$2$3$4$5"\n',
            "no municipality",
        ),
        ('[[user]]\nname = "a"\nrole = "admin"\npassword = "scrypt$1$2$3$4$5"\n', "role"),
        (
            '[[user]]\nname = "a"\nrole = "operator"\npassword = "scrypt$1$2$3$4$5"\nx = 1\n',
            "unknown field",
        ),
        ("[[user]]\nname = 'a'\nrole = 'operator'\npassword = 'scrypt$1$2$3$4$5'\n" * 2, "twice"),
        ("[[user]\n", "not TOML"),
    ],
)
def test_a_bad_users_file_names_the_problem(text, problem):
    with pytest.raises(UsersFileError, match=problem):
        parse_users(text)


def test_the_user_store_rereads_a_changed_file_and_keeps_the_last_good_one(tmp_path: Path):
    path = tmp_path / "users.toml"
    store = UserStore(path)
    assert store.users() == {} and "no users file" in (store.problem or "")
    path.write_text(_entry("ops", password=hash_password("first-pw-123")), encoding="utf-8")
    assert store.authenticate("ops", "first-pw-123") == store.get("ops")
    assert store.authenticate("ops", "wrong") is None
    assert store.authenticate("nobody", "first-pw-123") is None
    path.write_text("[[user]\n", encoding="utf-8")
    import os

    os.utime(path, (1, 1))  # a new modification time, whatever the clock's resolution
    assert "ops" in store.users() and "not TOML" in (store.problem or "")


# --- sessions -------------------------------------------------------------------------------


def test_a_session_cookie_is_signed_expires_and_cannot_be_altered():
    sessions = Sessions(b"k" * 32, max_age_s=60)
    cookie = sessions.issue("ops", now=1000.0)
    assert sessions.user_of(cookie, now=1030.0) == "ops"
    assert sessions.user_of(cookie, now=1061.0) is None, "expired"
    body, mac = cookie.split(".")
    forged_body = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    assert sessions.user_of(f"{forged_body}.{mac}", now=1030.0) is None
    assert sessions.user_of(f"{body}.{mac[:-1]}x", now=1030.0) is None
    assert Sessions(b"other" * 8, 60).user_of(cookie, now=1030.0) is None, "another key"
    for junk in (None, "", "abc", "a.b.c", "!!.!!"):
        assert sessions.user_of(junk) is None
    assert sessions.csrf_ok(cookie, sessions.csrf(cookie))
    assert not sessions.csrf_ok(cookie, sessions.csrf(sessions.issue("ops")))
    assert not sessions.csrf_ok(cookie, "") and not sessions.csrf_ok(None, "x")


# --- scoping --------------------------------------------------------------------------------


def test_an_operator_sees_everything_and_a_municipality_only_its_own():
    ops, aarhus = Scope(OPERATOR), Scope(AARHUS, frozenset({RIKKE_KEY}))
    assert ops.sees_patient(LARS_KEY) and ops.sees_dead_letter("0219", LARS_KEY) and ops.may_act
    assert aarhus.sees_patient(RIKKE_KEY) and not aarhus.sees_patient(LARS_KEY)
    assert not aarhus.sees_patient("") and not aarhus.sees_patient(None)
    assert aarhus.sees_dead_letter("0751", "whoever") and not aarhus.sees_dead_letter("0219", "")
    assert aarhus.sees_dead_letter(None, RIKKE_KEY) and not aarhus.sees_dead_letter(None, LARS_KEY)
    assert not aarhus.sees_dead_letter("0219", RIKKE_KEY), "named for another municipality"
    assert aarhus.sees_topic("out.municipality.0751") and not aarhus.sees_topic("dlq.notify")
    assert aarhus.sees_audit_line("out.referrer", RIKKE_KEY), "what was sent about its resident"
    assert not aarhus.sees_audit_line("out.municipality.0219", LARS_KEY)
    assert aarhus.sees_subscriber({"out.municipality.0751"})
    assert not aarhus.sees_subscriber({"out.municipality.0219", "out.referrer"})
    assert not aarhus.may_act


# --- masking and decoding -------------------------------------------------------------------


def test_masked_hides_every_cpr_form():
    dashed = f"{RIKKE.cpr[:6]}-{RIKKE.cpr[6:]}"
    text = f'PID|1||{RIKKE.cpr}^^^CPR|x {dashed} {{"cpr": "{LARS.cpr}"}}'
    out = masked(text)
    assert find_cprs(out) == [] and RIKKE.cpr not in out and LARS.cpr not in out
    assert out.count("<cpr>") == 3
    assert masked("offset 202612031000 id 4051b60dbbc76b8ab8b141b3ccbf9ef7") == (
        "offset 202612031000 id 4051b60dbbc76b8ab8b141b3ccbf9ef7"
    )


def test_a_raw_hl7_dead_letter_names_its_municipality_and_sender_with_the_cpr_masked():
    raw = adt(
        "A01",
        RIKKE,
        hospital=Hospital("Testsygehus", "600000000000098"),
        control_id="C1",
        visit="V1",
        event_time="202612031000",
    )
    decoded = decode_record("ingest.hl7v2", raw, {})
    assert decoded.municipality == "0751" and decoded.sender == "Testsygehus"
    assert decoded.what == "ADT A01 ADT_A01"
    assert RIKKE.cpr not in decoded.body and "<cpr>" in decoded.body
    out = decode_record("out.municipality.0219", b'{"resourceType": "Bundle"}', {})
    assert out.municipality == "0219"
    dlq = decode_record("", b"{}", {"stafet.recipient": "urn:oid:1.2.208.176.1.2|0461"})
    assert dlq.municipality == "0461"


# --- the CLI --------------------------------------------------------------------------------


def test_add_user_prints_an_entry_the_console_accepts_and_never_the_password():
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["console", "add-user", "aarhus-bo", "--role", "municipality", "--municipality", "0751"],
        input="a-good-password\n",
    )
    assert result.exit_code == 0, result.output
    assert "a-good-password" not in result.stdout
    [user] = parse_users(result.stdout).values()
    assert (user.name, user.role, user.municipality) == ("aarhus-bo", "municipality", "0751")
    assert verify_password("a-good-password", user.password_hash)
    result = runner.invoke(main, ["console", "hash-password"], input="another-password\n")
    assert result.exit_code == 0 and verify_password("another-password", result.stdout.strip())


def test_stafet_console_refuses_to_listen_off_loopback_without_tls(monkeypatch):
    from stafet.config import get_settings

    monkeypatch.setenv("STAFET_CONSOLE_HOST", "0.0.0.0")
    monkeypatch.delenv("STAFET_CONSOLE_TLS_CERT", raising=False)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["console"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1, result.output
    assert "stafet console refuses to start" in result.output
    assert "STAFET_CONSOLE_TLS_CERT" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        (["aarhus", "--role", "municipality"], "a-good-password\n"),  # no municipality
        (["ops", "--role", "operator", "--municipality", "0751"], "a-good-password\n"),
        (["ops", "--role", "operator"], "short\n"),  # under 10 characters
    ],
)
def test_add_user_refuses_what_the_console_would_refuse(args, stdin):
    result = CliRunner().invoke(main, ["console", "add-user", *args], input=stdin)
    assert result.exit_code == 2, result.output


# --- the application over real HTTP, canned data instead of Kafka -----------------------------


@dataclass
class FakeRecord:
    """A Kafka record as the index reads one (confluent-kafka's Message has no constructor)."""

    topic_: str
    offset_: int
    key_: str
    value_: bytes
    headers_: dict[str, str] = field(default_factory=dict)
    ts_ms: int = 1_764_770_000_000
    partition_: int = 0

    def topic(self) -> str:
        return self.topic_

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def key(self) -> bytes:
        return self.key_.encode()

    def value(self) -> bytes:
        return self.value_

    def headers(self) -> list[tuple[str, bytes | None]]:
        return [(k, v.encode()) for k, v in self.headers_.items()]

    def timestamp(self) -> tuple[int, int]:
        return (1, self.ts_ms)


def _dead(offset: int, code: str, key: str) -> FakeRecord:
    """A dead letter on dlq.notify about a notification for municipality ``code``."""
    return FakeRecord(
        "dlq.notify",
        offset,
        key,
        f'{{"cpr": "{RIKKE.cpr}", "municipality_code": "{code}"}}'.encode(),
        {
            "stafet.reason": "NotificationBuildError: SLOR needs encounter.leave_start",
            "stafet.stage": "notify",
            "stafet.recipient": f"urn:oid:1.2.208.176.1.2|{code}",
        },
    )


def _audit(
    offset: int, key: str, action: str, subscriber: str, mid: str, **fields: Any
) -> FakeRecord:
    record = AuditRecord(action, subscriber, mid, **fields)  # type: ignore[arg-type]
    return FakeRecord("audit.delivery", offset, key, record.encode())


def _out(topic: str, offset: int, key: str, mid: str) -> FakeRecord:
    headers = {"stafet.kind": "HospitalNotification", "stafet.message_id": mid}
    return FakeRecord(topic, offset, key, b'{"resourceType": "Bundle"}', headers)


CANNED = [
    _dead(1, "0751", RIKKE_KEY),
    _dead(2, "0219", LARS_KEY),
    _out("out.municipality.0751", 0, RIKKE_KEY, "m-1"),
    _out("out.municipality.0219", 0, LARS_KEY, "m-2"),
    _audit(0, RIKKE_KEY, "published", "municipality-0751", "m-1", topic="out.municipality.0751"),
    _audit(1, LARS_KEY, "delivered", "hill", "m-2", topic="out.municipality.0219"),
    FakeRecord("alerts.operator", 0, "", b'{"at": "", "stage": "notify", "reason": "x"}'),
]


class CannedData(ConsoleData):
    """ConsoleData whose index is fed canned records instead of a follower reading Kafka: what
    the pages and the scoping do, not the reading."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.resent: list[tuple[str, str]] = []
        self.views: list[tuple[str, dict[str, Any]]] = []
        self.recording = True  # False: Kafka does not store the access line
        for record in CANNED:
            self.index.apply(record)

    def start(self) -> None:  # no follower: the records above are all there is
        pass

    def index_condition(self) -> tuple[bool, str]:
        return True, f"{self.index.records} records (canned)"

    async def fresh(self) -> int:
        return 0

    async def record_view(self, line: dict[str, Any], patient_key: str) -> None:
        if not self.recording:
            raise KafkaWriteError("Kafka did not store the record: timed out")
        self.views.append((patient_key, line))

    async def topic_counts(self, topics: list[str] | None = None) -> dict[str, int]:
        return {t: 3 for t in topics or []}

    async def probe(self) -> list[Any]:
        return []

    async def resend(self, dead: DeadLetter, actor: str) -> str:
        self.resent.append((dead.position, actor))
        dead.status, dead.closed_by = "resent", actor
        return "events.encounter"


def _run(tmp_path: Path, scenario) -> None:  # type: ignore[no-untyped-def]
    users = tmp_path / "users.toml"
    users.write_text(
        _entry("ops", password=hash_password("ops-password"))
        + _entry("aarhus", "municipality", "0751", hash_password("aarhus-password")),
        encoding="utf-8",
    )
    settings = Settings(console_users_file=users)
    data = CannedData(settings)

    async def go() -> None:
        async with TestClient(TestServer(make_app(settings, data))) as client:
            await scenario(client, data)

    asyncio.run(go())


async def _login(client: TestClient, name: str, password: str) -> str:
    client.session.cookie_jar.clear()
    answer = await client.post(
        "/login", data={"name": name, "password": password}, allow_redirects=False
    )
    assert answer.status == 302 and answer.headers["Location"] == "/flow"
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    page = await (await client.get("/dead-letters")).text()
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]


def test_pages_need_a_login_and_a_wrong_password_gets_401(tmp_path):
    async def scenario(client: TestClient, _: CannedData) -> None:
        answer = await client.get("/flow", allow_redirects=False)
        assert answer.status == 302 and answer.headers["Location"] == "/login"
        assert answer.headers["Content-Security-Policy"].startswith("default-src 'none'")
        answer = await client.post("/login", data={"name": "ops", "password": "nope"})
        assert answer.status == 401 and "Wrong name or password" in await answer.text()
        client.session.cookie_jar.update_cookies({"stafet_console": "forged.cookie"})
        assert (await client.get("/flow", allow_redirects=False)).status == 302
        assert (await client.post("/dead-letters/dlq.notify/0/1/resend")).status == 403
        assert (await client.get("/healthz")).status == 200

    _run(tmp_path, scenario)


def test_a_municipality_gets_404_for_another_municipalitys_data_and_cannot_act(tmp_path):
    async def scenario(client: TestClient, data: CannedData) -> None:
        csrf = await _login(client, "aarhus", "aarhus-password")
        listing = await (await client.get("/dead-letters")).text()
        assert "dlq.notify/0/1" in listing and "dlq.notify/0/2" not in listing
        assert (await client.get("/dead-letters/dlq.notify/0/1")).status == 200
        assert (await client.get("/dead-letters/dlq.notify/0/2")).status == 404
        assert (await client.get(f"/trail/{LARS_KEY}")).status == 404
        assert (await client.get(f"/trail/{RIKKE_KEY}")).status == 200
        assert (await client.get("/trail/not-a-key")).status == 404
        flow = await (await client.get("/flow")).text()
        assert "out.municipality.0751" in flow and "out.municipality.0219" not in flow
        subscribers = await (await client.get("/subscribers")).text()
        assert "municipality-0751" in subscribers and "hill" not in subscribers
        answer = await client.post("/dead-letters/dlq.notify/0/1/resend", data={"csrf": csrf})
        assert answer.status == 403 and data.resent == []
        found = await client.post("/search", data={"csrf": csrf, "cpr": LARS.cpr})
        page = await found.text()
        assert LARS_KEY not in page and LARS.cpr not in page

    _run(tmp_path, scenario)


def test_an_operator_resends_with_a_form_token_and_a_cpr_is_never_echoed(tmp_path):
    async def scenario(client: TestClient, data: CannedData) -> None:
        csrf = await _login(client, "ops", "ops-password")
        assert (await client.post("/dead-letters/dlq.notify/0/2/resend")).status == 403
        assert (
            await client.post("/dead-letters/dlq.notify/0/2/resend", data={"csrf": "forged"})
        ).status == 403
        answer = await client.post("/dead-letters/dlq.notify/0/2/resend", data={"csrf": csrf})
        assert answer.status == 200 and data.resent == [("dlq.notify/0/2", "ops")]
        assert "Sent back to its origin" in await answer.text()
        again = await client.post("/dead-letters/dlq.notify/0/2/resend", data={"csrf": csrf})
        assert "already resent" in await again.text() and len(data.resent) == 1
        page = await (await client.post("/search", data={"csrf": csrf, "cpr": RIKKE.cpr})).text()
        assert f"/trail/{RIKKE_KEY}" in page and RIKKE.cpr not in page
        bad = await client.post("/search", data={"csrf": csrf, "cpr": "3299991234"})
        assert bad.status == 400 and "3299991234" not in await bad.text()

    _run(tmp_path, scenario)


def test_every_view_is_recorded_before_it_is_shown_and_one_that_cannot_be_is_not_shown(tmp_path):
    async def scenario(client: TestClient, data: CannedData) -> None:
        csrf = await _login(client, "ops", "ops-password")
        assert (await client.get(f"/trail/{RIKKE_KEY}")).status == 200
        await client.post("/search", data={"csrf": csrf, "cpr": LARS.cpr})
        pages = [(key, line["page"], line["user"]) for key, line in data.views]
        assert (RIKKE_KEY, "trail", "ops") in pages, "whose trail, by whom"
        assert (LARS_KEY, "search", "ops") in pages, "a search by CPR: the patient key, no CPR"
        assert ("", "dead-letters", "ops") in pages
        assert LARS.cpr not in str(data.views)
        data.recording = False
        answer = await client.get(f"/trail/{RIKKE_KEY}")
        page = await answer.text()
        assert answer.status == 503 and "could not be recorded" in page
        assert "HospitalNotification" not in page and "m-1" not in page, "nothing of the trail"

    _run(tmp_path, scenario)


def test_a_search_by_dates_alone_shows_a_municipality_only_its_own(tmp_path):
    async def scenario(client: TestClient, _: CannedData) -> None:
        csrf = await _login(client, "aarhus", "aarhus-password")
        page = await (
            await client.post("/search", data={"csrf": csrf, "since": "2000-01-01"})
        ).text()
        assert "m-1" in page and "m-2" not in page, "Hillerød's delivery is not Aarhus's"
        assert f"/trail/{RIKKE_KEY}" in page and LARS_KEY not in page
        csrf = await _login(client, "ops", "ops-password")
        page = await (
            await client.post("/search", data={"csrf": csrf, "until": "2999-12-31"})
        ).text()
        assert "m-1" in page and "m-2" in page and 'id="limited"' not in page
        empty = await client.post("/search", data={"csrf": csrf})
        assert empty.status == 400 and "or dates" in await empty.text()

    _run(tmp_path, scenario)


def test_a_search_matching_more_than_a_page_says_so_and_shows_the_newest(tmp_path, monkeypatch):
    monkeypatch.setattr("stafet.console.pages.SEARCH_ROWS", 1)

    async def scenario(client: TestClient, _: CannedData) -> None:
        csrf = await _login(client, "ops", "ops-password")
        page = await (
            await client.post("/search", data={"csrf": csrf, "since": "2000-01-01"})
        ).text()
        assert 'id="limited"' in page and "2 messages and 2 patients match" in page
        assert page.count('<a href="/trail/') == 1

    _run(tmp_path, scenario)
