"""The report page of an active-learning campaign of the MLIP (``planner.mlip_al``).

From the ledger: each training round (``model.trained``: labels, time, learned trust level, saved
committee) and each labelled structure with the planner's tags (cell kind, the round whose committee
chose it). From the saved committees: the learning curve per held-out set (vacancy, surfaces, ... —
labelled here by the campaign's own oracle through a journal in the report folder, so a second report
costs no oracle call), and the calibration: for every structure a committee chose, its worst-atom
spread then against its true worst-atom error then (from the oracle's forces in the ledger).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from sdl.ledger import ExperimentRecord
from sdl.ledger.documents import ModelTrained

log = logging.getLogger(__name__)


def is_active_learning(config: dict[str, Any]) -> bool:
    return config.get("planner", {}).get("kind") in ("mlip_al", "planner.mlip_al")


def page(config: dict[str, Any], records: list[ExperimentRecord], rounds: list[ModelTrained], out: Path, *,
         held_out_per_set: int) -> str:
    """Markdown for the campaign's summary, with its plots written into ``out``."""
    labelled = [r for r in records if r.status == "done" and r.point.structure is not None]
    lines = ["", "## Active learning of the interatomic potential", ""]
    if not rounds:
        return "\n".join([*lines, "_No training round yet._", ""])
    committees = _committees(rounds)
    kinds_by_round = _kinds_by_round(labelled)
    _plot_kinds(kinds_by_round, out / "al_selected_kinds.png")
    calibration = _calibration(labelled, committees)
    errors, ranking = {}, None
    if held_out_per_set and committees:
        errors, ranking = _held_out(config, committees, out, held_out_per_set)
    _plot_calibration(calibration, rounds[-1].trust_level_ev_per_ang, out / "al_calibration.png")
    if errors:
        _plot_learning_curves(errors, rounds, out / "al_learning_curves.png")
        lines += ["![learning curves per held-out set](al_learning_curves.png)", ""]
    else:
        lines += ["_Learning curves per held-out set: `sdl report CAMPAIGN_DIR --held-out-per-set N` labels N "
                  "structures of each set with the campaign's oracle (journalled: once)._", ""]
    lines += ["![cell kinds labelled per round](al_selected_kinds.png)", "",
              "![spread against true error before learning](al_calibration.png)", ""]
    sets = list(next(iter(errors.values()))) if errors else []
    header = ["round", "labels", "train s", "trust level eV/Å", *(f"{s} meV/Å" for s in sets)]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for doc in rounds:
        cells = [f"{errors[doc.round][s]['force_mae_mev_per_ang']:.0f}" for s in sets] if doc.round in errors else \
            ["" for _ in sets]
        level = "" if doc.trust_level_ev_per_ang is None else f"{doc.trust_level_ev_per_ang:.3f}"
        lines.append("| " + " | ".join([str(doc.round), str(doc.n_train), f"{doc.train_s:.0f}", level, *cells]) + " |")
    if calibration:
        from scipy.stats import spearmanr

        rho = spearmanr([c[0] for c in calibration], [c[1] for c in calibration]).statistic
        lines += ["", f"Structures the committees chose: {len(calibration)}; Spearman ρ of their worst-atom spread "
                      f"against their true worst-atom error before learning them: {rho:.2f}."]
    if ranking is not None:
        lines += [f"On the pooled held-out sets, last round: ρ = {ranking['worst_atom']:.2f} (worst atom), "
                  f"{ranking['structure_mean']:.2f} (mean spread against force MAE)."]
    return "\n".join([*lines, ""])


def _committees(rounds: list[ModelTrained]) -> dict[int, Any]:
    """The saved committee of each round still on disk."""
    from sdl.surrogates.mace_potential import load_any_committee

    out = {}
    for doc in rounds:
        if doc.checkpoint and Path(doc.checkpoint).is_file():
            out[doc.round] = load_any_committee(doc.checkpoint, device="cpu")
        else:
            log.warning("round %d: checkpoint %s not found; its curve point is skipped", doc.round, doc.checkpoint)
    return out


def _kinds_by_round(labelled: list[ExperimentRecord]) -> dict[int, Counter]:
    by_round: dict[int, Counter] = {}
    for record in labelled:
        tags = record.point.tags
        by_round.setdefault(int(tags.get("round", 0)), Counter())[tags.get("cell_kind", "?")] += 1
    return by_round


def _labelled_atoms(record: ExperimentRecord):
    from sdl.experiment import LabelledStructure

    return LabelledStructure(structure=record.point.structure, energy_ev=record.result.measurements["energy_ev"],
                             forces_ev_per_ang=record.result.arrays["forces_ev_per_ang"]).to_atoms()


