"""``sdl run``, ``sdl status``, ``sdl report``, ``sdl ledger export``: a campaign and its ledger."""

from __future__ import annotations

import getpass
import json
import sys
from pathlib import Path

import click

from sdl.cli import main, setup_logging


@main.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--campaign-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the ledger, journals and report go (default: the config's campaign_dir, else runs/<name>).")
@click.option("--resume", is_flag=True, help="Continue the campaign in --campaign-dir after a crash or a stop.")
@click.option("--ray-address", help="Join an existing Ray cluster ('auto' or HOST:PORT) instead of starting one.")
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs).")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def run(config: Path, campaign_dir: Path | None, resume: bool, ray_address: str | None, no_progress: bool, verbose: int) -> None:
    """Run the campaign described by CONFIG (YAML) to its budget or target."""
    from sdl.campaign import Campaign, CampaignError, load_config
    from sdl.ledger import LedgerError
    from sdl.report import write_report
    from sdl.settings import ConfigError

    setup_logging(verbose)
    try:
        cfg = load_config(config)
        campaign = Campaign(cfg, campaign_dir, resume=resume, ray_address=ray_address, progress=not no_progress)
        summary = campaign.run()
    except (ConfigError, CampaignError, LedgerError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"campaign {summary.campaign_id}: {summary.state} ({summary.stop_reason}) in {summary.wall_s:.1f} s")
    click.echo("experiments: " + ", ".join(f"{k} {v}" for k, v in summary.counts.items()))
    if summary.best_value is not None:
        click.echo(f"best {cfg.objective.measurement} = {summary.best_value:.6g} at {_point_text(summary.best_point)}")
    # no held-out labels here: they are oracle calls (DFT in a lab); `sdl report --held-out-per-set N` asks for them
    report = write_report(campaign.campaign_dir, held_out_per_set=0)
    click.echo(f"report: {report}")
    if summary.state == "interrupted":
        click.echo(f"resume with: sdl run {config} --campaign-dir {campaign.campaign_dir} --resume")
        sys.exit(130)


