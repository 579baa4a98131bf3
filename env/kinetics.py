"""Microstructure evolution of a gamma/gamma-prime alloy under a heat-treatment route.

Vectorised over specimens (NumPy arrays of equal length). The state is the grain size, the
gamma-prime volume fraction and mean radius, and the time and temperature history. A route is a list
of :class:`sdl.experiment.ProcessStep`; each isothermal hold applies, in order:

* grain growth, parabolic with an Arrhenius rate: d^2 - d0^2 = k_g(T) t;
* precipitation toward the CALPHAD equilibrium fraction at the hold temperature by JMAK,
  f = f_eq (1 - exp(-(k_J(T) t)^n)), continued across steps through the equivalent time;
* coarsening by LSW, r^3 - r0^3 = k_c(T) t (new precipitates nucleate at ``nucleus_radius_m``);
* dissolution when the hold temperature's equilibrium fraction is below the current one (re-heating,
  solutionising): the excess dissolves exponentially with the same rate constant, at constant
  particle number, so the radius shrinks as f^(1/3).

Quenches are treated as instantaneous (no precipitation during cooling), which is what a water
quench approximates for the sizes modelled here.

The same functions drive the simulated furnace and the process-planning environment: there is
one copy of the physics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sdl.experiment import ProcessStep

GAS_CONSTANT_J_PER_MOL_K = 8.314462618


class KineticsParameters(BaseModel):
    """Rate laws for Ni-base gamma/gamma-prime alloys; values inside published ranges."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Grain growth in Ni superalloys: activation ~250-300 kJ/mol (grain-boundary self-diffusion);
    # prefactor set so a 50 um grain grows to ~150 um in 1 h at 1473 K, as solution-treated
    # wrought Ni alloys do (e.g. Song et al., J. Mater. Process. Technol. 2008; Li et al. 2019).
    grain_growth_prefactor_m2_per_s: float = Field(default=2.1e-2, gt=0)
    grain_growth_activation_j_per_mol: float = Field(default=270e3, gt=0)
    initial_grain_size_m: float = Field(default=50e-6, gt=0, description="as-cast/homogenised grain size")

    # JMAK for gamma-prime: Avrami exponent 1.5-2.5 for diffusion-controlled growth of pre-existing
    # nuclei (Christian, The Theory of Transformations in Metals and Alloys, 2002); activation of Al
    # diffusion in Ni ~268 kJ/mol (Campbell et al. 2002); half-time ~5 min at 1073 K.
    avrami_exponent: float = Field(default=1.5, gt=0.5, le=4.0)
    jmak_rate_at_reference_per_s: float = Field(default=2.8e-3, gt=0)
    jmak_activation_j_per_mol: float = Field(default=268e3, gt=0)

    # LSW coarsening of gamma-prime: r^3 rate ~1e-28 to 1e-27 m^3/s near 1073-1173 K in Ni-Al-Cr
    # alloys (Ardell & Ozolins, Nat. Mater. 2005; Booth-Morrison et al., Acta Mater. 2008), with the
    # 1/T prefactor of LSW theory.
    coarsening_rate_at_reference_m3_per_s: float = Field(default=3.0e-28, gt=0)
    coarsening_activation_j_per_mol: float = Field(default=270e3, gt=0)
    nucleus_radius_m: float = Field(default=2.0e-9, gt=0)

    reference_temperature_k: float = Field(default=1073.0, gt=0)


@dataclass(frozen=True)
class Microstructure:
    """Per-specimen state; every field is an array of length n."""

    grain_size_m: np.ndarray
    precipitate_fraction: np.ndarray
    precipitate_radius_m: np.ndarray
    temperature_k: np.ndarray
    elapsed_s: np.ndarray
    steps: np.ndarray

    @classmethod
    def initial(cls, n: int, parameters: KineticsParameters, *, temperature_k: float = 298.0) -> Microstructure:
        return cls(
            grain_size_m=np.full(n, parameters.initial_grain_size_m),
            precipitate_fraction=np.zeros(n),
            precipitate_radius_m=np.zeros(n),
            temperature_k=np.full(n, temperature_k),
            elapsed_s=np.zeros(n),
            steps=np.zeros(n, dtype=int),
        )


def _arrhenius(rate_at_reference: float, activation: float, temperature_k: np.ndarray, reference_k: float) -> np.ndarray:
    return rate_at_reference * np.exp(-activation / GAS_CONSTANT_J_PER_MOL_K * (1.0 / temperature_k - 1.0 / reference_k))


def grain_growth_rate_m2_per_s(temperature_k: np.ndarray, p: KineticsParameters) -> np.ndarray:
    return p.grain_growth_prefactor_m2_per_s * np.exp(-p.grain_growth_activation_j_per_mol / (GAS_CONSTANT_J_PER_MOL_K * temperature_k))


def jmak_rate_per_s(temperature_k: np.ndarray, p: KineticsParameters) -> np.ndarray:
    return _arrhenius(p.jmak_rate_at_reference_per_s, p.jmak_activation_j_per_mol, temperature_k, p.reference_temperature_k)


