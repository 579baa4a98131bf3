"""Trust at run time: an MD run with the MLIP notices when it leaves the region the potential knows.

What FLARE and MTP call on-the-fly learning: at every step of an ordinary ASE MD run with a committee
calculator (:class:`~sdl.surrogates.mlip.MlipCalculator` over a :class:`~sdl.surrogates.mlip.Committee`,
or mace-torch's over several MACE models),
:class:`TrustMonitor` reads the per-atom committee force spread the calculator already computed for
that step, takes the worst atom (one odd environment in a big cell is what goes wrong first) and
compares it with the trust level learned in active learning (:func:`trust_level`, from the frames
labelled so far: the spread the committee had for each against the error it then made). A frame beyond it is copied, tagged and handed
to ``on_untrusted`` — e.g. the DFT instrument, whose label then joins the training data — and the run
stops there or goes on, as the caller chose.

Plain Python over ASE and torch: no Ray, no bus. Time in femtoseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms, units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

from sdl.surrogates.mlip import Committee, MlipCalculator, labels_of, make_batch

# A frame is trusted while its worst atom's expected force error stays within this multiple of the
# target force MAE: the worst of a cell's atoms errs several times more than the mean component.
TRUST_ERROR_FACTOR = 4.0


def trust_level(calibration: list[tuple[float, float]], target_force_mae_mev_per_ang: float) -> float | None:
    """The worst-atom spread (eV/A) above which a frame is not trusted, learned in active learning.

    ``calibration`` pairs, for each frame labelled so far, the committee's worst-atom spread with its
    true worst-atom error just before it learned that frame. error ~ ratio x spread with the median
    ratio (robust to the few frames where the members agreed on a wrong answer), so the level is the
    spread at which the expected worst-atom error reaches ``TRUST_ERROR_FACTOR`` x the target MAE.
    None without data."""
    pairs = np.array([(s, e) for s, e in calibration if s > 0], dtype=float).reshape(-1, 2)
    if not len(pairs):
        return None
    tolerated_ev_per_ang = TRUST_ERROR_FACTOR * target_force_mae_mev_per_ang / 1000
    return float(tolerated_ev_per_ang / np.median(pairs[:, 1] / pairs[:, 0]))


def worst_atom_errors(committee: Committee, labelled: list[Atoms]) -> np.ndarray:
    """Per labelled structure, the largest per-atom error of the committee's mean force (eV/A)."""
    param = next(committee.parameters())
    batch = make_batch(labelled, committee.config.elements, committee.config.radial_cutoff_ang, device=param.device,
                       dtype=param.dtype)
    predicted = committee(batch)["forces"].detach().cpu().double().numpy()
    owner = batch.structure.cpu().numpy()
    return np.array([np.linalg.norm(predicted[owner == k] - labels_of(a).forces_ev_per_ang, axis=1).max()
                     for k, a in enumerate(labelled)])


def worst_atom_spread(calculator) -> tuple[float, int]:
    """The largest per-atom committee force spread (eV/A) in ``calculator``'s last results, and that
    atom's index: from :class:`MlipCalculator`'s ``forces_std`` or mace-torch's per-member
    ``forces_comm``. ValueError if the calculator has no committee."""
    results = calculator.results
    if "forces_std" in results:
        spread = np.linalg.norm(results["forces_std"], axis=1)
    elif "forces_comm" in results and len(results["forces_comm"]) > 1:
        spread = np.linalg.norm(np.asarray(results["forces_comm"]).std(0, ddof=1), axis=1)
    else:
        raise ValueError("the trust check needs a committee calculator (an MlipCalculator over a Committee, or "
                         "MACE's over two or more models): one potential has no spread")
    worst = int(spread.argmax())
    return float(spread[worst]), worst


