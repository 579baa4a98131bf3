"""The picture of an XC functional benchmark: per-molecule atomization errors of every functional
(held-out molecules marked) above, the mean absolute errors below."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

COLOURS = {"learned": "C3", "pbe": "C0", "scan": "C2", "b3lyp": "C1"}


def plot_benchmark(bench: dict, path: Path) -> None:
    functionals = list(bench["functionals"])
    test = set(bench["test"])
    # held-out molecules first, each group by the learned functional's error
    learned = bench["functionals"].get("learned", bench["functionals"][functionals[0]])["errors_kcal"]
    molecules = sorted(learned, key=lambda m: (m not in test, learned[m]))
    x = np.arange(len(molecules))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(13, 8), height_ratios=[2.2, 1])
    width = 0.8 / len(functionals)
    for k, name in enumerate(functionals):
        errors = [bench["functionals"][name]["errors_kcal"][m] for m in molecules]
        top.bar(x + (k - (len(functionals) - 1) / 2) * width, errors, width, color=COLOURS.get(name, f"C{k + 4}"),
                label=name)
    n_test = sum(m in test for m in molecules)
    top.axvspan(-0.5, n_test - 0.5, color="0.9", zorder=0, label="held out (never trained on)")
    top.axhline(0, color="k", lw=0.8)
    top.set_xticks(x, molecules, rotation=90, fontsize=7)
    top.set_xlim(-0.5, len(molecules) - 0.5)
    top.set_ylabel("atomization energy error\n(calc. - exp.) / kcal/mol")
    top.set_title(f"G2-1 atomization energies, self-consistent, {bench['basis']} (reference: experiment, D_e)",
                  pad=24)
    top.legend(ncol=len(functionals) + 1, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.07), frameon=False)
    groups = ["held_out_mae_kcal", "training_mae_kcal", "all_mae_kcal"]
    labels = ["held-out molecules", "training molecules", "all G2-1"]
    gx = np.arange(len(groups))
    for k, name in enumerate(functionals):
        values = [bench["functionals"][name][g] for g in groups]
        bars = bottom.bar(gx + (k - (len(functionals) - 1) / 2) * width * 1.2, values, width * 1.2,
                          color=COLOURS.get(name, f"C{k + 4}"), label=name)
        bottom.bar_label(bars, fmt="%.1f", fontsize=7)
    bottom.set_xticks(gx, labels)
    bottom.set_ylabel("MAE / kcal/mol")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
