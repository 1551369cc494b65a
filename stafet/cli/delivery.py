"""CLI commands for delivery: the subscriber registry, the delivery process, audit and replay."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from stafet.config import get_settings
from stafet.safety import safe_settings


def _registry(path: Path | None):  # type: ignore[no-untyped-def]
    from stafet.subscribers import RegistryError, load_registry

    settings = get_settings()
    try:
        return load_registry(path or settings.subscribers_file)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc


registry_option = click.option(
    "--registry",
    "registry_path",
    type=click.Path(path_type=Path),
    default=None,
    help="registry file (default STAFET_SUBSCRIBERS_FILE)",
)


@click.group()
def subscribers() -> None:
    """The subscriber registry: who receives what, and how."""


@subscribers.command("list")
@registry_option
@click.option("--all", "show_all", is_flag=True, help="include the implicit Kafka readers")
def subscribers_list(registry_path: Path | None, show_all: bool) -> None:
    """One line per subscriber: id, party, channel, topic, recipients, target."""
    from stafet.subscribers import describe

    registry = _registry(registry_path)
    rows = describe(registry.all() if show_all else registry.subscribers)
    for row in rows:
        click.echo(
            f"{row['id']:<24} {row['party']:<18} {row['delivery']:<7} {row['topic']:<26} "
            f"{row['recipients']:<40} {row['target']}"
        )
    if not show_all and registry.defaults.municipalities == "kafka":
        implicit = len(registry.all()) - len(registry.subscribers)
        click.echo(f"(+ {implicit} municipalities reading their own topic over Kafka; --all)")


@subscribers.command("check")
@registry_option
def subscribers_check(registry_path: Path | None) -> None:
    """Validate the registry and what it needs: every REST subscriber's webhook secret set (its
    environment variable or secret file) and a Standard Webhooks ``whsec_`` secret of 24+
    bytes; exit 1 if not ready. Problems name the subscriber, never the secret."""
    registry = _registry(registry_path)
    problems = registry.problems()
    for p in problems:
        click.echo(f"problem: {p}", err=True)
    pushed = registry.pushed()
    click.echo(
        f"{len(registry.all())} subscribers ({len(pushed)} delivered by stafet: "
        f"{sum(s.delivery == 'rest' for s in pushed)} REST, "
        f"{sum(s.delivery == 'letter' for s in pushed)} letter outbox)"
        + ("" if not problems else f"; {len(problems)} problems")
    )
    sys.exit(1 if problems else 0)


@subscribers.command("new-secret")
def subscribers_new_secret() -> None:
    """Print a fresh webhook secret (whsec_ + base64 of 32 random bytes) for a REST subscriber:
    put it in its secret_env variable or file, and give the receiver the same."""
    from stafet.subscribers import new_secret

    click.echo(new_secret())


@click.command()
@registry_option
def deliver(registry_path: Path | None) -> None:
    """Run the delivery sinks (REST hooks, letter outbox), the watcher and the acknowledgement
    tracker until SIGTERM / Ctrl-C. Run two for a standby: one delivers, the other takes over
    within seconds when it stops or dies."""
    from stafet.connectors.sinks.standby import run
    from stafet.errors import StafetError

    registry = _registry(registry_path)
    try:
        asyncio.run(run(safe_settings("deliver"), registry))
    except StafetError as exc:
        raise click.ClickException(str(exc)) from exc


def read_cpr() -> str:
    """A CPR number from a hidden prompt (a terminal) or the first line of stdin (a pipe)."""
    from stafet.cpr import is_valid_cpr

    stdin = sys.stdin
    raw = (
        click.prompt("CPR number", hide_input=True, err=True)
        if stdin.isatty()
        else stdin.readline()
    )
    cpr = raw.strip().replace("-", "")
    if not is_valid_cpr(cpr):  # the value is never echoed
        raise click.BadParameter(
            "not a CPR number (DDMMYY-SSSS or 10 digits)", param_hint="--patient"
        )
    return cpr


@click.command()
@click.option("--referral", "referral_id", help="a referral id")
@click.option(
    "--patient",
    "patient",
    is_flag=True,
    help="a patient: the CPR number is asked for (hidden) or read from stdin, never "
    "taken from the command line (shell history, ps)",
)
@click.option("--message-id", help="one message id")
@click.option("--subscriber", "subscriber_id", help="one subscriber")
@click.option("--events", is_flag=True, help="every audit line, not one row per recipient")
@click.option(
    "--access",
    is_flag=True,
    help="the console's access log instead: who viewed which page about the --patient "
    "(or by --user)",
)
@click.option("--user", help="with --access: one console user's views")
@click.option("--json", "as_json", is_flag=True, help="JSON lines")
def audit(
    referral_id: str | None,
    patient: bool,
    message_id: str | None,
    subscriber_id: str | None,
    events: bool,
    access: bool,
    user: str | None,
    as_json: bool,
) -> None:
    """Who received what about a referral / a patient, and when (delivery and acknowledgement);
    with --access, who looked at a patient's data in the operator console."""
    from dataclasses import asdict

    from stafet.audit import query, summarize

    if access:
        _access(patient, user, as_json)
        return
    if user:
        raise click.UsageError("--user goes with --access")
    if not any([referral_id, patient, message_id, subscriber_id]):
        raise click.UsageError("give --referral, --patient, --message-id or --subscriber")
    cpr = read_cpr() if patient else None
    records = query(
        get_settings(),
        referral_id=referral_id,
        cpr=cpr,
        message_id=message_id,
        subscriber=subscriber_id,
    )
    rows = [asdict(r) for r in records] if events else summarize(records)
    for row in rows:
        if as_json:
            click.echo(json.dumps(row, ensure_ascii=False))
        elif events:
            click.echo(
                f"{row['at']}  {row['action']:<20} {row['subscriber'] or '-':<24} "
                f"{row['kind']:<22} {row['message_id']}  {row['detail']}"
            )
        else:
            click.echo(
                f"{row['subscriber'] or '-':<24} {row['recipient_kind'] or '-':<18} "
                f"{row['kind'] or '-':<22} {row['status']:<13} delivered "
                f"{row['delivered_at'] or '-':<29} ack {row['ack'] or '-'} "
                f"{row['ack_at'] or ''}  {row['message_id']}"
            )
    if not rows:
        click.echo("no audit records match", err=True)


