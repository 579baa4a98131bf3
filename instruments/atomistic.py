"""The "DFT instrument": any ASE calculator behind the instrument protocol.

An experiment carries an :class:`~sdl.experiment.AtomicStructure`; the instrument returns its
energy (``energy_ev``, ``energy_ev_per_atom``), the compute time (``compute_s``) and, as arrays,
the forces on every atom (``forces_ev_per_ang``) and the stress (``stress_ev_per_ang3``, 3 x 3, of
cells periodic in all three directions; slabs, periodic in two, and molecules have none). Like every
driver it journals results by idempotency key, so asking twice for the same structure costs one
calculation; ``calls`` and ``compute_s_total`` count what was paid.

The default calculator is ASE's EMT (effective medium theory; Al, Cu, Ni, Pd, Ag, Pt, Au): cheap,
so a benchmark can afford thousands of labels. A real DFT code is a config change, e.g.
``calculator: gpaw.GPAW`` with ``calculator_options: {mode: {name: pw, ecut: 400}, kpts: [4, 4, 4]}``
(the package must be installed; it is not a dependency of sdl).
"""

from __future__ import annotations

import importlib
import time
from importlib.metadata import entry_points
from typing import Any

from ase import Atoms
from pydantic import Field, field_validator

from sdl.experiment import AtomicStructure, ExperimentSpec, LabelledStructure
from sdl.instruments.base import CommandInterrupted, Instrument, InstrumentParameters, InstrumentRefused
from sdl.settings import ConfigError

# short names for calculators; packages add theirs in the entry-point group "sdl.calculators" (sdl's
# own PySCF calculator, a model, is registered there: this layer does not import it); anything else is
# given as "package.module.ClassName"
CALCULATORS = {"emt": "ase.calculators.emt.EMT", "lj": "ase.calculators.lj.LennardJones"}
CALCULATOR_GROUP = "sdl.calculators"
EMT_ELEMENTS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")


def calculator_class(name: str) -> type:
    registered = {ep.name: ep for ep in entry_points(group=CALCULATOR_GROUP)}
    if name.lower() in registered:
        return registered[name.lower()].load()
    path = CALCULATORS.get(name.lower(), name)
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        short = ", ".join([*CALCULATORS, *registered])
        raise ValueError(f"calculator {name!r}: give a short name ({short}) or 'package.module.Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"calculator {name!r}: cannot import {module_name} ({e}); is the package installed?") from e
    if not hasattr(module, class_name):
        raise ValueError(f"calculator {name!r}: {module_name} has no {class_name}")
    return getattr(module, class_name)


class AseCalculatorOracle(Instrument):
    """Energy, forces and stress of atomic structures from an ASE calculator."""

    name = "ase_calculator"
    implemented_measurements = ("energy_ev", "energy_ev_per_atom", "compute_s")

    class Parameters(InstrumentParameters):
        calculator: str = Field(default="emt", description="emt, lj, pyscf, or 'package.module.Class' of an ASE "
                                                           "calculator")
        calculator_options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the calculator")
        stress: bool = Field(default=True, description="compute the stress of periodic cells")
        max_atoms: int = Field(default=20000, ge=1)

        @field_validator("calculator")
        @classmethod
        def _importable(cls, name: str) -> str:
            calculator_class(name)
            return name

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._calculator_class = calculator_class(self.parameters.calculator)
        try:  # options checked now, not at the first experiment
            self._calculator_class(**self.parameters.calculator_options)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"calculator_options of {self.parameters.calculator}: {e}") from None
        self.calls = 0  # calculations actually run (journal replays are free)
        self.compute_s_total = 0.0

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "calls": self.calls, "compute_s_total": self.compute_s_total}

    def check(self, experiment: ExperimentSpec) -> None:
        if experiment.structure is None:
            raise InstrumentRefused(f"the {self.name} instrument computes atomic structures; experiment "
                                    f"{experiment.experiment_id} has no structure")
        n_atoms = len(experiment.structure.symbols)
        if n_atoms > self.parameters.max_atoms:
            raise InstrumentRefused(f"{n_atoms} atoms exceed this instrument's max_atoms {self.parameters.max_atoms}")
        molecular_only = not getattr(self._calculator_class, "supports_periodic", True)
        if molecular_only and experiment.structure.periodic is not False:
            raise InstrumentRefused(f"the {self.parameters.calculator} calculator computes molecules and clusters; "
                                    f"experiment {experiment.experiment_id} is periodic (give periodic: false)")
        if self.parameters.calculator.lower() == "emt":
            unsupported = sorted(set(experiment.structure.symbols) - set(EMT_ELEMENTS))
            if unsupported:
                raise InstrumentRefused(f"EMT has no parameters for {unsupported}; it models {', '.join(EMT_ELEMENTS)}")

    def measure(self, experiment: ExperimentSpec, *, attempt: int) -> dict[str, Any]:
        atoms = experiment.structure.to_atoms()
        atoms.calc = self._calculator_class(**self.parameters.calculator_options)
        started = time.perf_counter()
        energy = float(atoms.get_potential_energy())
        out: dict[str, Any] = {"forces_ev_per_ang": atoms.get_forces()}
        if self.parameters.stress and experiment.structure.fully_periodic:  # slabs and molecules have no volume
            out["stress_ev_per_ang3"] = atoms.get_stress(voigt=False)
        compute_s = time.perf_counter() - started
        self.calls += 1
        self.compute_s_total += compute_s
        return {"energy_ev": energy, "energy_ev_per_atom": energy / len(atoms), "compute_s": compute_s, **out}

    def label(self, atoms: Atoms, *, campaign_id: str = "mlip") -> Atoms:
        """A copy of ``atoms`` with the oracle's energy, forces and stress attached (ASE's
        SinglePointCalculator), through :meth:`run`: the same structure twice is computed once."""
        structure = AtomicStructure.from_atoms(atoms)
        key = structure.key()
        spec = ExperimentSpec(experiment_id=f"structure-{key[:12]}", campaign_id=campaign_id, structure=structure)
        try:
            result = self.run(spec, idempotency_key=key)
        except CommandInterrupted as e:  # a calculation cut off by a crash: nothing physical to look at first
            result = self.run(spec, idempotency_key=key, rerun_attempt=e.attempt)
        labelled = LabelledStructure(
            structure=structure, energy_ev=result.measurements["energy_ev"],
            forces_ev_per_ang=result.arrays["forces_ev_per_ang"],
            stress_ev_per_ang3=result.arrays.get("stress_ev_per_ang3"),
        ).to_atoms()
        labelled.info.update(atoms.info)
        labelled.info["oracle_compute_s"] = result.measurements["compute_s"]
        return labelled
