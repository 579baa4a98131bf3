"""Campaign reports: what a person looks at after (or during) a run.

``write_report`` reads only the ledger and writes PNG plots (best-so-far, parameter coverage,
instrument timeline) and ``summary.md``; ``summarize`` gives the short text ``sdl status`` prints.
"""

from __future__ import annotations

import collections
import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are files; never open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sdl.ledger import ExperimentRecord, Ledger  # noqa: E402
from sdl.ledger.documents import AgentLost, ModelTrained, RoutePlanned  # noqa: E402
from sdl.objective import ConstraintConfig  # noqa: E402
from sdl.report import active_learning, alloy  # noqa: E402

log = logging.getLogger(__name__)

MAX_COVERAGE_DIMENSIONS = 8


def _objective(ledger: Ledger) -> tuple[str, str, float | None]:
    config = ledger.get_meta("config") or {}
    objective = config.get("objective", {})
    return objective.get("measurement", "y"), objective.get("direction", "minimize"), objective.get("target")


def _values(records: list[ExperimentRecord], measurement: str) -> np.ndarray:
    return np.array([
        r.result.measurements.get(measurement, math.nan) if r.status == "done" and r.result else math.nan for r in records
    ])


def _best_so_far(values: np.ndarray, direction: str) -> np.ndarray:
    filled = np.where(np.isnan(values), np.inf if direction == "minimize" else -np.inf, values)
    best = np.minimum.accumulate(filled) if direction == "minimize" else np.maximum.accumulate(filled)
    return np.where(np.isinf(best), np.nan, best)


def summarize(ledger: Ledger) -> str:
    measurement, direction, target = _objective(ledger)
    counts = ledger.counts()
    finished = [r for r in ledger.experiments(("done", "failed"))]
    values = _values(finished, measurement)
    lines = [
        f"campaign   {ledger.get_meta('campaign_id')}",
        f"state      {ledger.get_meta('state')} ({ledger.get_meta('stop_reason') or 'running'})",
        "experiments " + ", ".join(f"{k} {v}" for k, v in counts.items()),
    ]
    if np.isfinite(values).any():
        i = int(np.nanargmin(values) if direction == "minimize" else np.nanargmax(values))
        lines.append(f"best       {measurement} = {values[i]:.6g} ({direction}) in {finished[i].experiment_id}")
    if target is not None:
        lines.append(f"target     {target}")
    failures = collections.Counter(r.error_code for r in finished if r.status == "failed")
    if failures:
        lines.append("failures   " + ", ".join(f"{code} {n}" for code, n in failures.most_common()))
    lost = collections.Counter((d.service, d.reason) for d in ledger.documents(AgentLost))
    if lost:
        lines.append("agents lost " + ", ".join(f"{service} ({reason}) x{n}" for (service, reason), n in lost.items()))
    interrupted = {r.experiment_id for r in ledger.experiments(("interrupted",))}
    held = [pair for experiment_id, pair in ledger.decisions().items() if experiment_id in interrupted]
    for interruption, decided in held:
        what = (f"decided {decided.decision} by {decided.by}, applied when the campaign runs" if decided else
                f"awaits a decision: sdl decide CAMPAIGN_DIR {interruption.experiment_id} rerun|fail")
        lines.append(f"held       {interruption.experiment_id} at {interruption.instrument} (attempt "
                     f"{interruption.attempt} cut off): {what}")
    lines += ["latest"] + [f"  {d.line()}" for d in ledger.documents(last=5)]
    return "\n".join(lines)