def _access(patient: bool, user: str | None, as_json: bool) -> None:
    """``stafet audit --access``: the console's views of one patient's data, or one user's."""
    from stafet.audit import access_lines

    if not (patient or user):
        raise click.UsageError("with --access give --patient or --user")
    lines = access_lines(get_settings(), cpr=read_cpr() if patient else None, user=user)
    for line in lines:
        if as_json:
            click.echo(json.dumps(line, ensure_ascii=False))
            continue
        what = " ".join(
            f"{k}={v}"
            for k, v in line.items()
            if k not in ("at", "user", "role", "municipality", "page", "patient_key")
        )
        who = f"{line.get('user')} ({line.get('role')} {line.get('municipality') or ''})"
        click.echo(f"{line.get('at')}  {who.replace(' )', ')'):<36} {line.get('page'):<13} {what}")
    if not lines:
        click.echo("no console views match", err=True)


@click.command()
@click.argument("subscriber_id")
@click.option("--since", help="ISO time, e.g. 2026-12-01T08:00:00+01:00")
@click.option(
    "--from-position",
    "positions",
    multiple=True,
    metavar="PARTITION/OFFSET",
    help="replay from these positions (X-Stafet-Position / the audit), e.g. 0/120; "
    "repeat per partition; partitions not named are replayed from the beginning",
)
@click.option("--group", help="for a Kafka subscriber: its consumer group to rewind (stopped)")
@registry_option
def replay(
    subscriber_id: str,
    since: str | None,
    positions: tuple[str, ...],
    group: str | None,
    registry_path: Path | None,
) -> None:
    """Everything a subscriber was sent since a time or a position, again, with the same ids."""
    from stafet.connectors.sinks.replay import replay_pushed, rewind_group

    if bool(since) == bool(positions):
        raise click.UsageError("give either --since or --from-position")
    since_ms = _epoch_ms(since) if since else None
    offsets = _positions(positions) if positions else None
    subscriber = _registry(registry_path).by_id(subscriber_id)
    if subscriber.delivery == "kafka":
        if not group:
            raise click.UsageError(
                f"{subscriber_id} reads Kafka itself: give --group (its "
                "consumer group, stopped) to rewind it"
            )
        moved = rewind_group(get_settings(), subscriber, group, since_ms, offsets)
        click.echo(f"group {group} rewound on {moved} partitions of {subscriber.out_topic}")
        return
    count = asyncio.run(replay_pushed(get_settings(), subscriber, since_ms, offsets))
    click.echo(f"{count} messages replayed to {subscriber_id}")


def _epoch_ms(text: str) -> int:
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise click.BadParameter(f"not an ISO time: {text}") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _positions(values: tuple[str, ...]) -> dict[int, int]:
    out = {}
    for value in values:
        partition, _, offset = value.rpartition("/")
        partition = partition.rsplit("/", 1)[-1]  # accept <topic>/<partition>/<offset> too
        if not partition.isdigit() or not offset.isdigit():
            raise click.BadParameter(f"{value!r} is not PARTITION/OFFSET")
        out[int(partition)] = int(offset)
    return out


@click.group()
def letters() -> None:
    """For the letter / Digital Post service: open the sealed addressee of an outbox letter."""


@letters.command("addressee")
@click.argument("envelope", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def letters_addressee(envelope: Path) -> None:
    """Print the addressee of an outbox envelope (``<message id>.json``) as
    ``<identifier system>|<identifier>`` — a guardian's CPR: run it only where the letter
    service runs, with its STAFET_ADDRESSEE_KEY."""
    from stafet.addressee import AddresseeError, addressee_key, is_sealed, open_addressee

    try:
        recipient = json.loads(envelope.read_text(encoding="utf-8"))["recipient"]
    except (ValueError, KeyError, TypeError) as exc:
        raise click.ClickException(f"{envelope} is not an outbox envelope (no recipient)") from exc
    if not is_sealed(recipient):  # an organisation: in clear already
        click.echo(recipient)
        return
    try:
        system, identifier = open_addressee(recipient, addressee_key(get_settings()))
    except AddresseeError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{system}|{identifier}")


@letters.command("new-key")
def letters_new_key() -> None:
    """Print a new addressee key (for STAFET_ADDRESSEE_KEY: the worker and the letter service)."""
    from cryptography.fernet import Fernet

    click.echo(Fernet.generate_key().decode())


def register(main: click.Group) -> None:
    for command in (subscribers, deliver, audit, replay, letters):
        main.add_command(command)
