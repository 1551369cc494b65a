"""The operator console as it runs: its public /readyz (users, Kafka, the answer cached), and the
real ``serve()`` on an ephemeral port with a certificate from the local Kafka's CA — HTTPS only,
the session cookie ``Secure`` — next to the plain-HTTP console of loopback."""

from __future__ import annotations

import asyncio
import socket
import ssl

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from confluent_kafka import KafkaError, KafkaException

from stafet.config import Settings
from stafet.console.app import READINESS, make_app, serve
from stafet.console.auth import hash_password
from stafet.errors import StafetError
from stafet.kafka.credentials import ensure_tls
from tests.test_console import CannedData, _entry, _run


def test_readyz_is_public_and_names_each_condition_with_kafka_cached(tmp_path):
    calls: list[int] = []
    kafka_up = [False]

    def metadata() -> str:
        calls.append(1)
        if not kafka_up[0]:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "no broker"))
        return "3 broker(s), 120 topic(s)"

    users = tmp_path / "users.toml"
    settings = Settings(_env_file=None, console_users_file=users)

    async def go() -> None:
        app = make_app(settings, CannedData(settings), metadata)
        async with TestClient(TestServer(app)) as client:
            answer = await client.get("/readyz", allow_redirects=False)
            body = await answer.json()
            assert answer.status == 503 and body["status"] == "unavailable"
            assert body["service"] == "console"
            assert body["conditions"]["users"]["ok"] is False
            assert "no users file" in body["conditions"]["users"]["detail"]
            assert body["conditions"]["kafka"]["ok"] is False
            assert "no broker" in body["conditions"]["kafka"]["detail"]
            users.write_text(_entry("ops"), encoding="utf-8")
            kafka_up[0] = True
            again = await (await client.get("/readyz")).json()  # Kafka: the cached answer
            assert again["conditions"]["users"] == {"ok": True, "detail": "1 user(s)"}
            assert again["conditions"]["index"] == {"ok": True, "detail": "7 records (canned)"}
            assert again["conditions"]["kafka"]["ok"] is False and len(calls) == 1
            app[READINESS]._asked_at = -1e9  # the cache has expired
            answer = await client.get("/readyz")
            assert answer.status == 200 and (await answer.json())["status"] == "ok"
            assert len(calls) == 2
            assert (await client.get("/healthz")).status == 200

    asyncio.run(go())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_with_tls_answers_https_only_and_the_cookie_is_secure(tmp_path):
    tls = ensure_tls(tmp_path / "tls")  # the local Kafka's CA and certificate (127.0.0.1)
    users = tmp_path / "users.toml"
    users.write_text(_entry("ops", password=hash_password("ops-password")), encoding="utf-8")
    port = _free_port()
    settings = Settings(
        _env_file=None,
        console_port=port,
        console_users_file=users,
        console_tls_cert=tls.keystore,  # key and chain in one PEM file
        console_session_secret="a-fixed-session-secret",
    )
    trusted = ssl.create_default_context(cafile=str(tls.ca))

    async def go() -> None:
        stop = asyncio.Event()
        serving = asyncio.create_task(serve(settings, stop))
        try:
            base = f"https://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as session:
                for _ in range(100):
                    try:
                        answer = await session.get(f"{base}/healthz", ssl=trusted)
                        break
                    except aiohttp.ClientConnectorError:
                        await asyncio.sleep(0.05)
                assert answer.status == 200 and (await answer.json())["alive"] is True
                login = await session.post(
                    f"{base}/login",
                    data={"name": "ops", "password": "ops-password"},
                    ssl=trusted,
                    allow_redirects=False,
                )
                cookie = login.headers["Set-Cookie"]
                assert login.status == 302 and "Secure" in cookie and "HttpOnly" in cookie
                assert login.headers["Strict-Transport-Security"] == "max-age=31536000"
                with pytest.raises(aiohttp.ClientError):  # plain HTTP on that port: no answer
                    await session.get(f"http://127.0.0.1:{port}/healthz")
                with pytest.raises(aiohttp.ClientConnectorCertificateError):
                    await session.get(f"{base}/healthz")  # the system's CAs do not know it
        finally:
            stop.set()
            await serving

    asyncio.run(go())


def test_without_tls_the_cookie_is_not_secure_and_a_broken_certificate_is_named(tmp_path):
    async def scenario(client: TestClient, _: CannedData) -> None:
        login = await client.post(
            "/login", data={"name": "ops", "password": "ops-password"}, allow_redirects=False
        )
        assert "Secure" not in login.headers["Set-Cookie"]
        assert "Strict-Transport-Security" not in login.headers, "no HSTS over plain HTTP"

    _run(tmp_path, scenario)
    bad = tmp_path / "not-a-cert.pem"
    bad.write_text("not a certificate", encoding="utf-8")
    settings = Settings(_env_file=None, console_tls_cert=bad, console_port=_free_port())
    with pytest.raises(StafetError, match="STAFET_CONSOLE_TLS_CERT=.*not-a-cert.pem"):
        asyncio.run(serve(settings, asyncio.Event()))
    half = Settings(_env_file=None, console_tls_key=bad, console_port=_free_port())
    with pytest.raises(StafetError, match="STAFET_CONSOLE_TLS_KEY is set without"):
        asyncio.run(serve(half, asyncio.Event()))
