"""Log in to the console through an OpenID Connect provider (a region's Entra ID, Keycloak, …).

Authorization code flow with PKCE (S256), when ``STAFET_CONSOLE_OIDC_ISSUER`` is set:

- ``GET /oidc/login`` reads the provider's discovery document (cached), puts a random state,
  nonce and PKCE verifier into a short-lived cookie (Fernet: encrypted and signed with a key
  derived from the session secret, so any replica can read it and only this browser has it) and
  redirects to the provider's authorization endpoint;
- ``GET /oidc/callback`` checks the state against that cookie, exchanges the code at the token
  endpoint (client_secret_basic, or _post when that is all the provider takes; no secret: a
  public client) and verifies the ID token with PyJWT: signature against the provider's JWKS
  (RS256 / ES256; fetched again once for an unknown key id), ``iss``, ``aud`` = the client id,
  ``exp`` / ``iat`` with a minute's leeway, and the nonce.

The token's claims make the stafet user: name = ``preferred_username`` (else ``sub``), role
from ``console_oidc_role_claim`` (a string or a list holding one of operator | municipality),
municipality from ``console_oidc_municipality_claim`` (one of the 98 codes). That user goes into
the same signed session cookie as a password login (as a subject no users-file name can be,
for its lifetime: a role taken away at the provider counts at the next login). Every refusal
is a page saying why and a ``console.oidc_refused`` log line with its reason, never a token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import jwt
from aiohttp import web
from cryptography.fernet import Fernet, InvalidToken

from stafet.config import Settings
from stafet.console.auth import ROLES, Sessions, User, UserStore
from stafet.console.view import READINESS, SESSIONS, SETTINGS, TEMPLATES, USERS, render
from stafet.errors import StafetError
from stafet.logging import get_logger
from stafet.schemas.municipalities import municipality

log = get_logger(__name__)

FLOW_COOKIE = "stafet_oidc"
FLOW_MAX_AGE_S = 600  # from the redirect to the provider until its callback
DISCOVERY_TTL_S = 3600.0
LEEWAY_S = 60  # clock skew allowed on exp / iat
ALGORITHMS = ["RS256", "ES256"]
#: a session subject for a provider's user: the unit separator is in no users-file name
SUBJECT_PREFIX, SEP = "oidc\x1f", "\x1f"


class OidcRefused(Exception):
    """A login that does not go through: ``reason`` for the log, ``detail`` for the page."""

    def __init__(self, reason: str, detail: str, status: int = 403, **fields: Any) -> None:
        super().__init__(reason)
        self.reason, self.detail, self.status, self.fields = reason, detail, status, fields


def subject(user: User) -> str:
    """The session cookie's user for a provider's user (role and municipality travel signed)."""
    return SEP.join(("oidc", user.role, user.municipality or "", user.name))


class OidcUserStore(UserStore):
    """The users file, and the provider's users of the session cookies this console signed."""

    def get(self, name: str) -> User | None:
        if name.startswith(SUBJECT_PREFIX):
            parts = name.split(SEP, 3)
            if len(parts) == 4 and parts[1] in ROLES:
                return User(parts[3], parts[1], municipality=parts[2] or None)  # type: ignore[arg-type]
            return None
        return super().get(name)

    def authenticate(self, name: str, password: str) -> User | None:
        return None if SEP in name else super().authenticate(name, password)


