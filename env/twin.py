"""The alloy digital twin: ground truth of the simulated lab (planners never read it directly).

Composition -> CALPHAD phase equilibria -> microstructure under a heat-treatment route (kinetics)
-> hardness and ductility (strength model). Deterministic, and vectorised over specimens.

Two sources of equilibria, each where it belongs:
- the *phase state* of a specimen (which phases XRD sees, whether a brittle phase formed, whether
  it is processable) is pycalphad's equilibrium at the specimen's own composition (``phase_state:
  exact``; cached on disk, ~25 ms per new point). A table interpolated across a solvus gets the phase
  state wrong where it matters most: on a quarter of the hardest alloys, which sit on the
  gamma-prime solvus, the interpolated table and the exact equilibrium disagree.
- the *kinetics* (gamma-prime fraction driving precipitation at each hold) read the same source.
  They once read the grid table for speed; but interpolated between table temperatures 100 K
  apart, a solution hold between them left a spurious percent of gamma-prime undissolved in alloys
  pycalphad calls single gamma, and hardness fell off a cliff at a grid line of the table near the
  solvus, where the hardest alloys are. ``phase_state: table`` (or ``properties(...,
  phase_state="table")``) is the fast approximation, for screening thousands of candidates; the
  heat-treatment MDP reads the table directly, at thousands of steps per second.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sdl.env.calphad import BRITTLE, CONSTITUENTS, DEFAULT_DATABASE, PhaseEquilibria, PhaseTable
from sdl.env.kinetics import KineticsParameters, Microstructure, apply_route, hold, quench
from sdl.env.strength import StrengthParameters, elongation_pct, vickers_hardness, yield_strength_mpa
from sdl.experiment import ProcessStep


class GridAxis(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    low: float = Field(ge=0.0, le=1.0)
    high: float = Field(ge=0.0, le=1.0)
    points: int = Field(ge=2, le=101)

    def values(self) -> np.ndarray:
        return np.linspace(self.low, self.high, self.points)


class TwinConfig(BaseModel):
    """What the twin tabulates: the database, the composition grid and the temperatures."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    database: str = Field(default=DEFAULT_DATABASE, description="path to a TDB file, or pycalphad:NAME")
    balance: str = "Ni"
    grid: dict[str, GridAxis] = Field(default_factory=lambda: {
        "Al": GridAxis(low=0.0, high=0.16, points=9),
        "Co": GridAxis(low=0.0, high=0.20, points=5),
        "Cr": GridAxis(low=0.0, high=0.20, points=5),
    })
    temperatures_k: list[float] = Field(
        default_factory=lambda: [900.0, 1000.0, 1050.0, 1100.0, 1150.0, 1200.0, 1300.0, 1400.0, 1500.0], min_length=2
    )
    phase_state: Literal["exact", "table"] = Field(
        default="exact",
        description="specimens' phases: exact = pycalphad at each composition (cached); table = interpolated grid",
    )
    kinetics: KineticsParameters = KineticsParameters()
    strength: StrengthParameters = StrengthParameters()

    @model_validator(mode="after")
    def _check(self) -> TwinConfig:
        if self.balance in self.grid:
            raise ValueError(f"the balance element {self.balance} takes the remainder; it has no grid axis")
        return self

    @property
    def elements(self) -> tuple[str, ...]:
        return (*self.grid, self.balance)


@dataclass(frozen=True)
class SpecimenProperties:
    """Outcome for n specimens; arrays of length n."""

    hardness_hv: np.ndarray
    yield_strength_mpa: np.ndarray
    elongation_pct: np.ndarray
    brittle_fraction: np.ndarray
    microstructure: Microstructure
    phases: dict[str, np.ndarray]  # equilibrium constituents at the last hold temperature (config.phase_state)


