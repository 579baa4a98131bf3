"""Active learning of the MLIP against an atomistic oracle (the "DFT instrument").

The loop, per iteration: explore with the current committee (Langevin MD driven by the MLIP
from fresh random solid solutions, at several temperatures and compositions) -> score every
snapshot (committee force spread, or the extrapolation grade) -> label the most uncertain with
the oracle -> retrain (warm start) -> measure the error on a held-out set labelled by the oracle.
It stops at the oracle budget or once the held-out force error has converged (relative change
below ``convergence_tolerance`` twice in a row).

``selection: random`` picks snapshots uniformly from the same kind of exploration; run beside
the active arm (``compare_random``), it is the baseline the issue's target compares with.

Plain Python over torch and ASE: no Ray, no bus. The oracle is any object with ``label(atoms) ->
labelled atoms`` (:class:`sdl.instruments.atomistic.AseCalculatorOracle`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from ase import Atoms
from pydantic import Field, model_validator

from sdl.env.atomistic import md_snapshots, random_composition, random_solid_solution
from sdl.settings import Section, load_yaml
from sdl.surrogates.mlip import (
    Committee,
    ExtrapolationGrade,
    MlipCalculator,
    MlipConfig,
    TrainingSettings,
    evaluate_errors,
    make_batch,
    save_committee,
    train_committee,
)
from sdl.surrogates.mlip_on_the_fly import trust_level, worst_atom_errors


class OracleSettings(Section):
    calculator: str = Field(default="emt", description="emt, lj, or 'package.module.Class' of an ASE calculator")
    calculator_options: dict = Field(default_factory=dict)


class ArchitectureSettings(Section):
    """:class:`MlipConfig` without the elements (given once, for the whole run)."""

    radial_cutoff_ang: float = 5.0
    angular_cutoff_ang: float = 4.0
    basis_size: int = 8
    radial_channels: int = 8
    angular_channels: int = 4
    max_angular_order: int = 4
    hidden_layers: list[int] = Field(default_factory=lambda: [32, 32])


class ExplorationSettings(Section):
    temperatures_k: list[float] = Field(default_factory=lambda: [300.0, 600.0, 900.0, 1200.0], min_length=1)
    starts_per_temperature: int = Field(default=4, ge=1, description="fresh random solid solutions per temperature")
    md_steps: int = Field(default=100, ge=1)
    snapshot_interval: int = Field(default=10, ge=1)
    timestep_fs: float = Field(default=2.0, gt=0, le=10)
    # an MLIP far outside its data can send atoms on top of each other; such frames (closer than
    # this fraction of the alloy's nearest-neighbour distance) are dropped, not labelled
    min_distance_fraction: float = Field(default=0.75, gt=0, lt=1)
    # DP-GEN's trust levels: a frame whose largest committee force spread exceeds this is where the
    # MLIP's MD has already gone wrong (atoms driven by a fantasy force field); it is dropped and
    # its trajectory stopped rather than labelled, as labelling such wrecks teaches the potential
    # about structures the real alloy never visits and swamps the force loss
    max_force_spread_ev_per_ang: float = Field(default=1.0, gt=0)
    # successive frames of one trajectory are alike; labelling several of them wastes oracle calls
    max_per_trajectory: int = Field(default=1, ge=1, description="active selection: at most this many frames per trajectory")

    @model_validator(mode="after")
    def _steps(self) -> ExplorationSettings:
        if self.snapshot_interval > self.md_steps:
            raise ValueError(f"snapshot_interval {self.snapshot_interval} exceeds md_steps {self.md_steps}")
        return self


class TestSetSettings(Section):
    """The held-out set, labelled by the oracle once per run."""

    __test__ = False
    random_solutions: int = Field(default=24, ge=0)
    md_snapshots: int = Field(default=24, ge=0, description="oracle-driven MD, spread over temperatures_k")
    temperatures_k: list[float] = Field(default_factory=lambda: [600.0, 1200.0], min_length=1)
    rattle_ang: float = Field(default=0.05, ge=0)

    @model_validator(mode="after")
    def _some(self) -> TestSetSettings:
        if self.random_solutions + self.md_snapshots == 0:
            raise ValueError("the held-out set is empty; ask for random_solutions or md_snapshots")
        return self


class ActiveLearningConfig(Section):
    name: str = "mlip"
    elements: list[str] = Field(default_factory=lambda: ["Ni", "Cu", "Al", "Pd"], min_length=1)
    repeat: int = Field(default=2, ge=1, le=6, description="FCC cubic cell repeats: 4 repeat^3 atoms per structure")
    architecture: ArchitectureSettings = ArchitectureSettings()
    committee_size: int = Field(default=3, ge=2, le=16)
    training: TrainingSettings = TrainingSettings(epochs=200, batch_structures=4, learning_rate=1e-2)
    retrain_epochs: int = Field(default=60, ge=1, description="epochs of each warm-started retraining")
    # a warm start from a full learning rate would first undo what the model knows
    retrain_learning_rate: float = Field(default=3e-3, gt=0)
    initial_structures: int = Field(default=10, ge=1)
    per_iteration: int = Field(default=5, ge=1, description="structures labelled per iteration")
    max_oracle_calls: int = Field(default=150, ge=1)
    selection: Literal["committee", "grade"] = "committee"
    compare_random: bool = Field(default=True, description="run the random-selection baseline in the same run")
    target_force_mae_mev_per_ang: float = Field(default=50.0, gt=0)
    target_energy_mae_mev_per_atom: float = Field(default=5.0, gt=0)
    convergence_tolerance: float = Field(default=0.03, ge=0, description="relative change of the held-out force MAE")
    oracle: OracleSettings = OracleSettings()
    exploration: ExplorationSettings = ExplorationSettings()
    test_set: TestSetSettings = TestSetSettings()
    seed: int = 0
    device: str = Field(default="auto", description="auto (CUDA when present), cpu, cuda, cuda:N")
    out: Path | None = None

    @model_validator(mode="after")
    def _budget(self) -> ActiveLearningConfig:
        if self.initial_structures >= self.max_oracle_calls:
            raise ValueError(f"initial_structures {self.initial_structures} leaves nothing of max_oracle_calls "
                             f"{self.max_oracle_calls} for active learning")
        MlipConfig(elements=self.elements, **self.architecture.model_dump())  # refuse bad elements/cutoffs now
        from sdl.instruments.atomistic import EMT_ELEMENTS

        if self.oracle.calculator.lower() == "emt" and set(self.elements) - set(EMT_ELEMENTS):
            raise ValueError(f"the EMT oracle has no parameters for {sorted(set(self.elements) - set(EMT_ELEMENTS))}; "
                             f"it models {', '.join(EMT_ELEMENTS)}")
        return self

    @property
    def potential(self) -> MlipConfig:
        return MlipConfig(elements=self.elements, **self.architecture.model_dump())


def load_active_learning_config(path: str | Path) -> ActiveLearningConfig:
    return load_yaml(ActiveLearningConfig, path, "MLIP active-learning config")


@dataclass
class LearningCurve:
    """One arm of the run: the held-out errors after each retraining, against oracle calls."""

    selection: str
    oracle_calls: list[int] = field(default_factory=list)
    energy_mae_mev_per_atom: list[float] = field(default_factory=list)
    force_mae_mev_per_ang: list[float] = field(default_factory=list)
    stress_mae_mev_per_ang3: list[float] = field(default_factory=list)
    train_s: list[float] = field(default_factory=list)
    stopped: str = ""

    def record(self, calls: int, errors: dict[str, float], train_s: float) -> None:
        self.oracle_calls.append(calls)
        self.energy_mae_mev_per_atom.append(errors["energy_mae_mev_per_atom"])
        self.force_mae_mev_per_ang.append(errors["force_mae_mev_per_ang"])
        self.stress_mae_mev_per_ang3.append(errors["stress_mae_mev_per_ang3"])
        self.train_s.append(train_s)

    def calls_to_reach(self, force_mae_mev_per_ang: float) -> int | None:
        return _first_at_or_below(self.oracle_calls, self.force_mae_mev_per_ang, force_mae_mev_per_ang)

    def calls_to_reach_energy(self, energy_mae_mev_per_atom: float) -> int | None:
        return _first_at_or_below(self.oracle_calls, self.energy_mae_mev_per_atom, energy_mae_mev_per_atom)


def _first_at_or_below(calls: list[int], errors: list[float], target: float) -> int | None:
    return next((n for n, error in zip(calls, errors) if error <= target), None)


def nearest_neighbour_distance_ang(atoms: Atoms) -> float:
    """Smallest interatomic distance (periodic images included)."""
    from ase.neighborlist import neighbor_list

    d = neighbor_list("d", atoms, 3.5)
    return float(d.min()) if len(d) else math.inf


def build_test_set(config: ActiveLearningConfig, oracle, rng: np.random.Generator) -> list[Atoms]:
    """Held-out structures labelled by the oracle: random solid solutions and oracle-driven MD snapshots."""
    from sdl.instruments.atomistic import calculator_class

    t = config.test_set
    test = [oracle.label(random_solid_solution(random_composition(config.elements, rng), rng, repeat=config.repeat,
                                               rattle_ang=t.rattle_ang)) for _ in range(t.random_solutions)]
    per_temperature = math.ceil(t.md_snapshots / len(t.temperatures_k)) if t.md_snapshots else 0
    for temperature in t.temperatures_k:
        if per_temperature == 0:
            break
        start = random_solid_solution(random_composition(config.elements, rng), rng, repeat=config.repeat, rattle_ang=0.0)
        calculator = calculator_class(config.oracle.calculator)(**config.oracle.calculator_options)
        # 20 steps between snapshots (40 fs): successive frames decorrelate
        frames = md_snapshots(start, calculator, temperature_k=temperature, steps=20 * per_temperature, interval=20,
                              rng=rng, timestep_fs=config.exploration.timestep_fs)
        test += [oracle.label(f) for f in frames]
    return test[: t.random_solutions + t.md_snapshots]


def trusted_frames(start: Atoms, calculator, committee: Committee, settings: ExplorationSettings,
                   temperature_k: float, rng: np.random.Generator) -> list[Atoms]:
    """MLIP-driven Langevin MD from ``start``: its snapshots up to where the trajectory leaves physical
    space (atoms closer than ``min_distance_fraction`` of the start's nearest-neighbour distance) or
    the trust level (largest per-atom committee force spread, kept in ``info["max_force_spread_ev_per_ang"]``)."""
    floor = settings.min_distance_fraction * nearest_neighbour_distance_ang(start)
    frames = md_snapshots(start, calculator, temperature_k=temperature_k, steps=settings.md_steps,
                          interval=settings.snapshot_interval, rng=rng, timestep_fs=settings.timestep_fs)
    physical = []
    for frame in frames:
        if nearest_neighbour_distance_ang(frame) < floor:
            break  # the trajectory has left physical space; later frames are worse
        physical.append(frame)
    if not physical:
        return []
    trusted = []
    for frame, frame_spread in zip(physical, uncertainty(committee, physical, "committee")):
        if frame_spread > settings.max_force_spread_ev_per_ang:
            break  # beyond the trust level: this frame and the rest of the trajectory are dropped
        frame.info["max_force_spread_ev_per_ang"] = float(frame_spread)
        trusted.append(frame)
    return trusted


def explore(committee: Committee, config: ActiveLearningConfig, rng: np.random.Generator) -> list[Atoms]:
    """Snapshots of MLIP-driven MD from fresh random solid solutions at each exploration temperature."""
    e = config.exploration
    # MD with one member (a third of the committee's cost); the committee scores the frames after
    calculator = MlipCalculator(committee.members[0], device=config.device)
    candidates = []
    for temperature in e.temperatures_k:
        for start_index in range(e.starts_per_temperature):
            start = random_solid_solution(random_composition(config.elements, rng), rng, repeat=config.repeat,
                                          rattle_ang=0.0)
            for frame in trusted_frames(start, calculator, committee, e, temperature, rng):
                frame.info["exploration_temperature_k"] = temperature
                frame.info["trajectory"] = f"{temperature:g}K-{start_index}"
                candidates.append(frame)
    return candidates


def uncertainty(committee: Committee, candidates: list[Atoms], selection: str,
                labelled: list[Atoms] | None = None) -> np.ndarray:
    """Per candidate: the largest per-atom committee force spread (eV/A), or the extrapolation grade."""
    param = next(committee.parameters())
    cutoff = committee.config.radial_cutoff_ang
    batch = make_batch(candidates, committee.config.elements, cutoff, device=param.device, dtype=param.dtype)
    if selection == "committee":
        spread = committee(batch)["forces_std"].norm(dim=1)
        out = torch.zeros(batch.n_structures, dtype=spread.dtype, device=spread.device)
        return out.scatter_reduce(0, batch.structure, spread, reduce="amax", include_self=False).cpu().numpy()
    if selection == "grade":
        member = committee.members[0]
        train = make_batch(labelled, committee.config.elements, cutoff, device=param.device, dtype=param.dtype)
        with torch.no_grad():
            grade = ExtrapolationGrade(member.descriptors(train))
            return grade.structures(member.descriptors(batch), batch.structure, batch.n_structures).cpu().numpy()
    raise ValueError(f"unknown selection {selection!r}; use committee, grade or random")


def trajectories_of(candidates: list[Atoms]) -> list:
    """Each frame's trajectory (``info["trajectory"]``; a frame without one is its own)."""
    return [atoms.info.get("trajectory", i) for i, atoms in enumerate(candidates)]


def most_uncertain(trajectories: list, scores: np.ndarray, k: int, max_per_trajectory: int) -> list[int]:
    """The k highest scores, at most ``max_per_trajectory`` from any one trajectory (``trajectories``:
    one name per candidate; then refilled from the rest if that leaves fewer than k)."""
    order = np.argsort(-scores)
    taken: dict[str, int] = {}
    chosen = []
    for i in order:
        trajectory = trajectories[i]
        if taken.get(trajectory, 0) < max_per_trajectory:
            chosen.append(int(i))
            taken[trajectory] = taken.get(trajectory, 0) + 1
            if len(chosen) == k:
                return chosen
    return chosen + [int(i) for i in order if i not in set(chosen)][: k - len(chosen)]


Scorer = Callable[[Committee, list[Atoms], list[Atoms]], np.ndarray]


def run_arm(config: ActiveLearningConfig, selection: str, oracle, test: list[Atoms], *,
            progress: Callable[[str, int, float], None] | None = None,
            score: Scorer | None = None) -> tuple[LearningCurve, Committee]:
    """One learning run with ``selection`` (committee, grade or random) until budget or convergence.
    ``score(committee, candidates, labelled)``, when given, ranks the candidates instead (higher is
    labelled first) and ``selection`` only names the arm: how a benchmark tries other rules."""
    rng = np.random.default_rng(config.seed)  # the same initial structures for every arm
    curve = LearningCurve(selection=selection)
    labelled = [oracle.label(random_solid_solution(random_composition(config.elements, rng), rng,
                                                   repeat=config.repeat, rattle_ang=0.05))
                for _ in range(config.initial_structures)]
    committee = Committee.new(config.potential, config.committee_size, seed=config.seed)
    started = time.perf_counter()
    train_committee(committee, labelled, config.training, device=config.device)
    curve.record(len(labelled), evaluate_errors(committee, test), time.perf_counter() - started)
    retrain = config.training.model_copy(update={"epochs": config.retrain_epochs,
                                                 "learning_rate": config.retrain_learning_rate})
    pick_rng = np.random.default_rng(config.seed + 1)
    calibration: list[tuple[float, float]] = []  # (spread, true worst-atom error) of each frame before learning it
    while len(labelled) < config.max_oracle_calls:
        if progress is not None:
            progress(selection, len(labelled), curve.force_mae_mev_per_ang[-1])
        candidates = explore(committee, config, rng)
        if not candidates:
            curve.stopped = "exploration produced no physical snapshot"
            break
        k = min(config.per_iteration, config.max_oracle_calls - len(labelled), len(candidates))
        if selection == "random" and score is None:
            chosen = pick_rng.choice(len(candidates), size=k, replace=False)
        else:
            if score is not None:
                scores = np.asarray(score(committee, candidates, labelled), dtype=float)
            elif selection == "committee":
                # explore() already scored every frame by committee spread (its trust level needs it)
                scores = np.array([c.info["max_force_spread_ev_per_ang"] for c in candidates])
            else:
                scores = uncertainty(committee, candidates, selection, labelled)
            chosen = most_uncertain(trajectories_of(candidates), scores, k, config.exploration.max_per_trajectory)
        new = [oracle.label(candidates[i]) for i in chosen]
        calibration += zip(uncertainty(committee, new, "committee").tolist(), worst_atom_errors(committee, new).tolist())
        labelled += new
        started = time.perf_counter()
        train_committee(committee, labelled, retrain, device=config.device, prepare=False)
        curve.record(len(labelled), evaluate_errors(committee, test), time.perf_counter() - started)
        mae = curve.force_mae_mev_per_ang
        if len(mae) >= 3 and all(abs(mae[-i] - mae[-i - 1]) / mae[-i - 1] < config.convergence_tolerance
                                 for i in (1, 2)):
            curve.stopped = "held-out force error converged"
            break
    curve.stopped = curve.stopped or "oracle budget spent"
    committee.trust_level_ev_per_ang = trust_level(calibration, config.target_force_mae_mev_per_ang)
    if progress is not None:
        progress(selection, len(labelled), curve.force_mae_mev_per_ang[-1])
    return curve, committee


def active_learn(config: ActiveLearningConfig, *, progress: Callable[[str, int, float], None] | None = None
                 ) -> dict:
    """The whole run: held-out set, the active arm (and the random one), outputs in ``config.out``."""
    from sdl.instruments.atomistic import AseCalculatorOracle

    out = config.out or Path("runs") / "mlip" / config.name
    out.mkdir(parents=True, exist_ok=True)
    oracle = AseCalculatorOracle(calculator=config.oracle.calculator,
                                 calculator_options=config.oracle.calculator_options,
                                 journal_path=out / "oracle_journal.sqlite")
    try:
        test = build_test_set(config, oracle, np.random.default_rng(config.seed + 1000))
        calls_before = oracle.calls
        arms = [config.selection] + (["random"] if config.compare_random else [])
        curves = {}
        for selection in arms:
            curve, committee = run_arm(config, selection, oracle, test, progress=progress)
            curves[selection] = curve
            if selection == config.selection:
                save_committee(committee, out / "committee.pt")
        summary = {
            "config": config.model_dump(mode="json"),
            "test_structures": len(test),
            "oracle_calls_for_test_set": calls_before,
            "oracle_calls_total": oracle.calls,
            "curves": {k: vars(c) for k, c in curves.items()},
            "calls_to_target": {k: c.calls_to_reach(config.target_force_mae_mev_per_ang) for k, c in curves.items()},
            "calls_to_energy_target": {k: c.calls_to_reach_energy(config.target_energy_mae_mev_per_atom)
                                       for k, c in curves.items()},
        }
    finally:
        oracle.close()
    (out / "learning.json").write_text(json.dumps(summary, indent=1))
    plot_learning_curves(curves, config, out / "learning_curve.png")
    return summary


def plot_learning_curves(curves: dict[str, LearningCurve], config: ActiveLearningConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"committee": ("C0", "active: committee spread"), "grade": ("C2", "active: extrapolation grade"),
              "random": ("C7", "random selection"),
              "true_error": ("C3", "bound: largest true error (not an active learner)")}
    for selection, curve in curves.items():
        colour, label = styles.get(selection, ("C3", selection))
        reached = curve.calls_to_reach(config.target_force_mae_mev_per_ang)
        axes[0].plot(curve.oracle_calls, curve.force_mae_mev_per_ang, "o-", color=colour,
                     label=f"{label}: target at {reached if reached else '> ' + str(curve.oracle_calls[-1])} calls")
        axes[1].plot(curve.oracle_calls, curve.energy_mae_mev_per_atom, "o-", color=colour, label=label)
    axes[0].axhline(config.target_force_mae_mev_per_ang, color="k", ls="--", lw=1, label="target")
    axes[1].axhline(config.target_energy_mae_mev_per_atom, color="k", ls="--", lw=1, label="target")
    axes[0].set_ylabel("held-out force MAE (meV/Å)")
    axes[1].set_ylabel("held-out energy MAE (meV/atom)")
    for ax in axes:
        ax.set_xlabel("oracle calls (labelled structures)")
        ax.set_yscale("log")
        # plain numbers on the log axis: "40" reads faster than "4 x 10^1"
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"MLIP active learning on {'-'.join(config.elements)} ({config.oracle.calculator} oracle)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