def user_from_claims(claims: dict[str, Any], settings: Settings) -> User:
    """The stafet user the verified claims describe, or :class:`OidcRefused`."""
    name = str(claims.get("preferred_username") or claims.get("sub") or "")
    if not name or not name.isprintable() or len(name) > 64:
        raise OidcRefused("name", "The provider gave no usable user name (preferred_username/sub).")
    value = claims.get(settings.console_oidc_role_claim)
    values = value if isinstance(value, list) else [value]
    roles = {v for v in values if v in ROLES}
    if len(roles) != 1:
        raise OidcRefused(
            "role",
            f"Your account has no stafet role: the claim {settings.console_oidc_role_claim} must "
            "hold operator or municipality. Ask whoever administers the login provider.",
            user=name,
        )
    role = roles.pop()
    if role == "operator":
        return User(name, "operator")
    code = claims.get(settings.console_oidc_municipality_claim)
    code = f"{code:04d}" if isinstance(code, int) and not isinstance(code, bool) else code
    if not isinstance(code, str) or municipality(code) is None:
        raise OidcRefused(
            "municipality",
            f"Your account has the role municipality but no valid municipality code in the claim "
            f"{settings.console_oidc_municipality_claim} (one of the 98 4-digit codes).",
            user=name,
        )
    return User(name, "municipality", municipality=code)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class Provider:
    """The configured provider: its discovery document and keys (cached), the code exchange and
    the ID token's verification."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.issuer = settings.console_oidc_issuer.rstrip("/")
        self.host = urlsplit(self.issuer).hostname or self.issuer
        self._http: aiohttp.ClientSession | None = None
        self._discovery: tuple[float, dict[str, Any]] | None = None
        self._keys: jwt.PyJWKSet | None = None

    def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def _json(self, method: str, url: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        try:
            async with self.http().request(method, url, **kw) as answer:
                body = await answer.json(content_type=None)
                status = answer.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise OidcRefused(
                "provider_unreachable",
                f"The login provider {self.host} could not be reached. Try again in a moment.",
                502,
                error=type(exc).__name__,
                url=url.split("?")[0],
            ) from exc
        if not isinstance(body, dict):
            raise OidcRefused("provider_answer", f"{self.host} answered nonsense.", 502, url=url)
        return status, body

    async def discovery(self) -> dict[str, Any]:
        """The provider's metadata (``.well-known/openid-configuration``), cached an hour."""
        if self._discovery and time.monotonic() - self._discovery[0] < DISCOVERY_TTL_S:
            return self._discovery[1]
        url = f"{self.issuer}/.well-known/openid-configuration"
        status, meta = await self._json("GET", url)
        needed = ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri")
        if status != 200 or any(not isinstance(meta.get(k), str) for k in needed):
            raise OidcRefused("discovery", f"{self.host} gave no usable OIDC metadata.", 502)
        if str(meta["issuer"]).rstrip("/") != self.issuer:  # OIDC Discovery §4.3
            raise OidcRefused("discovery_issuer", f"{self.host} names another issuer.", 502)
        self._discovery = (time.monotonic(), meta)
        return meta

    async def _key(self, kid: str | None) -> jwt.PyJWK:
        """The JWKS key for ``kid``; the set is fetched again once when it has no such key."""
        fetched = False
        for fresh in (False, True):
            if self._keys is None or (fresh and not fetched):
                fetched = True
                _, body = await self._json("GET", (await self.discovery())["jwks_uri"])
                try:
                    self._keys = jwt.PyJWKSet.from_dict(body)
                except jwt.PyJWTError as exc:
                    raise OidcRefused(
                        "jwks", f"{self.host} published no usable keys.", 502
                    ) from exc
            keys = self._keys.keys
            found = (
                [k for k in keys if k.key_id == kid] if kid else keys[:1] if len(keys) == 1 else []
            )
            if found:
                return found[0]
        raise OidcRefused(
            "unknown_key", "The ID token is signed with a key the provider does not publish."
        )

    async def exchange(self, code: str, verifier: str, redirect_uri: str) -> str:
        """The ID token the token endpoint gives for ``code``."""
        meta = await self.discovery()
        s = self.settings
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
            "client_id": s.console_oidc_client_id,
        }
        headers = {}
        if s.console_oidc_client_secret is not None:
            secret = s.console_oidc_client_secret.get_secret_value()
            methods = meta.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
            if "client_secret_basic" in methods or "client_secret_post" not in methods:
                headers["Authorization"] = aiohttp.encode_basic_auth(  # RFC 6749 §2.3.1
                    quote(s.console_oidc_client_id, safe=""), quote(secret, safe="")
                )
            else:
                form["client_secret"] = secret
        status, body = await self._json("POST", meta["token_endpoint"], data=form, headers=headers)
        token = body.get("id_token")
        if status != 200 or not isinstance(token, str):
            error = str(body.get("error", f"HTTP {status}"))[:64]
            raise OidcRefused(
                "token_endpoint", f"{self.host} refused the login code ({error}).", error=error
            )
        return token

    async def verify(self, id_token: str, nonce: str) -> dict[str, Any]:
        """The ID token's claims, once its signature, issuer, audience, times and nonce hold."""
        meta = await self.discovery()
        client_id = self.settings.console_oidc_client_id
        try:
            header = jwt.get_unverified_header(id_token)
            key = await self._key(header.get("kid"))
            claims: dict[str, Any] = jwt.decode(
                id_token,
                key=key.key,
                algorithms=ALGORITHMS,
                audience=client_id,
                issuer=meta["issuer"],
                leeway=LEEWAY_S,
                options={"require": ["iss", "aud", "exp", "iat", "sub"]},
            )
        except jwt.PyJWTError as exc:
            reason = _REASONS.get(type(exc), "invalid_token")
            raise OidcRefused(reason, f"The provider's ID token was refused ({reason}).") from exc
        aud = claims["aud"]
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != client_id:
            raise OidcRefused("audience", "The ID token was issued to another client (azp).")
        if not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
            raise OidcRefused("nonce", "The ID token does not belong to this login (nonce).")
        return claims


