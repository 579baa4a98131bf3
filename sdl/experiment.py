"""What the lab makes and measures: compositions, process steps, design points, experiments, results.

These are the domain records every layer above shares: a planner proposes :class:`DesignPoint` s,
the ledger records :class:`ExperimentSpec` s and :class:`ExperimentResult` s, an instrument receives
one and returns the other. Each validates itself once, at the edge, with a message that says what is
allowed; code inside the controller trusts the types. Units are in the field names.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from typing import Any, Literal

import numpy as np
from ase.data import chemical_symbols
from pydantic import ConfigDict, Field, RootModel, field_validator, model_validator

from sdl.wire import WireModel

# Fractions must sum to one within this tolerance (the contract for compositions).
COMPOSITION_SUM_TOLERANCE = 1e-6
KNOWN_ELEMENTS = frozenset(chemical_symbols[1:])  # chemical_symbols[0] is ASE's dummy "X"


class Composition(RootModel[dict[str, float]]):
    """Mole fractions by element symbol; each in [0, 1], summing to 1 within 1e-6."""

    model_config = ConfigDict(frozen=True)

    @field_validator("root")
    @classmethod
    def _check(cls, fractions: dict[str, float]) -> dict[str, float]:
        if not fractions:
            raise ValueError("a composition needs at least one element")
        unknown = sorted(set(fractions) - KNOWN_ELEMENTS)
        if unknown:
            raise ValueError(
                f"unknown element symbol(s) {unknown}; use chemical symbols such as 'Ni', 'Al', 'Co'"
            )
        for element, fraction in fractions.items():
            if not math.isfinite(fraction) or not 0.0 <= fraction <= 1.0:
                raise ValueError(f"fraction of {element} is {fraction}; fractions must lie in [0, 1]")
        total = math.fsum(fractions.values())
        if abs(total - 1.0) > COMPOSITION_SUM_TOLERANCE:
            raise ValueError(
                f"fractions sum to {total:.9g}; they must sum to 1 within {COMPOSITION_SUM_TOLERANCE:g}"
            )
        return fractions

    def __getitem__(self, element: str) -> float:
        return self.root[element]


class ProcessStep(WireModel):
    """One heat-treatment step. Units are in the field names.

    ``temperature_k`` takes kelvin as a number, or a string that names its unit ("1100 K",
    "827 °C", "827 C"), converted here at the boundary; a bare numeric string is refused as
    ambiguous, and so is a field spelled ``temperature`` or ``temperature_c``.
    """

    operation: Literal["homogenise", "solutionise", "age", "anneal", "quench"]
    temperature_k: float = Field(gt=0.0, le=4000.0, description="hold temperature in kelvin")
    duration_s: float = Field(ge=0.0, le=10 * 365 * 86400.0, description="hold time in seconds")
    ramp_k_per_s: float | None = Field(default=None, gt=0.0, description="heating/cooling rate")
    quench_medium: Literal["water", "oil", "air", "furnace"] | None = None

    @field_validator("temperature_k", mode="before")
    @classmethod
    def _temperature_with_unit(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        match = re.fullmatch(r"\s*([-+]?\d+(?:\.\d*)?)\s*(K|°C|C|degC)?\s*", value)
        if match is None or match.group(2) is None:
            raise ValueError(
                f"temperature {value!r} is ambiguous; give kelvin as a number, or a string with its unit: '1100 K' or '827 °C'"
            )
        number, unit = float(match.group(1)), match.group(2)
        return number if unit == "K" else number + 273.15


class AtomicStructure(WireModel):
    """An atomistic configuration (what a "DFT instrument" is asked to compute): element symbols,
    Cartesian positions and cell vectors (rows) in angstrom, and which cell directions are periodic:
    ``true`` (bulk), ``false`` (a molecule or cluster) or one flag per direction, e.g.
    ``[true, true, false]`` for a surface slab with vacuum along the third vector."""

    symbols: list[str] = Field(min_length=1, max_length=100000)
    positions_ang: list[tuple[float, float, float]]
    cell_ang: tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]] = (
        (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0))
    periodic: bool | tuple[bool, bool, bool] = True

    @field_validator("periodic")
    @classmethod
    def _one_spelling(cls, periodic: bool | tuple[bool, bool, bool]) -> bool | tuple[bool, bool, bool]:
        # All or none is a plain bool, so that equal structures compare (and hash, journal) equal.
        return periodic[0] if isinstance(periodic, tuple) and len(set(periodic)) == 1 else periodic

    @model_validator(mode="after")
    def _check(self) -> AtomicStructure:
        unknown = sorted(set(self.symbols) - KNOWN_ELEMENTS)
        if unknown:
            raise ValueError(f"unknown element symbol(s) {unknown}; use chemical symbols such as 'Ni', 'Cu'")
        if len(self.positions_ang) != len(self.symbols):
            raise ValueError(f"{len(self.symbols)} symbols but {len(self.positions_ang)} positions; give one per atom")
        if not all(math.isfinite(v) for row in (*self.positions_ang, *self.cell_ang) for v in row):
            raise ValueError("positions and cell must be finite numbers (angstrom)")
        periodic_vectors = [v for v, p in zip(self.cell_ang, self.pbc) if p]
        if periodic_vectors and _rank(periodic_vectors) < len(periodic_vectors):
            directions = [d for d, p in zip("abc", self.pbc) if p]
            raise ValueError(f"the periodic cell vectors ({', '.join(directions)}) must be non-zero and linearly "
                             "independent")
        return self

    @property
    def pbc(self) -> tuple[bool, bool, bool]:
        """Periodicity per cell direction, as ASE's ``Atoms.pbc``."""
        return self.periodic if isinstance(self.periodic, tuple) else (self.periodic,) * 3

    @property
    def fully_periodic(self) -> bool:
        """Periodic in all three directions: a bulk cell, with a volume and a stress."""
        return all(self.pbc)

    def key(self) -> str:
        """A fingerprint of the exact structure (the oracle's idempotency key, the learner's "seen it")."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:32]

    @classmethod
    def from_atoms(cls, atoms) -> AtomicStructure:
        """From an ``ase.Atoms`` (bulk, slab, wire or molecule)."""
        return cls(symbols=atoms.get_chemical_symbols(), positions_ang=atoms.positions.tolist(),
                   cell_ang=atoms.cell[:].tolist(), periodic=tuple(bool(p) for p in atoms.pbc))

    def to_atoms(self):
        from ase import Atoms

        return Atoms(symbols=self.symbols, positions=self.positions_ang, cell=self.cell_ang, pbc=self.pbc)


class DesignPoint(WireModel):
    """Where in the design space an experiment sits: continuous parameters and/or a composition, and
    for atomistic campaigns (an oracle labelling structures) the structure itself, whose composition
    is then the point's composition."""

    parameters: dict[str, float] = Field(default_factory=dict)
    composition: Composition | None = None
    structure: AtomicStructure | None = None
    tags: dict[str, str] = Field(default_factory=dict, description="what the planner says of the point (e.g. a "
                                                                    "structure's cell kind); not a coordinate")

    @field_validator("parameters")
    @classmethod
    def _finite(cls, parameters: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in parameters.items() if not math.isfinite(v)}
        if bad:
            raise ValueError(f"parameters must be finite numbers; got {bad}")
        return parameters

    @model_validator(mode="after")
    def _structure_composition(self) -> DesignPoint:
        if self.structure is not None:
            counts = Counter(self.structure.symbols)
            fractions = {e: n / len(self.structure.symbols) for e, n in counts.items()}
            if self.composition is not None and any(abs(self.composition.root.get(e, 0.0) - fractions.get(e, 0.0)) > 1e-6
                                                    for e in {*fractions, *self.composition.root}):
                raise ValueError(f"the composition {dict(self.composition.root)} is not the structure's {fractions}")
        return self

    @classmethod
    def of_structure(cls, structure: AtomicStructure, elements: list[str] | None = None, *,
                     tags: dict[str, str] | None = None) -> DesignPoint:
        """The point of an atomistic experiment: the structure, its composition over ``elements``
        (zeros for those it lacks; default: the elements it has)."""
        counts = Counter(structure.symbols)
        names = elements if elements is not None else sorted(counts)
        missing = sorted(set(counts) - set(names))
        if missing:
            raise ValueError(f"the structure holds {missing}, outside the elements {names}")
        fractions = {e: counts.get(e, 0) / len(structure.symbols) for e in names}
        fractions[max(fractions, key=fractions.get)] += 1.0 - math.fsum(fractions.values())  # rounding onto the largest
        return cls(composition=Composition(fractions), structure=structure, tags=tags or {})


