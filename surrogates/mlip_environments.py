"""Active learning of the MLIP where it matters: vacancies, their migration, surfaces, strain, heat.

Issue 6 found that on random bulk cells, tested on random bulk cells, no selection rule beats random:
every frame teaches about as much as any other. A potential for alloy design is used elsewhere too,
and there the frames that teach are rare. This module sets up that problem as a practitioner has it:

1. **The pool.** MLIP-driven Langevin MD (the committee trained on the first, bulk-only labels) over a
   mix of cell kinds written in the config (``mix``: per kind, starts and temperatures; set by what the
   potential will be used for, e.g. diffusion and ageing need vacancies, segregation needs surfaces).
   Frames where the MD has already gone unphysical (atoms too close, a committee spread beyond the
   trust level) are dropped. Every arm selects from this same pool.
2. **Held-out sets per kind**, labelled by the oracle: bulk (in distribution), vacancy, migration (the
   images of a vacancy hop by NEB), surfaces ((111) and (100) slabs), strained (+-5 %), hot (>= 1500 K).
3. **Selection on the worst atom**: the largest per-atom committee force spread of a frame (the mean
   over a 36-atom cell would hide one odd environment); ``committee_mean`` (the structure's mean
   spread) is kept as an arm to show the difference; ``random`` draws uniformly from the pool;
   ``true_error`` is a bound no active learner can reach (the largest per-atom true force error, the
   oracle run on the whole pool on the side, those runs not counted).

Plain Python over torch and ASE: no Ray, no bus.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from ase import Atoms
from pydantic import Field

from sdl.env.atomistic import md_snapshots, random_composition, random_solid_solution
from sdl.env.cell_kinds import HOT_TEMPERATURE_K, CellKind, make_cell, vacancy_migration_path
from sdl.settings import ConfigError, Section, validate
from sdl.surrogates.mlip import (
    Committee,
    MlipCalculator,
    labels_of,
    save_committee,
    train_committee,
)
from sdl.surrogates.mlip_learning import (
    ActiveLearningConfig,
    most_uncertain,
    trajectories_of,
    trusted_frames,
    uncertainty,
)
from sdl.surrogates.mlip_on_the_fly import trust_level, worst_atom_errors

if TYPE_CHECKING:
    from sdl.surrogates.mace_potential import MaceCommittee

TEST_SETS = ("bulk", "vacancy", "migration", "surfaces", "strained", "hot")
OFF_DISTRIBUTION = ("vacancy", "migration", "surfaces", "strained", "hot")
SELECTIONS = ("committee", "committee_mean", "grade", "random", "true_error")


class MixEntry(Section):
    kind: CellKind
    starts: int = Field(default=1, ge=0, description="MD starts of this kind per temperature")
    temperatures_k: list[float] = Field(default_factory=lambda: [600.0], min_length=1)


def default_mix() -> list[MixEntry]:
    """A potential for alloy design: mostly bulk, and the defects, surfaces, strain and heat it will meet."""
    return [MixEntry(kind="bulk", starts=4, temperatures_k=[300.0, 900.0]),
            MixEntry(kind="vacancy", starts=2, temperatures_k=[600.0, 900.0]),
            MixEntry(kind="surface_111", starts=1, temperatures_k=[300.0, 600.0]),
            MixEntry(kind="surface_100", starts=1, temperatures_k=[300.0, 600.0]),
            MixEntry(kind="strained", starts=2, temperatures_k=[300.0, 600.0]),
            MixEntry(kind="hot", starts=2, temperatures_k=[1500.0, 2000.0])]


class EnvironmentTestSettings(Section):
    """Held-out structures per test set (oracle MD frames; the migration set is NEB images)."""

    __test__ = False
    per_set: int = Field(default=12, ge=1)
    migration_paths: int = Field(default=2, ge=1)
    images_per_path: int = Field(default=5, ge=1)
    md_interval: int = Field(default=20, ge=1, description="MD steps between test frames (decorrelation)")
    # Each start is one composition and its frames share that composition's energy offset, so a set's
    # energy MAE averages per_set / frames_per_start compositions; 1 with a longer md_interval spreads
    # the same MD over more compositions.
    frames_per_start: int = Field(default=4, ge=1, description="held-out MD frames per start (one composition)")


class EnvironmentsConfig(ActiveLearningConfig):
    """:class:`ActiveLearningConfig` plus the mix of cell kinds and the per-kind held-out sets."""

    name: str = "mlip_environments"
    mix: list[MixEntry] = Field(default_factory=default_mix, min_length=1)
    pool_explorations: int = Field(default=2, ge=1, description="passes over the mix that build the pool")
    environment_tests: EnvironmentTestSettings = EnvironmentTestSettings()
    # The loop's warm rounds are short (retrain_epochs) so that a round costs little; the potential a lab
    # then uses is fitted once more on all the labels, to convergence. 0: report the loop's last model only.
    final_fit_epochs: int = Field(default=0, ge=0, description="epochs of the production fit on each arm's labels")

    def with_held_out(self, fields: dict) -> EnvironmentsConfig:
        """This config with some ``environment_tests`` fields replaced; a one-line ConfigError if they are not valid."""
        allowed = ", ".join(EnvironmentTestSettings.model_fields)
        if not isinstance(fields, dict):
            raise ConfigError(f"environment_tests: expected a mapping of its fields ({allowed}), got {fields!r}")
        try:
            settings = validate(EnvironmentTestSettings, {**self.environment_tests.model_dump(), **fields},
                                source="environment_tests")
        except ConfigError as error:
            raise ConfigError(f"{error} (fields: {allowed})") from None
        return self.model_copy(update={"environment_tests": settings})


def oracle_md_frames(kind: str, config: EnvironmentsConfig, oracle, rng: np.random.Generator, n: int) -> list[Atoms]:
    """``n`` oracle-MD frames of ``kind`` (temperatures from the kind's mix entry, or 600 K)."""
    from sdl.instruments.atomistic import calculator_class

    kinds = ["surface_111", "surface_100"] if kind == "surfaces" else [kind]
    temperatures = {e.kind: e.temperatures_k for e in config.mix}
    frames: list[Atoms] = []
    interval = config.environment_tests.md_interval
    starts = 0
    while len(frames) < n:
        # alternate the facets per start (each start gives frames_per_start frames of one slab)
        cell_kind = kinds[starts % len(kinds)]
        starts += 1
        options = temperatures.get(cell_kind, [HOT_TEMPERATURE_K if kind == "hot" else 600.0])
        start = make_cell(cell_kind, random_composition(config.elements, rng), rng, repeat=config.repeat)
        calculator = calculator_class(config.oracle.calculator)(**config.oracle.calculator_options)
        per_start = min(config.environment_tests.frames_per_start, n - len(frames))
        for frame in md_snapshots(start, calculator, temperature_k=float(rng.choice(options)),
                                  steps=interval * per_start, interval=interval, rng=rng,
                                  timestep_fs=config.exploration.timestep_fs):
            frame.info.update(start.info)
            frames.append(oracle.label(frame))
    return frames[:n]


def build_environment_tests(config: EnvironmentsConfig, oracle, rng: np.random.Generator) -> dict[str, list[Atoms]]:
    """The held-out sets, labelled by ``oracle`` (anything with ``label(atoms)``)."""
    from sdl.instruments.atomistic import calculator_class

    t = config.environment_tests
    tests = {kind: oracle_md_frames(kind, config, oracle, rng, t.per_set) for kind in TEST_SETS if kind != "migration"}
    factory = lambda: calculator_class(config.oracle.calculator)(**config.oracle.calculator_options)  # noqa: E731
    migration = []
    for _ in range(t.migration_paths):
        path = vacancy_migration_path(random_composition(config.elements, rng), rng, factory, repeat=config.repeat,
                                      images=t.images_per_path)
        migration += [oracle.label(image) for image in path]
    tests["migration"] = migration
    return {kind: tests[kind] for kind in TEST_SETS}


def first_labels_and_pool(config: EnvironmentsConfig, oracle) -> tuple[list[Atoms], Committee, list[Atoms]]:
    """What every arm of a seed shares, from ``config.seed`` alone: the first labels (random bulk solid
    solutions, what a lab has first), the committee trained on them, and the pool it explores."""
    rng = np.random.default_rng(config.seed)
    initial = [oracle.label(random_solid_solution(random_composition(config.elements, rng), rng, repeat=config.repeat,
                                                  rattle_ang=0.05)) for _ in range(config.initial_structures)]
    committee = Committee.new(config.potential, config.committee_size, seed=config.seed)
    train_committee(committee, initial, config.training, device=config.device)
    return initial, committee, explore_pool(committee, config, np.random.default_rng(config.seed + 2000))


def explore_pool(committee: Committee, config: EnvironmentsConfig, rng: np.random.Generator,
                 progress: Callable[[int, int], None] | None = None) -> list[Atoms]:
    """MLIP-driven MD over the mix: physical frames within the trust level, tagged with their kind,
    trajectory and temperature."""
    calculator = MlipCalculator(committee.members[0], device=config.device)
    jobs = [(entry.kind, t, s, p) for p in range(config.pool_explorations) for entry in config.mix
            for t in entry.temperatures_k for s in range(entry.starts)]
    pool = []
    for done, (kind, temperature, start_index, exploration) in enumerate(jobs):
        start = make_cell(kind, random_composition(config.elements, rng), rng, repeat=config.repeat)
        for frame in trusted_frames(start, calculator, committee, config.exploration, temperature, rng):
            frame.info.update(start.info)
            frame.info.update(kind=kind, exploration_temperature_k=temperature,
                              trajectory=f"{kind}-{temperature:g}K-{exploration}-{start_index}")
            pool.append(frame)
        if progress is not None:
            progress(done + 1, len(jobs))
    return pool


def selection_scores(selection: str, committee: Committee, candidates: list[Atoms],
                     reference_forces: list[np.ndarray] | None = None,
                     labelled: list[Atoms] | None = None) -> np.ndarray:
    """Higher is labelled first. ``committee``: the worst atom's spread; ``committee_mean``: the mean
    spread; ``grade``: the worst atom's extrapolation grade against the ``labelled`` set (how unlike
    anything learned its environment is, whatever its forces); ``true_error``: the worst atom's true
    force error (needs ``reference_forces``)."""
    if selection in ("committee", "committee_mean"):
        spreads = [p["forces_spread"] for p in committee.predict(candidates)]
        return np.array([s.max() if selection == "committee" else s.mean() for s in spreads])
    if selection == "grade":
        return uncertainty(committee, candidates, "grade", labelled)
    if selection == "true_error":
        predicted = committee.predict(candidates)
        return np.array([np.linalg.norm(p["forces"] - r, axis=1).max() for p, r in zip(predicted, reference_forces)])
    raise ValueError(f"selection {selection!r}: one of {', '.join(SELECTIONS)}")


def uncertainty_ranking(committee: Committee | MaceCommittee, tests: dict[str, list[Atoms]]) -> dict[str, float]:
    """Spearman rank correlations over the pooled held-out sets: each structure's worst-atom spread
    against its worst-atom true error, and its mean spread against its force MAE (either architecture)."""
    from scipy.stats import spearmanr

    pooled = [a for structures in tests.values() for a in structures]
    predicted = committee.predict(pooled)
    errors = [np.abs(p["forces"] - labels_of(a).forces_ev_per_ang) for p, a in zip(predicted, pooled)]
    return {"worst_atom": float(spearmanr([p["forces_spread"].max() for p in predicted],
                                          [np.linalg.norm(e, axis=1).max() for e in errors]).statistic),
            "structure_mean": float(spearmanr([p["forces_spread"].mean() for p in predicted],
                                              [e.mean() for e in errors]).statistic)}


def energy_errors_mev_per_atom(predicted: list[dict], structures: list[Atoms]) -> np.ndarray:
    """Predicted minus labelled energy per atom of each structure, meV/atom (signed: an offset shows)."""
    return np.array([1000 * (p["energy"] - labels_of(a).energy_ev) / len(a) for p, a in zip(predicted, structures)])


def largest_force_ev_per_ang(atoms: Atoms) -> float:
    """The largest per-atom force of the label: how far a frame is from equilibrium."""
    return float(np.linalg.norm(labels_of(atoms).forces_ev_per_ang, axis=1).max())


def per_set_errors(committee: Committee | MaceCommittee, tests: dict[str, list[Atoms]]) -> dict[str, dict[str, float]]:
    """Force MAE (meV/A), energy MAE and mean signed energy error (meV/atom) on each held-out set (either
    architecture)."""
    out = {}
    for name, structures in tests.items():
        predicted = committee.predict(structures)
        forces = np.concatenate([np.abs(p["forces"] - labels_of(a).forces_ev_per_ang).ravel()
                                 for p, a in zip(predicted, structures)])
        energies = energy_errors_mev_per_atom(predicted, structures)
        out[name] = {"force_mae_mev_per_ang": 1000 * float(forces.mean()),
                     "energy_mae_mev_per_atom": float(np.abs(energies).mean()),
                     "energy_mean_signed_mev_per_atom": float(energies.mean())}
    return out


def run_pool_arm(config: EnvironmentsConfig, selection: str, oracle, initial: list[Atoms], committee: Committee,
                 pool: list[Atoms], tests: dict[str, list[Atoms]], *, reference_forces: list[np.ndarray] | None = None,
                 progress: Callable[[str, int], None] | None = None, save_dir: Path | None = None) -> dict:
    """One arm from the shared start (``committee`` trained on ``initial``, a copy is taken) over the
    shared ``pool``: per round, score the unlabelled frames, label the best ``per_iteration`` (at most
    ``max_per_trajectory`` from a trajectory), retrain warm, measure every held-out set.

    ``history["selected_pool_indices"]`` lists the pool frames labelled per round, so that an arm's
    labels can be rebuilt from the seeded pool (:func:`first_labels_and_pool`: the same frames and kinds,
    the positions equal to torch's MD reproducibility, ~1e-2 eV/A in the largest force). With ``save_dir``, the arm's committee after the
    loop (and after the final fit) is kept there, ``{arm}_seed{seed}_loop.pt`` / ``_final.pt``."""
    import copy

    committee = copy.deepcopy(committee)
    labelled = list(initial)
    remaining = list(range(len(pool)))
    rng = np.random.default_rng(config.seed + 7)
    retrain = config.training.model_copy(update={"epochs": config.retrain_epochs,
                                                 "learning_rate": config.retrain_learning_rate})
    history = {"oracle_calls": [len(labelled)], "errors": [per_set_errors(committee, tests)], "selected_kinds": [],
               "train_s": [], "calibration": [], "selected_pool_indices": []}
    while len(labelled) < config.max_oracle_calls and remaining:
        k = min(config.per_iteration, config.max_oracle_calls - len(labelled), len(remaining))
        if selection == "random":
            chosen = [remaining[i] for i in rng.choice(len(remaining), size=k, replace=False)]
        else:
            candidates = [pool[i] for i in remaining]
            forces = None if reference_forces is None else [reference_forces[i] for i in remaining]
            scores = selection_scores(selection, committee, candidates, forces, labelled)
            chosen = [remaining[i] for i in most_uncertain(trajectories_of(candidates), scores, k,
                                                           config.exploration.max_per_trajectory)]
        new = [oracle.label(pool[i]) for i in chosen]
        # Before retraining: what the committee was unsure of against what it got wrong (the trust level's data)
        history["calibration"].append(list(zip(uncertainty(committee, new, "committee").tolist(),
                                               worst_atom_errors(committee, new).tolist())))
        labelled += new
        taken = set(chosen)
        remaining = [i for i in remaining if i not in taken]
        started = time.perf_counter()
        train_committee(committee, labelled, retrain, device=config.device, prepare=False)
        history["train_s"].append(time.perf_counter() - started)
        history["oracle_calls"].append(len(labelled))
        history["errors"].append(per_set_errors(committee, tests))
        history["selected_kinds"].append([pool[i].info.get("kind", "?") for i in chosen])
        history["selected_pool_indices"].append([int(i) for i in chosen])
        if progress is not None:
            progress(selection, len(labelled))
    history["trust_level_ev_per_ang"] = trust_level([pair for rnd in history["calibration"] for pair in rnd],
                                                    config.target_force_mae_mev_per_ang)
    history["uncertainty_ranking"] = uncertainty_ranking(committee, tests)
    if save_dir is not None:
        save_committee(committee, save_dir / f"{selection}_seed{config.seed}_loop.pt")
    if config.final_fit_epochs:
        started = time.perf_counter()
        train_committee(committee, labelled, retrain.model_copy(update={"epochs": config.final_fit_epochs}),
                        device=config.device, prepare=False)
        history["final_fit"] = {"epochs": config.final_fit_epochs, "train_s": time.perf_counter() - started,
                                "errors": per_set_errors(committee, tests)}
        if save_dir is not None:
            save_committee(committee, save_dir / f"{selection}_seed{config.seed}_final.pt")
    return history


def calls_to_reach(history: dict, sets: tuple[str, ...], target_mev_per_ang: float) -> int | None:
    """Oracle calls after which the mean force MAE over ``sets`` is first at or below the target."""
    for calls, errors in zip(history["oracle_calls"], history["errors"]):
        if mean_force_mae(errors, sets) <= target_mev_per_ang:
            return calls
    return None


def mean_force_mae(errors: dict[str, dict[str, float]], sets: tuple[str, ...]) -> float:
    return float(np.mean([errors[s]["force_mae_mev_per_ang"] for s in sets]))