_REASONS: dict[type[Exception], str] = {
    jwt.ExpiredSignatureError: "expired",
    jwt.ImmatureSignatureError: "not_yet_valid",
    jwt.InvalidAudienceError: "audience",
    jwt.InvalidIssuerError: "issuer",
    jwt.InvalidSignatureError: "signature",
    jwt.InvalidAlgorithmError: "algorithm",
    jwt.MissingRequiredClaimError: "missing_claim",
    jwt.InvalidIssuedAtError: "issued_at",
    jwt.DecodeError: "malformed",
}

PROVIDER = web.AppKey("oidc_provider", Provider)


def _fernet(app: web.Application) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(app[SESSIONS].derived_key("oidc-flow")))


def _redirect_uri(request: web.Request) -> str:
    return request.app[SETTINGS].console_oidc_redirect_url or str(
        request.url.with_path("/oidc/callback").with_query(None)
    )


def _secure(request: web.Request) -> bool:
    return request.app[SETTINGS].console_tls_cert is not None


async def oidc_login(request: web.Request) -> web.Response:
    """To the provider, with state, nonce and the PKCE challenge; the rest in a flow cookie."""
    provider = request.app[PROVIDER]
    try:
        meta = await provider.discovery()
    except OidcRefused as refused:
        return _refused(request, refused)
    flow = {
        "state": secrets.token_urlsafe(24),
        "nonce": secrets.token_urlsafe(24),
        "verifier": secrets.token_urlsafe(48),  # 64 characters (RFC 7636: 43-128)
        "redirect_uri": _redirect_uri(request),
    }
    challenge = _b64(hashlib.sha256(flow["verifier"].encode()).digest())
    query = {
        "response_type": "code",
        "client_id": request.app[SETTINGS].console_oidc_client_id,
        "redirect_uri": flow["redirect_uri"],
        "scope": request.app[SETTINGS].console_oidc_scopes,
        "state": flow["state"],
        "nonce": flow["nonce"],
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    endpoint = meta["authorization_endpoint"]
    response = web.HTTPFound(f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(query)}")
    sealed = _fernet(request.app).encrypt(json.dumps(flow).encode()).decode()
    # Lax: the provider's redirect back is a cross-site navigation, which Strict would not send
    response.set_cookie(
        FLOW_COOKIE,
        sealed,
        max_age=FLOW_MAX_AGE_S,
        path="/oidc/",
        httponly=True,
        samesite="Lax",
        secure=_secure(request),
    )
    raise response


async def oidc_callback(request: web.Request) -> web.Response:
    """The provider's answer: state, code exchange, ID token, claims; then a session."""
    try:
        user = await _callback_user(request)
    except OidcRefused as refused:
        return _refused(request, refused)
    sessions = request.app[SESSIONS]
    log.info(
        "console.login", user=user.name, role=user.role, municipality=user.municipality, via="oidc"
    )
    # a page, not a redirect: after the provider's cross-site redirect a browser would not
    # send the SameSite=Strict session cookie with a redirect to /flow
    response = web.Response(
        text='<!doctype html><meta http-equiv="refresh" content="0;url=/flow">'
        '<title>Logged in</title><p>Logged in: <a href="/flow">continue</a>.</p>',
        content_type="text/html",
    )
    response.set_cookie(  # as the password login (app.login) sets it
        Sessions.COOKIE,
        sessions.issue(subject(user)),
        httponly=True,
        samesite="Strict",
        max_age=int(sessions.max_age_s),
        path="/",
        secure=_secure(request),
    )
    response.del_cookie(FLOW_COOKIE, path="/oidc/")
    return response


async def _callback_user(request: web.Request) -> User:
    query = request.query
    if "error" in query:
        error = query["error"][:64]
        raise OidcRefused("provider_error", f"The login provider said no ({error}).", error=error)
    try:
        sealed = request.cookies.get(FLOW_COOKIE, "")
        flow = json.loads(_fernet(request.app).decrypt(sealed, ttl=FLOW_MAX_AGE_S))
    except (InvalidToken, ValueError, TypeError) as exc:
        raise OidcRefused(
            "no_flow",
            "This login was not started in this browser, or took more than 10 minutes: "
            "start again.",
        ) from exc
    if not hmac.compare_digest(str(query.get("state", "")), str(flow.get("state"))):
        raise OidcRefused("state", "The login's state does not match this browser's: start again.")
    code = query.get("code", "")
    if not code:
        raise OidcRefused("no_code", "The login provider sent no code.")
    provider = request.app[PROVIDER]
    token = await provider.exchange(code, flow["verifier"], flow["redirect_uri"])
    claims = await provider.verify(token, flow["nonce"])
    return user_from_claims(claims, request.app[SETTINGS])


def _refused(request: web.Request, refused: OidcRefused) -> web.Response:
    log.warning("console.oidc_refused", reason=refused.reason, **refused.fields)
    response = render(
        request,
        "error.html",
        refused.status,
        message="Login refused" if refused.status == 403 else "Login not possible",
        detail=refused.detail,
    )
    response.del_cookie(FLOW_COOKIE, path="/oidc/")
    return response


def setup_oidc(app: web.Application) -> None:
    """``/oidc/login`` and ``/oidc/callback`` when an issuer is configured (else nothing)."""
    settings = app[SETTINGS]
    if not settings.console_oidc_issuer:
        return
    if not settings.console_oidc_client_id:
        raise StafetError(
            "STAFET_CONSOLE_OIDC_ISSUER is set but STAFET_CONSOLE_OIDC_CLIENT_ID is not: set the "
            "client id the provider gave the console (or unset the issuer)"
        )
    provider = app[PROVIDER] = Provider(settings)
    store = app[USERS] = OidcUserStore(app[USERS].path)
    app[TEMPLATES].globals["oidc_login"] = f"Log in with {provider.host}"

    def users_condition() -> tuple[bool, str]:  # a login is possible without the file
        detail = f"{len(store.users())} user(s) in the file; OIDC through {provider.host}"
        return True, detail + (
            f"; the file has a problem: {store.problem}"
            if store.problem and store.path.exists()
            else ""
        )

    app[READINESS].health.add_check("users", users_condition)

    async def close(_: web.Application) -> None:
        await provider.close()

    app.on_cleanup.append(close)
    app.router.add_get("/oidc/login", oidc_login)
    app.router.add_get("/oidc/callback", oidc_callback)
