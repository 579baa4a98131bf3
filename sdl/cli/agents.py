"""``sdl agents``: the agent kinds a campaign can start (the ``sdl.agents`` entry points)."""

from __future__ import annotations

import click

from sdl.cli import main


@main.command("agents")
@click.argument("kind", required=False)
def agents(kind: str | None) -> None:
    """List the installed agent kinds, or show KIND's settings (e.g. planner.bo) with their defaults."""
    from sdl.agents.registry import agent_class, installed_kinds

    if kind is None:
        for name, ep in sorted(installed_kinds().items()):
            click.echo(f"{name:26s} {ep.value}")
        return
    try:
        cls = agent_class(kind)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    provides = f"; provides {', '.join(sorted(cls.provides))}" if cls.provides else ""
    click.echo(f"{kind}: a {cls.role}{provides}")
    for name, field in cls.Settings.model_fields.items():
        default = "required" if field.is_required() else f"default {field.get_default(call_default_factory=True)!r}"
        click.echo(f"  {name:24s} {default}" + (f"  -- {field.description}" if field.description else ""))
