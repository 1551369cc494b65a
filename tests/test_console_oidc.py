"""The console's OIDC login (stafet/console/oidc.py) against a small real provider served by
aiohttp on loopback inside the test: discovery, a JWKS with an RSA key made here, an authorize
endpoint that redirects back with a code, a token endpoint that checks the PKCE verifier and
the client's secret and issues a signed ID token. The console is driven over real HTTP with
the canned data of tests/test_console.py."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr
from structlog.testing import capture_logs
from yarl import URL

import stafet.console.app
import stafet.console.oidc
from stafet.config import Settings
from stafet.console.app import make_app
from stafet.console.auth import hash_password
from stafet.console.oidc import OidcUserStore, user_from_claims
from tests.test_console import LARS_KEY, RIKKE_KEY, CannedData, _entry

CLIENT_ID, CLIENT_SECRET = "stafet-console", "client-secret-for-the-test"


class FakeProvider:
    """An OIDC provider just big enough for the authorization code flow with PKCE."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "k1"
        self.claims: dict[str, Any] = {}  # what the next ID token says besides the defaults
        self.sign_with: Any = None  # another key: a bad signature
        self.header_kid = ""  # another key id than the published one
        self.codes: dict[str, dict[str, str]] = {}
        self.tokens: list[str] = []
        self.jwks_fetches = 0
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self.discovery)
        app.router.add_get("/jwks", self.jwks)
        app.router.add_get("/authorize", self.authorize)
        app.router.add_post("/token", self.token)
        return app

    async def discovery(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.url,
                "authorization_endpoint": f"{self.url}/authorize",
                "token_endpoint": f"{self.url}/token",
                "jwks_uri": f"{self.url}/jwks",
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                "code_challenge_methods_supported": ["S256"],
            }
        )

    async def jwks(self, _: web.Request) -> web.Response:
        self.jwks_fetches += 1
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return web.json_response({"keys": [{**public, "kid": self.kid, "use": "sig"}]})

    async def authorize(self, request: web.Request) -> web.Response:
        q = request.query
        assert q["response_type"] == "code" and q["client_id"] == CLIENT_ID
        assert q["code_challenge_method"] == "S256" and "openid" in q["scope"].split()
        code = f"code-{len(self.codes)}"
        self.codes[code] = dict(q)
        raise web.HTTPFound(URL(q["redirect_uri"]).with_query(code=code, state=q["state"]))

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        asked = self.codes.pop(str(form["code"]), None)
        user, _, password = base64.b64decode(
            request.headers["Authorization"].removeprefix("Basic ")
        ).partition(b":")
        verifier = str(form["code_verifier"]).encode()
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=")
        if (
            asked is None
            or (user.decode(), password.decode()) != (CLIENT_ID, CLIENT_SECRET)
            or form["grant_type"] != "authorization_code"
            or form["redirect_uri"] != asked["redirect_uri"]
            or challenge.decode() != asked["code_challenge"]
        ):
            return web.json_response({"error": "invalid_grant"}, status=400)
        now = int(time.time())
        claims = {
            "iss": self.url,
            "aud": CLIENT_ID,
            "sub": "8f14e45f-ceea-467f-a0e6-7a8b1c2d3e4f",
            "preferred_username": "anna@region.example",
            "iat": now,
            "exp": now + 300,
            "nonce": asked["nonce"],
            **self.claims,
        }
        token = jwt.encode(
            {k: v for k, v in claims.items() if v is not None},
            self.sign_with or self.key,
            algorithm="RS256",
            headers={"kid": self.header_kid or self.kid},
        )
        self.tokens.append(token)
        return web.json_response({"id_token": token, "access_token": "at-" + token[-20:]})


Scenario = Callable[[TestClient, FakeProvider], Awaitable[None]]


def _run(
    tmp_path: Path, scenario: Scenario, monkeypatch: pytest.MonkeyPatch, *, users_file: bool = True
) -> list[dict]:
    """The scenario against a console that logs in through the fake provider; the log lines."""
    users = tmp_path / "users.toml"
    if users_file:
        users.write_text(_entry("ops", password=hash_password("ops-password")), encoding="utf-8")
    provider = FakeProvider()

    async def go() -> None:
        async with TestServer(provider.app()) as idp:
            provider.url = str(idp.make_url("")).rstrip("/")
            settings = Settings(
                _env_file=None,
                console_users_file=users,
                console_oidc_issuer=provider.url,
                console_oidc_client_id=CLIENT_ID,
                console_oidc_client_secret=SecretStr(CLIENT_SECRET),
            )
            async with TestClient(TestServer(make_app(settings, CannedData(settings)))) as client:
                await scenario(client, provider)

    with capture_logs() as logs:
        for module in (stafet.console.oidc, stafet.console.app):  # loggers bound inside capture
            monkeypatch.setattr(module, "log", structlog.get_logger(module.__name__))
        asyncio.run(go())
    text = json.dumps(logs, default=str)
    for token in provider.tokens:
        for part in token.split("."):
            assert part not in text, "no token text in the log"
    assert CLIENT_SECRET not in text
    return logs


