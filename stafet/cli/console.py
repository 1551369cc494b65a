"""CLI commands of the operator console: run it, and make the entries of its users file."""

from __future__ import annotations

import asyncio
import sys

import click

from stafet.config import get_settings


def _read_password(confirm: bool) -> str:
    """A password from a hidden prompt (a terminal) or the first line of stdin (a pipe)."""
    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=confirm, err=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 10:
        raise click.BadParameter("at least 10 characters", param_hint="password")
    return str(password)


@click.group(invoke_without_command=True)
@click.pass_context
def console(ctx: click.Context) -> None:
    """The operator console (web): flow, dead letters, search, a child's trail, subscribers.
    Without a subcommand: run it on STAFET_CONSOLE_HOST:STAFET_CONSOLE_PORT (127.0.0.1:9190)
    until SIGTERM / Ctrl-C."""
    if ctx.invoked_subcommand is not None:
        return
    from stafet.console.app import serve
    from stafet.errors import StafetError

    try:
        asyncio.run(serve(get_settings()))
    except StafetError as exc:
        raise click.ClickException(str(exc)) from exc


@console.command("hash-password")
def hash_password_command() -> None:
    """Print the scrypt hash of a password (asked for hidden, or read from stdin) for the
    password field of a users-file entry."""
    from stafet.console.auth import hash_password

    click.echo(hash_password(_read_password(confirm=True)))


@console.command("add-user")
@click.argument("name")
@click.option(
    "--role", type=click.Choice(["operator", "municipality"]), required=True, help="what it sees"
)
@click.option("--municipality", "code", help="the role municipality's 4-digit code, e.g. 0751")
def add_user(name: str, role: str, code: str | None) -> None:
    """Print the [[user]] entry for NAME (password asked for hidden, or read from stdin) to
    append to STAFET_CONSOLE_USERS_FILE; the console reads the file again when it changes."""
    from stafet.console.auth import UsersFileError, check_user, hash_password, user_entry

    try:
        check_user(name, role, code)
    except UsersFileError as exc:
        raise click.UsageError(str(exc)) from exc
    password_hash = hash_password(_read_password(confirm=True))
    click.echo(user_entry(name, role, password_hash, code), nl=False)  # type: ignore[arg-type]
    click.echo(f"# append to {get_settings().console_users_file}", err=True)


def register(main: click.Group) -> None:
    main.add_command(console)
