"""The ``sdl`` command line: one module per command group, all registered on :func:`main`."""

from __future__ import annotations

import logging
import sys

import click


def setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sdl")
def main() -> None:
    """Self-driving laboratory controller: plan, run and learn from experiments."""


def assignments(items: tuple[str, ...], param: str, form: str) -> dict[str, float]:
    """NAME=NUMBER arguments as a dict; anything else is a usage error that shows the expected form."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise click.BadParameter(f"{item!r} is not {form}", param_hint=param) from None
        if not sep or not name.strip():
            raise click.BadParameter(f"{item!r} is not {form}", param_hint=param)
    return out


# The command groups register themselves on `main` when imported.
from sdl.cli import agents, bench, campaign, causal, generate, instrument, keys, mlip, pinn, policy, transfer, xc  # noqa: E402,F401,I001,E501
