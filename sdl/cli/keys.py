"""``sdl keys new|list|revoke``: the deployment's CurveZMQ keys (see :mod:`sdl.bus.keys`)."""

from __future__ import annotations

from pathlib import Path

import click

from sdl.cli import main

KEYS_DIR = click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), envvar="SDL_KEYS_DIR",
                        required=True, help="The keys directory (or SDL_KEYS_DIR).")


@main.group()
def keys() -> None:
    """Key pairs of the bus: one for the broker, one per instrument PC, operator or controller."""


@keys.command("new")
@click.argument("name")
@KEYS_DIR
def keys_new(name: str, directory: Path) -> None:
    """Make a key pair NAME: its public half goes to the controller's keys directory, its secret half stays here."""
    from sdl.bus import KeyRing, KeyRingError

    try:
        public, secret = KeyRing(directory).create(name)
    except KeyRingError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"public key {public} (copy to the controller's {directory.name}/public/)")
    click.echo(f"secret key {secret} (stays on this machine)")


@keys.command("list")
@KEYS_DIR
def keys_list(directory: Path) -> None:
    """The trusted keys, then the revoked ones."""
    from sdl.bus import KeyRing

    ring = KeyRing(directory)
    for name in ring.names():
        click.echo(name)
    for name in ring.revoked():
        click.echo(f"{name} (revoked)")


@keys.command("revoke")
@click.argument("name")
@KEYS_DIR
def keys_revoke(name: str, directory: Path) -> None:
    """Stop trusting NAME: a broker started afterwards refuses it."""
    from sdl.bus import KeyRing, KeyRingError

    try:
        KeyRing(directory).revoke(name)
    except KeyRingError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"revoked {name}")