async def _log_in(
    client: TestClient, *, state: str | None = None, nonce: str | None = None
) -> aiohttp.ClientResponse:
    """The browser's way: /oidc/login, the provider's authorize endpoint, back to the callback
    (``state`` / ``nonce``: what an attacker would change on the way)."""
    client.session.cookie_jar.clear()
    start = await client.get("/oidc/login", allow_redirects=False)
    assert start.status == 302, await start.text()
    to_provider = URL(start.headers["Location"])
    if nonce is not None:
        to_provider = to_provider.update_query(nonce=nonce)
    async with aiohttp.ClientSession() as elsewhere:  # the provider is another site
        answer = await elsewhere.get(to_provider, allow_redirects=False)
        assert answer.status == 302
        back = URL(answer.headers["Location"])
    assert back.path == "/oidc/callback"
    if state is not None:
        back = back.update_query(state=state)
    return await client.get(back.path_qs, allow_redirects=False)


def _refusals(logs: list[dict]) -> list[str]:
    return [line["reason"] for line in logs if line["event"] == "console.oidc_refused"]


def test_the_login_page_offers_the_provider_and_keeps_the_password_form(tmp_path, monkeypatch):
    async def scenario(client: TestClient, provider: FakeProvider) -> None:
        page = await (await client.get("/login")).text()
        host = URL(provider.url).host
        assert f'href="/oidc/login">Log in with {host}</a>' in page
        assert 'action="/login"' in page, "the users file has users: the form stays"

    _run(tmp_path, scenario, monkeypatch)


def test_without_a_users_file_the_provider_is_the_only_way_in(tmp_path, monkeypatch):
    async def scenario(client: TestClient, provider: FakeProvider) -> None:
        page = await (await client.get("/login")).text()
        assert 'href="/oidc/login"' in page and 'action="/login"' not in page
        assert "users file is missing" not in page
        provider.claims = {"stafet_role": "operator"}
        assert (await _log_in(client)).status == 200
        assert (await client.get("/flow", allow_redirects=False)).status == 200
        readiness = client.server.app[stafet.console.app.READINESS]  # type: ignore[union-attr]
        ok, detail = readiness.health.ready()[1]["conditions"]["users"].values()
        assert ok and "OIDC through" in detail, "a login is possible: ready as far as users go"

    _run(tmp_path, scenario, monkeypatch, users_file=False)


def test_an_operator_logs_in_through_the_provider(tmp_path, monkeypatch):
    async def scenario(client: TestClient, provider: FakeProvider) -> None:
        provider.claims = {"stafet_role": "operator"}
        answer = await _log_in(client)
        assert answer.status == 200, await answer.text()
        assert 'content="0;url=/flow"' in await answer.text()
        cookie = answer.cookies["stafet_console"]
        assert cookie["httponly"] and cookie["samesite"] == "Strict"
        flow = await client.get("/flow", allow_redirects=False)
        assert flow.status == 200 and "anna@region.example" in await flow.text()
        assert (await client.get(f"/trail/{LARS_KEY}")).status == 200, "sees every municipality"
        assert provider.jwks_fetches == 1
        assert (await _log_in(client)).status == 200 and provider.jwks_fetches == 1, "cached"

    logs = _run(tmp_path, scenario, monkeypatch)
    [login, *_] = [line for line in logs if line["event"] == "console.login"]
    assert login["user"] == "anna@region.example" and login["role"] == "operator"
    assert login["via"] == "oidc" and _refusals(logs) == []


