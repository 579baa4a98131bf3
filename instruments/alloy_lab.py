"""Simulated alloy-lab instruments over the digital twin: arc melter, furnace, hardness tester, XRD.

Each is a bus service like any real driver. A specimen visits them in the workflow order
``melt -> heat_treat -> hardness -> xrd``; each station reads what earlier stations measured
(``ExperimentSpec.specimen``) and adds its own measurements.

Time is simulated: each instrument reports how long the specimen spent on it (``lab_time_s``,
from the route's holds and ramps, melting and measuring times) and sleeps ``time_scale`` wall
seconds per simulated second, so a campaign of weeks of lab time runs in minutes. Faults
(``faults``: name -> probability per experiment) are drawn from a generator seeded by the
driver's seed and the experiment id, so they are reproducible.
"""

from __future__ import annotations

import hashlib
import time
from typing import ClassVar

import numpy as np
from pydantic import Field, model_validator

from sdl.env.calphad import BRITTLE, default_cache_path
from sdl.env.strength import StrengthParameters, elongation_pct, vickers_hardness, yield_strength_mpa
from sdl.env.twin import AlloyTwin, TwinConfig
from sdl.experiment import Composition, ExperimentSpec
from sdl.instruments.base import Instrument, InstrumentFault, InstrumentParameters, InstrumentRefused
from sdl.instruments.limits import ProcessLimits

AMBIENT_K = 298.0


class SimulatedParameters(InstrumentParameters):
    time_scale: float = Field(default=1e-5, ge=0.0, le=1.0, description="wall seconds per simulated second")
    faults: dict[str, float] = Field(default_factory=dict, description="fault name -> probability per experiment")
    seed: int = 0


class SimulatedInstrument(Instrument):
    """Bookkeeping shared by the simulated lab: seeded faults, simulated time.

    Subclasses implement :meth:`simulate` and :meth:`lab_time_s`, and :meth:`check` if they refuse
    some specimens (the base class calls it before anything happens); :meth:`measure` runs the rest
    in the order a real instrument would.
    """

    allowed_faults: ClassVar[tuple[str, ...]] = ("offline",)
    Parameters = SimulatedParameters

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        unknown = sorted(set(self.parameters.faults) - set(self.allowed_faults))
        if unknown:
            raise ValueError(f"{self.name} has no fault {unknown}; it can inject: {', '.join(self.allowed_faults)}")
        bad = {k: p for k, p in self.parameters.faults.items() if not 0.0 <= p <= 1.0}
        if bad:
            raise ValueError(f"fault probabilities must lie in [0, 1]; got {bad}")

    def _rng(self, experiment: ExperimentSpec) -> np.random.Generator:
        digest = hashlib.sha256(f"{self.name}:{experiment.experiment_id}".encode()).digest()
        return np.random.default_rng([self.parameters.seed, int.from_bytes(digest[:8], "little")])

    def _faults(self, rng: np.random.Generator, experiment: ExperimentSpec, attempt: int) -> None:
        for fault in self.allowed_faults:
            if rng.random() < self.parameters.faults.get(fault, 0.0):
                raise InstrumentFault(f"{self.name}: {fault.replace('_', ' ')} during {experiment.experiment_id} (attempt {attempt})")

    def _spend(self, lab_time_s: float) -> None:
        if self.parameters.time_scale:
            time.sleep(lab_time_s * self.parameters.time_scale)

    def simulate(self, experiment: ExperimentSpec, rng: np.random.Generator) -> dict[str, float]:
        """What the instrument measures on the specimen; subclasses implement it."""
        raise NotImplementedError

    def measure(self, experiment: ExperimentSpec, *, attempt: int) -> dict[str, float]:
        # Refusals came first (Instrument.run; nothing happened to the specimen), then faults, then
        # the measurement, then the simulated time passes.
        lab_time_s = self.lab_time_s(experiment)
        rng = self._rng(experiment)
        self._faults(rng, experiment, attempt)
        values = self.simulate(experiment, rng)
        self._spend(lab_time_s)
        return values

    def composition(self, experiment: ExperimentSpec) -> dict[str, float]:
        """The specimen's composition: as melted (from the melter's analysis) if known, else nominal."""
        if experiment.point.composition is None:
            raise InstrumentRefused(f"{self.name} needs a composition; the experiment has none")
        nominal = experiment.point.composition.root
        melted = {e: experiment.specimen[f"x_{e}"] for e in nominal if f"x_{e}" in experiment.specimen}
        return melted if len(melted) == len(nominal) else dict(nominal)