def write_report(campaign_dir: str | Path, out: str | Path | None = None, *, held_out_per_set: int = 6) -> Path:
    """Plots and summary.md in ``out`` (default: CAMPAIGN_DIR/report). An active-learning campaign of
    the MLIP gets its page too, with ``held_out_per_set`` structures per held-out set labelled by its
    oracle (0: no learning curves, for an oracle too costly for a report)."""
    campaign_dir = Path(campaign_dir)
    out = Path(out) if out else campaign_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    with Ledger.in_campaign(campaign_dir, readonly=True) as ledger:
        measurement, direction, target = _objective(ledger)
        records = ledger.experiments()
        finished = [r for r in records if r.status in ("done", "failed")]
        finished.sort(key=lambda r: r.finished_at_unix_s or 0.0)
        recommendation = ledger.get_meta("recommendation") or {}
        _plot_best(finished, measurement, direction, target, recommendation, out / "best_so_far.png")
        _plot_coverage(finished, measurement, out / "coverage.png")
        _plot_timeline(finished, out / "timeline.png")
        config = ledger.get_meta("config") or {}
        extra = _constraint_page(config, finished) + _pareto_page(config, finished, out)
        extra += _routes_page(ledger, config, finished, measurement, out)
        extra += _alloy_pages(config, finished, measurement, direction, out)
        if active_learning.is_active_learning(config):
            extra += active_learning.page(config, finished, ledger.documents(ModelTrained), out,
                                          held_out_per_set=held_out_per_set)
        (out / "summary.md").write_text(_markdown(ledger, finished, measurement, direction, recommendation) + extra)
    return out / "summary.md"


def _planner_constraint(config: dict) -> ConstraintConfig | None:
    """The measured constraint the campaign's planner was given, if any."""
    constraint = ((config.get("planner") or {}).get("settings") or {}).get("constraint")
    return ConstraintConfig.model_validate(constraint) if constraint else None


def _composition_label(record: ExperimentRecord) -> str:
    """``Ni69.1 Al12.4 ...``: the design point's mole fractions in per cent, for report tables."""
    composition = record.point.composition.root if record.point.composition is not None else {}
    return " ".join(f"{e}{100 * x:.1f}" for e, x in composition.items())


def _constraint_page(config: dict, records) -> str:
    """Share of finished experiments that broke the planner's measured constraint."""
    c = _planner_constraint(config)
    if c is None:
        return ""
    verdicts = [c.satisfied(r.result.measurements) for r in records if r.status == "done" and r.result]
    known = [v for v in verdicts if v is not None]
    if not known:
        return ""
    bounds = " and ".join(f"{k.replace('_', ' ')} {v}" for k, v in (("at_least", c.at_least), ("at_most", c.at_most))
                          if v is not None)
    return (f"\n- infeasible experiments (sum of {', '.join(c.measurements)} not {bounds}): "
            f"{known.count(False)} of {len(known)} ({known.count(False) / len(known):.0%})\n")


def _routes_page(ledger: Ledger, config: dict, records, measurement: str, out: Path) -> str:
    """The heat-treatment route the process planner chose for each alloy, where it came from (policy,
    textbook, as cast) and why, the hardness it expected and what was measured; and the routes by use."""
    if not config.get("process_planner"):
        return ""
    planned = {d.experiment_id: d for d in ledger.documents(RoutePlanned)}
    done = [r for r in records if r.status == "done" and r.result]
    if not done:
        return ""

    def holds(r: ExperimentRecord) -> str:
        return " → ".join(f"{s.temperature_k:.0f} K {s.duration_s / 3600:g} h" for s in r.process
                          if s.operation != "quench") or "as cast"

    groups: dict[str, list[float]] = {}
    for r in done:
        groups.setdefault(holds(r), []).append(r.result.measurements.get(measurement, float("nan")))
    sources = [planned[r.experiment_id].source for r in done if r.experiment_id in planned]
    lines = ["", "## Heat-treatment routes (planner.process)", ""]
    if sources:
        counts = ", ".join(f"{s} {sources.count(s)}" for s in ("policy", "textbook", "as_cast") if s in sources)
        lines += [f"Chosen per alloy as the best expected return of the policy's route, the textbook route and "
                  f"leaving it as cast: {counts}.", "", "![routes](routes.png)", ""]
    lines += [f"| route (holds, each water-quenched) | experiments | median {measurement} |", "|---|---|---|"]
    for route, values in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"| {route} | {len(values)} | {np.nanmedian(values):.4g} |")
    lines += ["", "### Route per alloy", "",
              f"| experiment | composition | route | source | expected {measurement} | measured | why |",
              "|---|---|---|---|---|---|---|"]
    for r in done:
        doc = planned.get(r.experiment_id)
        expected = f"{doc.expected_hardness_hv:.0f}" if doc and doc.expected_hardness_hv is not None else "–"
        lines.append(f"| {r.experiment_id} | {_composition_label(r)} | {holds(r)} | {doc.source if doc else '–'} | {expected} | "
                     f"{r.result.measurements.get(measurement, float('nan')):.4g} | "
                     f"{(doc.note.split(';')[0] if doc else '')} |")
    if sources:
        _plot_routes(done, planned, measurement, out / "routes.png")
    return "\n".join(lines) + "\n"