def _calibration(labelled: list[ExperimentRecord], committees: dict[int, Any]) -> list[tuple[float, float, str]]:
    """(worst-atom spread, worst-atom true error, cell kind) of each structure by the committee that chose it."""
    out = []
    for round_, committee in committees.items():
        chosen = [r for r in labelled if r.point.tags.get("round") == str(round_)
                  and "forces_ev_per_ang" in r.result.arrays]
        if not chosen:
            continue
        predicted = committee.predict([_labelled_atoms(r) for r in chosen])
        out += [(float(p["forces_spread"].max()),
                 float(np.linalg.norm(p["forces"] - np.asarray(r.result.arrays["forces_ev_per_ang"]), axis=1).max()),
                 r.point.tags.get("cell_kind", "?")) for p, r in zip(predicted, chosen)]
    return out


def _held_out(config: dict[str, Any], committees: dict[int, Any], out: Path, per_set: int):
    """Force and energy MAE per held-out set for each round's committee, and the last one's ranking."""
    from sdl.instruments.atomistic import AseCalculatorOracle
    from sdl.surrogates.mlip_environments import (
        EnvironmentsConfig,
        build_environment_tests,
        per_set_errors,
        uncertainty_ranking,
    )

    planner = config.get("planner", {}).get("settings") or {}
    oracle_options = next((i.get("options", {}) for i in config.get("instruments", [])
                           if i.get("driver") == "ase_calculator"), {})
    elements = list(config["space"]["composition"]["elements"])
    settings = EnvironmentsConfig(elements=elements, repeat=planner.get("repeat", 2),
                                  **({"mix": planner["mix"]} if "mix" in planner else {}),
                                  oracle={"calculator": oracle_options.get("calculator", "emt"),
                                          "calculator_options": oracle_options.get("calculator_options", {})},
                                  environment_tests={"per_set": per_set, "migration_paths": 1,
                                                     "images_per_path": min(per_set, 5)})
    oracle = AseCalculatorOracle(calculator=settings.oracle.calculator,
                                 calculator_options=settings.oracle.calculator_options,
                                 journal_path=out / "held_out_oracle.sqlite")
    try:
        tests = build_environment_tests(settings, oracle, np.random.default_rng(config.get("seed", 0) + 1000))
    finally:
        oracle.close()
    errors = {round_: per_set_errors(committee, tests) for round_, committee in sorted(committees.items())}
    return errors, uncertainty_ranking(committees[max(committees)], tests)


def _plain_numbers(axis) -> None:
    """Plain numbers on a log axis: "60" reads faster than "6 x 10^1"."""
    from matplotlib.ticker import ScalarFormatter

    axis.set_major_formatter(ScalarFormatter())
    axis.set_minor_formatter(ScalarFormatter())


def _plot_learning_curves(errors: dict[int, dict], rounds: list[ModelTrained], path: Path) -> None:
    labels = {d.round: d.n_train for d in rounds}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    sets = list(next(iter(errors.values())))
    for k, name in enumerate(sets):
        xs = [labels[r] for r in errors]
        for ax, key in zip(axes, ("force_mae_mev_per_ang", "energy_mae_mev_per_atom")):
            ax.plot(xs, [errors[r][name][key] for r in errors], "o-", ms=3, color=f"C{k}", label=name)
    for ax, unit in zip(axes, ("force MAE (meV/Å)", "energy MAE (meV/atom)")):
        ax.set_xlabel("labelled structures (oracle calls)")
        ax.set_ylabel(unit)
        ax.set_yscale("log")
        _plain_numbers(ax.yaxis)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8, title="held-out set")
    fig.suptitle("Each round's committee on the held-out sets")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_kinds(by_round: dict[int, Counter], path: Path) -> None:
    rounds = sorted(by_round)
    kinds = sorted({k for c in by_round.values() for k in c})
    fig, ax = plt.subplots(figsize=(8, 3.8))
    bottom = np.zeros(len(rounds))
    for k, kind in enumerate(kinds):
        counts = np.array([by_round[r].get(kind, 0) for r in rounds])
        ax.bar([str(r) for r in rounds], counts, bottom=bottom, color=f"C{k}", label=kind)
        bottom += counts
    ax.set_xlabel("chosen by the committee of round (0: the initial random bulk cells)")
    ax.set_ylabel("structures labelled")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_calibration(calibration: list[tuple[float, float, str]], level: float | None, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for k, kind in enumerate(sorted({c[2] for c in calibration})):
        points = [(s, e) for s, e, c in calibration if c == kind]
        ax.scatter(*zip(*points), s=14, color=f"C{k}", label=kind)
    if level is not None:
        ax.axvline(level, color="k", ls="--", lw=1, label=f"learned trust level {level:.3f} eV/Å")
    ax.set_xlabel("worst-atom committee spread before learning (eV/Å)")
    ax.set_ylabel("worst-atom true force error then (eV/Å)")
    if calibration:
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_numbers(ax.xaxis)
        _plain_numbers(ax.yaxis)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
