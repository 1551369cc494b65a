"""CLI commands for the party directory (check, show, import a SOR export) and for sending a
dead letter back once the directory is fixed."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from stafet.config import get_settings

directory_option = click.option(
    "--file",
    "path",
    type=click.Path(path_type=Path),
    default=None,
    help="directory file (default STAFET_DIRECTORY_FILE)",
)


def _load(path: Path | None):  # type: ignore[no-untyped-def]
    from stafet.directory import DirectoryError, load_directory

    try:
        return load_directory(path or get_settings().directory_file)
    except DirectoryError as exc:
        raise click.ClickException(str(exc).replace("; ", "\n  ")) from exc


@click.group()
def directory() -> None:
    """The party directory: SOR + EAN of every party stafet addresses."""


@directory.command("check")
@directory_option
def directory_check(path: Path | None) -> None:
    """Validate the directory; list the units MedCom cannot route to (no EAN)."""
    found = _load(path)
    without = [e for e in found.entries.values() if not e.ean]
    for e in without:
        click.echo(
            f"warning: {e.entry} ({e.name}) has no EAN: messages to it are dead-lettered", err=True
        )
    roles: dict[str, int] = {}
    for e in found.entries.values():
        roles[e.role] = roles.get(e.role, 0) + 1
    click.echo(
        f"{found.source}: {len(found)} entries ("
        + ", ".join(f"{n} {role}" for role, n in sorted(roles.items()))
        + f"); {len(without)} without EAN"
    )
    sys.exit(0)


@directory.command("show")
@directory_option
@click.option("--municipality", default=None, help="only this municipality's units (4 digits)")
@click.argument("entry", required=False)
def directory_show(path: Path | None, municipality: str | None, entry: str | None) -> None:
    """One line per entry: id, SOR, EAN, name (or one ENTRY, e.g. municipality/0751/ppr)."""
    from stafet.directory import Unaddressable, describe

    found = _load(path)
    if entry is not None:
        try:
            e = found.entry(entry)
        except Unaddressable as exc:
            raise click.ClickException(str(exc)) from exc
        for key in ("entry", "role", "name", "sor", "ean", "municipality", "ydernummer"):
            click.echo(f"{key:<13} {getattr(e, key) or ''}")
        click.echo(f"{'recipient':<13} {e.recipient}")
        return
    for row in describe(found, municipality=municipality):
        click.echo(f"{row['entry']:<40} {row['sor']:<18} {row['ean']:<14} {row['name']}")


@directory.command("import-sor")
@click.argument("export", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="write the directory here (default: standard output)",
)
def directory_import_sor(export: Path, out: Path | None) -> None:
    """Turn a SOR registry CSV export into a directory file (validated)."""
    from stafet.directory import DirectoryError
    from stafet.sor_import import import_sor

    try:
        toml = import_sor(export)
    except DirectoryError as exc:
        raise click.ClickException(str(exc).replace("; ", "\n  ")) from exc
    if out is None:
        click.echo(toml, nl=False)
    else:
        out.write_text(toml, encoding="utf-8")
        click.echo(f"wrote {out}", err=True)


@click.group()
def dlq() -> None:
    """Dead letters: send one back once its cause is fixed."""


@dlq.command("resend")
@click.argument("topic")
@click.argument("position")
def dlq_resend(topic: str, position: str) -> None:
    """Send the dead letter at TOPIC PARTITION/OFFSET back where it came from (same key, value
    and ids), e.g. after fixing the party directory: stafet dlq resend dlq.referral 3/17."""
    from stafet.errors import StafetError
    from stafet.kafka.dead_letters import resend

    partition, _, offset = position.partition("/")
    if not (partition.isdigit() and offset.isdigit()):
        raise click.BadParameter(f"{position!r} is not PARTITION/OFFSET")
    try:
        target = resend(get_settings(), topic, int(partition), int(offset))
    except StafetError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"sent {topic}/{position} back to {target}")


def register(main: click.Group) -> None:
    main.add_command(directory)
    main.add_command(dlq)