class ArcMelter(SimulatedInstrument):
    """Arc melter: weighs the charge with some scatter and loses part of its volatile elements.

    Measurements: ``x_<El>`` (the ingot's analysed mole fractions), ``mass_loss_pct``, and
    ``raw_material_cost_usd_per_kg`` (the charge priced by mass at ``prices_usd_per_kg``), the
    second objective of a hardness-vs-cost campaign.
    """

    name = "arc_melter"
    implemented_measurements = ("mass_loss_pct", "raw_material_cost_usd_per_kg")
    allowed_faults = ("specimen_lost", "offline")

    class Parameters(SimulatedParameters):
        weighing_scatter: float = Field(default=0.002, ge=0.0, le=0.05, description="std of each fraction, absolute")
        volatile_loss: dict[str, float] = Field(
            default_factory=lambda: {"Al": 0.02, "Cr": 0.01},
            description="relative loss of each volatile element per melt (Al and Cr evaporate most)",
        )
        melt_time_s: float = Field(default=1800.0, gt=0)
        prices_usd_per_kg: dict[str, float] = Field(
            # indicative metal prices (LME/Fastmarkets order of magnitude, 2025); a lab sets its own
            default_factory=lambda: {"Ni": 16.0, "Al": 2.6, "Co": 33.0, "Cr": 11.0, "Fe": 0.6, "Cu": 9.5,
                                     "Ti": 7.0, "Mo": 45.0, "W": 40.0, "Nb": 45.0, "Ta": 300.0, "Mn": 2.0,
                                     "Si": 2.5, "V": 30.0, "Zr": 35.0, "Hf": 1500.0, "Re": 3000.0},
            description="USD per kg of each element",
        )

    def lab_time_s(self, experiment: ExperimentSpec) -> float:
        return self.parameters.melt_time_s

    def check(self, experiment: ExperimentSpec) -> None:
        unpriced = sorted(set(self.composition(experiment)) - set(self.parameters.prices_usd_per_kg))
        if unpriced:
            raise InstrumentRefused(f"no price for {unpriced}; set options.prices_usd_per_kg")

    def simulate(self, experiment: ExperimentSpec, rng: np.random.Generator) -> dict[str, float]:
        nominal = self.composition(experiment)
        charged = {e: max(0.0, x + rng.normal(0.0, self.parameters.weighing_scatter)) for e, x in nominal.items()}
        kept = {e: x * (1.0 - max(0.0, rng.normal(self.parameters.volatile_loss.get(e, 0.0),
                                                  0.25 * self.parameters.volatile_loss.get(e, 0.0))))
                for e, x in charged.items()}
        total = sum(kept.values())
        actual = {e: x / total for e, x in kept.items()}
        Composition(actual)  # still a valid alloy
        return {**{f"x_{e}": x for e, x in actual.items()}, "mass_loss_pct": 100.0 * (1.0 - total / sum(charged.values())),
                "raw_material_cost_usd_per_kg": self.cost_usd_per_kg(nominal)}

    def cost_usd_per_kg(self, composition: dict[str, float]) -> float:
        from ase.data import atomic_masses, atomic_numbers

        prices = self.parameters.prices_usd_per_kg
        mass = {e: x * atomic_masses[atomic_numbers[e]] for e, x in composition.items()}
        return float(sum(prices[e] * m for e, m in mass.items()) / sum(mass.values()))


