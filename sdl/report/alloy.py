"""Report pages for alloy campaigns on the simulated lab: the phase map with the explored
compositions, and the microstructure of the best specimen.

Used by :mod:`sdl.report` when the campaign has a furnace driven by the twin; the phase map is
read from the twin's CALPHAD cache (warm after the campaign), never from the planners.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from sdl.ledger import ExperimentRecord


def furnace_options(config: dict[str, Any]) -> dict[str, Any] | None:
    for instrument in config.get("instruments", []):
        if instrument.get("driver") == "furnace":
            return instrument.get("options", {})
    return None


def ageing_temperature_k(config: dict[str, Any], records: list[ExperimentRecord] = ()) -> float | None:
    """The last hold of the fixed route; with a process planner, the last hold most specimens got."""
    holds = [s for s in config.get("process", []) if s.get("operation") != "quench"]
    if holds:
        return float(holds[-1]["temperature_k"])
    last = [[s.temperature_k for s in r.process if s.operation != "quench"][-1:] for r in records]
    counts = Counter(t[0] for t in last if t)
    return float(counts.most_common(1)[0][0]) if counts else None


def plot_phase_map(config: dict[str, Any], records: list[ExperimentRecord], measurement: str, path: Path) -> str | None:
    """Gamma-prime fraction over the two most varied free elements at the ageing temperature; brittle
    region outlined; explored compositions on top. Returns a caption, or None if not applicable."""
    from sdl.env.calphad import default_cache_path
    from sdl.env.twin import AlloyTwin, TwinConfig

    options = furnace_options(config)
    temperature_k = ageing_temperature_k(config, records)
    explored = [r for r in records if r.point.composition is not None]
    if options is None or temperature_k is None or not explored:
        return None
    twin_config = TwinConfig.model_validate(options.get("twin", {}))
    twin = AlloyTwin(twin_config, cache_path=options.get("cache_path") or default_cache_path())
    free = list(twin.free_elements)
    x = np.array([[r.point.composition[e] for e in free] for r in explored])
    values = np.array([r.result.measurements.get(measurement, np.nan) if r.status == "done" else np.nan for r in explored])
    done = np.isfinite(values)
    # Axes: the two elements whose fraction tracks the measured property most closely (|correlation|).
    if done.sum() >= 3:
        strength = [abs(np.nan_to_num(np.corrcoef(x[done, k], values[done])[0, 1])) for k in range(len(free))]
    else:
        strength = list(x.max(axis=0) - x.min(axis=0))
    i, j = (int(k) for k in np.argsort(strength)[::-1][:2])
    fixed = {k: float(np.median(x[:, k])) for k in range(len(free)) if k not in (i, j)}
    axis_i = np.linspace(twin.table.axes[i][0], twin.table.axes[i][-1], 120)
    axis_j = np.linspace(twin.table.axes[j][0], twin.table.axes[j][-1], 120)
    grid_i, grid_j = np.meshgrid(axis_i, axis_j)
    points = np.zeros((grid_i.size, len(free)))
    points[:, i], points[:, j] = grid_i.ravel(), grid_j.ravel()
    for k, value in fixed.items():
        points[:, k] = value
    inside = points.sum(axis=1) <= 1.0
    phases = twin.table(np.where(inside[:, None], points, 0.0), temperature_k)
    gamma_prime = np.where(inside, phases["gamma_prime"], np.nan).reshape(grid_i.shape)
    brittle = np.where(inside, phases["b2"] + phases["sigma"] + phases["other"], np.nan).reshape(grid_i.shape)

    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    image = ax.contourf(grid_i, grid_j, gamma_prime, levels=np.linspace(0, 1, 11), cmap="Blues")
    fig.colorbar(image, ax=ax, label=f"equilibrium γ' fraction at {temperature_k:.0f} K")
    if np.nanmax(brittle) > 0.02:
        ax.contour(grid_i, grid_j, brittle, levels=[0.02], colors="crimson", linewidths=2)
        ax.contourf(grid_i, grid_j, brittle, levels=[0.02, 1.0], colors="none", hatches=["//"])
    scatter = ax.scatter(x[done, i], x[done, j], c=values[done], cmap="inferno", edgecolor="k", s=40, zorder=3)
    fig.colorbar(scatter, ax=ax, label=measurement)
    ax.scatter(x[~done, i], x[~done, j], marker="x", color="red", s=40, zorder=3, label="failed")
    if done.any():
        best = int(np.nanargmax(values))
        ax.scatter(x[best, i], x[best, j], marker="*", s=300, color="gold", edgecolor="k", zorder=4, label="best")
    held = ", ".join(f"x({free[k]}) = {v:.3f}" for k, v in fixed.items())
    ax.set_xlabel(f"x({free[i]})")
    ax.set_ylabel(f"x({free[j]})")
    ax.set_title(f"Explored compositions over the phase map ({held}; {twin_config.balance} balance)\n"
                 "red hatch: ≥ 2 % brittle phases (B2, σ, other intermetallics)", fontsize=9)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"phase map at {temperature_k:.0f} K over x({free[i]}) and x({free[j]}), {held}"


def plot_best_specimen(record: ExperimentRecord, measurement: str, path: Path) -> list[str]:
    """The best specimen's microstructure and properties; returns markdown lines."""
    m = record.result.measurements
    keys = ("grain_size_um", "gamma_prime_fraction", "gamma_prime_radius_nm")
    if not all(k in m for k in keys):
        return []
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8), gridspec_kw={"width_ratios": [1, 1.2]})
    brittle = {k.removesuffix("_fraction"): m[k] for k in ("b2_fraction", "sigma_fraction", "other_fraction") if k in m}
    labels = ["γ'", *brittle]
    left.bar(labels, [m["gamma_prime_fraction"], *brittle.values()], color=["tab:blue"] + ["crimson"] * len(brittle))
    left.set_ylabel("volume fraction")
    left.set_title("Phases of the best specimen")
    composition = ", ".join(f"{e} {100 * x:.1f}" for e, x in record.point.composition.root.items())
    lines = [
        f"specimen {record.experiment_id}",
        f"nominal (at.%): {composition}",
        f"grain size: {m['grain_size_um']:.0f} µm",
        f"γ' fraction: {m['gamma_prime_fraction']:.3f}",
        f"γ' radius: {m['gamma_prime_radius_nm']:.1f} nm",
        f"{measurement}: {m.get(measurement, float('nan')):.1f}",
    ]
    if "elongation_pct" in m:
        lines.append(f"elongation: {m['elongation_pct']:.1f} %")
    right.axis("off")
    right.text(0.0, 0.95, "\n".join(lines), va="top", family="monospace", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [f"- best specimen microstructure: grain size {m['grain_size_um']:.0f} µm, γ' fraction "
            f"{m['gamma_prime_fraction']:.3f}, γ' radius {m['gamma_prime_radius_nm']:.1f} nm"]
