"""Benchmark of the inverse characterisation of bars (issue 21): the PINN beside the segmented
least-squares fit on random specimens, with the Cramér-Rao bound of each set-up.

    python bench/pinn_inversion.py [--specimens 10] [--out runs/bench/pinn] [--device auto]

Rows (each over the same random specimens, sensors and noise for both methods):
  layers_exact       3 layers, 3 gauge points per layer, no noise
  layers_noisy       3 layers, 3 gauge points per layer, 1 % noise (sd = 1 % of the end displacement)
  layers_dic         3 layers, a 60-point DIC grid, 1 % noise
  graded_dic         power-law graded E(z), a 30-point DIC grid, 1 % noise (segmented: 3 layers)
Per row: median and worst over specimens of the largest layer's |E error| / E and the largest
|interface error| / L (graded: relative L2 error of E(z)); the PINN / segmented ratio of the medians;
the median Cramér-Rao sd of the worst-determined layer (the best any unbiased inversion can do; graded:
the expected relative L2 error of an inversion that knows the profile is a power law, which is the
floor for one that does not);
seconds per inversion. Then the unidentifiable set-ups and what each method says about them.
Writes results.json and errors.png (PINN against segmented error, specimen by specimen).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from sdl.env.layered_bar import random_graded_bar, random_layered_bar, sensors_per_layer, uniform_sensors
from sdl.surrogates.bar_inversion import (
    BarData,
    NotIdentifiable,
    cramer_rao_sd,
    graded_cramer_rao_l2,
    relative_l2_error,
    segmented_fit,
)
from sdl.surrogates.pinn_inverse import GradedPinnSettings, PinnSettings, invert_graded, invert_layers

FORCE_N = 1000.0
ROWS = {"layers_exact": ("layers", 3, None, 0.0), "layers_noisy": ("layers", 3, None, 0.01),
        "layers_dic": ("layers", None, 60, 0.01), "graded_dic": ("graded", None, 30, 0.01)}


def specimen(kind: str, per_layer: int | None, dic: int | None, noise: float, rng: np.random.Generator):
    bar = random_layered_bar(rng) if kind == "layers" else random_graded_bar(rng)
    z = uniform_sensors(bar.length_mm, dic) if dic else sensors_per_layer(bar, per_layer)
    noise_sd = noise * float(bar.displacement_mm(np.array([bar.length_mm]), FORCE_N)[0])
    u = bar.displacement_mm(z, FORCE_N) + rng.normal(0.0, noise_sd, len(z)) * (noise_sd > 0)
    return bar, BarData(z, u, bar.length_mm, bar.area_mm2, FORCE_N, noise_sd if noise_sd else None)


def layer_errors(estimate, bar) -> tuple[float, float]:
    return (float(np.max(np.abs(estimate.moduli_gpa / np.array(bar.moduli_gpa) - 1))),
            float(np.max(np.abs(estimate.interfaces_mm - bar.interfaces_mm)) / bar.length_mm))


def run_row(name: str, specimens: int, device: str, seed: int) -> dict:
    kind, per_layer, dic, noise = ROWS[name]
    rng = np.random.default_rng([seed, list(ROWS).index(name)])
    out = {"pinn": [], "segmented": [], "crb": [], "pinn_s": [], "segmented_s": [], "failures": []}
    for i in range(specimens):
        bar, data = specimen(kind, per_layer, dic, noise, rng)
        try:
            if kind == "layers":
                seg = segmented_fit(data, 3)
                pinn = invert_layers(data, 3, PinnSettings(device=device, seed=i))
                out["pinn"].append(layer_errors(pinn, bar))
                out["segmented"].append(layer_errors(seg, bar))
                if noise:
                    e_sd, z_sd = cramer_rao_sd(np.array(bar.moduli_gpa), bar.interfaces_mm, data.positions_mm,
                                               data.stress_mpa, data.noise_sd_mm)
                    out["crb"].append((float(np.max(e_sd / np.array(bar.moduli_gpa))),
                                       float(np.max(z_sd)) / bar.length_mm))
            else:
                seg = segmented_fit(data, 3)
                pinn = invert_graded(data, GradedPinnSettings(device=device, seed=i))
                truth = bar.modulus_gpa(pinn.z_mm)
                out["pinn"].append((pinn.relative_l2_error(truth),))
                out["segmented"].append((relative_l2_error(seg.modulus_gpa(pinn.z_mm), truth),))
                out["crb"].append((graded_cramer_rao_l2(bar, data.positions_mm, data.stress_mpa, data.noise_sd_mm,
                                                        len(pinn.z_mm)),))
            out["pinn_s"].append(pinn.seconds)
            out["segmented_s"].append(seg.seconds)
        except NotIdentifiable as e:
            out["failures"].append(f"specimen {i}: {e}")
        print(f"  {name} {i + 1}/{specimens}: PINN {np.round(out['pinn'][-1], 4).tolist() if out['pinn'] else '-'} "
              f"segmented {np.round(out['segmented'][-1], 4).tolist() if out['segmented'] else '-'} "
              f"bound {np.round(out['crb'][-1], 4).tolist() if out['crb'] else '-'} "
              f"({out['pinn_s'][-1] if out['pinn_s'] else 0:.1f} s)", flush=True)
    return out


def summarise(name: str, row: dict) -> dict:
    pinn, seg = np.array(row["pinn"]), np.array(row["segmented"])
    summary = {"specimens": len(pinn), "failures": row["failures"],
               "seconds_median": float(np.median(row["pinn_s"])), "seconds_max": float(np.max(row["pinn_s"]))}
    labels = ["e_rel", "interface_rel_l"] if pinn.shape[1] == 2 else ["e_l2_rel"]
    for j, label in enumerate(labels):
        summary[label] = {"pinn_median": float(np.median(pinn[:, j])), "pinn_max": float(np.max(pinn[:, j])),
                          "segmented_median": float(np.median(seg[:, j])), "segmented_max": float(np.max(seg[:, j])),
                          "ratio_of_medians": float(np.median(pinn[:, j]) / max(np.median(seg[:, j]), 1e-300))}
        if row["crb"]:
            summary[label]["cramer_rao_sd_median"] = float(np.median(np.array(row["crb"])[:, j]))
    return summary


def unidentifiable() -> dict[str, dict[str, str]]:
    """What each method says when the set-up cannot determine the layers."""
    rng = np.random.default_rng(7)
    bar, data = specimen("layers", 3, None, 0.01, rng)
    no_force = BarData(data.positions_mm, data.displacements_mm, data.length_mm, data.area_mm2, None, data.noise_sd_mm)
    keep = np.ones(len(data.positions_mm), bool)
    keep[[3, 4]] = False  # the middle layer keeps one gauge point
    sparse = BarData(data.positions_mm[keep], data.displacements_mm[keep], data.length_mm, data.area_mm2, FORCE_N,
                     data.noise_sd_mm, nominal_interfaces_mm=bar.interfaces_mm)
    cases = {}
    for case, d in (("no force readout", no_force), ("one sensor in the middle layer", sparse)):
        cases[case] = {}
        for method, fit in (("segmented", lambda d: segmented_fit(d, 3)),
                            ("pinn", lambda d: invert_layers(d, 3, PinnSettings(members=1)))):
            try:
                estimate = fit(d)
                cases[case][method] = f"ANSWERED (wrong to trust): E = {np.round(estimate.moduli_gpa, 1).tolist()}"
            except NotIdentifiable as e:
                cases[case][method] = f"refused: {e}"
    return cases


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 4))
    for ax, (name, row) in zip(np.atleast_1d(axes), results.items()):
        pinn, seg = np.array(row["pinn"])[:, 0], np.array(row["segmented"])[:, 0]
        floor = max(min(pinn.min(), seg.min()), 1e-7)
        ax.loglog(np.maximum(seg, floor), np.maximum(pinn, floor), "o", color="C3")
        lim = [floor, max(pinn.max(), seg.max()) * 1.5]
        ax.plot(lim, lim, "k:", lw=1, label="equal")
        ax.plot(lim, [1.5 * v for v in lim], "k--", lw=0.8, label="PINN = 1.5 x segmented")
        ax.set_xlabel("segmented least squares: error")
        ax.set_ylabel("PINN: error")
        what = "rel. L2 error of E(z)" if name.startswith("graded") else "worst layer |ΔE|/E"
        ax.set_title(f"{name}\n{what}", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--specimens", type=int, default=10, help="random specimens per row")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/pinn"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = {name: run_row(name, args.specimens, args.device, args.seed) for name in args.rows}
    summary = {name: summarise(name, row) for name, row in results.items()}
    summary["unidentifiable"] = unidentifiable()
    summary["wall_s"] = time.perf_counter() - started
    (args.out / "results.json").write_text(json.dumps({"summary": summary, "raw": results}, indent=1))
    plot(results, args.out / "errors.png")
    print(f"\n{'row':14s} {'quantity':16s} {'PINN med':>9s} {'PINN max':>9s} {'seg med':>9s} {'seg max':>9s} "
          f"{'ratio':>6s} {'CRB sd':>8s} {'s/inv':>6s}")
    for name in args.rows:
        s = summary[name]
        for label in ("e_rel", "interface_rel_l", "e_l2_rel"):
            if label in s:
                q = s[label]
                print(f"{name:14s} {label:16s} {q['pinn_median']:9.4f} {q['pinn_max']:9.4f} {q['segmented_median']:9.4f} "
                      f"{q['segmented_max']:9.4f} {q['ratio_of_medians']:6.2f} "
                      f"{q.get('cramer_rao_sd_median', float('nan')):8.4f} {s['seconds_median']:6.1f}")
        for failure in s["failures"]:
            print(f"{name:14s} FAILED {failure}")
    for case, answers in summary["unidentifiable"].items():
        for method, answer in answers.items():
            print(f"{case} / {method}: {answer}")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'errors.png'} ({summary['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
