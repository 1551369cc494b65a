"""The operator console's web application (aiohttp, server-rendered Jinja2 templates).

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
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from jinja2 import Environment, PackageLoader

from stafet.config import Settings
from stafet.console.auth import Sessions, User, UserStore
from stafet.console.data import ConsoleData
from stafet.console.health import Readiness, kafka_metadata
from stafet.console.records import DeadLetter, masked
from stafet.console.scope import Scope
from stafet.cpr import is_valid_cpr
from stafet.errors import StafetError
from stafet.ids import patient_key
from stafet.kafka.topics import DLQ_TOPICS, all_topics
from stafet.logging import get_logger

log = get_logger(__name__)

DATA = web.AppKey("data", ConsoleData)
USERS = web.AppKey("users", UserStore)
SESSIONS = web.AppKey("sessions", Sessions)
TEMPLATES = web.AppKey("templates", Environment)
SETTINGS = web.AppKey("settings", Settings)
FLASH = web.AppKey("flash", dict)
READINESS = web.AppKey("readiness", Readiness)
BEHIND = web.RequestKey("index_behind", int)  # records the index had still to read
PUBLIC = ("/login", "/healthz", "/readyz", "/oidc/login", "/oidc/callback")
NAV = (
    ("/flow", "Flow"),
    ("/dead-letters", "Dead letters"),
    ("/search", "Search"),
    ("/subscribers", "Subscribers"),
)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


def short_time(iso: str | None) -> str:
    if not iso:
        return "-"
    try:
        return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


def templates() -> Environment:
    env = Environment(loader=PackageLoader("stafet.console", "templates"), autoescape=True)
    env.filters["t"] = short_time
    env.filters["masked"] = masked
    return env


# --- request plumbing -------------------------------------------------------------------------


@web.middleware
async def security_headers(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if isinstance(response, web.HTTPException):
        raise response
    return response  # type: ignore[no-any-return]


@web.middleware
async def authenticate(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path in PUBLIC:
        return await handler(request)  # type: ignore[no-any-return]
    if logged_in(request) is None:
        if request.method != "GET":
            raise web.HTTPForbidden(text="not logged in")
        raise web.HTTPFound("/login")
    return await handler(request)  # type: ignore[no-any-return]


def logged_in(request: web.Request) -> User | None:
    """The user of the request's session cookie (a valid, unexpired one of a listed user)."""
    name = request.app[SESSIONS].user_of(request.cookies.get(Sessions.COOKIE))
    return request.app[USERS].get(name) if name else None


def user_of(request: web.Request) -> User:
    user = logged_in(request)
    if user is None:  # the middleware let no such request through
        raise web.HTTPForbidden(text="not logged in")
    return user


async def scope_of(request: web.Request) -> Scope:
    """The user's scope, once the index holds what Kafka held when the page was asked for."""
    user = user_of(request)
    data = request.app[DATA]
    request[BEHIND] = await data.fresh()
    if user.is_operator:
        return Scope(user)
    return Scope(user, data.index.residents(user.municipality or ""))


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    user = logged_in(request)
    cookie = request.cookies.get(Sessions.COOKIE) if user else None
    html = (
        request.app[TEMPLATES]
        .get_template(template)
        .render(
            user=user,
            nav=NAV,
            path=request.path,
            csrf=request.app[SESSIONS].csrf(cookie) if cookie else "",
            **context,
        )
    )
    return web.Response(text=html, content_type="text/html", status=status)


async def viewed(request: web.Request, page: str, *, patient: str = "", **fields: Any) -> None:
    """Record who viewed what — on ``audit.access`` (durably, before the page is sent: a view
    that cannot be recorded is not shown) and as a ``console.view`` log line. ``patient``: the
    patient key the page is about (the log line has its first 8 characters)."""
    user = user_of(request)
    line = {"user": user.name, "role": user.role, "municipality": user.municipality, "page": page}
    try:
        await request.app[DATA].record_view({**line, "patient_key": patient, **fields}, patient)
    except StafetError as exc:
        log.error("console.view_not_recorded", **line, error=str(exc))
        raise web.HTTPServiceUnavailable(
            text=render(
                request,
                "error.html",
                503,
                message="This view could not be recorded in the access log",
                detail="Kafka did not store the access record; nothing is shown until it can "
                "be. Try again in a moment.",
            ).text,
            content_type="text/html",
        ) from exc
    log.info("console.view", **line, **({"patient_key": patient[:8]} if patient else {}), **fields)