class TrustMonitor:
    """An ASE dynamics observer (``dynamics.attach(monitor)``) over atoms whose calculator is a
    committee (:func:`worst_atom_spread`). ``worst_spreads`` holds every checked frame's worst-atom
    spread (eV/A, the start frame first); ``untrusted`` the frames beyond ``trust_level_ev_per_ang``
    and, with ``snapshot_interval``, ``snapshots`` a trusted frame every that many steps; each with
    ``info``: ``step``, ``max_force_spread_ev_per_ang`` and ``worst_atom`` (its index)."""

    def __init__(self, atoms: Atoms, trust_level_ev_per_ang: float, *,
                 on_untrusted: Callable[[Atoms], None] | None = None, snapshot_interval: int | None = None) -> None:
        if not trust_level_ev_per_ang > 0:
            raise ValueError(f"trust level {trust_level_ev_per_ang} eV/A: it must be a positive force spread")
        if atoms.calc is None:
            raise ValueError("the trust check needs the atoms' calculator: a committee")
        atoms.get_forces()
        worst_atom_spread(atoms.calc)  # a calculator without a committee is refused now, not at the first step
        self.atoms = atoms
        self.trust_level_ev_per_ang = float(trust_level_ev_per_ang)
        self.on_untrusted = on_untrusted
        self.snapshot_interval = snapshot_interval
        self.worst_spreads: list[float] = []
        self.untrusted: list[Atoms] = []
        self.snapshots: list[Atoms] = []

    @property
    def steps_checked(self) -> int:
        """MD steps checked (ASE calls observers once before the first step: that start frame is step 0)."""
        return max(len(self.worst_spreads) - 1, 0)

    def _frame(self, worst: float, atom: int) -> Atoms:
        frame = self.atoms.copy()
        frame.calc = None
        frame.info.update(step=self.steps_checked, max_force_spread_ev_per_ang=worst, worst_atom=atom)
        return frame

    def __call__(self) -> None:
        # The forces of the current positions (and their spread) are what the integrator just computed:
        # get_forces returns the cached result, and the spread was computed with it.
        self.atoms.get_forces()
        worst, atom = worst_atom_spread(self.atoms.calc)
        self.worst_spreads.append(worst)
        if worst > self.trust_level_ev_per_ang:
            frame = self._frame(worst, atom)
            self.untrusted.append(frame)
            if self.on_untrusted is not None:
                self.on_untrusted(frame)
        elif self.snapshot_interval and self.steps_checked and self.steps_checked % self.snapshot_interval == 0:
            self.snapshots.append(self._frame(worst, atom))


@dataclass
class TrustedRun:
    """What :func:`run_trusted_md` did: steps run, each frame's worst-atom spread, the untrusted
    frames and the trusted snapshots."""

    steps: int
    worst_spreads_ev_per_ang: list[float]
    untrusted: list[Atoms] = field(default_factory=list)
    snapshots: list[Atoms] = field(default_factory=list)
    stopped_early: bool = False


def run_trusted_md(atoms: Atoms, calculator, *, trust_level_ev_per_ang: float, temperature_k: float, steps: int,
                   timestep_fs: float = 2.0, friction_per_fs: float = 0.02, stop_when_untrusted: bool = True,
                   on_untrusted: Callable[[Atoms], None] | None = None, snapshot_interval: int | None = None,
                   rng: np.random.Generator | None = None) -> TrustedRun:
    """Langevin NVT MD of a copy of ``atoms`` with a committee ``calculator`` (a :class:`Committee`
    is wrapped in an :class:`MlipCalculator` on the CPU), checked every step. With
    ``stop_when_untrusted`` the run ends at the first untrusted frame (what a production run should
    do: its later frames follow forces nobody vouches for); otherwise it runs all ``steps`` and
    collects every untrusted frame."""
    if steps < 1:
        raise ValueError(f"steps={steps}: run at least one MD step")
    rng = np.random.default_rng() if rng is None else rng
    system = atoms.copy()
    system.calc = MlipCalculator(calculator, device="cpu") if isinstance(calculator, Committee) else calculator
    monitor = TrustMonitor(system, trust_level_ev_per_ang, on_untrusted=on_untrusted,
                           snapshot_interval=snapshot_interval)
    MaxwellBoltzmannDistribution(system, temperature_K=temperature_k, rng=rng)
    dynamics = Langevin(system, timestep=timestep_fs * units.fs, temperature_K=temperature_k,
                        friction=friction_per_fs / units.fs, fixcm=False, rng=rng)
    dynamics.attach(monitor, interval=1)
    stopped = False
    for _ in dynamics.irun(steps):  # irun yields after every step, once the observers have run
        if stop_when_untrusted and monitor.untrusted:
            stopped = True
            break
    return TrustedRun(steps=monitor.steps_checked, worst_spreads_ev_per_ang=monitor.worst_spreads,
                      untrusted=monitor.untrusted, snapshots=monitor.snapshots, stopped_early=stopped)
