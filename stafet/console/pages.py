"""The console's pages: Flow, Dead letters (with resend and discard), Search, a child's Trail,
Subscribers. Each asks for the request's scope first (which waits for the index to be fresh),
answers what the user may not see as if it did not exist (404), and records the view before it
renders (:func:`stafet.console.view.viewed`)."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from stafet.config import Settings
from stafet.console.records import DeadLetter, masked
from stafet.console.scope import Scope
from stafet.console.view import (
    BEHIND,
    DATA,
    FLASH,
    SETTINGS,
    check_csrf,
    not_found,
    render,
    scope_of,
    user_of,
    viewed,
)
from stafet.cpr import is_valid_cpr
from stafet.errors import StafetError
from stafet.ids import patient_key
from stafet.kafka.topics import DLQ_TOPICS, all_topics
from stafet.logging import get_logger

log = get_logger(__name__)

#: the most rows (messages; patients) a search page shows: the newest messages
SEARCH_ROWS = 500


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
            return _refused(request, shown, "The patient field is not a CPR number (DDMMYY-SSSS).")
        key = patient_key(cpr, request.app[SETTINGS].patient_key_secret.get_secret_value())
    del cpr
    if not (referral_id or message_id or key or since or until):
        return _refused(request, shown, "Give a referral id, a message id, a patient or dates.")
    index = request.app[DATA].index

    def in_range(at: str) -> bool:
        return (not since or at[:10] >= since) and (not until or at[:10] <= until)

    lines = [
        line
        for line in index.audit_lines(
            referral_id=referral_id, message_id=message_id, key=key or "", since=since, until=until
        )
        if scope.sees_audit_line(line.record.topic, line.key)
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
    found = len(rows), len(patients)
    rows, patients = rows[-SEARCH_ROWS:], patients[:SEARCH_ROWS]  # by dates alone: many
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
        found=found,
    )


def _refused(request: web.Request, shown: dict[str, str], error: str) -> web.Response:
    """The search form again with what was typed (never the CPR) and what is wrong (400)."""
    return render(request, "search.html", 400, form=shown, searched=False, error=error)


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