class Furnace(SimulatedInstrument):
    """Heat-treatment furnace: executes the route on the specimen (the twin's kinetics).

    Its ``limits`` (hold temperatures, hold time, ramp rate, holds per route) are enforced by the
    instrument base class on every command, never clamped: a step outside them is refused with the
    limit in the message. Measurements (the specimen's state after the route, as the simulation
    knows it): grain size, gamma-prime fraction and radius, brittle-phase fractions. An empty route
    is the process planner's ``as_cast`` choice: nothing is run, and the as-cast state is recorded.
    """

    name = "furnace"
    implemented_measurements = ("grain_size_um", "gamma_prime_fraction", "gamma_prime_radius_nm")
    allowed_faults = ("furnace_trip", "offline")

    class Parameters(SimulatedParameters):
        # Defaults match the twin's default tabulation (900-1500 K), where it has physics.
        limits: ProcessLimits = Field(default_factory=ProcessLimits, description="what the furnace can run")
        default_ramp_k_per_s: float = Field(default=0.2, gt=0, description="for steps that name no ramp")
        twin: TwinConfig = TwinConfig()
        cache_path: str | None = Field(default=None, description="CALPHAD cache (default: ~/.cache/sdl)")

        @model_validator(mode="after")
        def _consistent(self) -> Furnace.Parameters:
            if self.default_ramp_k_per_s > self.limits.max_ramp_k_per_s:
                raise ValueError(f"default_ramp_k_per_s {self.default_ramp_k_per_s} exceeds limits.max_ramp_k_per_s "
                                 f"{self.limits.max_ramp_k_per_s}")
            lo, hi = min(self.twin.temperatures_k), max(self.twin.temperatures_k)
            if self.limits.max_temperature_k > hi or self.limits.min_temperature_k < lo:
                # The furnace may only run where the twin has physics: refused with the config, not mid-campaign.
                raise ValueError(f"furnace limits {self.limits.min_temperature_k}-{self.limits.max_temperature_k} K "
                                 f"exceed the twin's tabulated {lo}-{hi} K; widen twin.temperatures_k or narrow the "
                                 "limits")
            return self

        def composition_range(self) -> tuple[str, dict[str, tuple[float, float]]]:
            """(balance element, free element -> (low, high)) where the twin tabulates CALPHAD: a specimen
            outside is refused mid-run, so the campaign's space must lie inside (checked at config load)."""
            return self.twin.balance, {e: (axis.low, axis.high) for e, axis in self.twin.grid.items()}

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        p = self.parameters
        self.twin = AlloyTwin(p.twin, cache_path=p.cache_path or default_cache_path())

    def check(self, experiment: ExperimentSpec) -> None:
        # Refused before anything happens to the specimen: no composition, or one the twin has no physics for.
        x = self.twin.free_fractions([self.composition(experiment)])
        for axis, column, name in zip(self.twin.table.axes, x.T, self.twin.free_elements):
            if column[0] < axis[0] - 1e-9 or column[0] > axis[-1] + 1e-9:
                raise InstrumentRefused(f"x({name}) = {column[0]:.4f} lies outside the twin's CALPHAD table "
                                        f"[{axis[0]}, {axis[-1]}]: the furnace has no physics there")

    def lab_time_s(self, experiment: ExperimentSpec) -> float:
        """The route's duration in simulated seconds: ramps and holds."""
        temperature, total = AMBIENT_K, 0.0
        for step in experiment.process:
            if step.operation == "quench":
                temperature = AMBIENT_K
                continue
            ramp = step.ramp_k_per_s or self.parameters.default_ramp_k_per_s
            total += abs(step.temperature_k - temperature) / ramp + step.duration_s
            temperature = AMBIENT_K if step.quench_medium in ("water", "oil") else step.temperature_k
        return total

    def simulate(self, experiment: ExperimentSpec, rng: np.random.Generator) -> dict[str, float]:
        props = self.twin.properties([self.composition(experiment)], experiment.process)
        micro = props.microstructure
        out = {
            "grain_size_um": float(micro.grain_size_m[0] * 1e6),
            "gamma_prime_fraction": float(micro.precipitate_fraction[0]),
            "gamma_prime_radius_nm": float(micro.precipitate_radius_m[0] * 1e9),
        }
        out.update({f"{phase}_fraction": float(props.phases[phase][0]) for phase in BRITTLE})
        return out

    def close(self) -> None:
        self.twin.close()
        super().close()


