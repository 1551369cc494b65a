"""The operator console's web application (aiohttp, server-rendered Jinja2 templates): the
password login, health, the routes (:func:`make_app`) and :func:`serve`; the pages are in
:mod:`stafet.console.pages`, what they share in :mod:`stafet.console.view`, the OIDC login in
:mod:`stafet.console.oidc`.

Pages: Flow (processes, topics, dead letters, alerts; reloads itself), Dead letters (with
resend / discard for operators), Search, a child's Trail, Subscribers. Every page view is a
line on ``audit.access`` (stored before the page is sent; keyed by the patient it is about) and
a ``console.view`` log line; every action a ``console.action`` log line naming the user; resend
and discard are also records on ``audit.delivery`` (``dlq-resent`` / ``dlq-discarded``, with the
operator in ``actor``). A CPR number typed into the search form is turned into the patient key
at once and never shown, logged or put in a URL.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable

from aiohttp import web

from stafet.config import Settings
from stafet.console.auth import Sessions, UserStore
from stafet.console.data import ConsoleData
from stafet.console.health import Readiness, kafka_metadata
from stafet.console.oidc import setup_oidc
from stafet.console.pages import (
    dead_letter_page,
    dead_letters,
    discard_action,
    flow,
    index,
    resend_action,
    search,
    search_page,
    subscribers,
    trail,
)
from stafet.console.view import (
    DATA,
    FLASH,
    READINESS,
    SESSIONS,
    SETTINGS,
    TEMPLATES,
    USERS,
    authenticate,
    check_csrf,
    render,
    security_headers,
    templates,
    user_of,
)
from stafet.errors import StafetError
from stafet.logging import get_logger

log = get_logger(__name__)


# --- login ------------------------------------------------------------------------------------


async def login_page(request: web.Request) -> web.Response:
    store = request.app[USERS]
    problem = None
    oidc_only = bool(request.app[SETTINGS].console_oidc_issuer) and not store.users()
    # the details are in the console's log, not here (with OIDC, only a file that is there)
    if (not store.users() and not oidc_only) or (store.problem and store.path.exists()):
        log.warning("console.users_problem", problem=store.problem)
        problem = "The console's users file is missing or invalid: see its log."
    return render(request, "login.html", problem=problem, oidc_only=oidc_only)


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    name, password = str(form.get("name", "")), str(form.get("password", ""))
    store = request.app[USERS]
    user = await asyncio.to_thread(store.authenticate, name, password)
    if user is None:
        log.warning("console.login_failed", user=name[:64])
        await asyncio.sleep(0.5)  # a guesser gets two tries a second per connection
        return render(request, "login.html", 401, error="Wrong name or password")
    cookie = request.app[SESSIONS].issue(user.name)
    log.info("console.login", user=user.name, role=user.role, municipality=user.municipality)
    response = web.HTTPFound("/flow")
    response.set_cookie(
        Sessions.COOKIE,
        cookie,
        httponly=True,
        samesite="Strict",
        max_age=int(request.app[SESSIONS].max_age_s),
        path="/",
        secure=request.app[SETTINGS].console_tls_cert is not None,  # HTTPS: never sent in clear
    )
    raise response


async def logout(request: web.Request) -> web.Response:
    check_csrf(request, await request.post())
    log.info("console.logout", user=user_of(request).name)
    response = web.HTTPFound("/login")
    response.del_cookie(Sessions.COOKIE, path="/")
    raise response


async def healthz(_: web.Request) -> web.Response:
    """Liveness: the event loop answers (public, no data)."""
    return web.json_response({"alive": True, "status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: users to log in and Kafka to read (public, no data; stafet/console/health.py)."""
    ok, body = await request.app[READINESS].ready()
    return web.json_response(body, status=200 if ok else 503)


# --- the application --------------------------------------------------------------------------


def make_app(
    settings: Settings,
    data: ConsoleData | None = None,
    metadata: Callable[[], str] | None = None,
) -> web.Application:
    """The console; ``data`` and ``metadata`` (the readiness probe's Kafka request) for tests."""
    app = web.Application(middlewares=[security_headers, authenticate], client_max_size=64 * 1024)
    configured = settings.console_session_secret
    secret = (
        configured.get_secret_value().encode()
        if configured and configured.get_secret_value().strip()
        else secrets.token_bytes(32)  # loopback only (stafet/safety.py refuses it elsewhere)
    )
    app[SETTINGS] = settings
    app[DATA] = data or ConsoleData(settings)
    app[USERS] = UserStore(settings.console_users_file)
    app[SESSIONS] = Sessions(secret, settings.console_session_max_age_s)
    app[TEMPLATES] = templates()
    app[FLASH] = {}
    app[READINESS] = Readiness(app[USERS], metadata or kafka_metadata(settings))
    app[READINESS].health.add_check("index", app[DATA].index_condition)

    async def start_index(_: web.Application) -> None:
        app[DATA].start()

    async def close_index(_: web.Application) -> None:
        await asyncio.to_thread(app[DATA].close)

    app.on_startup.append(start_index)
    app.on_cleanup.append(close_index)
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/flow", flow)
    app.router.add_get("/dead-letters", dead_letters)
    position = "/dead-letters/{topic:dlq\\.[a-z]+}/{partition}/{offset}"
    app.router.add_get(position, dead_letter_page)
    app.router.add_post(position + "/resend", resend_action)
    app.router.add_post(position + "/discard", discard_action)
    app.router.add_get("/search", search_page)
    app.router.add_post("/search", search)
    app.router.add_get("/trail/{key}", trail)
    app.router.add_get("/subscribers", subscribers)
    setup_oidc(app)  # /oidc/login and /oidc/callback when STAFET_CONSOLE_OIDC_ISSUER is set
    return app


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run the console until ``stop`` is set (or SIGTERM / Ctrl-C): HTTPS when
    ``console_tls_cert`` is set — off loopback it must be, and stafet/safety.py refuses
    anything else before a socket is opened."""
    import signal

    from stafet.safety import refuse_unsafe
    from stafet.tls import server_context

    refuse_unsafe(settings, "console")
    if settings.console_tls_key is not None and settings.console_tls_cert is None:
        raise StafetError(
            "STAFET_CONSOLE_TLS_KEY is set without STAFET_CONSOLE_TLS_CERT: set both for HTTPS "
            "(or neither, on loopback)"
        )
    try:
        tls = server_context(settings.console_tls_cert, settings.console_tls_key)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise StafetError(
            f"the console's TLS files cannot be used (STAFET_CONSOLE_TLS_CERT="
            f"{settings.console_tls_cert}, STAFET_CONSOLE_TLS_KEY={settings.console_tls_key}): "
            f"{exc}"
        ) from exc
    app = make_app(settings)
    users = app[USERS].users()
    if not users:
        log.warning("console.no_users", problem=app[USERS].problem)
    runner = web.AppRunner(app, access_log=None)  # views are logged by console.view
    await runner.setup()
    site = web.TCPSite(runner, settings.console_host, settings.console_port, ssl_context=tls)
    await site.start()
    port = runner.addresses[0][1] if runner.addresses else settings.console_port
    log.info(
        "console.listening",
        url=f"{'https' if tls else 'http'}://{settings.console_host}:{port}/",
        users=len(users),
        processes=",".join(n for n, _ in app[DATA].processes()),
    )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        await stop.wait()
    finally:
        log.info("console.stopping")
        await runner.cleanup()