def _plot_routes(records, planned: dict, measurement: str, path: Path) -> None:
    """Measured against expected hardness per alloy, by the source of its route."""
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    for source, color, marker in (("policy", "C1", "o"), ("textbook", "C2", "s"), ("as_cast", "C7", "^")):
        pairs = [(planned[r.experiment_id].expected_hardness_hv, r.result.measurements.get(measurement))
                 for r in records if r.experiment_id in planned and planned[r.experiment_id].source == source
                 and planned[r.experiment_id].expected_hardness_hv is not None]
        if pairs:
            x, y = np.array(pairs, dtype=float).T
            ax.scatter(x, y, color=color, marker=marker, label=f"{source} ({len(pairs)})", alpha=0.8)
    lo, hi = ax.get_xlim()
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="measured = expected")
    ax.set_xlabel(f"expected {measurement} of the chosen route (twin kinetics)")
    ax.set_ylabel(f"measured {measurement}")
    ax.set_title("Heat-treatment routes: what the process planner expected")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pareto_page(config: dict, records, out: Path) -> str:
    """Pareto front of the first two objectives when the planner optimised several. Only experiments that
    met the planner's constraint can be on it: a brittle alloy that is hard and cheap is no option for the
    lab, so it is drawn apart and dominates nothing."""
    settings = (config.get("planner") or {}).get("settings") or {}
    extra = settings.get("extra_objectives") or []
    if not extra:
        return ""
    objectives = [config.get("objective", {}), extra[0]]
    names = [o.get("measurement", "y") for o in objectives]
    signs = np.array([1.0 if o.get("direction") == "maximize" else -1.0 for o in objectives])
    rows = [r for r in records if r.status == "done" and r.result and all(n in r.result.measurements for n in names)]
    if not rows:
        return ""
    constraint = _planner_constraint(config)
    feasible = np.array([constraint is None or constraint.satisfied(r.result.measurements) is not False for r in rows])
    if not feasible.any():
        return ""
    y = np.array([[r.result.measurements[n] for n in names] for r in rows])
    import torch
    from botorch.utils.multi_objective.pareto import is_non_dominated

    front = np.zeros(len(rows), dtype=bool)
    front[feasible] = is_non_dominated(torch.as_tensor(y[feasible] * signs)).numpy()
    fig, ax = plt.subplots(figsize=(6.0, 4.6))
    order = np.arange(len(rows))
    scatter = ax.scatter(y[feasible, 0], y[feasible, 1], c=order[feasible], cmap="viridis", vmin=0,
                         vmax=max(len(rows) - 1, 1), s=22, label="experiments (colour: order)")
    if not feasible.all():
        ax.scatter(y[~feasible, 0], y[~feasible, 1], marker="x", color="0.4", s=28,
                   label=f"infeasible ({(~feasible).sum()})")
    best = y[front][np.argsort(y[front][:, 0])]
    ax.step(best[:, 0], best[:, 1], where="post", color="crimson", lw=1.5)
    ax.scatter(best[:, 0], best[:, 1], facecolors="none", edgecolors="crimson", s=70, label=f"Pareto front ({front.sum()})")
    fig.colorbar(scatter, ax=ax, label="experiment number")
    ax.set_xlabel(f"{names[0]} ({objectives[0].get('direction')})")
    ax.set_ylabel(f"{names[1]} ({objectives[1].get('direction')})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=110)
    plt.close(fig)
    lines = [f"\n## Pareto front\n\n{front.sum()} non-dominated of {feasible.sum()} feasible experiments"
             f"{f' ({(~feasible).sum()} infeasible left out)' if not feasible.all() else ''}.\n",
             f"| {names[0]} | {names[1]} | composition |", "|---|---|---|"]
    for i in np.flatnonzero(front)[np.argsort(y[front][:, 0])]:
        lines.append(f"| {y[i, 0]:.4g} | {y[i, 1]:.4g} | {_composition_label(rows[i])} |")
    return "\n".join(lines) + "\n\n![Pareto front](pareto.png)\n"


def _alloy_pages(config, records, measurement, direction, out: Path) -> str:
    """Phase map and best-specimen pages when the campaign ran on the simulated alloy lab."""
    if alloy.furnace_options(config) is None:
        return ""
    from sdl.env.calphad import CalphadError  # pycalphad is heavy; only alloy reports need it

    lines = ["", "## Alloy", ""]
    try:
        caption = alloy.plot_phase_map(config, records, measurement, out / "phase_map.png")
    except CalphadError as e:  # the campaign's data outside what the CALPHAD tables cover: say so, draw the rest
        log.warning("phase map not drawn: %s", e)
        caption, lines = None, [*lines, f"_Phase map not drawn: {e}._", ""]
    if caption:
        lines += [f"![{caption}](phase_map.png)", ""]
    done = [r for r in records if r.status == "done" and measurement in r.result.measurements]
    if done:
        pick = max if direction == "maximize" else min
        best = pick(done, key=lambda r: r.result.measurements[measurement])
        lines += alloy.plot_best_specimen(best, measurement, out / "best_specimen.png")
        lines += ["", "![best specimen](best_specimen.png)", ""]
    return "\n".join(lines)


def _plot_best(records, measurement, direction, target, recommendation, path: Path) -> None:
    values = _values(records, measurement)
    n = np.arange(1, len(records) + 1)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ok = np.isfinite(values)
    ax.scatter(n[ok], values[ok], s=14, color="tab:blue", alpha=0.6, label=f"measured {measurement}")
    ax.step(n, _best_so_far(values, direction), where="post", color="tab:red", lw=2, label="best so far")
    failed = [i + 1 for i, r in enumerate(records) if r.status == "failed"]
    if failed and ok.any():
        ax.scatter(failed, np.full(len(failed), np.nanmin(values) if direction == "maximize" else np.nanmax(values)),
                   marker="x", color="k", label="failed")
    if target is not None:
        ax.axhline(target, color="tab:green", ls="--", label=f"target {target:g}")
    optimum = recommendation.get("optimal_value")
    if optimum is not None:
        ax.axhline(optimum, color="0.4", ls=":", label=f"true optimum {optimum:.4g}")
    finite = values[ok]
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 100:
        ax.set_yscale("log")  # progress near the optimum is invisible on a linear scale
    ax.set_xlabel("experiment (in order of completion)")
    ax.set_ylabel(measurement)
    ax.set_title(f"Best {measurement} so far ({direction})")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _coordinates(record: ExperimentRecord) -> dict[str, float]:
    coords = dict(record.point.parameters)
    if record.point.composition is not None:
        coords.update({f"x({e})": v for e, v in record.point.composition.root.items()})
    return coords


def _plot_coverage(records, measurement, path: Path) -> None:
    if not records:
        return
    names = list(_coordinates(records[0]))[:MAX_COVERAGE_DIMENSIONS]
    data = np.array([[_coordinates(r).get(k, math.nan) for k in names] for r in records])
    values = _values(records, measurement)
    k = len(names)
    if k == 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.scatter(data[:, 0], values, s=14)
        ax.set_xlabel(names[0])
        ax.set_ylabel(measurement)
    else:
        size = max(4.5, min(2.2 * (k - 1), 14))
        fig, axes = plt.subplots(k - 1, k - 1, figsize=(size + 1.5, size), squeeze=False)
        for row in range(1, k):
            for col in range(k - 1):
                ax = axes[row - 1, col]
                if col >= row:
                    ax.axis("off")
                    continue
                sc = ax.scatter(data[:, col], data[:, row], c=values, s=10, cmap="viridis")
                failed = np.isnan(values)
                ax.scatter(data[failed, col], data[failed, row], marker="x", color="red", s=14)
                if row == k - 1:
                    ax.set_xlabel(names[col])
                if col == 0:
                    ax.set_ylabel(names[row])
        fig.colorbar(sc, ax=axes, label=measurement, shrink=0.8)
    fig.suptitle("Parameter coverage\n(colour: measured value; red x: failed)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_timeline(records, path: Path) -> None:
    timed = [r for r in records if r.dispatched_at_unix_s and r.finished_at_unix_s and r.instrument]
    if not timed:
        return
    t0 = min(r.dispatched_at_unix_s for r in timed)
    instruments = sorted({r.instrument for r in timed})
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(instruments) + 1.5))
    for r in timed:
        y = instruments.index(r.instrument)
        color = "tab:blue" if r.status == "done" else "tab:red"
        ax.barh(y, r.finished_at_unix_s - r.dispatched_at_unix_s, left=r.dispatched_at_unix_s - t0, color=color,
                alpha=0.7, edgecolor="white", height=0.6)
    ax.set_yticks(range(len(instruments)), instruments)
    ax.set_xlabel("wall time since first dispatch (s)")
    ax.set_title("Instrument timeline (red: failed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(ledger: Ledger, records, measurement, direction, recommendation) -> str:
    counts = ledger.counts()
    wall_s = ledger.get_meta("wall_s", 0.0) or 0.0
    values = _values(records, measurement)
    lines = [
        f"# Campaign {ledger.get_meta('campaign_id')}",
        "",
        f"- state: **{ledger.get_meta('state')}** (stop: {ledger.get_meta('stop_reason')})",
        "- experiments: " + ", ".join(f"{k} {v}" for k, v in counts.items()),
        f"- wall time: {wall_s:.1f} s"
        + (f" ({len(records) / wall_s:.2f} experiments/s)" if wall_s > 0 and records else ""),
    ]
    lab_time_s = sum(r.result.lab_time_s for r in records if r.result is not None)
    if lab_time_s:
        lines.append(f"- lab time of the finished specimens (simulated for simulated instruments): "
                     f"{lab_time_s / 3600:.1f} h ({lab_time_s / 86400:.1f} instrument-days)")
    if np.isfinite(values).any():
        i = int(np.nanargmin(values) if direction == "minimize" else np.nanargmax(values))
        coords = ", ".join(f"{k}={v:.4g}" for k, v in _coordinates(records[i]).items())
        lines.append(f"- best measured {measurement}: **{values[i]:.6g}** ({direction}) in `{records[i].experiment_id}` at {coords}")
    if recommendation.get("recommended"):
        rec = recommendation["recommended"]
        coords = ", ".join(f"{k}={v:.4g}" for k, v in {**rec.get("parameters", {}), **(rec.get("composition") or {})}.items())
        lines.append(
            f"- surrogate recommendation (best posterior mean over {recommendation['n_train']} observations): {coords}; "
            f"predicted {recommendation['recommended_mean']:.4g} ± {recommendation['recommended_std']:.2g}"
        )
    if "true_values" in recommendation:
        true_value = recommendation["true_values"].get(measurement)
        optimum = recommendation.get("optimal_value")
        regret = abs(true_value - optimum) if true_value is not None and optimum is not None else None
        lines.append(f"- true {measurement} of the recommendation: {true_value:.6g}"
                     + (f"; simple regret {regret:.4g} (optimum {optimum:.6g})" if regret is not None else ""))
    failures = collections.Counter(r.error_code for r in records if r.status == "failed")
    if failures:
        lines.append("- failures: " + ", ".join(f"{code} × {n}" for code, n in failures.most_common()))
    lines += ["", "![best so far](best_so_far.png)", "", "![coverage](coverage.png)", "", "![timeline](timeline.png)", ""]
    return "\n".join(lines)