def _rank(vectors: list[tuple[float, float, float]]) -> int:
    """Numerical rank of up to three cell vectors (a zero or parallel vector lowers it)."""
    matrix = np.asarray(vectors, dtype=float)
    scale = max(float(np.abs(matrix).max()), 1e-300)
    return int(np.linalg.matrix_rank(matrix / scale, tol=1e-9))


class LabelledStructure(WireModel):
    """A structure with what an oracle computed for it (the MLIP's training data)."""

    structure: AtomicStructure
    energy_ev: float
    forces_ev_per_ang: list[tuple[float, float, float]]
    stress_ev_per_ang3: tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]] | None = None

    @model_validator(mode="after")
    def _check(self) -> LabelledStructure:
        if len(self.forces_ev_per_ang) != len(self.structure.symbols):
            raise ValueError(f"{len(self.forces_ev_per_ang)} force vectors for {len(self.structure.symbols)} atoms")
        values = [self.energy_ev, *(v for f in self.forces_ev_per_ang for v in f),
                  *(v for row in (self.stress_ev_per_ang3 or ()) for v in row)]
        if not all(math.isfinite(v) for v in values):
            raise ValueError("energy, forces and stress must be finite")
        return self

    def to_atoms(self):
        """``ase.Atoms`` with these labels attached (a SinglePointCalculator), as training data."""
        from ase.calculators.singlepoint import SinglePointCalculator
        from ase.stress import full_3x3_to_voigt_6_stress

        atoms = self.structure.to_atoms()
        results: dict[str, Any] = {"energy": self.energy_ev, "forces": self.forces_ev_per_ang}
        if self.stress_ev_per_ang3 is not None:
            results["stress"] = full_3x3_to_voigt_6_stress(self.stress_ev_per_ang3)
        atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms


class ExperimentSpec(WireModel):
    """What an instrument is asked to make or measure."""

    experiment_id: str = Field(min_length=1, max_length=128)
    campaign_id: str = Field(min_length=1, max_length=128)
    point: DesignPoint = Field(default_factory=DesignPoint)
    structure: AtomicStructure | None = Field(default=None, description="for atomistic instruments (DFT, MLIP)")
    process: list[ProcessStep] = Field(default_factory=list)
    station: str = Field(default="measure", description="the workflow step this command is for")
    specimen: dict[str, float] = Field(
        default_factory=dict, description="what earlier stations of the workflow measured on this specimen"
    )


class ExperimentResult(WireModel):
    """What an instrument measured. ``replayed`` is true when served from its idempotency journal."""

    experiment_id: str
    instrument: str
    measurements: dict[str, float]
    started_at_unix_s: float
    finished_at_unix_s: float
    attempts: int = Field(default=1, ge=1)
    replayed: bool = False
    lab_time_s: float = Field(default=0.0, ge=0.0, description="time the specimen spent on the instrument (simulated time for simulated instruments)")
    arrays: dict[str, list[list[float]]] = Field(
        default_factory=dict, description="array-valued results, e.g. forces_ev_per_ang (atoms x 3)"
    )

    @field_validator("measurements")
    @classmethod
    def _finite(cls, measurements: dict[str, float]) -> dict[str, float]:
        bad = sorted(k for k, v in measurements.items() if not math.isfinite(v))
        if bad:
            raise ValueError(f"measurements {bad} are not finite; a driver reports a failed measurement as a fault")
        return measurements

    @field_validator("arrays")
    @classmethod
    def _finite_arrays(cls, arrays: dict[str, list[list[float]]]) -> dict[str, list[list[float]]]:
        bad = sorted(k for k, rows in arrays.items() if not all(math.isfinite(v) for row in rows for v in row))
        if bad:
            raise ValueError(f"arrays {bad} hold non-finite values; a driver reports a failed calculation as a fault")
        return arrays


class Observation(WireModel):
    """A finished experiment as a planner sees it."""

    point: DesignPoint
    status: Literal["done", "failed"]
    measurements: dict[str, float] = Field(default_factory=dict)
    arrays: dict[str, list[list[float]]] = Field(default_factory=dict, description="e.g. forces_ev_per_ang of a "
                                                                                  "labelled structure")