@main.command()
@click.argument("campaign_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def status(campaign_dir: Path) -> None:
    """Show a campaign's progress from its ledger (safe while it runs)."""
    from sdl.ledger import Ledger, LedgerError
    from sdl.report import summarize

    try:
        with Ledger.in_campaign(campaign_dir, readonly=True) as ledger:
            click.echo(summarize(ledger))
    except LedgerError as e:
        raise click.ClickException(str(e)) from None


@main.command()
@click.argument("campaign_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("experiment_id")
@click.argument("decision", type=click.Choice(["rerun", "fail"]))
@click.option("--by", default=getpass.getuser, show_default="your user name",
              help="Who decides (recorded in the ledger with the decision).")
@click.option("--note", default="", help="Why (what you found at the instrument).")
def decide(campaign_dir: Path, experiment_id: str, decision: str, by: str, note: str) -> None:
    """Decide what happens to an experiment held because its instrument was cut off mid-action.

    rerun: the instrument runs the command once more (after you have looked at the specimen);
    fail: it is recorded as failed. A running campaign applies the decision within a second;
    otherwise the next --resume does. Safe while the campaign runs.
    """
    from sdl.ledger import Ledger, LedgerError

    if not Ledger.exists_in(campaign_dir):
        raise click.ClickException(f"{campaign_dir} has no ledger: give a campaign run directory")
    try:
        with Ledger.in_campaign(campaign_dir) as ledger:
            decided = ledger.decide(experiment_id, decision, by=by, note=note)
    except LedgerError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{experiment_id}: {decided.decision} (attempt {decided.attempt} was cut off), decided by {decided.by}")


@main.command()
@click.argument("campaign_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Default: CAMPAIGN_DIR/report.")
@click.option("--held-out-per-set", type=click.IntRange(0, 1000), default=6, show_default=True,
              help="Active learning of the MLIP: held-out structures per set, labelled by the campaign's oracle "
                   "(journalled in the report folder); 0 skips the learning curves.")
def report(campaign_dir: Path, out: Path | None, held_out_per_set: int) -> None:
    """Write PNG plots and a markdown summary of a campaign (for active learning of the MLIP: learning
    curves per held-out set, spread against true error, the cell kinds labelled per round)."""
    from sdl.ledger import LedgerError
    from sdl.report import write_report

    try:
        path = write_report(campaign_dir, out, held_out_per_set=held_out_per_set)
    except LedgerError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"report: {path}")


@main.group()
def ledger() -> None:
    """Work with a campaign's ledger."""


@ledger.command("export")
@click.argument("campaign_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--format", "file_format", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Default: CAMPAIGN_DIR/export.")
def ledger_export(campaign_dir: Path, file_format: str, out: Path | None) -> None:
    """Export one row per experiment as CSV or Parquet."""
    from sdl.ledger import Ledger, LedgerError
    from sdl.ledger.export import export_experiments

    try:
        with Ledger.in_campaign(campaign_dir, readonly=True) as db:
            path = export_experiments(db, out or campaign_dir / "export", file_format)
    except LedgerError as e:
        raise click.ClickException(str(e)) from None
    click.echo(str(path))


@ledger.command("check")
@click.argument("campaign_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def ledger_check(campaign_dir: Path) -> None:
    """Check a campaign's ledger (and its backup): SQLite's integrity, its tables, every document and
    every finished experiment. Exit 1 if anything is wrong. Read-only; safe while the campaign runs."""
    from sdl.ledger import BACKUP_FILENAME, LEDGER_FILENAME
    from sdl.ledger.store import check_ledger

    broken = False
    for name in (LEDGER_FILENAME, BACKUP_FILENAME):
        path = campaign_dir / name
        if not path.exists():
            click.echo(f"{path}: none" + ("" if name == BACKUP_FILENAME else " (not a campaign directory?)"))
            broken |= name == LEDGER_FILENAME
            continue
        problems, counts = check_ledger(path)
        if problems:
            broken |= name == LEDGER_FILENAME
            click.echo(f"{path}: {len(problems)} problems")
            for problem in problems:
                click.echo(f"  {problem}")
        else:
            click.echo(f"{path}: ok; experiments " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if broken:
        raise click.ClickException(f"the ledger of {campaign_dir} is damaged; rebuild it with: "
                                   f"sdl ledger recover {campaign_dir}")


@ledger.command("recover")
@click.argument("campaign_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--journal", "journals", multiple=True, metavar="NAME=PATH",
              help="The journal of an external instrument NAME (its lab PC's --journal file); repeatable.")
def ledger_recover(campaign_dir: Path, journals: tuple[str, ...]) -> None:
    """Rebuild a damaged ledger from its last backup and the instruments' journals.

    An intact ledger is kept and completed from the journals; a damaged one is moved aside (never
    deleted) and replaced by the backup, which the journals then bring up to date. Stop the
    campaign first; resume it afterwards with --resume.
    """
    from sdl.campaign.recovery import RecoveryError, recover
    from sdl.ledger import LedgerError

    extra = {}
    for item in journals:
        name, sep, path = item.partition("=")
        if not sep or not name or not Path(path).is_file():
            raise click.ClickException(f"--journal {item!r}: give NAME=PATH of an existing journal file")
        extra[name] = Path(path)
    try:
        recovery = recover(campaign_dir, extra)
    except (RecoveryError, LedgerError) as e:
        raise click.ClickException(str(e)) from None
    if recovery.damaged_copy:
        click.echo(f"the damaged ledger was moved to {recovery.damaged_copy}")
    click.echo(f"rebuilt from the {recovery.source} and {len(recovery.journals)} journals: "
               f"{recovery.results} results and {recovery.failures} failures recovered, "
               f"{recovery.replanned} experiments re-planned from the journals")
    if recovery.left_for_resume:
        click.echo(f"{len(recovery.left_for_resume)} commands were in flight; --resume reconciles them")


def _point_text(point) -> str:
    parts = dict(point.parameters)
    if point.composition is not None:
        parts.update(point.composition.root)
    return json.dumps({k: round(v, 6) for k, v in parts.items()})
