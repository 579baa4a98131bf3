"""A bench problem on a multi-component FCC solid solution: find the composition with the lowest (or
highest) property computed by ASE's EMT (:mod:`sdl.env.solid_solutions`).

The default is the transfer-learning campaign: the six-component Cu-Ni-Pd-Ag-Au-Pt system, every
element between 5 and 35 at.% (a high-entropy alloy's box), lowest mixing energy. A model of the
five-component system without Pt (``sdl transfer pretrain``) can serve as the BO planner's prior.

Each composition is one material: its atoms' arrangement is drawn from a seed that the composition
fixes (rounded to 1e-6), so measuring it again gives the same value and the truth is what was measured.
The reference is the best of ``reference_alloys`` random compositions, carried on by a local search of
``reference_search_evaluations`` EMT cells; the sample's labels and the resulting reference are cached on disk.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import Field, model_validator

from sdl.bench.problems import BenchProblem
from sdl.env.solid_solutions import (
    EMT_ELEMENTS,
    LABEL_VERSION,
    PROPERTIES,
    cache_dir,
    solid_solution_properties,
    write_atomically,
)
from sdl.experiment import DesignPoint
from sdl.objective import ObjectiveConfig
from sdl.settings import Section
from sdl.space import SearchSpace

COMPOSITION_DECIMALS = 6
T = TypeVar("T")


class SolidSolutionSpec(Section):
    elements: list[str] = Field(default_factory=lambda: ["Cu", "Ni", "Pd", "Ag", "Au", "Pt"], min_length=2)
    low: float = Field(default=0.05, ge=0, lt=1, description="every element's lowest mole fraction")
    high: float = Field(default=0.35, gt=0, le=1, description="and its highest")
    property: Literal[PROPERTIES] = "mixing_energy_ev_per_atom"
    direction: Literal["minimize", "maximize"] = "minimize"
    repeat: int = Field(default=3, ge=1, le=6, description="cubic FCC cell repeats: 4 repeat^3 atoms")
    reference_alloys: int = Field(default=2000, ge=10, description="random compositions the best is taken from")
    reference_search_evaluations: int = Field(default=720, ge=0, description=(
        "EMT cells a local search from the random sample's best three spends on a better reference best (0: "
        "none): 2,000 random points are sparse in five free fractions, and planners found alloys ~8 meV/atom "
        "below their best"))

    @model_validator(mode="after")
    def _check(self) -> SolidSolutionSpec:
        unknown = sorted(set(self.elements) - set(EMT_ELEMENTS))
        if unknown:
            raise ValueError(f"the EMT oracle has no parameters for {', '.join(unknown)}; it models "
                             f"{', '.join(EMT_ELEMENTS)}")
        k = len(self.elements)
        if self.low * k > 1 or self.high * k < 1 or self.low >= self.high:
            raise ValueError(f"fractions in [{self.low}, {self.high}] cannot sum to 1 over {k} elements")
        return self


def material_seed(fractions: dict[str, float]) -> int:
    """The arrangement seed a composition fixes (so the same composition is the same material)."""
    key = json.dumps(sorted((e, round(x, COMPOSITION_DECIMALS)) for e, x in fractions.items()))
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")


class SolidSolutionProblem(BenchProblem):
    success = "gap_closed"

    def __init__(self, spec: SolidSolutionSpec | None = None, *, name: str = "solid_solution") -> None:
        self.spec = spec or SolidSolutionSpec()
        self.name = name
        self.space = SearchSpace.model_validate({"composition": {
            "elements": {e: [self.spec.low, self.spec.high] for e in self.spec.elements},
            "balance": self.spec.elements[0]}})
        self.objective = ObjectiveConfig(measurement=self.spec.property, direction=self.spec.direction)
        self.reference_points = self.spec.reference_alloys
        self.reference_search_evaluations = self.spec.reference_search_evaluations

    def evaluate(self, points: list[DesignPoint]) -> list[dict[str, float]]:
        rows = []
        for p in points:
            fractions = {e: p.composition[e] for e in self.spec.elements}
            rows.append(solid_solution_properties(fractions, material_seed(fractions), repeat=self.spec.repeat))
        return rows

    def truth_in_bulk(self, points: list[DesignPoint]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`truth`, cached on disk: the reference's thousands of EMT cells are computed once."""
        x = np.round([[p.composition[e] for e in self.spec.elements] for p in points], COMPOSITION_DECIMALS)
        spec = self.spec.model_dump_json(exclude={"reference_search_evaluations"})  # the sample's labels only
        key = hashlib.sha256(x.tobytes() + spec.encode()
                             + f"labels {LABEL_VERSION}".encode()).hexdigest()[:16]
        values = _kept_on_disk(cache_dir() / f"reference_{key}.npy", np.load, lambda: self.truth(points)[0], np.save)
        return values, np.ones(len(values), dtype=bool)

    def cached_reference(self, key: str, compute: Callable[[], dict[str, float]]) -> dict[str, float]:
        """The reference kept on disk beside the labels: its local search alone costs ~2 min of EMT cells
        (720 at repeat 3) that every bench of the same problem would otherwise spend again."""
        spec = self.spec.model_dump_json()
        digest = hashlib.sha256(f"{spec} {key} labels {LABEL_VERSION}".encode()).hexdigest()[:16]
        return _kept_on_disk(cache_dir() / f"reference_summary_{digest}.json",
                             lambda path: {k: float(v) for k, v in json.loads(path.read_text()).items()}, compute,
                             lambda f, summary: f.write(json.dumps(summary).encode()))


def _kept_on_disk(path: Path, load: Callable[[Path], T], compute: Callable[[], T], save: Callable[[Any, T], Any]) -> T:
    """``load(path)``, or where it is not there yet or broken, ``compute()`` and (re)write it atomically."""
    try:
        return load(path)
    except (OSError, ValueError, AttributeError):
        value = compute()
        write_atomically(path, lambda f: save(f, value))
        return value