def test_a_municipality_user_sees_only_its_own_residents(tmp_path, monkeypatch):
    async def scenario(client: TestClient, provider: FakeProvider) -> None:
        provider.claims = {
            "stafet_role": ["viewer", "municipality"],  # a list (groups, app roles) will do
            "stafet_municipality": "0751",
            "preferred_username": None,  # the name is then the subject
        }
        assert (await _log_in(client)).status == 200
        flow = await (await client.get("/flow")).text()
        assert "8f14e45f-ceea-467f-a0e6-7a8b1c2d3e4f · municipality 0751" in flow
        assert (await client.get(f"/trail/{RIKKE_KEY}")).status == 200
        assert (await client.get(f"/trail/{LARS_KEY}")).status == 404, "another municipality's"
        answer = await client.post("/dead-letters/dlq.notify/0/1/resend", data={"csrf": "x"})
        assert answer.status == 403

    _run(tmp_path, scenario, monkeypatch)


def _refused(reason: str, change: Callable[[FakeProvider], None] = lambda _: None, **kw: str):
    """A scenario: the login is refused with a 403 page, and no session cookie is set."""

    async def scenario(client: TestClient, provider: FakeProvider) -> None:
        provider.claims = {"stafet_role": "operator"}
        change(provider)
        answer = await _log_in(client, **kw)
        page = await answer.text()
        assert answer.status == 403 and "Login refused" in page, page
        assert "stafet_console" not in answer.cookies
        assert (await client.get("/flow", allow_redirects=False)).status == 302

    return scenario


@pytest.mark.parametrize(
    ("reason", "change", "kw"),
    [
        ("state", lambda _: None, {"state": "forged-state"}),
        ("nonce", lambda _: None, {"nonce": "another-login's-nonce"}),
        ("audience", lambda p: p.claims.update(aud="another-client"), {}),
        ("expired", lambda p: p.claims.update(exp=int(time.time()) - 300), {}),
        ("signature", lambda p: setattr(p, "sign_with", p.other_key), {}),
        ("issuer", lambda p: p.claims.update(iss="https://evil.example"), {}),
        ("unknown_key", lambda p: setattr(p, "header_kid", "k9"), {}),
        ("role", lambda p: p.claims.update(stafet_role=None), {}),
        ("role", lambda p: p.claims.update(stafet_role="admin"), {}),
        ("municipality", lambda p: p.claims.update(stafet_role="municipality"), {}),
        (
            "municipality",
            lambda p: p.claims.update(stafet_role="municipality", stafet_municipality="9999"),
            {},
        ),
    ],
)
def test_a_login_is_refused_with_its_reason(tmp_path, monkeypatch, reason, change, kw):
    logs = _run(tmp_path, _refused(reason, change, **kw), monkeypatch)
    assert _refusals(logs) == [reason]
    assert not [line for line in logs if line["event"] == "console.login"]


def test_a_callback_without_the_browsers_flow_cookie_is_refused(tmp_path, monkeypatch):
    async def scenario(client: TestClient, provider: FakeProvider) -> None:
        start = await client.get("/oidc/login", allow_redirects=False)
        state = URL(start.headers["Location"]).query["state"]
        client.session.cookie_jar.clear()  # another browser, given this login's link
        answer = await client.get(f"/oidc/callback?code=code-0&state={state}")
        assert answer.status == 403 and "not started in this browser" in await answer.text()
        answer = await client.get("/oidc/callback?error=access_denied")
        assert answer.status == 403 and "access_denied" in await answer.text()

    logs = _run(tmp_path, scenario, monkeypatch)
    assert _refusals(logs) == ["no_flow", "provider_error"]


def test_a_new_signing_key_is_fetched_once(tmp_path, monkeypatch):
    async def scenario(client: TestClient, provider: FakeProvider) -> None:
        provider.claims = {"stafet_role": "operator"}
        assert (await _log_in(client)).status == 200 and provider.jwks_fetches == 1
        provider.key, provider.kid = provider.other_key, "k2"  # the provider rotates its key
        assert (await _log_in(client)).status == 200 and provider.jwks_fetches == 2

    _run(tmp_path, scenario, monkeypatch)


def test_a_session_subject_is_no_users_file_name():
    store = OidcUserStore(Path("/nonexistent/users.toml"))
    settings = Settings(_env_file=None)
    user = user_from_claims(
        {"sub": "s", "stafet_role": "municipality", "stafet_municipality": 751}, settings
    )
    assert (user.name, user.role, user.municipality) == ("s", "municipality", "0751")
    assert store.get(stafet.console.oidc.subject(user)) == user
    assert store.get("oidc\x1fadmin\x1f\x1fx") is None
    assert store.authenticate(stafet.console.oidc.subject(user), "anything") is None
