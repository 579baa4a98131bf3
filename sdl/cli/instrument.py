"""``sdl instrument list|serve``: instrument drivers, served without Ray on a lab PC."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click
import yaml

from sdl.cli import main, setup_logging


@main.group()
def instrument() -> None:
    """Instrument drivers."""


@instrument.command("list")
def instrument_list() -> None:
    """List the installed instrument drivers."""
    from sdl.instruments.base import available_drivers

    for name, ep in sorted(available_drivers().items()):
        click.echo(f"{name:24s} {ep.value}")


@instrument.command("serve")
@click.argument("driver")
@click.option("--bus", "bus_address", required=True,
              help="Broker address, e.g. tcp://HOST:PORT (see the campaign's bus.json).")
@click.option("--name", help="Joins as instrument.NAME (default: the driver's name).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Driver setting (YAML value), repeatable: --option noise_std=0.1")
@click.option("--journal", type=click.Path(dir_okay=False, path_type=Path),
              help="Idempotency journal (SQLite) (default: ./sdl-journal-NAME.sqlite).")
@click.option("--capacity", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option("--keys", "keys_dir", type=click.Path(file_okay=False, path_type=Path), envvar="SDL_KEYS_DIR",
              help="Keys directory (or SDL_KEYS_DIR) holding the broker's public key and this PC's secret key.")
@click.option("--key", help="This PC's key name (default: NAME).")
@click.option("-v", "--verbose", count=True)
def instrument_serve(driver: str, bus_address: str, name: str | None, options: tuple[str, ...],
                     journal: Path | None, capacity: int, keys_dir: Path | None, key: str | None, verbose: int) -> None:
    """Serve DRIVER on the bus in this process, without Ray (the path of a lab PC)."""
    from pydantic import ValidationError

    from sdl.agents.instrument_driver import InstrumentDriverAgent, InstrumentDriverSettings, instrument_service
    from sdl.bus import Worker
    from sdl.settings import describe_validation_error

    setup_logging(max(verbose, 1))
    settings = {}
    for option in options:
        setting, sep, value = option.partition("=")
        if not sep or not setting:
            raise click.BadParameter(f"{option!r} is not KEY=VALUE", param_hint="--option")
        settings[setting] = yaml.safe_load(value)
    name = name or driver.replace("_", "-")
    try:
        service = InstrumentDriverAgent(InstrumentDriverSettings(
            driver=driver, options=settings, journal_path=journal or Path(f"sdl-journal-{name}.sqlite")))
    except ValidationError as e:
        raise click.ClickException(f"driver {driver} options: {describe_validation_error(e)}") from None
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    curve = None
    if keys_dir is not None:
        from sdl.bus import CurveKeys, KeyRing, KeyRingError
        from sdl.bus.keys import BROKER_KEY

        ring = KeyRing(keys_dir)
        try:
            curve = CurveKeys(ring.public_key(BROKER_KEY), *ring.key_pair(key or name))
        except KeyRingError as e:
            raise click.ClickException(str(e)) from None
    worker = Worker(service, bus_address, service_name=instrument_service(name), capacity=capacity, curve=curve)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    worker.start()
    click.echo(f"serving {driver} as {instrument_service(name)} on {bus_address} (Ctrl-C to stop)", err=True)
    stop.wait()
    worker.stop()