class AlloyTwin:
    """Build once (tabulating CALPHAD on the grid, from the disk cache when warm), then evaluate."""

    def __init__(self, config: TwinConfig | None = None, *, cache_path: str | Path | None = None,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.config = config or TwinConfig()
        self.equilibria = PhaseEquilibria(self.config.database, elements=self.config.elements, cache_path=cache_path)
        self.table: PhaseTable = self.equilibria.grid(
            {e: axis.values() for e, axis in self.config.grid.items()}, self.config.temperatures_k, progress=progress
        )

    def close(self) -> None:
        self.equilibria.close()

    @property
    def free_elements(self) -> tuple[str, ...]:
        return tuple(self.config.grid)

    @property
    def temperature_range_k(self) -> tuple[float, float]:
        return float(self.table.temperatures_k[0]), float(self.table.temperatures_k[-1])

    def free_fractions(self, compositions: Sequence[dict[str, float]] | np.ndarray) -> np.ndarray:
        """(n x free elements) array from compositions given as dicts (all elements) or already as an array."""
        if isinstance(compositions, np.ndarray):
            return np.atleast_2d(compositions)
        expected = set(self.config.elements)
        rows = []
        for c in compositions:
            if set(c) != expected:
                raise ValueError(f"the twin models {sorted(expected)}; got a composition of {sorted(c)}")
            rows.append([c[e] for e in self.free_elements])
        return np.asarray(rows, dtype=float)

    def equilibrium(self, compositions, temperature_k: float | np.ndarray,
                    phase_state: Literal["exact", "table"] | None = None) -> dict[str, np.ndarray]:
        """Equilibrium constituent fractions of each specimen at ``temperature_k`` (scalar or one per row),
        from the source ``phase_state`` (default ``config.phase_state``) names."""
        x = self.free_fractions(compositions)
        if (phase_state or self.config.phase_state) == "table":
            return self.table(x, temperature_k)
        return self.exact_equilibrium(x, temperature_k)

    def exact_equilibrium(self, compositions, temperature_k: float | np.ndarray) -> dict[str, np.ndarray]:
        """pycalphad's equilibrium at each row's own composition (from the disk cache where computed before)."""
        x = self.free_fractions(compositions)
        t = np.broadcast_to(np.asarray(temperature_k, dtype=float), (len(x),))
        lo, hi = self.temperature_range_k
        if np.any((t < lo - 1e-9) | (t > hi + 1e-9)):
            raise ValueError(f"temperatures {t.min():.1f}-{t.max():.1f} K outside the twin's {lo:.1f}-{hi:.1f} K")
        rows = [self.equilibria.point(dict(zip(self.free_elements, row.tolist())), [float(ti)])[float(ti)]
                for row, ti in zip(x, t)]
        return {c: np.array([r[c] for r in rows], dtype=float) for c in CONSTITUENTS}

    def process(self, compositions, route: Sequence[ProcessStep] | Sequence[Sequence[ProcessStep]]) -> Microstructure:
        """The microstructure after ``route``: one route for every specimen, or one per specimen (the
        same sequence of operations, each with its own temperatures and times, as a joint composition
        and process design asks for), vectorised over specimens either way."""
        x = self.free_fractions(compositions)
        return self._process(x, route, _per_specimen(route, len(x)), self.config.phase_state)

    def _process(self, x: np.ndarray, route, routes: list[list[ProcessStep]] | None,
                 phase_state: Literal["exact", "table"]) -> Microstructure:
        # Each hold drives gamma-prime towards the equilibrium fraction at its temperature, from the same
        # source as the specimen's phases. Interpolated between the table's temperatures (100 K apart
        # around 1325 K), a solution hold kept a spurious 0.1-5 % of gamma-prime in alloys that are
        # single gamma there by pycalphad; that coarsened and cost up to 60 HV at a grid line of the
        # table, a cliff of the interpolation, not of the thermodynamics (issue 19's plateaus).
        if routes is None:
            self._check_route(route)
            return apply_route(Microstructure.initial(len(x), self.config.kinetics), route,
                               lambda t: self.equilibrium(x, t, phase_state)["gamma_prime"], self.config.kinetics)
        for r in routes:
            self._check_route(r)
        state = Microstructure.initial(len(x), self.config.kinetics)
        for steps in zip(*routes):  # step by step, every specimen at once (kinetics.hold is vectorised)
            if steps[0].operation == "quench":
                state = quench(state)
                continue
            temperatures = np.array([s.temperature_k for s in steps])
            durations = np.array([s.duration_s for s in steps])
            state = hold(state, temperatures, durations, self.equilibrium(x, temperatures, phase_state)["gamma_prime"],
                         self.config.kinetics)
            if steps[0].quench_medium in ("water", "oil"):
                state = quench(state)
        return state

    def properties(self, compositions, route: Sequence[ProcessStep] | Sequence[Sequence[ProcessStep]], *,
                   phase_state: Literal["exact", "table"] | None = None) -> SpecimenProperties:
        """What each specimen becomes under ``route`` (one for all, or one per specimen: :meth:`process`);
        ``phase_state`` overrides the config's source of its phases (``table`` for bulk screening of
        thousands of candidates)."""
        x = self.free_fractions(compositions)
        phase_state = phase_state or self.config.phase_state
        routes = _per_specimen(route, len(x))  # validated once, for the kinetics and the last hold alike
        micro = self._process(x, route, routes, phase_state)
        last_t = np.array([next((s.temperature_k for s in reversed(r) if s.operation != "quench"),
                                self.temperature_range_k[0]) for r in (routes or [route])])
        if routes is None:
            last_t = last_t[0]
        phases = self.equilibrium(x, last_t, phase_state)
        brittle = sum(phases[c] for c in BRITTLE)
        strength = self.yield_strength_mpa(x, micro)
        return SpecimenProperties(
            hardness_hv=vickers_hardness(strength),
            yield_strength_mpa=strength,
            elongation_pct=elongation_pct(brittle, micro.precipitate_fraction, self.config.strength),
            brittle_fraction=brittle,
            microstructure=micro,
            phases=phases,
        )

    def yield_strength_mpa(self, compositions, micro: Microstructure) -> np.ndarray:
        """Yield strength of specimens with this microstructure (the furnace's and the RL env's hardness)."""
        x = self.free_fractions(compositions)
        fractions = {e: x[:, i] for i, e in enumerate(self.free_elements)}
        return yield_strength_mpa(fractions, micro.grain_size_m, micro.precipitate_fraction,
                                  micro.precipitate_radius_m, self.config.strength)

    def _check_route(self, route: Sequence[ProcessStep]) -> None:
        lo, hi = self.temperature_range_k
        for step in route:
            if step.operation != "quench" and not lo <= step.temperature_k <= hi:
                raise ValueError(
                    f"{step.operation} at {step.temperature_k} K is outside the twin's tabulated {lo}-{hi} K"
                )


def _per_specimen(route, n: int) -> list[list[ProcessStep]] | None:
    """``route`` as one route per specimen when given so (a sequence of sequences), else None."""
    if not route or isinstance(route[0], ProcessStep):
        return None
    routes = [list(r) for r in route]
    if len(routes) != n:
        raise ValueError(f"{len(routes)} routes for {n} specimens: give one route, or one per specimen")
    operations = [[(s.operation, s.quench_medium) for s in r] for r in routes]
    if any(o != operations[0] for o in operations):
        raise ValueError("routes per specimen must share their sequence of operations (each its own temperatures "
                         "and times); run the specimens of different sequences separately")
    return routes