def coarsening_rate_m3_per_s(temperature_k: np.ndarray, p: KineticsParameters) -> np.ndarray:
    lsw = _arrhenius(p.coarsening_rate_at_reference_m3_per_s, p.coarsening_activation_j_per_mol, temperature_k,
                     p.reference_temperature_k)
    return lsw * p.reference_temperature_k / temperature_k


def hold(state: Microstructure, temperature_k: np.ndarray | float, duration_s: np.ndarray | float,
         equilibrium_fraction: np.ndarray, p: KineticsParameters) -> Microstructure:
    """Isothermal hold of every specimen at ``temperature_k`` for ``duration_s``.

    ``equilibrium_fraction`` is the gamma-prime fraction CALPHAD gives at that temperature for each
    specimen's composition.
    """
    n = len(state.grain_size_m)
    t_k = np.broadcast_to(np.asarray(temperature_k, dtype=float), (n,))
    dt = np.broadcast_to(np.asarray(duration_s, dtype=float), (n,))
    if np.any(t_k <= 0) or np.any(dt < 0):
        raise ValueError("hold needs temperature_k > 0 and duration_s >= 0")
    f_eq = np.clip(np.asarray(equilibrium_fraction, dtype=float), 0.0, 1.0)
    f0, r0 = state.precipitate_fraction, state.precipitate_radius_m

    grain = np.sqrt(state.grain_size_m**2 + grain_growth_rate_m2_per_s(t_k, p) * dt)

    k_j = jmak_rate_per_s(t_k, p)
    growing = f_eq > f0
    # JMAK continued from the current fraction through the equivalent time t* with f0 = f(t*).
    progress = np.where(growing, np.clip(f0 / np.where(f_eq > 0, f_eq, 1.0), 0.0, 1.0 - 1e-12), 0.0)
    t_star = (-np.log1p(-progress)) ** (1.0 / p.avrami_exponent) / k_j
    f_grow = f_eq * (1.0 - np.exp(-((k_j * (t_star + dt)) ** p.avrami_exponent)))
    f_dissolve = f_eq + (f0 - f_eq) * np.exp(-k_j * dt)
    fraction = np.where(growing, f_grow, f_dissolve)

    # Radius (cubed): growing, the new particles are born at the nucleus radius and join the old ones,
    # so the mean volume per particle is the total volume over the total number (f0/r0^3 + df/rn^3);
    # dissolving, the particle number stays and the radius shrinks as f^(1/3). Both coarsen (LSW).
    # Mixing r^3 by volume instead let 0.1 % of coarse gamma-prime left undissolved by a solution hold
    # (r ~ 700 nm) set the mean radius of the 20 % that ageing precipitates (2 nm) to ~120 nm: a spike
    # of +55 HV in a 2 K sliver at the solvus, which the twin's best alloys sat on (issue 19).
    k_c = coarsening_rate_m3_per_s(t_k, p)
    safe_f0 = np.where(f0 > 0, f0, 1.0)
    number = (np.where(r0 > 0, f0 / np.where(r0 > 0, r0, 1.0) ** 3, 0.0)  # the old particles (r0 = 0: none)
              + np.clip(fraction - f0, 0.0, None) / p.nucleus_radius_m**3)  # and the new ones
    r3_grown = fraction / np.where(number > 0, number, 1.0)  # number = 0 only where fraction = f0 = 0
    r3_dissolved = r0**3 * np.clip(fraction / safe_f0, 0.0, 1.0)
    r3 = np.where(growing, r3_grown, r3_dissolved) + k_c * dt
    present = fraction > 1e-6
    fraction = np.where(present, fraction, 0.0)
    radius = np.where(present, np.cbrt(r3), 0.0)
    return Microstructure(
        grain_size_m=grain,
        precipitate_fraction=np.where(dt > 0, fraction, f0),
        precipitate_radius_m=np.where(dt > 0, np.where(fraction > 1e-6, radius, 0.0), r0),
        temperature_k=t_k.copy(),
        elapsed_s=state.elapsed_s + dt,
        steps=state.steps + 1,
    )


def quench(state: Microstructure, temperature_k: float = 298.0) -> Microstructure:
    """Instantaneous cooling: the microstructure is frozen in."""
    return replace(state, temperature_k=np.full_like(state.temperature_k, temperature_k), steps=state.steps + 1)


def apply_route(state: Microstructure, route: Sequence[ProcessStep],
                equilibrium_fraction: Callable[[float], np.ndarray], p: KineticsParameters) -> Microstructure:
    """Run a route on every specimen. ``equilibrium_fraction(T)`` gives f_eq at T for each specimen."""
    for step in route:
        if step.operation == "quench":
            state = quench(state)
        else:
            state = hold(state, step.temperature_k, step.duration_s, equilibrium_fraction(step.temperature_k), p)
            if step.quench_medium in ("water", "oil"):
                state = quench(state)
    return state
