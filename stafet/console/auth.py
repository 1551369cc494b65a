"""Who may use the console: users from a TOML file, scrypt password hashes, signed session cookies.

The users file (``STAFET_CONSOLE_USERS_FILE``) holds one ``[[user]]`` table per person::

    [[user]]
    name = "ops-anna"
    role = "operator"                 # sees everything, may resend and discard dead letters
    password = "scrypt$16384$8$1$<salt>$<hash>"

    [[user]]
    name = "aarhus-bo"
    role = "municipality"             # sees only its own residents and its own deliveries
    municipality = "0751"
    password = "scrypt$…"

``stafet console add-user`` prints such a table (the password asked for at a hidden prompt);
the file is read again whenever it changes, so adding a user needs no restart. A password is
stored as ``scrypt$N$r$p$<salt b64>$<key b64>`` (hashlib.scrypt, 16 random bytes of salt per
user) and compared in constant time.

A session is a cookie ``<payload b64>.<HMAC-SHA256 b64>``: the payload names the user and when
the login expires; the key is ``STAFET_CONSOLE_SESSION_SECRET`` or random per process. A form
that changes something carries a CSRF token derived from the session (and the cookie is
``SameSite=Strict``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from stafet.errors import StafetError
from stafet.schemas.municipalities import municipality

Role = Literal["operator", "municipality"]
ROLES: tuple[Role, ...] = ("operator", "municipality")

#: scrypt cost: 2^14 × 8 × 1 takes ≈ 16 MiB and some 50 ms — per login, not per request
SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_DKLEN = 2**14, 8, 1, 32
SALT_BYTES = 16


class UsersFileError(StafetError):
    """The users file cannot be used (names the entry and the field)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$<salt>$<key>`` for ``password`` with a fresh random salt."""
    if not password:
        raise ValueError("an empty password")
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    key = hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        dklen=SCRYPT_DKLEN,
        maxmem=64 * 1024 * 1024,
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches the ``scrypt$…`` hash ``stored`` (constant-time compare;
    a malformed hash never matches)."""
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(key)
        got = hashlib.scrypt(
            password.encode("utf-8"),
            salt=_unb64(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
            maxmem=64 * 1024 * 1024,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    password_hash: str = ""
    municipality: str | None = None  # the role municipality: its 4-digit code

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"

    def label(self) -> str:
        return self.name if self.is_operator else f"{self.name} ({self.municipality})"


def user_entry(name: str, role: Role, password_hash: str, municipality_code: str | None) -> str:
    """The ``[[user]]`` table for the users file (what ``stafet console add-user`` prints)."""
    check_user(name, role, municipality_code)
    lines = ["[[user]]", f"name = {json.dumps(name)}", f'role = "{role}"']
    if municipality_code:
        lines.append(f'municipality = "{municipality_code}"')
    lines.append(f'password = "{password_hash}"')
    return "\n".join(lines) + "\n"


def check_user(name: str, role: str, municipality_code: str | None) -> None:
    if not name or not name.isprintable() or len(name) > 64:
        raise UsersFileError(f"user name {name!r}: 1-64 printable characters")
    if role not in ROLES:
        raise UsersFileError(f"user {name}: role {role!r} is not one of {', '.join(ROLES)}")
    if role == "municipality":
        if not municipality_code or municipality(municipality_code) is None:
            raise UsersFileError(
                f"user {name}: role municipality needs municipality = one of the 98 codes "
                f"(got {municipality_code!r})"
            )
    elif municipality_code:
        raise UsersFileError(f"user {name}: an operator has no municipality")


def parse_users(text: str, where: str = "users file") -> dict[str, User]:
    """The users of a users file's text; :class:`UsersFileError` naming the first bad entry."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsersFileError(f"{where}: not TOML: {exc}") from exc
    users: dict[str, User] = {}
    for n, entry in enumerate(data.get("user", []), start=1):
        if not isinstance(entry, dict):
            raise UsersFileError(f"{where}: user entry {n} is not a table")
        unknown = set(entry) - {"name", "role", "municipality", "password"}
        if unknown:
            raise UsersFileError(f"{where}: user entry {n}: unknown field(s) {sorted(unknown)}")
        name, role = str(entry.get("name", "")), str(entry.get("role", ""))
        code = entry.get("municipality")
        check_user(name, role, code)
        password = str(entry.get("password", ""))
        if not password.startswith("scrypt$") or len(password.split("$")) != 6:
            raise UsersFileError(
                f"{where}: user {name}: password must be a scrypt$… hash "
                "(stafet console hash-password), never the password itself"
            )
        if name in users:
            raise UsersFileError(f"{where}: user {name} is listed twice")
        users[name] = User(name, role, password, code)  # type: ignore[arg-type]
    return users


class UserStore:
    """The users file, re-read when its modification time changes; a file that no longer
    parses keeps the previous users (and the error is reported by :attr:`problem`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime: float | None = None
        self._users: dict[str, User] = {}
        self.problem: str | None = None

    def users(self) -> dict[str, User]:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self._users, self._mtime = {}, None
            self.problem = f"no users file at {self.path} (stafet console add-user)"
            return self._users
        if mtime != self._mtime:
            try:
                self._users = parse_users(self.path.read_text(encoding="utf-8"), str(self.path))
                self.problem = None
            except UsersFileError as exc:
                self.problem = str(exc)
            self._mtime = mtime
        return self._users

    def get(self, name: str) -> User | None:
        return self.users().get(name)

    def authenticate(self, name: str, password: str) -> User | None:
        """The user when the password matches, else None (an unknown name costs as much time
        as a wrong password)."""
        user = self.get(name)
        stored = user.password_hash if user else _DUMMY_HASH
        ok = verify_password(password, stored)
        return user if ok and user is not None else None


_DUMMY_HASH = hash_password("not a password", salt=b"\0" * SALT_BYTES)


class Sessions:
    """Signed session cookies (HMAC-SHA256) and the CSRF tokens of their forms."""

    COOKIE = "stafet_console"

    def __init__(self, secret: bytes, max_age_s: float) -> None:
        self._key = hashlib.sha256(b"stafet-console-session|" + secret).digest()
        self.max_age_s = max_age_s

    def _mac(self, data: bytes) -> str:
        return _b64(hmac.new(self._key, data, hashlib.sha256).digest())

    def derived_key(self, purpose: str) -> bytes:
        """32 bytes for another use of the session secret (the OIDC login's flow cookie): the
        same on every replica, and never the session key itself."""
        return hmac.new(self._key, b"derived|" + purpose.encode(), hashlib.sha256).digest()

    def issue(self, user: str, *, now: float | None = None) -> str:
        now = time.time() if now is None else now
        payload = json.dumps(
            {"u": user, "exp": int(now + self.max_age_s), "n": secrets.token_hex(8)},
            separators=(",", ":"),
        ).encode()
        return f"{_b64(payload)}.{self._mac(payload)}"

    def user_of(self, cookie: str | None, *, now: float | None = None) -> str | None:
        """The user name a cookie was issued for, if it is ours, untampered and not expired."""
        if not cookie or cookie.count(".") != 1:
            return None
        body, mac = cookie.split(".")
        try:
            payload = _unb64(body)
        except ValueError:
            return None
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            data = json.loads(payload)
        except ValueError:
            return None
        now = time.time() if now is None else now
        if not isinstance(data, dict) or float(data.get("exp", 0)) < now:
            return None
        user = data.get("u")
        return user if isinstance(user, str) else None

    def csrf(self, cookie: str) -> str:
        return self._mac(b"csrf|" + cookie.encode())

    def csrf_ok(self, cookie: str | None, token: str | None) -> bool:
        return bool(cookie and token) and hmac.compare_digest(self.csrf(cookie or ""), token or "")
