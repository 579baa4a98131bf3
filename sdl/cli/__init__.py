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


class StageProgress:
    """Progress of a long command, ``progress(stage, done, total)``: one tqdm bar per stage ("label
    source alloys", "PBE densities", ...), or a line per 10 % (``quiet``, for logs)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self.bars, self.said = quiet, {}, {}

    def __call__(self, what: str, done: int, total: int) -> None:
        if self.quiet:
            tenth = 10 * done // max(total, 1)
            if self.said.get(what) != tenth:
                self.said[what] = tenth
                click.echo(f"{what}: {done}/{total}")
            return
        from tqdm import tqdm

        bar = self.bars.get(what) or self.bars.setdefault(what, tqdm(total=total, desc=what, unit="", leave=True))
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def run_stages(step, quiet: bool, errors: tuple[type[Exception], ...] = (ValueError,)):
    """``step(progress)`` with progress shown; ``errors`` it raises become one line, not a traceback."""
    progress = StageProgress(quiet)
    try:
        return step(progress)
    except errors as e:
        raise click.ClickException(str(e)) from None
    finally:
        progress.close()


# The command groups register themselves on `main` when imported.
from sdl.cli import agents, bench, campaign, causal, generate, instrument, keys, mlip, pinn, policy, transfer, xc  # noqa: E402,F401,I001,E501
