"""The picture of one inverse characterisation of a bar: the displacement data with the fitted u(z)
above, the inferred E(z) below, each inversion side by side and the truth where it is known."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sdl.env.layered_bar import GradedBar, LayeredBar  # noqa: E402
from sdl.surrogates.bar_inversion import BarData, LayerEstimate  # noqa: E402
from sdl.surrogates.pinn_inverse import GradedEstimate  # noqa: E402

STYLES = {"PINN": ("C3", "-"), "PINN (graded)": ("C3", "-"), "segmented least squares": ("C0", "--")}


def plot_inversion(data: BarData, estimates: list[LayerEstimate | GradedEstimate], path: Path,
                   truth: LayeredBar | GradedBar | None = None, title: str = "") -> None:
    z = np.linspace(0.0, data.length_mm, 601)
    stress = data.stress_mpa
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 6.5), sharex=True, height_ratios=[1, 1])
    sd = data.noise_sd_mm or 0.0
    top.errorbar(data.positions_mm, data.displacements_mm * 1000, yerr=sd * 1000 if sd else None, fmt="ko", ms=4,
                 capsize=2, label="sensor readings", zorder=5)
    top.plot([0], [0], "ks", ms=5, label="clamp (u = 0)")
    if truth is not None:
        top.plot(z, truth.displacement_mm(z, data.force_n) * 1000, color="0.5", lw=3, alpha=0.5, label="truth")
        bottom.plot(z, truth.modulus_gpa(z), color="0.5", lw=3, alpha=0.5, label="truth")
    for estimate in estimates:
        colour, line = STYLES.get(estimate.method, ("C2", "-"))
        if isinstance(estimate, GradedEstimate):
            top.plot(estimate.z_mm, estimate.displacement_mm * 1000, color=colour, ls=line, label=estimate.method)
            bottom.plot(estimate.z_mm, estimate.modulus_gpa, color=colour, ls=line, label=estimate.method)
            bottom.fill_between(estimate.z_mm, estimate.modulus_gpa - 2 * estimate.modulus_sd_gpa,
                                estimate.modulus_gpa + 2 * estimate.modulus_sd_gpa, color=colour, alpha=0.15)
            continue
        top.plot(z, estimate.displacement_mm(z, stress) * 1000, color=colour, ls=line, label=estimate.method)
        edges = np.concatenate([[0.0], estimate.interfaces_mm, [data.length_mm]])
        for k, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
            e, e_sd = estimate.moduli_gpa[k], estimate.moduli_sd_gpa[k]
            bottom.plot([a, b], [e, e], color=colour, ls=line, label=estimate.method if k == 0 else None)
            bottom.fill_between([a, b], e - 2 * e_sd, e + 2 * e_sd, color=colour, alpha=0.12)
        for x, x_sd in zip(estimate.interfaces_mm, estimate.interfaces_sd_mm):
            for axis in (top, bottom):
                axis.axvline(x, color=colour, ls=":", lw=1)
                axis.axvspan(x - 2 * x_sd, x + 2 * x_sd, color=colour, alpha=0.08)
    top.set_ylabel("axial displacement u (µm)")
    top.legend(fontsize=8, loc="upper left")
    top.grid(alpha=0.3)
    bottom.set_ylabel("Young's modulus E (GPa)")
    bottom.set_xlabel(f"position z along the bar (mm); load {data.force_n:g} N on {data.area_mm2:g} mm²"
                      if data.force_n is not None else "position z along the bar (mm)")
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize=8, loc="best")
    bottom.set_ylim(bottom=0)
    if title:
        top.set_title(title, fontsize=10)
    bottom.text(0.99, 0.02, "bands: ±2 sd", transform=bottom.transAxes, ha="right", va="bottom", fontsize=7,
                color="0.4")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
