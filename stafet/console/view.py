"""What every console view shares: the application's keys, the middlewares (security headers,
the login check), the user and scope of a request, rendering, the CSRF check, and the record
of each view on ``audit.access`` (:func:`viewed`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from jinja2 import Environment, PackageLoader

from stafet.config import Settings
from stafet.console.auth import Sessions, User, UserStore
from stafet.console.data import ConsoleData
from stafet.console.health import Readiness
from stafet.console.records import masked
from stafet.console.scope import Scope
from stafet.errors import StafetError
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
    if request.secure:  # served over HTTPS: a browser never tries plain HTTP for a year
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
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


def check_csrf(request: web.Request, form: Any) -> None:
    if not request.app[SESSIONS].csrf_ok(
        request.cookies.get(Sessions.COOKIE), str(form.get("csrf", ""))
    ):
        log.warning("console.csrf_refused", user=user_of(request).name, path=request.path)
        raise web.HTTPForbidden(text="stale or missing form token: reload the page")