def not_found(request: web.Request, what: str) -> web.HTTPNotFound:
    """The same answer for what does not exist and what this user may not see."""
    user = user_of(request)
    log.warning("console.not_found", user=user.name, role=user.role, what=what)
    return web.HTTPNotFound(
        text=render(request, "error.html", 404, message="Not found").text,
        content_type="text/html",
    )


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


def check_csrf(request: web.Request, form: Any) -> None:
    if not request.app[SESSIONS].csrf_ok(
        request.cookies.get(Sessions.COOKIE), str(form.get("csrf", ""))
    ):
        log.warning("console.csrf_refused", user=user_of(request).name, path=request.path)
        raise web.HTTPForbidden(text="stale or missing form token: reload the page")


async def healthz(_: web.Request) -> web.Response:
    """Liveness: the event loop answers (public, no data)."""
    return web.json_response({"alive": True, "status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: users to log in and Kafka to read (public, no data; stafet/console/health.py)."""
    ok, body = await request.app[READINESS].ready()
    return web.json_response(body, status=200 if ok else 503)


# --- pages ------------------------------------------------------------------------------------


def _topic_order(topic: str) -> tuple[int, str]:
    for n, prefix in enumerate(("ingest.", "events.", "out.", "dlq.", "audit.", "alerts.")):
        if topic.startswith(prefix):
            return n, topic
    return 9, topic


async def flow(request: web.Request) -> web.Response:
    scope = await scope_of(request)
    data = request.app[DATA]
    wanted = all_topics() if scope.everything else [scope.own_topic or ""]
    counts, processes = await asyncio.gather(data.topic_counts(wanted), data.probe())
    everyone = data.index.dead_letters()
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    dlq_rows = []
    for topic in DLQ_TOPICS:
        mine = [
            d
            for d in everyone
            if d.topic == topic and scope.sees_dead_letter(d.municipality, d.key)
        ]
        dlq_rows.append(
            {
                "topic": topic,
                "total": len(mine),
                "open": sum(d.status == "open" for d in mine),
                "last_hour": sum(d.at >= hour_ago for d in mine),
            }
        )
    topics = sorted(
        ((t, n) for t, n in counts.items() if n > 0 or not scope.everything),
        key=lambda item: _topic_order(item[0]),
    )
    empty = sum(1 for n in counts.values() if n == 0) if scope.everything else 0
    if not scope.everything:  # the processes' own series are about every municipality
        for p in processes:
            p.series = []
    await viewed(request, "flow")
    return render(
        request,
        "flow.html",
        processes=processes,
        topics=topics,
        empty=empty,
        dlq_rows=dlq_rows,
        alerts=data.index.alerts(15) if scope.everything else [],
        index=data.index.size() if scope.everything else {},
        behind=request[BEHIND],
        refresh=request.app[SETTINGS].console_refresh_s,
        now=datetime.now(UTC).isoformat(),
    )


async def dead_letters(request: web.Request) -> web.Response:
    scope = await scope_of(request)
    wanted = request.query.get("topic", "")
    if wanted and wanted not in DLQ_TOPICS:
        raise not_found(request, f"dlq {wanted}")
    show_closed = request.query.get("all") == "1"
    rows = [
        d
        for d in request.app[DATA].index.dead_letters()
        if (not wanted or d.topic == wanted)
        and (show_closed or d.status == "open")
        and scope.sees_dead_letter(d.municipality, d.key)
    ]
    await viewed(request, "dead-letters", topic=wanted or "all", rows=len(rows))
    return render(
        request,
        "dead_letters.html",
        rows=rows,
        topics=DLQ_TOPICS,
        wanted=wanted,
        show_closed=show_closed,
    )


async def _dead_letter(request: web.Request, scope: Scope) -> DeadLetter:
    topic = request.match_info["topic"]
    try:
        partition, offset = int(request.match_info["partition"]), int(request.match_info["offset"])
    except ValueError as exc:
        raise not_found(request, "dead letter") from exc
    d = request.app[DATA].index.dead_letter(topic, partition, offset)
    if d is not None and scope.sees_dead_letter(d.municipality, d.key):
        return d
    raise not_found(request, f"dead letter {topic}/{partition}/{offset}")


async def dead_letter_page(request: web.Request) -> web.Response:
    scope = await scope_of(request)
    dead = await _dead_letter(request, scope)
    await viewed(request, "dead-letter", patient=dead.key, dead_letter=dead.position)
    return render(
        request,
        "dead_letter.html",
        d=dead,
        may_act=scope.may_act,
        **request.app[FLASH].pop(request.query.get("flash", ""), {}),
    )


def _back(request: web.Request, dead: DeadLetter, **message: str) -> web.HTTPFound:
    """Back to the dead letter's page with a one-time message (never text from the URL)."""
    flash = request.app[FLASH]
    while len(flash) > 1000:  # never read: a closed tab
        flash.pop(next(iter(flash)))
    token = secrets.token_urlsafe(12)
    flash[token] = message
    return web.HTTPFound(f"/dead-letters/{dead.position}?flash={token}")


async def _open_dead_letter(request: web.Request, action: str) -> tuple[Any, DeadLetter, Any]:
    """What both actions check first: the form's CSRF token, an operator, a dead letter still
    open (a second click, or another operator was quicker, goes back with a message)."""
    form = await request.post()
    check_csrf(request, form)
    scope = await scope_of(request)
    if not scope.may_act:
        log.warning("console.action_refused", user=user_of(request).name, action=action)
        raise web.HTTPForbidden(text="operators only")
    dead = await _dead_letter(request, scope)
    if dead.status != "open":
        raise _back(request, dead, error=f"already {dead.status}")
    return form, dead, user_of(request)


async def resend_action(request: web.Request) -> web.Response:
    _, dead, user = await _open_dead_letter(request, "resend")
    try:
        target = await request.app[DATA].resend(dead, user.name)
    except StafetError as exc:
        log.warning("console.action_failed", user=user.name, action="resend", error=str(exc))
        raise _back(request, dead, error=masked(str(exc))[:300]) from exc
    log.info(
        "console.action", user=user.name, action="resend", dead_letter=dead.position, to=target
    )
    raise _back(request, dead, note="resent")


async def discard_action(request: web.Request) -> web.Response:
    form, dead, user = await _open_dead_letter(request, "discard")
    reason = str(form.get("reason", "")).strip()
    if not reason:
        raise _back(request, dead, error="give a reason to discard")
    await request.app[DATA].discard(dead, user.name, reason)
    log.info("console.action", user=user.name, action="discard", dead_letter=dead.position)
    raise _back(request, dead, note="discarded")


async def search_page(request: web.Request) -> web.Response:
    await viewed(request, "search")
    return render(request, "search.html", form={}, searched=False)


async def search(request: web.Request) -> web.Response:
    form = await request.post()
    check_csrf(request, form)
    scope = await scope_of(request)
    referral_id = str(form.get("referral_id", "")).strip()
    message_id = str(form.get("message_id", "")).strip()
    cpr = str(form.get("cpr", "")).strip().replace("-", "")
    since, until = str(form.get("since", "")).strip(), str(form.get("until", "")).strip()
    shown = {"referral_id": referral_id, "message_id": message_id, "since": since, "until": until}
    key = None
    if cpr:
        if not is_valid_cpr(cpr):  # the value is never echoed
            return render(
                request,
                "search.html",
                400,
                form=shown,
                searched=False,
                error="The patient field is not a CPR number (DDMMYY-SSSS).",
            )
        key = patient_key(cpr, request.app[SETTINGS].patient_key_secret.get_secret_value())
    del cpr
    if not (referral_id or message_id or key):
        return render(
            request,
            "search.html",
            400,
            form=shown,
            searched=False,
            error="Give a referral id, a message id or a patient.",
        )
    index = request.app[DATA].index

    def in_range(at: str) -> bool:
        return (not since or at[:10] >= since) and (not until or at[:10] <= until)

    lines = [
        line
        for line in index.audit_lines(referral_id=referral_id, message_id=message_id, key=key or "")
        if in_range(line.record.at) and scope.sees_audit_line(line.record.topic, line.key)
    ]
    dead = [
        d
        for d in index.dead_letters()
        if (not referral_id or d.decoded.referral_id == referral_id)
        and (not message_id or d.message_id == message_id)
        and (not key or d.key == key)
        and in_range(d.at)
        and scope.sees_dead_letter(d.municipality, d.key)
    ]
    patients = sorted({line.key for line in lines if line.key} | {d.key for d in dead if d.key})
    if key and scope.sees_patient(key) and key not in patients:
        patients.append(key)  # known only from its events: the trail says what there is
    patients = [p for p in patients if scope.sees_patient(p)]
    rows = _audit_rows(lines)
    await viewed(
        request,
        "search",
        patient=key or "",
        referral_id=referral_id or None,
        message_id=message_id or None,
        results=len(rows) + len(dead),
    )
    return render(
        request,
        "search.html",
        form=shown,
        searched=True,
        by_patient=bool(key),
        patients=patients,
        rows=rows,
        dead=dead,
    )


def _audit_rows(lines: list[Any]) -> list[dict[str, Any]]:
    """One row per (subscriber, message): the audit module's summary, keyed and time-ordered."""
    from stafet.audit import summarize

    keys = {line.record.message_id: line.key for line in lines}
    rows = summarize([line.record for line in lines])
    for row in rows:
        row["patient_key"] = keys.get(row["message_id"], "")
    return sorted(rows, key=lambda r: r["delivered_at"] or "")


async def trail(request: web.Request) -> web.Response:
    scope = await scope_of(request)
    key = request.match_info["key"]
    if not (len(key) == 32 and all(c in "0123456789abcdef" for c in key)):
        raise not_found(request, "patient")
    if not scope.sees_patient(key):
        raise not_found(request, f"patient {key[:8]}")
    rows, about = request.app[DATA].index.trail(key)
    if not rows:
        raise not_found(request, f"patient {key[:8]}")
    await viewed(request, "trail", patient=key, rows=len(rows))
    return render(request, "trail.html", key=key, rows=rows, about=about)


async def subscribers(request: web.Request) -> web.Response:
    scope = await scope_of(request)
    channels = _channels(request.app[SETTINGS])
    rows = []
    for sid, s in sorted(request.app[DATA].index.subscribers().items()):
        if not scope.sees_subscriber(s.topics):
            continue
        state = (
            "failing"
            if s.last_failure and s.last_failure > s.last_success
            else "waiting for acks"
            if s.pending
            else "ok"
        )
        rows.append(
            {
                **{k: v for k, v in s.__dict__.items() if k not in ("topics", "pending", "kinds")},
                "id": sid,
                "delivery": channels.get(sid, "kafka" if s.published else "?"),
                "topics": ", ".join(sorted(s.topics)),
                "kinds": ", ".join(sorted(s.kinds)),
                "state": state,
                "pending": len(s.pending),
            }
        )
    await viewed(request, "subscribers", rows=len(rows))
    return render(request, "subscribers.html", rows=rows)


def _channels(settings: Settings) -> dict[str, str]:
    from stafet.subscribers import RegistryError, load_registry

    try:
        return {s.id: s.delivery for s in load_registry(settings.subscribers_file).all()}
    except RegistryError:
        return {}


async def index(_: web.Request) -> web.Response:
    raise web.HTTPFound("/flow")


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
    from stafet.console.oidc import setup_oidc  # it imports this module

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