class HardnessTester(SimulatedInstrument):
    """Vickers hardness (with indentation scatter) and the ductility the brittle phases leave.

    Needs the furnace's record of the specimen (grain size, gamma-prime, brittle fractions).
    """

    name = "hardness_tester"
    implemented_measurements = ("hardness_hv", "elongation_pct")
    allowed_faults = ("specimen_lost", "offline")

    class Parameters(SimulatedParameters):
        noise_hv: float = Field(default=5.0, ge=0.0, description="std of one reading")
        indents: int = Field(default=5, ge=1, le=50, description="readings averaged per specimen")
        measure_time_s: float = Field(default=900.0, gt=0)
        strength: StrengthParameters = StrengthParameters()

    def lab_time_s(self, experiment: ExperimentSpec) -> float:
        return self.parameters.measure_time_s

    def check(self, experiment: ExperimentSpec) -> None:
        needed = ("grain_size_um", "gamma_prime_fraction", "gamma_prime_radius_nm")
        missing = [k for k in needed if k not in experiment.specimen]
        if missing:
            raise InstrumentRefused(f"the hardness tester needs a heat-treated specimen; missing {missing} "
                                    "(put the furnace before it in the workflow)")

    def simulate(self, experiment: ExperimentSpec, rng: np.random.Generator) -> dict[str, float]:
        spec = experiment.specimen
        strength = self.parameters.strength
        composition = self.composition(experiment)
        fractions = {e: np.array([x]) for e, x in composition.items()}
        sigma = yield_strength_mpa(fractions, np.array([spec["grain_size_um"] * 1e-6]),
                                   np.array([spec["gamma_prime_fraction"]]), np.array([spec["gamma_prime_radius_nm"] * 1e-9]),
                                   strength)
        readings = vickers_hardness(sigma)[0] + rng.normal(0.0, self.parameters.noise_hv, self.parameters.indents)
        brittle = sum(spec.get(f"{phase}_fraction", 0.0) for phase in BRITTLE)
        return {
            "hardness_hv": float(readings.mean()),
            "elongation_pct": float(elongation_pct(np.array([brittle]), np.array([spec["gamma_prime_fraction"]]), strength)[0]),
        }


class XrdPhaseId(SimulatedInstrument):
    """X-ray diffraction phase identification: phases above the detection limit, with their fractions.

    Reports ``xrd_<phase>`` (estimated volume fraction, 0 when not detected) for gamma-prime and the
    brittle phases, and ``xrd_brittle_detected`` (1 or 0).
    """

    name = "xrd"
    implemented_measurements = ("xrd_gamma_prime", "xrd_brittle_detected")

    class Parameters(SimulatedParameters):
        detection_limit: float = Field(default=0.02, ge=0.0, le=0.5, description="smallest detectable volume fraction")
        fraction_noise: float = Field(default=0.01, ge=0.0, description="std of a fitted phase fraction")
        scan_time_s: float = Field(default=3600.0, gt=0)

    def lab_time_s(self, experiment: ExperimentSpec) -> float:
        return self.parameters.scan_time_s

    def simulate(self, experiment: ExperimentSpec, rng: np.random.Generator) -> dict[str, float]:
        truth = {"gamma_prime": experiment.specimen.get("gamma_prime_fraction", 0.0)}
        truth.update({phase: experiment.specimen.get(f"{phase}_fraction", 0.0) for phase in BRITTLE})
        detected = {}
        for phase, fraction in truth.items():
            seen = fraction + rng.normal(0.0, self.parameters.fraction_noise) if fraction > 0 else 0.0
            detected[f"xrd_{phase}"] = float(seen) if seen >= self.parameters.detection_limit else 0.0
        detected["xrd_brittle_detected"] = float(any(detected[f"xrd_{p}"] > 0 for p in BRITTLE))
        return detected
